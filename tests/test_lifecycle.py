"""The advisor lifecycle: handover of a departing clerk's customers, switching advisors under each
policy, service levels on a controllable clock, merging records, tags, export and erasure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert
from sqlmodel import select

from adapters.webchat.simulator import BrandApp
from adapters.workbench.simulator import ClerkClient
from gateway import service
from gateway.clock import FakeClock
from gateway.copies import ERASED_TEXT
from gateway.models import (
    AuditEntry,
    Binding,
    ChatMessage,
    Clerk,
    Conversation,
    Customer,
    Interaction,
    QueueEntry,
    Store,
)
from gateway.models import Identity as IdentityRow
from gateway.tokens import create_token
from tests.conftest import WEBCHAT_SECRET, wait_until

SHANGHAI_NOON = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)  # a Wednesday, 12:00 in Shanghai


@pytest.fixture
def clock():
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


def sims(client, world):
    server = str(client.make_url("")).rstrip("/")
    return BrandApp(client.session, server, "webchat", WEBCHAT_SECRET), ClerkClient(client.session, server, world.clerk_token)


async def count(gw, model, *where) -> int:
    async with gw.db() as s:
        return (await s.execute(select(func.count()).select_from(model).where(*where))).scalar()


def admin(world):
    return {"Authorization": f"Bearer {world.admin_token}"}


# -- handover ---------------------------------------------------------------------------------------------


async def test_a_clerk_leaving_with_500_customers_leaves_each_with_exactly_one_advisor(gw, client, world, backend):
    gw.config.policies.handover = "least_loaded"
    now = gw.clock.now()
    async with gw.db() as s:
        extra = [Clerk(name=f"同事{i}", display_name=f"同事{i}", store_id=world.store_id) for i in range(3)]
        s.add_all(extra)
        await s.flush()
        ids = (await s.execute(insert(Customer).returning(Customer.id),
                               [{"name": f"顾客{i}", "store_id": world.store_id, "created_at": now} for i in range(500)]
                               )).scalars().all()
        await s.execute(insert(Binding), [{"customer_id": c, "clerk_id": world.clerk_id, "store_id": world.store_id,
                                           "valid_from": now - timedelta(days=30), "source": "invite"} for c in ids])
        await s.commit()
    gw.clock.advance(hours=1)
    resp = await client.post(f"/api/v1/clerks/{world.clerk_id}/leave", json={}, headers=admin(world))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["customers"] == {"moved": 500}
    left_at = gw.clock.now()
    async with gw.db() as s:
        open_per_customer = (await s.execute(
            select(Binding.customer_id, func.count()).where(Binding.valid_to.is_(None), Binding.customer_id.in_(ids))
            .group_by(Binding.customer_id))).all()
        closed = (await s.exec(select(Binding).where(Binding.clerk_id == world.clerk_id))).all()
        load = dict((await s.execute(select(Binding.clerk_id, func.count()).where(Binding.valid_to.is_(None))
                                     .group_by(Binding.clerk_id))).all())
    assert len(open_per_customer) == 500 and {n for _, n in open_per_customer} == {1}
    assert all(b.valid_to == left_at and b.end_reason == "handover" for b in closed) and len(closed) == 500
    assert world.clerk_id not in load and max(load.values()) - min(load.values()) <= 1 and len(load) == 4
    assert await count(gw, Interaction, Interaction.type == "handover") == 500
    again = await client.post(f"/api/v1/clerks/{world.clerk_id}/leave", json={}, headers=admin(world))
    assert again.status == 409


async def test_leave_with_a_successor_introduces_them_and_briefs_them(gw, client, world):
    brand, clerk = sims(client, world)
    alice = await brand.login("u-alice", "Alice")
    await alice.bind(world.invite)
    await alice.say("上次的外套还有吗")
    await clerk.wait_for(lambda m: "外套" in m["text"])
    resp = await client.post(f"/api/v1/clerks/{world.clerk_id}/leave", json={"successor_id": world.clerk2_id},
                             headers=admin(world))
    assert (await resp.json())["customers"] == {"moved": 1}
    intro = await alice.wait_for(lambda m: "芳芳" in m["text"] and "继续为您服务" in m["text"])
    assert intro["sender"] == {"name": "芳芳"}
    fang = ClerkClient(client.session, str(client.make_url("")).rstrip("/"), world.clerk2_token)
    brief = await fang.wait_for(lambda m: "您接手了" in m["text"])
    assert "Alice #1" in brief["text"] and "外套" in brief["text"]
    await alice.say("我想要M码")  # the conversation continues with the successor
    await fang.wait_for(lambda m: m["text"] == "【Alice #1】我想要M码")


async def test_nobody_to_take_over_puts_customers_in_the_queue_and_tells_the_manager(gw, client, world):
    brand, _ = sims(client, world)
    bob = await brand.login("u-bob", "Bob")
    await bob.bind(world.invite)
    async with gw.db() as s:
        mgr = Clerk(name="店长", display_name="店长", store_id=world.store_id, role="manager")
        s.add(mgr)
        await s.flush()
        _, mgr_token = await create_token(s, "clerk", clerk_id=mgr.id)
        (await s.get(Clerk, world.clerk2_id)).status = "left"
        await s.commit()
    gw.config.policies.handover = "successor"
    resp = await client.post(f"/api/v1/clerks/{world.clerk_id}/leave", json={}, headers=admin(world))
    assert (await resp.json())["customers"] == {"queued": 1}
    manager = ClerkClient(client.session, str(client.make_url("")).rstrip("/"), mgr_token)
    told = await manager.wait_for(lambda m: "待分配" in m["text"])
    assert "1 位顾客" in told["text"]
    assert await count(gw, QueueEntry, QueueEntry.resolved_at.is_(None)) == 1


# -- switching advisors --------------------------------------------------------------------------------


async def _second_invite(gw, world):
    from gateway import advisors

    async with gw.db() as s:
        inv = await advisors.create_invite(s, world.clerk2_id)
        await s.commit()
    return inv.code


@pytest.mark.parametrize("policy", ["keep_first", "latest_wins", "ask_customer"])
async def test_a_bound_customer_scanning_another_clerk_under_each_policy(gw, client, world, policy):
    gw.config.policies.binding = policy
    brand, _ = sims(client, world)
    cara = await brand.login("u-cara", "Cara")
    await cara.bind(world.invite)
    other = await _second_invite(gw, world)
    status, body = await cara.bind(other)
    async with gw.db() as s:
        cid = (await s.exec(select(IdentityRow.customer_id).where(IdentityRow.external_id == "u-cara"))).one()
    if policy == "keep_first":
        assert status == 409 and body["error"]["code"] == "already_bound" and body["advisor"] == {"name": "小林"}
    elif policy == "latest_wins":
        assert status == 200 and body["advisor"] == {"name": "芳芳"}
    else:
        assert status == 409 and body["error"]["code"] == "switch_available"
        assert body["advisor"] == {"name": "小林"} and body["new_advisor"] == {"name": "芳芳"}
        async with client.session.post(f"{cara.base}/bind", json={"invite": other, "consent": True, "switch": True},
                                       headers=cara.headers) as resp:
            assert resp.status == 200 and (await resp.json())["advisor"] == {"name": "芳芳"}
    async with gw.db() as s:
        rows = (await s.exec(select(Binding).where(Binding.customer_id == cid).order_by(Binding.id))).all()
    expect = {"keep_first": [(world.clerk_id, None)],
              "latest_wins": [(world.clerk_id, "rebound"), (world.clerk2_id, None)],
              "ask_customer": [(world.clerk_id, "customer_switched"), (world.clerk2_id, None)]}[policy]
    assert [(b.clerk_id, b.end_reason) for b in rows] == expect
    assert sum(b.valid_to is None for b in rows) == 1
    if len(rows) == 2:
        assert rows[0].valid_to == rows[1].valid_from  # history by time, never rewritten


# -- service levels --------------------------------------------------------------------------------------


async def test_an_unanswered_message_reminds_then_escalates_on_schedule(gw, client, world, clock):
    async with gw.db() as s:
        mgr = Clerk(name="店长", display_name="店长", store_id=world.store_id, role="manager")
        s.add(mgr)
        await s.flush()
        _, mgr_token = await create_token(s, "clerk", clerk_id=mgr.id)
        await s.commit()
    brand, clerk = sims(client, world)
    dan = await brand.login("u-dan", "Dan")
    await dan.bind(world.invite)
    await dan.say("在吗？")
    await clerk.wait_for(lambda m: "在吗" in m["text"])
    await wait_until(lambda: count(gw, Conversation, Conversation.first_reply_at.is_(None)))
    clock.advance(minutes=9)
    assert await service.tick(gw) == 0
    clock.advance(minutes=2)  # 11 minutes
    assert await service.tick(gw) == 1
    reminder = await clerk.wait_for(lambda m: "⏰" in m["text"])
    assert "Dan #1" in reminder["text"] and "11 分钟" in reminder["text"]
    assert await service.tick(gw) == 0  # once
    clock.advance(minutes=20)  # 31 minutes
    assert await service.tick(gw) == 1
    manager = ClerkClient(client.session, str(client.make_url("")).rstrip("/"), mgr_token)
    escalation = await manager.wait_for(lambda m: "⚠️" in m["text"])
    assert "Dan" in escalation["text"] and "小林" in escalation["text"]
    clock.advance(minutes=2)
    await clerk.say("#1 在的，抱歉久等")
    await dan.wait_for(lambda m: "抱歉久等" in m["text"])
    async with gw.db() as s:
        conv = (await s.exec(select(Conversation))).one()
        first = (await s.exec(select(Interaction).where(Interaction.type == "first_reply"))).one()
    assert conv.first_reply_at is not None and first.payload["seconds"] == 33 * 60


async def test_off_hours_the_customer_hears_when_the_advisor_is_back_once(gw, client, world, clock):
    async with gw.db() as s:
        (await s.get(Store, world.store_id)).opening_hours = {"daily": "10:00-22:00"}
        await s.commit()
    brand, clerk = sims(client, world)
    eva = await brand.login("u-eva", "Eva")
    await eva.bind(world.invite)
    local = clock.now().astimezone(gw.tz)
    late = local.replace(hour=23, minute=0) if local.hour < 23 else local
    clock.advance(seconds=(late - local).total_seconds())
    await eva.say("还营业吗")
    back = await eva.wait_for(lambda m: "上班后" in m["text"])
    assert "明天 10:00" in back["text"] and back["sender"] == {"name": "小林"}
    await eva.say("好的")
    await clerk.wait_for(lambda m: "好的" in m["text"])
    assert await count(gw, ChatMessage, ChatMessage.text.contains("上班后")) == 1  # once per closed period
    clock.advance(minutes=45)
    assert await service.tick(gw) == 0  # no reminders while the store is closed


def test_opening_hours_arithmetic():
    from zoneinfo import ZoneInfo

    hours = service.parse_hours({"mon": "10:00-22:00", "daily": "09:00-21:00", "sun": "closed"})
    tz = ZoneInfo("Asia/Shanghai")
    sat_late = datetime(2026, 11, 28, 21, 30, tzinfo=tz)
    assert not service.is_open(hours, sat_late)
    assert service.next_open(hours, sat_late) == datetime(2026, 11, 30, 10, 0, tzinfo=tz)  # Sunday closed
    assert service.is_open(hours, datetime(2026, 11, 30, 10, 0, tzinfo=tz))
    assert service.is_open(None, sat_late) and service.next_open(None, sat_late) is None


async def test_opening_hours_are_validated(client, world):
    resp = await client.patch(f"/api/v1/stores/{world.store_id}", json={"opening_hours": {"mon": "22:00-10:00"}},
                              headers=admin(world))
    assert resp.status == 422 and "opening_hours" in (await resp.json())["error"]["field"]


# -- one customer, tags, privacy ------------------------------------------------------------------------


async def test_linking_an_identity_merges_two_records_with_both_histories_and_one_advisor(gw, client, world):
    brand, clerk = sims(client, world)
    a = await brand.login("u-app", "Fay")
    await a.bind(world.invite)
    await a.say("app里的消息")
    b = await brand.login("u-h5", "Fay H5")
    await b.say("H5里的消息")
    await clerk.wait_for(lambda m: "app里的消息" in m["text"])
    await wait_until(lambda: count(gw, ChatMessage, ChatMessage.text == "H5里的消息"))  # acked before it is stored
    async with gw.db() as s:
        ids = dict((await s.execute(select(IdentityRow.external_id, IdentityRow.customer_id))).all())
    resp = await client.post(f"/api/v1/customers/{ids['u-app']}/identities",
                             json={"platform": "webchat", "account": "webchat", "external_id": "u-h5"},
                             headers=admin(world))
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert {i["external_id"] for i in body["identities"]} == {"u-app", "u-h5"}
    keep = body["id"]
    async with gw.db() as s:
        texts = set((await s.exec(select(ChatMessage.text).where(ChatMessage.customer_id == keep,
                                                                 ChatMessage.direction == "in"))).all())
        bindings = (await s.exec(select(Binding).where(Binding.customer_id == keep, Binding.valid_to.is_(None)))).all()
    assert texts == {"app里的消息", "H5里的消息"} and [x.clerk_id for x in bindings] == [world.clerk_id]
    gone = ids["u-h5"] if keep == ids["u-app"] else ids["u-app"]
    merged = await client.get(f"/api/v1/customers/{gone}", headers=admin(world))
    assert merged.status == 404 and f"merged into customer {keep}" in (await merged.json())["error"]["message"]


async def test_same_verified_phone_merges_and_needs_a_key(gw, client, world):
    brand, _ = sims(client, world)
    one = await brand.login("u-p1", "P1")
    await one.say("hi")
    two = await brand.login("u-p2", "P2")
    await two.say("hi")
    await wait_until(lambda: _n(gw, Customer, 2))
    async with gw.db() as s:
        c1, c2 = (await s.exec(select(Customer.id).order_by(Customer.id))).all()
    r = await client.patch(f"/api/v1/customers/{c1}", json={"phone": "13812345678"}, headers=admin(world))
    assert r.status == 422 and (await r.json())["error"]["field"] == "phone"
    gw.config.policies.phone_hash_key = "k" * 32
    assert (await client.patch(f"/api/v1/customers/{c1}", json={"phone": "13812345678"}, headers=admin(world))).status == 200
    r = await client.patch(f"/api/v1/customers/{c2}", json={"phone": "+8613812345678", "tags": ["vip"]}, headers=admin(world))
    assert r.status == 200 and (await r.json())["id"] == c1
    async with gw.db() as s:
        assert (await s.get(Customer, c2)).merged_into_id == c1
        assert (await s.get(Customer, c1)).tags == ["vip"]
        assert "13812345678" not in str((await s.get(Customer, c1)).model_dump())


async def _n(gw, model, n):
    return await count(gw, model) == n


async def test_clerks_tag_their_customers(gw, client, world):
    brand, clerk = sims(client, world)
    gina = await brand.login("u-gina", "Gina")
    await gina.bind(world.invite)
    await clerk.say("/tag #1 vip 高端")
    done = await clerk.wait_for(lambda m: "vip" in m["text"] and "Gina" in m["text"])
    assert "高端" in done["text"]
    await clerk.say("/untag #1 高端")
    await clerk.wait_for(lambda m: m["text"].endswith("vip"))
    await clerk.say("/tag #9 vip")
    await clerk.wait_for(lambda m: "不是您当前的顾客" in m["text"])
    async with gw.db() as s:
        assert (await s.exec(select(Customer.tags).where(Customer.name == "Gina"))).one() == ["vip"]


async def test_export_then_erase_removes_the_text_and_keeps_the_counts(gw, client, world, backend):
    brand, clerk = sims(client, world)
    hana = await brand.login("u-hana", "Hana 13912345678")
    await hana.bind(world.invite)
    await hana.say("我的电话是13912345678，地址在静安")
    await clerk.wait_for(lambda m: "静安" in m["text"])
    await clerk.say("#1 好的，已记下")
    await hana.wait_for(lambda m: "已记下" in m["text"])
    async with gw.db() as s:
        cid = (await s.exec(select(IdentityRow.customer_id).where(IdentityRow.external_id == "u-hana"))).one()
        _, marketer = await create_token(s, "marketer")
        await s.commit()
    exported = await (await client.get(f"/api/v1/customers/{cid}/export", headers=admin(world))).json()
    assert any("静安" in (m["text"] or "") for m in exported["messages"]) and exported["identities"]
    before = await _type_counts(gw, cid)

    denied = await client.delete(f"/api/v1/customers/{cid}", headers={"Authorization": f"Bearer {marketer}"})
    assert denied.status == 403
    resp = await client.delete(f"/api/v1/customers/{cid}", headers=admin(world))
    assert resp.status == 200, await resp.text()
    async with gw.db() as s:
        texts = (await s.exec(select(ChatMessage.text).where(ChatMessage.customer_id == cid))).all()
        payloads = (await s.exec(select(Interaction.payload).where(Interaction.customer_id == cid))).all()
        customer = await s.get(Customer, cid)
        ident = (await s.exec(select(IdentityRow).where(IdentityRow.customer_id == cid))).one()
        bindings = (await s.exec(select(Binding).where(Binding.customer_id == cid))).all()
        audit = (await s.exec(select(AuditEntry.method, AuditEntry.path, AuditEntry.status))).all()
    assert texts and all(t in ("", ERASED_TEXT) for t in texts)  # the clerk's copies read as erased
    assert not any("静安" in str(p) or "1391234" in str(p) for p in payloads)
    assert customer.name is None and customer.erased_at is not None and ident.external_id.startswith("erased:")
    assert len(bindings) == 1 and bindings[0].end_reason == "erased"  # the anonymous record stays
    after = await _type_counts(gw, cid)
    assert {k: v for k, v in after.items() if k != "erased"} == before and after["erased"] == 1
    assert ("GET", f"/api/v1/customers/{cid}/export", 200) in audit
    assert ("DELETE", f"/api/v1/customers/{cid}", 403) in audit and ("DELETE", f"/api/v1/customers/{cid}", 200) in audit
    again = await brand.login("u-hana", "Hana")  # writing again starts a new, unbound record
    await again.say("你好")
    await wait_until(lambda: _n(gw, Customer, 2))


async def _type_counts(gw, cid):
    async with gw.db() as s:
        return dict((await s.execute(select(Interaction.type, func.count()).where(Interaction.customer_id == cid)
                                     .group_by(Interaction.type))).all())
