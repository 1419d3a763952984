"""Bad input gets a clear error and changes nothing: 401 forged, 400 malformed, 413 too large."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from adapters.webchat import crypto
from adapters.webchat.simulator import BrandApp
from gateway.models import ChatMessage, Customer, InboundClaim, Interaction
from tests.conftest import WEBCHAT_SECRET


async def stored(gw) -> tuple[int, int, int, int]:
    async with gw.db() as s:
        counts = []
        for model in (InboundClaim, ChatMessage, Customer, Interaction):
            counts.append((await s.execute(select(func.count()).select_from(model))).scalar())
        return tuple(counts)


def brand(client):
    return BrandApp(client.session, str(client.make_url("")).rstrip("/"), "webchat", WEBCHAT_SECRET)


async def test_session_signature(client, gw):
    b = brand(client)
    good = b.signed("u-1")
    resp = await client.post("/webchat/webchat/session", json=good)
    assert resp.status == 200 and (await resp.json())["token"]

    forged = {**good, "sig": crypto.sign_v2("not-the-secret-000000", "u-1", good["ts"])}
    resp = await client.post("/webchat/webchat/session", json=forged)
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "unauthorized"

    stale = b.signed("u-1", ts=int(time.time()) - 3600)
    assert (await client.post("/webchat/webchat/session", json=stale)).status == 401
    other_user = {**good, "user_id": "u-2"}  # the signature covers the user id
    assert (await client.post("/webchat/webchat/session", json=other_user)).status == 401

    resp = await client.post("/webchat/webchat/session", data=b"{not json")
    assert resp.status == 400
    resp = await client.post("/webchat/webchat/session", json={"user_id": "u-1", "ts": "yesterday", "sig": "ab"})
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "ts"


async def test_forged_token_stores_nothing(client, gw, world):
    before = await stored(gw)
    forged = crypto.issue_token("some-other-secret-123456", "u-evil", None, int(time.time()) + 60)
    for path in ("/webchat/webchat/messages", "/webchat/webchat/bind"):
        resp = await client.post(path, json={"text": "hi", "client_msg_id": "1", "invite": world.invite, "consent": True},
                                 headers={"Authorization": f"Bearer {forged}"})
        assert resp.status == 401
    resp = await client.post("/webchat/webchat/messages", json={"text": "hi", "client_msg_id": "1"})
    assert resp.status == 401  # no token at all
    expired = crypto.issue_token(WEBCHAT_SECRET, "u-1", None, int(time.time()) - 1)
    resp = await client.get("/webchat/webchat/messages", headers={"Authorization": f"Bearer {expired}"})
    assert resp.status == 401
    assert await stored(gw) == before


@pytest.mark.parametrize(
    "body, field",
    [
        (b"{oops", None),
        (b"[1, 2]", None),
        (b'{"text": "hi"}', "client_msg_id"),
        (b'{"client_msg_id": "a"}', "text"),
        (b'{"client_msg_id": "a", "text": "hi", "segments": []}', "text"),
        (b'{"client_msg_id": "a", "text": ""}', "text"),
        (b'{"client_msg_id": "a", "segments": [{"type": "script"}]}', "segments[0]"),
        (b'{"client_msg_id": "a", "segments": [{"type": "image", "url": "javascript:alert(1)"}]}', "segments[0].url"),
        (b'{"client_msg_id": 5, "text": "hi"}', "client_msg_id"),
    ],
)
async def test_malformed_message_is_400_and_stores_nothing(client, gw, body, field):
    token = (await brand(client).login("u-m")).token
    before = await stored(gw)
    resp = await client.post("/webchat/webchat/messages", data=body,
                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert err["code"] == "bad_request" and err.get("field") == field
    assert await stored(gw) == before


async def test_body_over_limit_is_413_and_stores_nothing(client, gw):
    token = (await brand(client).login("u-big")).token
    before = await stored(gw)
    big = b'{"client_msg_id": "x", "text": "' + b"a" * (gw.max_body + 10) + b'"}'
    resp = await client.post("/webchat/webchat/messages", data=big,
                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "too_large"
    assert await stored(gw) == before


async def test_text_over_max_text_is_rejected(client, gw):
    c = await brand(client).login("u-long")
    status, body = await c.say("长" * 4001)
    assert status == 400 and body["error"]["field"] == "text"


async def test_dev_login_only_when_enabled(aiohttp_client, db_url):
    from gateway.app import create_app
    from gateway.runtime import Gateway
    from tests.conftest import make_config

    cfg = make_config(db_url, accounts=[{"name": "webchat", "platform": "webchat", "secret": WEBCHAT_SECRET}])
    client = await aiohttp_client(create_app(Gateway(cfg)))
    resp = await client.post("/webchat/webchat/dev-session", json={"user_id": "u-1"})
    assert resp.status == 404


async def test_html_in_names_and_text_is_stored_verbatim(client, gw, world):
    """Stored as given (the pages insert text with textContent); nothing is executed or mangled."""
    c = await brand(client).login("u-x", "<img src=x onerror=alert(1)>")
    await c.bind(world.invite)
    await c.say("'; DROP TABLE customer; -- <script>alert(1)</script>")
    from adapters.workbench.simulator import ClerkClient

    clerk = ClerkClient(client.session, str(client.make_url("")).rstrip("/"), world.clerk_token)
    m = await clerk.wait_for(lambda m: "DROP TABLE" in m["text"])
    # literal, and cut to 20 characters like every name in a label
    assert m["text"] == "【<img src=x onerror=… #1】'; DROP TABLE customer; -- <script>alert(1)</script>"


async def test_a_unionid_must_be_signed_to_count(client, gw):
    from adapters.webchat.crypto import sign_v2

    ts = int(gw.clock.now().timestamp())
    base = {"v": 2, "user_id": "u-union", "ts": ts}
    unsigned = await client.post("/webchat/webchat/session",
                                 json={**base, "sig": sign_v2(WEBCHAT_SECRET, "u-union", ts), "unionid": "uX"})
    assert unsigned.status == 401  # a signature without the unionid does not cover one
    signed = await client.post("/webchat/webchat/session", json={
        **base, "unionid": "uX", "sig": sign_v2(WEBCHAT_SECRET, "u-union", ts, "uX")})
    assert signed.status == 200
