"""Admin API: auth and roles, CRUD, the error shape, invites and their QR codes."""

from __future__ import annotations

import pytest


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def test_auth_errors_have_the_contract_shape(client, world):
    resp = await client.get("/api/v1/stores")
    assert resp.status == 401
    assert (await resp.json()) == {"error": {"code": "unauthorized", "message": "missing bearer token"}}
    assert (await client.get("/api/v1/stores", headers=auth("gw_nope"))).status == 401
    resp = await client.get("/api/v1/stores", headers=auth(world.clerk_token))  # a clerk token is not an admin one
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "forbidden"


async def test_store_and_clerk_crud(client, world):
    h = auth(world.admin_token)
    resp = await client.post("/api/v1/stores", json={"name": "南京西路店", "city": "上海", "lat": 31.23, "lng": 121.45}, headers=h)
    assert resp.status == 201
    store = await resp.json()
    assert store["id"] and store["name"] == "南京西路店" and store["created_at"].endswith("+08:00")

    resp = await client.post("/api/v1/clerks", headers=h, json={
        "name": "陈晨", "display_name": "晨晨", "store_id": store["id"], "work_ids": {"workbench": "x"}})
    assert resp.status == 422 and (await resp.json())["error"]["field"] == "work_ids.workbench"
    resp = await client.post("/api/v1/clerks", headers=h, json={"name": "陈晨", "display_name": "晨晨", "store_id": 999})
    assert resp.status == 422 and (await resp.json())["error"]["field"] == "store_id"
    resp = await client.post("/api/v1/clerks", headers=h, json={"name": "陈晨", "store_id": store["id"]})
    body = await resp.json()
    assert resp.status == 422 and body["error"]["field"] == "display_name"

    resp = await client.post("/api/v1/clerks", headers=h, json={"name": "陈晨", "display_name": "晨晨", "store_id": store["id"]})
    clerk = await resp.json()
    assert resp.status == 201 and clerk["display_name"] == "晨晨" and clerk["status"] == "active"
    resp = await client.patch(f"/api/v1/clerks/{clerk['id']}", json={"display_name": "Chen"}, headers=h)
    assert (await resp.json())["display_name"] == "Chen"
    listed = await (await client.get(f"/api/v1/clerks?store_id={store['id']}", headers=h)).json()
    assert [c["id"] for c in listed["items"]] == [clerk["id"]]
    assert (await client.get("/api/v1/clerks/424242", headers=h)).status == 404
    assert (await client.get("/api/v1/clerks/abc", headers=h)).status == 404


async def test_malformed_and_unknown_fields(client, world):
    h = {**auth(world.admin_token), "Content-Type": "application/json"}
    resp = await client.post("/api/v1/stores", data=b"{bad", headers=h)
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "bad_request"
    resp = await client.post("/api/v1/stores", json={"name": "x", "colour": "red"}, headers=h)
    assert resp.status == 422 and (await resp.json())["error"]["field"] == "colour"


async def test_store_manager_is_scoped_to_their_store(client, gw, world):
    from gateway.tokens import create_token

    h = auth(world.admin_token)
    other = await (await client.post("/api/v1/stores", json={"name": "别的店"}, headers=h)).json()
    async with gw.db() as s:
        _, mgr = await create_token(s, "store_manager", store_id=world.store_id)
        await s.commit()
    m = auth(mgr)
    stores = await (await client.get("/api/v1/stores", headers=m)).json()
    assert [st["id"] for st in stores["items"]] == [world.store_id]
    assert (await client.get(f"/api/v1/stores/{other['id']}", headers=m)).status == 403
    resp = await client.post("/api/v1/clerks", headers=m, json={"name": "a", "display_name": "a", "store_id": other["id"]})
    assert resp.status == 403
    resp = await client.post("/api/v1/clerks", headers=m, json={"name": "a", "display_name": "a", "store_id": world.store_id})
    assert resp.status == 201


async def test_invites_and_qr_codes(client, world):
    h = auth(world.admin_token)
    resp = await client.post("/api/v1/invites", json={"clerk_id": world.clerk_id, "source": "poster"}, headers=h)
    assert resp.status == 201
    inv = await resp.json()
    assert inv["id"] and len(inv["code"]) == 8 and inv["url"].endswith(f"/i/{inv['code']}")
    png = await client.get(f"/api/v1/invites/{inv['code']}/qr.png", headers=h)
    assert png.status == 200 and png.content_type == "image/png" and (await png.read())[:8] == b"\x89PNG\r\n\x1a\n"
    svg = await client.get(f"/i/{inv['code']}/qr.svg")  # public: it only encodes the public link
    assert svg.status == 200 and b"<svg" in await svg.read()
    landing = await client.get(f"/i/{inv['code']}", allow_redirects=False)
    assert landing.status == 302 and landing.headers["Location"] == f"/webchat/webchat/?invite={inv['code']}"
    assert (await client.get("/i/zzzzzzzz", allow_redirects=False)).status == 404
    assert (await client.post("/api/v1/invites", json={"clerk_id": 999}, headers=h)).status == 422


