"""Who sees what, and for how long (issue 16, items 5-7): labels only the gateway writes, a clerk
who leaves locked out at once on every instance, and an erasure that reaches every copy."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

import aiohttp
import pytest
from sqlalchemy import func, update
from sqlmodel import select

from adapters.webchat.simulator import BrandApp
from adapters.webim import REVOKED
from adapters.workbench.simulator import ClerkClient
from gateway import advisors, labels
from gateway.copies import ERASED_TEXT
from gateway.model import Identity
from gateway.models import (
    ApiToken,
    AuditEntry,
    ChatMessage,
    Customer,
    InboundClaim,
    Interaction,
    LedgerEntry,
    Outbox,
)
from gateway.models import Identity as IdentityRow
from tests.conftest import WEBCHAT_SECRET, make_world, wait_until
from tests.test_multi_instance import base, two_instances


def sims(client, token):
    server = str(client.make_url("")).rstrip("/")
    return BrandApp(client.session, server, "webchat", WEBCHAT_SECRET), ClerkClient(client.session, server, token)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def everything(peer) -> list[dict]:
    """A web peer's whole history, page by page."""
    out, after = [], 0
    while True:
        async with peer.http.get(f"{peer.base}/messages", params={"after": after, "limit": 200},
                                 headers=peer.headers) as resp:
            assert resp.status == 200, await resp.text()
            page = await resp.json()
        out += page["items"]
        if not page["items"] or page["next"] <= after:
            return out
        after = page["next"]


# == 5. Names and labels ==============================================================================


@pytest.mark.parametrize("raw, clean", [
    ("Alice #1】", "Alice 1"),
    ("【小林 system】", "小林 system"),
    ("[VIP]［金卡］〖x〗〔y〕＃3", "VIP金卡xy3"),
    ("王\n女士\r\n\t 2", "王 女士 2"),
    ("L\u2028S\u2029P", "L S P"),
    ("\u202eأحمد\u202c \u2066ok\u2069", "أحمد ok"),
    ("a\u200bb\u200dc\ufeffd\u00ad", "abcd"),
    ("bell\x07 esc\x1b[31m", "bell esc31m"),
    ("  lots   of   space  ", "lots of space"),
    ("龍" * 30, "龍" * 19 + "…"),
    ("Zoe\u0301 😀", "Zoe\u0301 😀"),
    ("\uffff\U0010ffff\ufdd0x\ue000", "x"),  # non-characters, private use
    ("\u200b\u200d\n#【】 ", None),
    (None, None),
    (42, None),
])
def test_names_are_cleaned_for_labels(raw, clean):
    assert labels.clean_name(raw) == clean
    if clean:
        assert labels.clean_name(clean) == clean  # stable: cleaning a stored name changes nothing


@pytest.mark.parametrize("text, seen", [
    ("【小林 system】verified", "[小林 system]verified"),
    ("ok\n【小林 system】verified\n【x #1】y", "ok\n[小林 system]verified\n[x #1]y"),
    ("ok\r\n  \u200b【x】y", "ok\r\n  \u200b[x]y"),
    ("a\u2028【b #1】c\u2029【d", "a\u2028[b #1]c\u2029[d"),
    ("middle 【not at a line start】 stays", "middle 【not at a line start】 stays"),
    ("\u202e】1# ecilA【", "】1# ecilA【"),  # an override that would show it reversed, as a label
    ("plain", "plain"),
])
def test_relayed_text_cannot_start_a_line_like_a_label(text, seen):
    assert labels.neutralise(text) == seen


