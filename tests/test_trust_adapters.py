"""Issue 16, the platform adapters and the media proxy: signatures that cannot be bent, replays that
cannot be bound to new messages, no secret in any error, media that cannot run on our origin, and the
platform payloads that used to be dropped."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import aiohttp
import pytest

from adapters.webchat import crypto as wc_crypto
from adapters.webchat.simulator import BrandApp
from gateway.app import create_app
from gateway.runtime import Gateway
from tests.conftest import WEBCHAT_SECRET, make_config

SESSION = "/webchat/webchat/session"


def v1_sig(user_id: str, ts: int, unionid: str | None = None) -> str:
    """How brands signed before v2 (and how the gateway used to check a unionid)."""
    msg = f"{user_id}.{ts}" if unionid is None else f"{user_id}.{ts}.{unionid}"
    return hmac.new(WEBCHAT_SECRET.encode(), msg.encode(), hashlib.sha256).hexdigest()


# == 3. webchat session signatures =====================================================================

async def test_a_v1_signature_for_alice_dot_t_does_not_sign_in_alice(client, gw):
    """The issue's attack: the brand signed user `alice.T` at T2 the old way, i.e. HMAC("alice.T.T2");
    read as user `alice` at T with unionid T2 it was the same string, so it signed in as `alice`."""
    now = int(time.time())
    t, t2 = now - 10, now
    sig = v1_sig(f"alice.{t}", t2)
    resp = await client.post(SESSION, json={"user_id": "alice", "ts": t, "unionid": str(t2), "sig": sig})
    assert resp.status == 401
    # ... and the dotted id itself can no longer use v1 (its string is ambiguous), only v2
    resp = await client.post(SESSION, json={"user_id": f"alice.{t}", "ts": t2, "sig": sig})
    assert resp.status == 401 and "v: 2" in (await resp.json())["error"]["message"]
    v2 = wc_crypto.sign_v2(WEBCHAT_SECRET, f"alice.{t}", t2)
    resp = await client.post(SESSION, json={"v": 2, "user_id": f"alice.{t}", "ts": t2, "sig": v2})
    assert resp.status == 200 and (await resp.json())["user_id"] == f"alice.{t}"


def test_v2_canonical_string_is_the_documented_json():
    """CONTRACT.md's formula, written out independently: sorted keys, no spaces, UTF-8, null unionid."""
    canonical = json.dumps({"ts": 1700000000, "unionid": None, "user_id": "王.女士"}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False).encode()
    assert canonical == '{"ts":1700000000,"unionid":null,"user_id":"王.女士"}'.encode()
    expected = hmac.new(WEBCHAT_SECRET.encode(), canonical, hashlib.sha256).hexdigest()
    assert wc_crypto.sign_v2(WEBCHAT_SECRET, "王.女士", 1700000000) == expected
    assert wc_crypto.sign_v2(WEBCHAT_SECRET, "王.女士", 1700000000, "") == expected  # "" counts as absent
    with_union = wc_crypto.sign_v2(WEBCHAT_SECRET, "王.女士", 1700000000, "oU1")
    assert with_union != expected


async def test_v2_and_v1_acceptance_rules(client, gw):
    ts = int(time.time())
    ok = {"v": 2, "user_id": "u-1", "ts": ts, "unionid": "oU1", "sig": wc_crypto.sign_v2(WEBCHAT_SECRET, "u-1", ts, "oU1")}
    assert (await client.post(SESSION, json=ok)).status == 200
    assert (await client.post(SESSION, json={**ok, "unionid": "oU2"})).status == 401  # the unionid is covered
    assert (await client.post(SESSION, json={**ok, "ts": ts - 1})).status == 401
    plain_v1 = {"user_id": "u-1", "ts": ts, "sig": v1_sig("u-1", ts)}
    assert (await client.post(SESSION, json=plain_v1)).status == 200  # deprecated, still accepted
    assert (await client.post(SESSION, json={**plain_v1, "v": 1})).status == 200
    for version in (3, "2", True, 2.5, None):  # anything that is not v2 is v1 or refused
        body = {**ok, "v": version}
        assert (await client.post(SESSION, json=body)).status == 401, version
    assert (await client.post(SESSION, json={**plain_v1, "v": 2})).status == 401  # a v1 sig is not a v2 one