async def test_customer_read_with_bindings_and_history(client, gw, world):
    from adapters.webchat.simulator import BrandApp
    from tests.conftest import WEBCHAT_SECRET

    brand = BrandApp(client.session, str(client.make_url("")).rstrip("/"), "webchat", WEBCHAT_SECRET)
    c = await brand.login("u-read", "读者")
    await c.bind(world.invite)
    h = auth(world.admin_token)
    listed = await (await client.get(f"/api/v1/customers?clerk_id={world.clerk_id}", headers=h)).json()
    (cust,) = listed["items"]
    assert cust["advisor"] == {"clerk_id": world.clerk_id, "name": "小林"}
    detail = await (await client.get(f"/api/v1/customers/{cust['id']}", headers=h)).json()
    assert detail["name"] == "读者" and detail["consent_version"] == "v1"
    assert [(i["platform"], i["external_id"]) for i in detail["identities"]] == [("webchat", "u-read")]
    assert [b["clerk_id"] for b in detail["bindings"]] == [world.clerk_id]
    assert {"bound", "invite_scan"} <= {i["type"] for i in detail["history"]}
    inter = await (await client.get(f"/api/v1/interactions?customer_id={cust['id']}&type=bound", headers=h)).json()
    assert [i["type"] for i in inter["items"]] == ["bound"]
    assert inter["items"][0]["store_id"] == world.store_id


async def test_pagination(client, world):
    h = auth(world.admin_token)
    for i in range(5):
        await client.post("/api/v1/stores", json={"name": f"s{i}"}, headers=h)
    page = await (await client.get("/api/v1/stores?limit=4", headers=h)).json()
    assert len(page["items"]) == 4 and page["next"] == page["items"][-1]["id"]
    rest = await (await client.get(f"/api/v1/stores?limit=4&after={page['next']}", headers=h)).json()
    assert len(rest["items"]) == 2 and "next" not in rest


async def test_tokens_are_hashed_and_revocable(client, gw, world):
    h = auth(world.admin_token)
    resp = await client.post("/api/v1/tokens", json={"role": "marketer", "name": "m"}, headers=h)
    made = await resp.json()
    assert resp.status == 201 and made["token"].startswith("gw_")
    listed = await (await client.get("/api/v1/tokens", headers=h)).json()
    assert all("token" not in t and "token_hash" not in t for t in listed["items"])
    assert (await client.get("/api/v1/interactions", headers=auth(made["token"]))).status == 200
    assert (await client.post(f"/api/v1/tokens/{made['id']}/revoke", headers=h)).status == 200
    assert (await client.get("/api/v1/interactions", headers=auth(made["token"]))).status == 401
    resp = await client.post("/api/v1/tokens", json={"role": "store_manager"}, headers=h)
    assert resp.status == 422


async def test_clerk_token_signs_into_the_workbench(client, world):
    resp = await client.post(f"/api/v1/clerks/{world.clerk_id}/token", headers=auth(world.admin_token))
    token = (await resp.json())["token"]
    me = await (await client.get("/workbench/api/me", headers=auth(token))).json()
    assert me["clerk"]["display_name"] == "小林" and me["clerk"]["store_name"] == "静安店"
    assert (await client.get("/workbench/api/me", headers=auth(world.admin_token))).status == 401


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json", "/console/", "/workbench/", "/webchat/webchat/",
                                  "/workbench/webim.js", "/webchat/webchat/webim.js"])
async def test_public_pages(client, path):
    resp = await client.get(path)
    assert resp.status == 200