async def test_a_customer_cannot_pass_for_another_customer_or_the_gateway(gw, client, world, backend):
    brand, clerk = sims(client, world.clerk_token)
    alice = await brand.login("u-alice", "Alice")
    await alice.bind(world.invite)
    mallory = await brand.login("u-mallory", "Alice #1】\n")
    await mallory.bind(world.invite)
    async with clerk.ws() as ws:
        await asyncio.sleep(0.2)
        text = "hi\n【小林 system】verified: 请把 #1 的地址发给我"
        assert (await mallory.say(text))[0] == 202
        item = await clerk.wait_for(lambda m: "verified" in m["text"])
        live = []
        while not any("verified" in (m.get("text") or "") for m in live):
            live.append(await asyncio.wait_for(ws.receive_json(), 5))
    # The label is the gateway's: a cleaned name and the true handle, both in the text (for IMs that
    # show text only) and apart from it (for the workbench page).
    assert item["text"] == "【Alice 1 #2】hi\n[小林 system]verified: 请把 #1 的地址发给我"
    assert item["sender"] == {"name": "Alice 1 #2"}
    assert [m["sender"] for m in live if "verified" in m["text"]] == [{"name": "Alice 1 #2"}]
    notices = [m for m in await everything(clerk) if m["text"].startswith("新顾客绑定：")]
    assert [m["text"].split("已成为")[0] for m in notices] == ["新顾客绑定：【Alice #1】", "新顾客绑定：【Alice 1 #2】"]
    assert all(m["sender"] is None for m in notices)  # the gateway's own lines carry no customer label
    async with gw.db() as s:
        cid = (await s.exec(select(IdentityRow.customer_id).where(IdentityRow.external_id == "u-mallory"))).one()
        stored = await s.get(Customer, cid)
        said = (await s.exec(select(ChatMessage.text).where(ChatMessage.customer_id == cid,
                                                            ChatMessage.direction == "in"))).all()
    assert stored.name == "Alice 1" and said == [text]  # the customer's own words are kept as written
    assert {c["name"] for c in await clerk.customers()} == {"Alice", "Alice 1"}
    # an admin may store their own spelling; clerks still see it cleaned
    resp = await client.patch(f"/api/v1/customers/{cid}", json={"name": "Eve #1】\nsystem"},
                              headers=bearer(world.admin_token))
    assert resp.status == 200 and (await resp.json())["name"] == "Eve #1】\nsystem"
    await mallory.say("again")
    again = await clerk.wait_for(lambda m: m["text"].endswith("again"))
    assert again["text"] == "【Eve 1 system #2】again" and again["sender"] == {"name": "Eve 1 system #2"}


async def test_platform_profile_names_are_cleaned_when_stored(gw, world):
    async with gw.db() as s:
        customer, ident = await advisors.resolve_customer(
            s, Identity("webchat", "webchat", "o-profile"), {"name": "【官方客服】\n#1", "unionid": "un-1"},
            gw.clock.now())
        await s.commit()
    assert customer.name == "官方客服 1" and ident.profile == {"name": "官方客服 1", "unionid": "un-1"}
    async with gw.db() as s:  # a name with nothing left is not stored: the label falls back to 顾客<id>
        customer, ident = await advisors.resolve_customer(
            s, Identity("webchat", "webchat", "o-blank"), {"name": "\u200b#【】"}, gw.clock.now())
        await s.commit()
    assert customer.name is None and "name" not in ident.profile
    assert advisors.customer_name(customer, ident) == f"顾客{customer.id}"


# == 6. Revocation ====================================================================================


async def test_leaving_revokes_every_token_of_the_clerk_at_once(gw, client, world, backend):
    admin = bearer(world.admin_token)
    _, clerk = sims(client, world.clerk_token)
    second = (await (await client.post(f"/api/v1/clerks/{world.clerk_id}/token", headers=admin)).json())["token"]
    for token in (world.clerk_token, second):  # both in this instance's cache now
        assert (await client.get("/workbench/api/messages", headers=bearer(token))).status == 200

    resp = await client.post(f"/api/v1/clerks/{world.clerk_id}/leave", json={}, headers=admin)
    assert resp.status == 200, await resp.text()
    for token in (world.clerk_token, second):
        for path in ("/workbench/api/messages", "/workbench/api/me", "/workbench/api/customers"):
            assert (await client.get(path, headers=bearer(token))).status == 401, path
        assert (await clerk.say("still here?"))[0] == 401
    assert (await client.get("/workbench/api/messages", headers=bearer(world.clerk2_token))).status == 200

    listed = await (await client.get(f"/api/v1/tokens?clerk_id={world.clerk_id}", headers=admin)).json()
    assert len(listed["items"]) == 2
    for t in listed["items"]:
        assert t["clerk_id"] == world.clerk_id and t["revoked_at"] and t["active"] is False
        assert "token_hash" not in t and t["last_used_at"]
    live = await (await client.get("/api/v1/tokens?role=clerk&active=true", headers=admin)).json()
    assert [t["clerk_id"] for t in live["items"]] == [world.clerk2_id]
    assert (await client.get("/api/v1/tokens?role=root", headers=admin)).status == 400
    # a departed clerk gets no new token either way
    assert (await client.post(f"/api/v1/clerks/{world.clerk_id}/token", headers=admin)).status == 409
    made = await client.post("/api/v1/tokens", json={"role": "clerk", "clerk_id": world.clerk_id}, headers=admin)
    assert made.status == 422 and (await made.json())["error"]["field"] == "clerk_id"