async def test_legacy_signature_false_turns_v1_off(db_url, aiohttp_client):
    cfg = make_config(db_url, accounts=[{"name": "webchat", "platform": "webchat", "secret": WEBCHAT_SECRET,
                                         "legacy_signature": False}])
    gw = Gateway(cfg)
    client = await aiohttp_client(create_app(gw))
    ts = int(time.time())
    resp = await client.post(SESSION, json={"user_id": "u-1", "ts": ts, "sig": v1_sig("u-1", ts)})
    assert resp.status == 401 and "turned off" in (await resp.json())["error"]["message"]
    brand = BrandApp(client.session, str(client.make_url("")).rstrip("/"), "webchat", WEBCHAT_SECRET)
    assert (await brand.login("u-1", "一")).token  # the simulator (the brand's reference code) signs v2


# == 13. dedupe keys ==================================================================================

def test_dedupe_keys_are_unambiguous_and_unchanged_for_plain_ids():
    from gateway.model import dedupe_key

    assert dedupe_key("msg", "gina", "vip:m-1") != dedupe_key("msg", "gina:vip", "m-1")
    assert dedupe_key("msg", "a%3Ab", "c") != dedupe_key("msg", "a:b", "c")
    assert dedupe_key("msg", "a", "") != dedupe_key("msg", "a:", "")
    assert dedupe_key("msg", "u-1", "m-1") == "msg:u-1:m-1"  # claims made before the change still match
    assert dedupe_key("evt", "change_external_contact", "", "zhangsan", "wm1", 1700000000) == \
        "evt:change_external_contact::zhangsan:wm1:1700000000"


async def test_webchat_ids_with_colons_are_two_messages(client, gw, world):
    brand = BrandApp(client.session, str(client.make_url("")).rstrip("/"), "webchat", WEBCHAT_SECRET)
    gina = await brand.login("gina", "Gina")
    gina_vip = await brand.login("gina:vip", "Gina VIP")
    first = await client.post("/webchat/webchat/messages", json={"text": "一", "client_msg_id": "vip:m-1"},
                              headers=gina.headers)
    second = await client.post("/webchat/webchat/messages", json={"text": "二", "client_msg_id": "m-1"},
                               headers=gina_vip.headers)
    assert (await first.json())["duplicate"] is False
    assert (await second.json())["duplicate"] is False  # was dropped as gina's duplicate


# == 9. no secret, token or signed URL in an error body, a log line or the outbox ======================

class _Answer:
    def __init__(self, data: dict):
        self.status, self.content_type, self._body = 200, "application/json", json.dumps(data).encode()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    async def read(self) -> bytes:
        return self._body


class TimingOutPlatform:
    """Stands in for the API client's aiohttp session: token calls succeed, every other call fails the
    way aiohttp's connect timeout does — naming the whole URL, query string (token, secret) included."""

    closed = False

    def __init__(self, answers: dict[str, dict]):
        self.answers = answers

    def request(self, method, url, *, params=None, **kw):
        from yarl import URL

        for suffix, data in self.answers.items():
            if str(url).endswith(suffix):
                return _Answer(data)
        raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host {URL(url).update_query(params or {})}")

    def get(self, url, *, params=None, **kw):
        return self.request("GET", url, params=params, **kw)

    async def close(self):
        pass


SECRETS = ("ding-app-secret-0001", "wecom-app-secret-0001", "mp-app-secret-0001", "TOKEN-DT-OAPI", "TOKEN-DT-V1",
           "TOKEN-WC", "TOKEN-MP")


@pytest.fixture
async def unreachable(db_url, aiohttp_client):
    """A gateway with a DingTalk, a WeCom and an Official Account account whose platform times out."""
    down = "http://127.0.0.1:9"
    accounts = [
        {"name": "dt", "platform": "dingtalk", "app_key": "k", "app_secret": SECRETS[0], "robot_code": "r",
         "agent_id": "1", "api_base": down, "oapi_base": down, "timeout": 1},
        {"name": "wc", "platform": "wecom", "corp_id": "ww0123456789abcdef", "agent_id": "1000002",
         "secret": SECRETS[1], "token": "wecomtoken", "encoding_aes_key": "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR",
         "api_base": down, "timeout": 1, "poll_interval": 3600},
        {"name": "mp", "platform": "wechat_mp", "app_id": "wx1", "app_secret": SECRETS[2], "token": "mptoken",
         "api_base": down, "timeout": 1},
        {"name": "webchat", "platform": "webchat", "secret": WEBCHAT_SECRET},
    ]
    gw = Gateway(make_config(db_url, accounts=accounts, outbox={"poll_interval": 0.05, "backoff_base": 60}))
    client = await aiohttp_client(create_app(gw))
    gw.adapters["dt"].api._http = TimingOutPlatform({
        "/gettoken": {"errcode": 0, "access_token": SECRETS[3], "expires_in": 7200},
        "/v1.0/oauth2/accessToken": {"accessToken": SECRETS[4], "expireIn": 7200}})
    gw.adapters["wc"].api._http = TimingOutPlatform({"/cgi-bin/gettoken": {"access_token": SECRETS[5], "expires_in": 7200}})
    gw.adapters["mp"].api._http = TimingOutPlatform({"/cgi-bin/token": {"access_token": SECRETS[6], "expires_in": 7200}})
    return gw, client