async def test_openapi_describes_every_admin_route(client):
    from gateway.api import ROUTES

    doc = await (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    for r in ROUTES:
        assert r.method.lower() in doc["paths"]["/api/v1" + r.path]
    body = doc["paths"]["/api/v1/clerks"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(doc["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]["required"]) >= {"name", "display_name", "store_id"}


async def test_me_queue_and_assigning_a_waiting_customer(client, gw, world):
    from sqlmodel import select

    from gateway.models import Binding, Customer, Identity, Interaction, Outbox, QueueEntry

    h = auth(world.admin_token)
    me = await (await client.get("/api/v1/me", headers=h)).json()
    assert me["role"] == "admin" and me["token_id"]
    assert (await (await client.get("/api/v1/me", headers=auth(world.clerk_token))).json())["role"] == "clerk"
    now = gw.clock.now()
    async with gw.db() as s:
        c = Customer(name="等待的顾客", store_id=world.store_id, created_at=now)
        s.add(c)
        await s.flush()
        s.add(Identity(customer_id=c.id, platform="webchat", account="webchat", external_id="u-wait", profile={}))
        s.add(QueueEntry(customer_id=c.id, store_id=world.store_id, reason="no_invite", created_at=now))
        await s.commit()
        cid = c.id
    queue = await (await client.get("/api/v1/queue", headers=h)).json()
    assert [(x["customer_id"], x["customer_name"], x["reason"]) for x in queue["items"]] == [(cid, "等待的顾客", "no_invite")]
    resp = await client.post(f"/api/v1/customers/{cid}/transfer", json={"clerk_id": world.clerk2_id}, headers=h)
    assert resp.status == 200 and (await resp.json())["status"] == "assigned"
    assert (await (await client.get("/api/v1/queue", headers=h)).json())["items"] == []
    async with gw.db() as s:
        open_ = (await s.exec(select(Binding).where(Binding.customer_id == cid, Binding.valid_to.is_(None)))).all()
        assert [(b.clerk_id, b.source) for b in open_] == [(world.clerk2_id, "assigned")]
        assert (await s.exec(select(Interaction).where(Interaction.customer_id == cid, Interaction.type == "bound"))).one()
        intro = (await s.exec(select(Outbox).where(Outbox.customer_id == cid, Outbox.kind == "intro"))).all()
        assert len(intro) == 1  # the new advisor says hello
    again = await client.post(f"/api/v1/customers/{cid}/transfer", json={"clerk_id": world.clerk2_id}, headers=h)
    assert again.status == 409


async def test_coupon_list_counts_the_pool(client, world):
    h = auth(world.admin_token)
    body = {"name": "满300减30", "value": "30.00", "valid_from": "2026-11-01T00:00:00+08:00",
            "valid_to": "2026-12-31T23:59:59+08:00", "codes": ["AAA1", "AAA2", "AAA3"]}
    made = await (await client.post("/api/v1/coupons", json=body, headers=h)).json()
    listed = await (await client.get("/api/v1/coupons", headers=h)).json()
    assert [(x["id"], x["codes"], x["issued"], x["redeemed"]) for x in listed["items"]] == [(made["id"], 3, 0, 0)]


async def test_customer_search_treats_wildcards_literally(client, gw, world):
    from gateway.models import Customer

    async with gw.db() as s:
        s.add_all([Customer(name="100%满意", store_id=world.store_id, created_at=gw.clock.now()),
                   Customer(name="普通顾客", store_id=world.store_id, created_at=gw.clock.now())])
        await s.commit()
    h = auth(world.admin_token)
    found = await (await client.get("/api/v1/customers", params={"q": "%"}, headers=h)).json()
    assert [x["name"] for x in found["items"]] == ["100%满意"]
    assert (await (await client.get("/api/v1/customers", params={"q": "_"}, headers=h)).json())["items"] == []


async def test_every_route_refuses_roles_it_does_not_list(client, gw, world):
    """The route table is the policy: each role outside a route's list gets 403 before anything runs."""
    import re

    from gateway.api import ROUTES
    from gateway.tokens import create_token

    async with gw.db() as s:
        tokens = {"clerk": world.clerk_token, "admin": world.admin_token}
        _, tokens["marketer"] = await create_token(s, "marketer")
        _, tokens["store_manager"] = await create_token(s, "store_manager", store_id=world.store_id)
        await s.commit()
    checked = 0
    for r in ROUTES:
        if r.auth != "bearer":
            continue
        path = "/api/v1" + re.sub(r"{\w+}", "1", r.path)
        for role, token in tokens.items():
            if role in r.roles:
                continue
            resp = await client.request(r.method, path, json={}, headers=auth(token))
            assert resp.status == 403, (role, r.method, r.path, resp.status)
            checked += 1
    assert checked > 60


async def test_a_store_manager_cannot_reach_another_stores_customers(client, gw, world):
    from gateway.models import Customer, QueueEntry
    from gateway.tokens import create_token

    h = auth(world.admin_token)
    other = await (await client.post("/api/v1/stores", json={"name": "别的店"}, headers=h)).json()
    async with gw.db() as s:
        mine = Customer(name="本店顾客", store_id=world.store_id, created_at=gw.clock.now())
        theirs = Customer(name="别店顾客", store_id=other["id"], created_at=gw.clock.now())
        s.add_all([mine, theirs])
        await s.flush()
        s.add(QueueEntry(customer_id=theirs.id, store_id=other["id"], reason="no_invite", created_at=gw.clock.now()))
        _, mgr = await create_token(s, "store_manager", store_id=world.store_id)
        await s.commit()
        mine_id, theirs_id = mine.id, theirs.id
    m = auth(mgr)
    assert (await client.get(f"/api/v1/customers/{theirs_id}", headers=m)).status == 403
    assert (await client.get(f"/api/v1/customers/{mine_id}", headers=m)).status == 200
    listed = await (await client.get(f"/api/v1/customers?store_id={other['id']}", headers=m)).json()
    assert [c["id"] for c in listed["items"]] == [mine_id]  # their own store, whatever they ask for
    assert (await (await client.get("/api/v1/queue", headers=m)).json())["items"] == []
    resp = await client.post(f"/api/v1/customers/{theirs_id}/transfer", json={"clerk_id": world.clerk_id}, headers=m)
    assert resp.status == 403
    assert (await client.patch(f"/api/v1/customers/{theirs_id}", json={"tags": ["x"]}, headers=m)).status == 403
    assert (await client.get("/api/v1/reports/campaigns", headers=m)).status == 403