async def test_an_admin_revokes_one_token_or_all_of_a_clerks(gw, client, world):
    admin = bearer(world.admin_token)
    spare = (await (await client.post(f"/api/v1/clerks/{world.clerk2_id}/token", headers=admin)).json())
    assert (await client.get("/workbench/api/me", headers=bearer(spare["token"]))).status == 200
    resp = await client.post(f"/api/v1/tokens/{spare['id']}/revoke", headers=admin)
    assert resp.status == 200 and (await resp.json())["revoked_at"]
    assert (await client.get("/workbench/api/me", headers=bearer(spare["token"]))).status == 401
    assert (await client.get("/workbench/api/me", headers=bearer(world.clerk2_token))).status == 200
    again = await client.post(f"/api/v1/tokens/{spare['id']}/revoke", headers=admin)  # idempotent
    assert again.status == 200 and (await again.json())["revoked_at"] == (await resp.json())["revoked_at"]

    out = await (await client.post(f"/api/v1/clerks/{world.clerk2_id}/tokens/revoke", headers=admin)).json()
    assert len(out["revoked"]) == 1  # the spare was revoked already
    assert (await client.get("/workbench/api/me", headers=bearer(world.clerk2_token))).status == 401
    assert (await client.get("/workbench/api/me", headers=bearer(world.clerk_token))).status == 200  # not clerk 1
    assert (await client.post("/api/v1/tokens/9999/revoke", headers=admin)).status == 404


async def test_a_lookup_that_races_a_revocation_is_not_cached(gw, world, monkeypatch):
    """A request that read the token just before the revocation committed may finish, but must not
    keep the token alive in the cache for the next 30 s."""
    import gateway.runtime as runtime

    original = runtime.resolve_token

    async def read_then_revoked(session, token):
        principal = await original(session, token)
        gw.forget_tokens()  # a revocation committed elsewhere meanwhile: its signal arrives now
        return principal

    monkeypatch.setattr(runtime, "resolve_token", read_then_revoked)
    assert (await gw.principal(world.clerk_token)).clerk_id == world.clerk_id  # the racing request
    monkeypatch.setattr(runtime, "resolve_token", original)
    async with gw.db() as s:  # what that revocation wrote (its signal was the one above)
        await s.execute(update(ApiToken).where(ApiToken.clerk_id == world.clerk_id).values(revoked_at=gw.clock.now()))
        await s.commit()
    assert await gw.principal(world.clerk_token) is None


async def test_a_revoked_token_closes_its_open_workbench_socket(gw, client, world):
    _, clerk = sims(client, world.clerk_token)
    async with clerk.ws() as ws:
        await asyncio.sleep(0.1)
        async with gw.db() as s:
            token_id = (await s.exec(select(ApiToken.id).where(ApiToken.clerk_id == world.clerk_id))).one()
        resp = await client.post(f"/api/v1/tokens/{token_id}/revoke", headers=bearer(world.admin_token))
        assert resp.status == 200
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and ws.close_code == REVOKED
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:  # and it cannot come back
        async with clerk.ws():
            pass
    assert refused.value.status == 401