def _leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text] + [w for w in ("access_token=", "corpsecret=", "appsecret=") if w in text]


@pytest.mark.parametrize("account", ["dt", "wc", "mp"])
async def test_a_failed_media_fetch_names_no_secret(unreachable, account, caplog):
    gw, client = unreachable
    url = gw.adapters[account].media.url("media-1", gw.clock.now())
    resp = await client.get("/" + url.split("://", 1)[1].split("/", 1)[1])
    body = await resp.text()
    assert resp.status == 502 and json.loads(body)["error"]["code"] == "upstream"
    assert _leaks(body) == [] and "127.0.0.1:9" not in body  # not even the upstream URL
    assert _leaks(caplog.text) == []


async def test_wecom_token_failure_names_no_corpsecret(unreachable, caplog):
    """The issue's case: the token call itself times out, and its URL carries corpsecret."""
    gw, client = unreachable
    gw.adapters["wc"].api._http = TimingOutPlatform({})
    url = gw.adapters["wc"].media.url("media-1", gw.clock.now())
    resp = await client.get("/" + url.split("://", 1)[1].split("/", 1)[1])
    assert resp.status == 502 and _leaks(await resp.text()) == [] and _leaks(caplog.text) == []


async def test_the_outbox_records_no_secret_in_last_error(unreachable, caplog):
    from sqlmodel import select

    from gateway.model import Identity, Message, Target
    from gateway.models import Outbox
    from tests.conftest import make_world, wait_until

    gw, client = unreachable
    w = await make_world(gw)
    async with gw.db() as s:
        for account, user, kind in (("wc", "zhangsan", "notice"), ("dt", "manager7521", "brief")):
            await gw.outbox.enqueue(s, Target(Identity(gw.adapters[account].platform, account, user), clerk_id=w.clerk_id),
                                    Message.of_text("新品到店"), idem_key=f"leak-{account}", kind=kind)
        await s.commit()
    gw.outbox.kick()

    async def recorded():
        async with gw.db() as s:
            rows = (await s.execute(select(Outbox.last_error).where(Outbox.idem_key.like("leak-%")))).scalars().all()
        return len(rows) == 2 and all(rows) and rows

    await wait_until(recorded)
    for error in await recorded():
        assert "ConnectionTimeoutError" in error and _leaks(error) == [], error
    assert _leaks(caplog.text) == []


def test_log_lines_are_redacted_whoever_writes_them():
    import io
    import logging

    from gateway import logs

    out = io.StringIO()
    logs.setup("json", stream=out)
    try:
        logging.getLogger("aiohttp.client").warning("failed: %s",
                                                    "https://qyapi.weixin.qq.com/cgi-bin/gettoken?corpid=ww1&corpsecret=S3")
        logging.getLogger("x").error("token access_token=abc123, then sign=zz")
    finally:
        logging.getLogger().handlers[:] = []
    text = out.getvalue()
    assert "S3" not in text and "corpsecret" not in text and "abc123" not in text and "sign=zz" not in text
    assert "https://qyapi.weixin.qq.com/cgi-bin/gettoken?" in text


# == 11. the media route and the pages' headers ========================================================

@pytest.fixture
def wsim():
    from adapters.wecom.simulator import WeComSimulator
    from tests import test_wecom as t

    return WeComSimulator(corp_id=t.CORP, agent_id=t.AGENT, secret=t.SECRET, token=t.TOKEN, encoding_aes_key=t.AES_KEY,
                          members=["zhangsan", "lisi"])


