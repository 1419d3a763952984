"""Clerk commands and the clerk side of the conversation rules, through the workbench."""

from __future__ import annotations

from adapters.webchat.simulator import BrandApp
from adapters.workbench.simulator import ClerkClient
from tests.conftest import WEBCHAT_SECRET


def sims(client, token):
    server = str(client.make_url("")).rstrip("/")
    return BrandApp(client.session, server, "webchat", WEBCHAT_SECRET), ClerkClient(client.session, server, token)


async def test_help_customers_and_unknown(client, world):
    brand, clerk = sims(client, world.clerk_token)
    await clerk.say("/help")
    await clerk.wait_for(lambda m: "/customers" in m["text"] and "/qr" in m["text"])
    await clerk.say("/customers")
    await clerk.wait_for(lambda m: "还没有绑定的顾客" in m["text"])
    for user, name in (("u-a", "甲"), ("u-b", "乙")):
        c = await brand.login(user, name)
        await c.bind(world.invite)
        await c.say(f"我是{name}")
        await clerk.wait_for(lambda m, name=name: f"我是{name}" in m["text"])  # 乙 is relayed last
    await clerk.say("/customers")
    listing = await clerk.wait_for(lambda m: m["text"].startswith("我的顾客"))
    lines = listing["text"].splitlines()[1:]
    assert lines[0].startswith("#2 乙") and lines[0].endswith("←")  # most recent first, the current one marked
    assert lines[1].startswith("#1 甲")
    await clerk.say("/frobnicate")
    await clerk.wait_for(lambda m: "未知指令" in m["text"])


async def test_qr_gives_the_clerks_invite(client, world):
    _, clerk = sims(client, world.clerk_token)
    await clerk.say("/qr")
    msg = await clerk.wait_for(lambda m: "邀请码" in m["text"])
    image = [s for s in msg["segments"] if s["type"] == "image"][0]
    path = image["url"].split("://", 1)[1].split("/", 1)[1]
    resp = await client.get("/" + path)
    assert resp.status == 200 and resp.content_type == "image/png"
    await clerk.say("/qr")  # the same invite again, not a new one each time
    again = await clerk.wait_for(lambda m: "邀请码" in m["text"])
    assert again["segments"][0]["text"] == msg["segments"][0]["text"]


async def test_handles_switch_current_customer(client, world):
    brand, clerk = sims(client, world.clerk_token)
    a = await brand.login("u-a", "甲")
    b = await brand.login("u-b", "乙")
    for c in (a, b):
        await c.bind(world.invite)
    await clerk.say("#1")
    await clerk.wait_for(lambda m: "当前顾客：甲 #1" in m["text"])
    await clerk.say("在的")
    await a.wait_for(lambda m: m["text"] == "在的")
    await clerk.say("#2 您好")
    await b.wait_for(lambda m: m["text"] == "您好")
    await clerk.say("还需要什么吗")  # now goes to #2, the last addressed
    await b.wait_for(lambda m: m["text"] == "还需要什么吗")
    assert not [m for m in await a.fetch() if m["text"] == "还需要什么吗"]


async def test_another_clerk_cannot_reach_my_customer(client, world):
    brand, clerk2 = sims(client, world.clerk2_token)
    a = await brand.login("u-a", "甲")
    await a.bind(world.invite)  # bound to clerk 1
    await clerk2.say("#1 hi")
    await clerk2.wait_for(lambda m: "没有 #1" in m["text"])


async def test_a_clerk_who_left_is_locked_out_of_the_workbench(client, gw, world):
    """Even when their tokens were not revoked (a status written by hand), a departed clerk's token
    is refused: the workbench would show them customers' messages. (Work-IM users are told
    instead: tests/test_dingtalk.py.)"""
    from gateway.models import Clerk

    _, clerk = sims(client, world.clerk_token)
    assert (await clerk.say("before"))[0] == 202
    async with gw.db() as s:
        c = await s.get(Clerk, world.clerk_id)
        c.status = "left"
        await s.commit()
    gw.forget_tokens()  # what a cache holds is covered elsewhere: here, what the database says
    assert (await clerk.say("hello"))[0] == 401
    resp = await client.get("/workbench/api/messages", headers=clerk.headers)
    assert resp.status == 401


async def test_opt_out_and_back_in(client, gw, world):
    from sqlmodel import select

    from gateway.models import Customer, Interaction

    brand, clerk = sims(client, world.clerk_token)
    c = await brand.login("u-o", "欧")
    await c.bind(world.invite)
    await c.say("TD")
    await c.wait_for(lambda m: "已为您退订" in m["text"])
    async with gw.db() as s:
        cust = (await s.exec(select(Customer))).one()
        assert cust.opted_out_at is not None
    await c.say("订阅")
    await c.wait_for(lambda m: "恢复订阅" in m["text"])
    async with gw.db() as s:
        cust = (await s.exec(select(Customer))).one()
        types = [i.type for i in (await s.exec(select(Interaction).order_by(Interaction.id))).all()]
    assert cust.opted_out_at is None and [t for t in types if t.startswith("opt")] == ["opt_out", "opt_in"]


async def test_stats_gives_the_clerk_their_last_30_days(client, gw, world):
    from adapters.webchat.simulator import BrandApp
    from adapters.workbench.simulator import ClerkClient
    from tests.conftest import WEBCHAT_SECRET

    server = str(client.make_url("")).rstrip("/")
    c = await BrandApp(client.session, server, "webchat", WEBCHAT_SECRET).login("u-s", "Sam")
    await c.bind(world.invite)
    clerk = ClerkClient(client.session, server, world.clerk_token)
    await clerk.say("/stats")
    got = await clerk.wait_for(lambda m: "Last 30 days" in m["text"])
    assert "新会员 members 1" in got["text"] and "佣金 commission ¥0.00" in got["text"]