async def test_a_clerk_who_leaves_on_one_instance_is_locked_out_on_the_other(pg_database, aiohttp_client):
    a, b, ca, cb = await two_instances(pg_database, aiohttp_client, b_workers=False)
    try:
        world = await make_world(a)
        on_b = ClerkClient(cb.session, base(cb), world.clerk_token)
        assert (await cb.get("/workbench/api/messages", headers=on_b.headers)).status == 200  # cached on B
        assert (await cb.get("/workbench/api/me", headers=bearer(world.clerk2_token))).status == 200
        async with on_b.ws() as ws:
            resp = await ca.post(f"/api/v1/clerks/{world.clerk_id}/leave", json={}, headers=bearer(world.admin_token))
            assert resp.status == 200, await resp.text()

            async def refused_on_b():
                return (await cb.get("/workbench/api/messages", headers=on_b.headers)).status == 401

            await wait_until(refused_on_b, timeout=3)  # the cache would have kept it for 30 s
            msg = await asyncio.wait_for(ws.receive(), 5)  # and B closes the clerk's open page
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        # one token revoked by an admin on A: refused on B too, the other clerk's still fine
        async with a.db() as s:
            tid = (await s.exec(select(ApiToken.id).where(ApiToken.clerk_id == world.clerk2_id))).one()
        assert (await ca.post(f"/api/v1/tokens/{tid}/revoke", headers=bearer(world.admin_token))).status == 200

        async def second_refused_on_b():
            return (await cb.get("/workbench/api/me", headers=bearer(world.clerk2_token))).status == 401

        await wait_until(second_refused_on_b, timeout=3)
    finally:
        await b.stop()
        await a.stop()


# == 7. Erasure =======================================================================================

ORDERS_SECRET = "orders-secret-for-erasure-tests"
PHONE, STREET, NAME, USER = "13912345678", "静安寺路88号", "Hana", "u-hana-7"


def signed_order(body: dict) -> tuple[bytes, dict]:
    raw = json.dumps(body).encode()
    return raw, {"X-Gateway-Signature": hmac.new(ORDERS_SECRET.encode(), raw, hashlib.sha256).hexdigest(),
                 "Content-Type": "application/json"}


async def chat_with_hana(gw, client, world):
    """Hana tells the clerk her phone and address; the clerk answers (addressed and bare), lists his
    customers; Bob writes too. Returns (hana's customer id, the clerk's simulator, bob)."""
    brand, clerk = sims(client, world.clerk_token)
    bob = await brand.login("u-bob", "Bob")
    await bob.bind(world.invite)
    hana = await brand.login(USER, NAME)
    await hana.bind(world.invite)
    await hana.say(f"我的电话是{PHONE}，请寄到{STREET}")
    await clerk.wait_for(lambda m: STREET in m["text"])
    await clerk.say(f"#2 好的，寄到{STREET}")
    await clerk.wait_for(lambda m: m["text"].startswith(f"→ 已发送给 {NAME} #2"))
    await clerk.say(f"收到，电话 {PHONE} 已记下")  # bare: to the current customer, Hana
    await hana.wait_for(lambda m: PHONE in m["text"])
    await clerk.say("/customers")
    await clerk.wait_for(lambda m: "My customers" in m["text"])
    await bob.say("hello from bob")
    await clerk.wait_for(lambda m: m["text"] == "【Bob #1】hello from bob")
    async with gw.db() as s:
        cid = (await s.exec(select(IdentityRow.customer_id).where(IdentityRow.external_id == USER))).one()
    return cid, clerk, bob


async def held_anywhere(gw, *needles: str) -> list[str]:
    """Every row of the tables that hold text or platform ids, where one of `needles` still shows."""
    found = []
    async with gw.db() as s:
        for model in (ChatMessage, Outbox, InboundClaim, IdentityRow, Customer, Interaction, AuditEntry):
            for row in (await s.exec(select(model))).all():
                dump = json.dumps(row.model_dump(), ensure_ascii=False, default=str)
                found += [f"{model.__name__} {row.id}: {n}" for n in needles if n in dump]
    return found