@pytest.fixture
async def wecom(wsim, aiohttp_server, aiohttp_client, db_url):
    from tests.test_wecom import build

    return await build(wsim, aiohttp_server, aiohttp_client, db_url)


def _path(url: str) -> str:
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


async def test_media_links_are_signed_expiring_and_per_account(wecom, wsim):
    from datetime import timedelta

    from adapters.media import MediaLinks, link_key

    gw, client, *_ = wecom
    code = wsim.add_media(b"\x89PNG photo", "image/png")
    links = gw.adapters["wc"].media
    assert (await client.get(f"/media/wc/{code}")).status == 403  # the old, unsigned form
    good = _path(links.url(code, gw.clock.now()))
    assert "exp=" in good and "sig=" in good
    resp = await client.get(good)
    assert resp.status == 200 and await resp.read() == b"\x89PNG photo"
    assert (await client.get(good[:-2] + ("AA" if not good.endswith("AA") else "BB"))).status == 403
    expired = _path(links.url(code, gw.clock.now() - timedelta(days=4)))
    assert (await client.get(expired)).status == 403
    other_account = MediaLinks(links.prefix, link_key("wecom-app-secret", "another"), links.ttl)
    assert (await client.get(_path(other_account.url(code, gw.clock.now())))).status == 403
    assert (await client.get(good.replace(code, wsim.add_media(b"other", "image/png")))).status == 403


@pytest.mark.parametrize("ctype, served, disposition", [
    ("image/png", "image/png", "inline"), ("video/mp4", "video/mp4", "inline"), ("audio/amr", "audio/amr", "inline"),
    ("text/html", "application/octet-stream", "attachment"), ("image/svg+xml", "application/octet-stream", "attachment"),
    ("application/pdf", "application/pdf", "attachment"), ("application/xhtml+xml", "application/octet-stream", "attachment"),
])
async def test_media_is_served_so_it_cannot_run_on_our_origin(wecom, wsim, ctype, served, disposition):
    """An HTML (or SVG) file opened from the media route used to run as a page of the gateway."""
    gw, client, *_ = wecom
    code = wsim.add_media(b"<html><script>alert(localStorage)</script></html>", ctype)
    resp = await client.get(_path(gw.adapters["wc"].media.url(code, gw.clock.now())))
    assert resp.status == 200
    assert resp.headers["Content-Type"].split(";")[0] == served
    assert resp.headers["Content-Disposition"].startswith(disposition)
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"


async def test_media_requests_are_rate_limited_per_client(wecom, wsim):
    from adapters.media import ClientLimit

    gw, client, *_ = wecom
    route = gw.adapters["wc"].media_route
    route.limit = ClientLimit(3, gw.clock)  # media.rate_per_minute: 3
    url = _path(gw.adapters["wc"].media.url(wsim.add_media(b"x", "image/png"), gw.clock.now()))
    assert [(await client.get(url)).status for _ in range(3)] == [200, 200, 200]
    resp = await client.get(url)
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    assert (await client.get("/media/wc/unsigned")).status == 429  # counted before anything else
    spoofed = await client.get(url, headers={"X-Forwarded-For": "198.51.100.9"})
    assert spoofed.status == 429  # an address in a header counts only from server.trusted_proxies


async def test_links_in_relayed_messages_carry_the_signature(wecom, wsim):
    gw, client, brand, invite, *_ = wecom
    alice = await brand.login("u-alice", "Alice")
    await alice.bind(invite)
    await alice.say("图片呢")
    media = wsim.add_media(b"\x89PNG real", "image/png")
    query, body = wsim.message_callback("zhangsan", msgtype="image", MediaId=media, PicUrl="http://p.qpic.cn/x")
    assert (await client.post("/callbacks/wc", params=query, data=body)).status == 200
    got = await alice.wait_for(lambda m: any(s["type"] == "image" for s in m.get("segments", [])))
    url = next(s["url"] for s in got["segments"] if s["type"] == "image")
    assert "sig=" in url
    async with client.session.get(url) as resp:
        assert resp.status == 200 and await resp.read() == b"\x89PNG real"


