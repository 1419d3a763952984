"""Issue 16, item 4: a clerk's reply reaches the customer the clerk meant. Bare text is never
guessed (held and asked while a relay that switched customers is fresh or still on its way), a
quoted relay addresses its customer, and one customer's flood neither buries the clerk nor
captures a reply. (Two customers of one clerk in one batch: tests/test_message_path.py.)"""

from __future__ import annotations

import asyncio

from gateway.models import ChatMessage, Outbox
from gateway.runtime import Gateway
from tests.conftest import make_config, make_world, wait_until
from tests.test_message_path import claimed, clerk_event, count, customer_event, rows, sent_out


async def test_bare_text_after_the_guard_goes_to_the_current_customer(db_url, backend):
    gw = Gateway(make_config(db_url, policies={"reply_guard_seconds": 0.3}))
    world = await make_world(gw)
    await gw.start()
    try:
        await gw.ingress.process_batch(await claimed(gw, customer_event("u-a", "bind", invite=world.invite),
                                                     customer_event("u-b", "bind", invite=world.invite)))
        await gw.ingress.process_batch(await claimed(gw, customer_event("u-a", text="1"), customer_event("u-b", text="2")))

        async def relayed():  # the clerk's page got 乙's message
            return await count(gw, Outbox, Outbox.kind == "relay", Outbox.status == "sent") == 2

        await wait_until(relayed)
        await asyncio.sleep(0.4)  # and has had time to see it
        await gw.ingress.process_batch(await claimed(gw, clerk_event(world.clerk_id, "您好乙")))
        sent = await rows(gw, ChatMessage, ChatMessage.direction == "out", ChatMessage.text == "您好乙")
        assert [m.peer_id for m in sent] == ["u-b"]
    finally:
        await gw.stop()


async def test_bare_text_is_held_while_the_relay_that_switched_customers_is_not_delivered(gw, world, backend):
    """However long ago the switch was processed: until its relay reaches the clerk (it waits in the
    outbox, e.g. behind a platform's refusal), the clerk cannot have seen it."""
    gw.config.policies.reply_guard_seconds = 0.01
    await gw.ingress.process_batch(await claimed(gw, customer_event("u-a", "bind", invite=world.invite),
                                                 customer_event("u-b", "bind", invite=world.invite)))
    await gw.ingress.process_batch(await claimed(gw, customer_event("u-a", text="1"), customer_event("u-b", text="2")))
    await asyncio.sleep(0.05)  # the guard has passed, but nothing was sent (no outbox worker here)
    await gw.ingress.process_batch(await claimed(gw, clerk_event(world.clerk_id, "您好")))
    asked = (await rows(gw, ChatMessage, ChatMessage.side == "clerk", ChatMessage.direction == "out"))[-1]
    assert asked.text.startswith("发给谁？")
    assert await count(gw, ChatMessage, ChatMessage.side == "customer", ChatMessage.text == "您好") == 0


async def test_a_quoted_relay_addresses_its_customer(gw, world, backend):
    await gw.ingress.process_batch(await claimed(gw, customer_event("u-a", "bind", invite=world.invite),
                                                 customer_event("u-b", "bind", invite=world.invite)))
    await gw.ingress.process_batch(await claimed(gw, customer_event("u-a", text="1"), customer_event("u-b", text="2")))
    await sent_out(gw)
    quote = {"text": "【u-a #1】1"}  # the clerk quoted 甲's message in the work IM
    await gw.ingress.process_batch(await claimed(gw, clerk_event(world.clerk_id, "给您留着", quote=quote)))
    sent = await rows(gw, ChatMessage, ChatMessage.direction == "out", ChatMessage.text == "给您留着")
    assert [m.peer_id for m in sent] == ["u-a"]


async def test_a_flooding_customer_is_kept_but_not_relayed(db_url, backend):
    gw = Gateway(make_config(db_url, policies={"customer_messages_per_minute": 3}))
    world = await make_world(gw)
    try:
        await gw.ingress.process_batch(await claimed(gw, customer_event("u-f", "bind", invite=world.invite)))
        await gw.ingress.process_batch(await claimed(gw, *(customer_event("u-f", text=f"m{i}") for i in range(6))))
        assert await count(gw, Outbox, Outbox.kind == "relay") == 3
        kept = await rows(gw, ChatMessage, ChatMessage.direction == "in", ChatMessage.side == "customer")
        assert [m.status for m in kept] == ["received"] * 3 + ["held"] * 3  # nothing is lost
        told = await rows(gw, ChatMessage, ChatMessage.direction == "out", ChatMessage.text.like("%消息较多%"))
        assert len(told) == 1 and told[0].peer_id == "u-f"  # once per burst
        assert await count(gw, ChatMessage, ChatMessage.side == "clerk", ChatMessage.text.like("%暂停转发%")) == 1
    finally:
        await gw.engine.dispose()