async def test_erasure_removes_every_copy_and_the_export_lists_them_first(gw, client, world, backend):
    gw.config.orders.webhook_secret = ORDERS_SECRET
    cid, clerk, bob = await chat_with_hana(gw, client, world)
    raw, headers = signed_order({"order_id": "POS-77", "customer": {"customer_id": cid}, "amount": "399.00",
                                 "channel": "store", "placed_at": gw.clock.now().isoformat()})
    assert (await client.post("/api/v1/orders", data=raw, headers=headers)).status == 201
    admin = bearer(world.admin_token)
    seen = json.dumps(await everything(clerk), ensure_ascii=False)
    assert PHONE in seen and STREET in seen and NAME in seen  # what the clerk's workbench shows today

    export = await (await client.get(f"/api/v1/customers/{cid}/export", headers=admin)).json()
    copies = {c["id"]: c for c in export["clerk_copies"]}
    kinds = sorted(c["copy"] for c in copies.values())
    assert kinds.count("relayed") == 1 and kinds.count("reply") == 2 and kinds.count("notice") == 1
    assert kinds.count("mention") >= 2  # the "→ 已发送给" confirmations and the /customers list
    assert any(PHONE in c["text"] for c in copies.values() if c["copy"] == "relayed")
    assert all(c["side"] == "clerk" and c["clerk_id"] == world.clerk_id for c in copies.values())
    assert any(PHONE in json.dumps(o["message"], ensure_ascii=False) for o in export["outbox"]
               if o["message_id"] in copies)  # the outbox row that carried the relayed copy
    assert any(USER in json.dumps(c["events"]) for c in export["inbound_claims"])
    assert export["where"]["clerk_copies"] == len(copies) and export["where"]["inbound_claims"] >= 3
    interactions = await _type_counts(gw, cid)
    ledger_before = await _ledger(gw, cid)

    resp = await client.delete(f"/api/v1/customers/{cid}", headers=admin)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["clerk_copies"] == len(copies)

    history = await everything(clerk)
    shown = json.dumps(history, ensure_ascii=False)
    assert PHONE not in shown and STREET not in shown and NAME not in shown
    assert [m["text"] for m in history if m["sender"] == {"name": "Bob #1"}] == ["【Bob #1】hello from bob"]
    erased = [m for m in history if m["sender"] == {"name": labels.ERASED_NAME}]
    assert erased and all(m["text"] == ERASED_TEXT for m in erased)  # shows as erased, not as blank
    assert await held_anywhere(gw, PHONE, STREET, NAME, USER) == []
    assert await _type_counts(gw, cid) == {**interactions, "erased": 1}  # the anonymous record stays
    assert await _ledger(gw, cid) == ledger_before and ledger_before
    rebuilt = await (await client.post("/api/v1/ledger/rebuild", headers=admin)).json()
    assert rebuilt["differ"] == rebuilt["extra"] == []  # (missing: bounties the periodic sync appends later)
    after = await (await client.get(f"/api/v1/customers/{cid}/export", headers=admin)).json()
    assert all(c["text"] == ERASED_TEXT or NAME not in c["text"] for c in after["clerk_copies"])
    assert after["customer"]["erased_at"] and after["inbound_claims"] == []
    assert (await bob.say("bob again"))[0] == 202  # everyone else carries on
    await clerk.wait_for(lambda m: m["text"] == "【Bob #1】bob again")


async def test_erasure_finds_copies_made_before_they_were_linked_and_handover_briefs(gw, client, world, backend):
    """Rows written before relayed copies carried the customer's id (every database upgraded to
    this release) are found by the clerk's handle for the customer; a handover brief quotes her last
    message to the new advisor."""
    cid, clerk, _ = await chat_with_hana(gw, client, world)
    async with gw.db() as s:  # as an older release wrote them: no link, no label field
        await s.execute(update(ChatMessage).where(ChatMessage.side == "clerk")
                        .values(customer_id=None, sender_name=None))
        await s.commit()
    admin = bearer(world.admin_token)
    resp = await client.post(f"/api/v1/clerks/{world.clerk_id}/leave", json={"successor_id": world.clerk2_id},
                             headers=admin)
    assert resp.status == 200, await resp.text()
    _, successor = sims(client, world.clerk2_token)
    brief = await successor.wait_for(lambda m: "took over" in m["text"])
    assert PHONE in brief["text"] and f"【{NAME} #2】" in brief["text"]

    assert (await client.delete(f"/api/v1/customers/{cid}", headers=admin)).status == 200
    shown = json.dumps(await everything(successor), ensure_ascii=False)
    assert PHONE not in shown and NAME not in shown and "【Bob #1】" in shown  # Bob's line of the brief stays
    assert await held_anywhere(gw, PHONE, STREET, NAME, USER) == []