async def test_every_page_has_its_security_headers(client, gw):
    import base64
    import re

    for path, ancestors in (("/console/", "'none'"), ("/workbench/", "'none'"), ("/webchat/webchat/", "'self'")):
        resp = await client.get(path)
        assert resp.status == 200 and resp.content_type == "text/html", path
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and f"frame-ancestors {ancestors}" in csp, path
        assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
        assert resp.headers["Referrer-Policy"] == "no-referrer" and resp.headers["X-Content-Type-Options"] == "nosniff"
        html = await resp.read()
        for inline in re.findall(rb"<script>(.*?)</script>", html, re.S):  # each inline script is allowed by hash
            assert base64.b64encode(hashlib.sha256(inline).digest()).decode() in csp, path
    for path in ("/healthz", "/api/v1/stores", "/i/nope"):  # every answer: no sniffing, no referrer
        resp = await client.get(path, allow_redirects=False)
        assert resp.headers["X-Content-Type-Options"] == "nosniff" and resp.headers["Referrer-Policy"] == "no-referrer"


async def test_the_webchat_page_may_be_framed_by_the_brands_origins(db_url, aiohttp_client):
    cfg = make_config(db_url, accounts=[{"name": "webchat", "platform": "webchat", "secret": WEBCHAT_SECRET,
                                         "allowed_origins": ["https://h5.brand.example", "https://*.brand.example"]}])
    client = await aiohttp_client(create_app(Gateway(cfg)))
    csp = (await client.get("/webchat/webchat/")).headers["Content-Security-Policy"]
    assert "frame-ancestors https://h5.brand.example https://*.brand.example" in csp
    from gateway.config import ConfigError, build_config

    with pytest.raises(ConfigError) as e:
        build_config({"accounts": [{"name": "webchat", "platform": "webchat", "secret": WEBCHAT_SECRET,
                                    "allowed_origins": ["https://x.example; script-src *"]}]}, env={})
    assert "allowed_origins" in str(e.value)


# == 10. a DingTalk sign serves one message, on every instance ========================================

async def test_a_sign_binds_to_one_message_across_instances(db_url, backend):
    import asyncio
    from datetime import timedelta

    from sqlalchemy import func, select

    from gateway.clock import FakeClock
    from gateway.models import CallbackSignature

    clock = FakeClock()
    a, b = (Gateway(make_config(db_url), clock=clock) for _ in range(2))
    try:
        until = clock.now() + timedelta(hours=1)
        assert await a.bind_signature("dt", "SIGN1", "msg-1", until) is True
        assert await b.bind_signature("dt", "SIGN1", "msg-1", until) is True  # the platform's retry, elsewhere
        assert await b.bind_signature("dt", "SIGN1", "msg-2", until) is False
        assert await b.bind_signature("other", "SIGN1", "msg-2", until) is True  # per account
        # a race for a fresh sign: exactly one message gets it
        got = await asyncio.gather(*(g.bind_signature("dt", "SIGN2", f"m{i}", until)
                                     for i, g in enumerate([a, b] * 5)))
        assert got.count(True) == 1
        clock.advance(hours=1, seconds=61)  # past the window: the bindings are purged on the next use
        assert await a.bind_signature("dt", "SIGN3", "msg-3", clock.now() + timedelta(hours=1)) is True
        async with a.db() as s:
            left = (await s.execute(select(func.count()).select_from(CallbackSignature))).scalar()
        assert left == 1
    finally:
        for g in (a, b):
            await g.engine.dispose()
            if g._claim_engine is not None:
                await g._claim_engine.dispose()


async def test_signatures_arriving_together_are_bound_in_one_transaction(db_url, backend):
    """DingTalk's signatures are bound on the ack path: callbacks that arrive together share one
    INSERT and commit (a transaction each was what acks waited for under load). Within a batch the
    first message binds a sign; the platform's retry of it in the same batch is still accepted."""
    import asyncio
    from datetime import timedelta

    from gateway.clock import FakeClock

    clock = FakeClock()
    gw = Gateway(make_config(db_url), clock=clock)
    try:
        until = clock.now() + timedelta(hours=1)
        got = await asyncio.gather(*(gw.bind_signature("dt", f"S{i}", f"m{i}", until) for i in range(20)),
                                   gw.bind_signature("dt", "S0", "m0", until),  # a retry
                                   gw.bind_signature("dt", "S1", "other", until))  # a replay
        assert got == [True] * 21 + [False]
        assert gw.signatures._batch.batches <= 2 and gw.signatures._batch.items == 22
    finally:
        await gw.signatures.close()
        await gw.engine.dispose()
        if gw._claim_engine is not None:
            await gw._claim_engine.dispose()