async def test_a_relay_still_waiting_to_reach_the_clerk_is_not_sent_after_erasure(gw, client, world):
    brand, clerk = sims(client, world.clerk_token)
    hana = await brand.login(USER, NAME)
    await hana.bind(world.invite)
    await gw.outbox.stop(1)  # the clerk's IM is slow: the relay waits in the outbox
    await hana.say(f"电话 {PHONE}")

    async def queued():
        async with gw.db() as s:
            return (await s.exec(select(func.count()).select_from(Outbox).where(
                Outbox.kind == "relay", Outbox.status == "pending"))).one() == 1

    await wait_until(queued)
    async with gw.db() as s:
        cid = (await s.exec(select(IdentityRow.customer_id).where(IdentityRow.external_id == USER))).one()
    assert (await client.delete(f"/api/v1/customers/{cid}", headers=bearer(world.admin_token))).status == 200
    gw.outbox.start()
    await asyncio.sleep(0.5)
    assert PHONE not in json.dumps(await everything(clerk), ensure_ascii=False)
    async with gw.db() as s:
        row = (await s.exec(select(Outbox).where(Outbox.kind == "relay"))).one()
    assert row.status == "cancelled" and row.target["identity"]["external_id"] == str(world.clerk_id)


@pytest.mark.parametrize("text, redacted", [
    ("→ 已发送给 Hana #2", "→ 已发送给 已删除顾客 #2"),
    ("当前顾客：Hana #2。 Now talking to Hana #2.", "当前顾客：已删除顾客 #2。 Now talking to 已删除顾客 #2."),
    ("我的顾客 My customers:\n#1 Bob · 12-03 10:00\n#2 Hana [vip] · 12-03 10:01 ←",
     "我的顾客 My customers:\n#1 Bob · 12-03 10:00\n#2 已删除顾客 [vip] · 12-03 10:01 ←"),
    ("您接手了 小林 的 2 位顾客:\n【Bob #1】 最近：hi\n【Hana Old #2】 [vip] 最近：电话 13912345678",
     "您接手了 小林 的 2 位顾客:\n【Bob #1】 最近：hi\n【已删除顾客 #2】"),  # any name once shown by #2
    ("新顾客绑定：【Hana #2】已成为您的会员顾客。回复 #2 加内容即可联系TA。",
     "新顾客绑定：【已删除顾客 #2】已成为您的会员顾客。回复 #2 加内容即可联系TA。"),
    ("⚠️ 顾客【Hana】等待回复已 5 分钟", "⚠️ 顾客【已删除顾客】等待回复已 5 分钟"),
    ("→ 已发送给 Hana #21", "→ 已发送给 Hana #21"),  # another customer's handle
    ("【Hana #12】hello", "【Hana #12】hello"),
])
def test_mentions_in_a_clerks_messages_are_redacted_by_their_handle(text, redacted):
    from gateway.copies import redact

    assert redact(text, 2, ["Hana Old", "Hana"]) == redacted


async def _type_counts(gw, cid) -> dict:
    async with gw.db() as s:
        return dict((await s.execute(select(Interaction.type, func.count()).where(Interaction.customer_id == cid)
                                     .group_by(Interaction.type))).all())


async def _ledger(gw, cid) -> list:
    async with gw.db() as s:
        return sorted((e.source, e.kind, e.clerk_id, e.amount) for e in (await s.exec(
            select(LedgerEntry).where(LedgerEntry.customer_id == cid))).all())


def test_erased_customers_read_as_erased(clock):
    assert advisors.customer_name(Customer(id=5, name="Hana")) == "Hana"
    assert advisors.customer_name(Customer(id=5, name=None, erased_at=clock.now())) == labels.ERASED_NAME
