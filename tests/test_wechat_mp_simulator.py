"""The WeChat Official Account simulator itself, exercised over HTTP the way an adapter would use it.

Expected values are computed here independently (sha1 signatures written out again, wechatpy's own
WeChatCrypto, calendar arithmetic), so a simulator bug cannot hide behind its own helpers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest
from wechatpy.crypto import PrpCrypto, WeChatCrypto

from adapters.wechat_mp.simulator import OACrypto, OfficialAccountSimulator

CST = timezone(timedelta(hours=8))
APP_ID, SECRET, TOKEN = "wx0123456789abcdef", "app-secret-0123456789abcdef0123", "simtoken"
AES_KEY = base64.b64encode(b"advisor-gateway-wechat-mp-aeskey").decode().rstrip("=")  # 43 chars
TPL, SUB_TPL = "tpl-order-shipped", "sub-tpl-appointment"
CUSTOM, TEMPLATE, BIZSEND = "/cgi-bin/message/custom/send", "/cgi-bin/message/template/send", "/cgi-bin/message/subscribe/bizsend"
MASS, SENDALL, QR, USER = "/cgi-bin/message/mass/send", "/cgi-bin/message/mass/sendall", "/cgi-bin/qrcode/create", "/cgi-bin/user/info"


def cst(*args) -> float:
    return datetime(*args, tzinfo=CST).timestamp()


class Tick:
    """An injectable clock the tests move by hand."""

    def __init__(self, now: float = cst(2026, 3, 10, 10, 0)):
        self.now = now

    def __call__(self) -> float:
        return self.now


def sha1_sorted(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def fields(body: bytes | str) -> dict[str, str]:
    return {e.tag: (e.text or "") for e in ET.fromstring(body)}


@pytest.fixture
def tick() -> Tick:
    return Tick()


def make_sim(tick, **kw) -> OfficialAccountSimulator:
    kw = {"templates": [TPL], **kw}
    return OfficialAccountSimulator(app_id=APP_ID, app_secret=SECRET, token=TOKEN, now=tick, **kw)


@pytest.fixture
def sim(tick) -> OfficialAccountSimulator:
    return make_sim(tick)


@pytest.fixture
async def cli(sim, aiohttp_client):
    return await aiohttp_client(sim.app())


async def token(cli) -> str:
    params = {"grant_type": "client_credential", "appid": APP_ID, "secret": SECRET}
    body = await (await cli.get("/cgi-bin/token", params=params)).json()
    assert body["expires_in"] == 7200, body
    return body["access_token"]


async def call(cli, path, tok, body=None, method="POST", **params) -> dict:
    query = {"access_token": tok, **params} if tok else params
    resp = await cli.request(method, path, params=query, json=body)
    assert resp.status == 200 and resp.content_type == "application/json"
    return await resp.json()


def text_msg(openid: str, content: str = "您好，门店今天到货了") -> dict:
    return {"touser": openid, "msgtype": "text", "text": {"content": content}}


# ---- callbacks: signatures and crypto ---------------------------------------------------------------
def test_url_check_plain_signature(sim):
    query, answer = sim.url_check()
    assert set(query) == {"signature", "timestamp", "nonce", "echostr"} and answer == query["echostr"]
    assert query["signature"] == sha1_sorted(TOKEN, query["timestamp"], query["nonce"])


def test_plain_text_push(sim, tick):
    query, body = sim.text("o_user1", "有货吗", msg_id=22876340532172986)
    assert set(query) == {"signature", "timestamp", "nonce", "openid"} and query["openid"] == "o_user1"
    assert query["signature"] == sha1_sorted(TOKEN, query["timestamp"], query["nonce"])
    f = fields(body)
    assert f == {"ToUserName": sim.original_id, "FromUserName": "o_user1", "CreateTime": str(int(tick.now)),
                 "MsgType": "text", "Content": "有货吗", "MsgId": "22876340532172986"}
    assert sim.users["o_user1"]["following"]  # only followers message an account


def test_aes_push_decrypts_with_wechatpy(tick):
    sim = make_sim(tick, encoding_aes_key=AES_KEY)
    query, body = sim.text("o_user1", "预约周六试穿")
    envelope = fields(body)
    assert set(envelope) == {"ToUserName", "Encrypt"} and envelope["ToUserName"].startswith("gh_")
    assert query["encrypt_type"] == "aes"
    assert query["msg_signature"] == sha1_sorted(TOKEN, query["timestamp"], query["nonce"], envelope["Encrypt"])
    assert query["signature"] == sha1_sorted(TOKEN, query["timestamp"], query["nonce"])
    plain = WeChatCrypto(TOKEN, AES_KEY, APP_ID).decrypt_message(
        body.decode(), query["msg_signature"], query["timestamp"], query["nonce"])
    f = fields(plain)
    assert (f["MsgType"], f["Content"], f["FromUserName"]) == ("text", "预约周六试穿", "o_user1") and f["MsgId"].isdigit()


def test_crypto_cross_checks_with_wechatpy(tick, monkeypatch):
    wechatpy, ours = WeChatCrypto(TOKEN, AES_KEY, APP_ID), OACrypto(TOKEN, AES_KEY, APP_ID)
    # byte-for-byte with the same random prefix: a wrong IV only garbles that prefix, so round trips miss it
    monkeypatch.setattr(PrpCrypto, "get_random_string", lambda self: "0123456789abcdef")
    assert PrpCrypto(ours.key).encrypt("回执", APP_ID) == ours.encrypt("回执", b"0123456789abcdef").encode()
    reply = wechatpy.encrypt_message("<xml><Content><![CDATA[收到]]></Content></xml>", "12345", "1700000000")
    el = fields(reply)
    assert ours.decrypt(el["Encrypt"]) == "<xml><Content><![CDATA[收到]]></Content></xml>"
    with pytest.raises(ValueError, match="AppID"):
        OACrypto(TOKEN, AES_KEY, "wxsomeoneelse0000").decrypt(el["Encrypt"])
    sim = make_sim(tick, encoding_aes_key=AES_KEY)
    assert sim.open_reply(reply) == "<xml><Content><![CDATA[收到]]></Content></xml>"
    with pytest.raises(ValueError, match="MsgSignature"):
        sim.open_reply(reply.replace(el["MsgSignature"], "0" * 40))
    with pytest.raises(ValueError, match="encrypted"):
        sim.open_reply("<xml><Content>plain</Content></xml>")
    assert sim.open_reply("success") == "success"


def test_compatible_mode_carries_plain_and_encrypted(tick):
    sim = make_sim(tick, encoding_aes_key=AES_KEY)
    sim.mode = "compatible"
    query, body = sim.click("o_user1", "MENU_ADVISOR")
    f = fields(body)
    assert f["Event"] == "CLICK" and f["EventKey"] == "MENU_ADVISOR" and f["Encrypt"]
    plain = WeChatCrypto(TOKEN, AES_KEY, APP_ID).decrypt_message(
        body.decode(), query["msg_signature"], query["timestamp"], query["nonce"])
    assert fields(plain)["EventKey"] == "MENU_ADVISOR"


# ---- access tokens ----------------------------------------------------------------------------------
async def test_token_request_errors(cli):
    async def get(**params):
        return await (await cli.get("/cgi-bin/token", params=params)).json()

    ok = {"grant_type": "client_credential", "appid": APP_ID, "secret": SECRET}
    assert (await get(**{**ok, "grant_type": "password"}))["errcode"] == 40002
    assert (await get(**{**ok, "appid": "wxwrong"}))["errcode"] == 40013
    assert (await get(**{**ok, "secret": "wrong"}))["errcode"] == 40125
    missing = await get(grant_type="client_credential", appid=APP_ID)
    assert missing["errcode"] == 41004 and " rid: " in missing["errmsg"]


async def test_token_lifecycle(cli, sim, tick):
    assert (await call(cli, USER, None, method="GET", openid="x"))["errcode"] == 41001
    assert (await call(cli, USER, "not-a-token", method="GET", openid="x"))["errcode"] == 40001
    sim.add_user("o_a")
    first = await token(cli)
    tick.now += 100
    second, issued = await token(cli), tick.now
    assert first != second and sim.tokens_issued == 2
    tick.now += 299  # doc: the old token stays usable for 5 minutes after a refresh
    assert (await call(cli, USER, first, method="GET", openid="o_a"))["subscribe"] == 1
    tick.now += 1
    assert (await call(cli, USER, first, method="GET", openid="o_a"))["errcode"] == 40001
    tick.now = issued + 7199
    assert (await call(cli, USER, second, method="GET", openid="o_a"))["subscribe"] == 1
    tick.now = issued + 7200  # the second token's 7200 s are up
    assert (await call(cli, USER, second, method="GET", openid="o_a"))["errcode"] == 42001
    sim.revoke_tokens()
    assert (await call(cli, USER, second, method="GET", openid="o_a"))["errcode"] == 40001


async def test_stable_token_is_reused_until_forced(cli, tick):
    body = {"grant_type": "client_credential", "appid": APP_ID, "secret": SECRET}
    first = await (await cli.post("/cgi-bin/stable_token", json=body)).json()
    tick.now += 1000
    again = await (await cli.post("/cgi-bin/stable_token", json=body)).json()
    assert again == {"access_token": first["access_token"], "expires_in": 6200}
    await token(cli)  # a normal token does not supersede the stable one
    forced = await (await cli.post("/cgi-bin/stable_token", json={**body, "force_refresh": True})).json()
    assert forced["access_token"] != first["access_token"] and forced["expires_in"] == 7200


# ---- customer-service messages and their windows ---------------------------------------------------
async def test_five_sends_after_a_user_message(cli, sim, tick):
    tok = await token(cli)
    sim.text("o_a", "在吗")
    for i in range(5):
        assert await call(cli, CUSTOM, tok, text_msg("o_a", f"回复{i}")) == {"errcode": 0, "errmsg": "ok"}
    sixth = await call(cli, CUSTOM, tok, text_msg("o_a", "第六条"))
    assert sixth["errcode"] == 45047
    assert [m["payload"]["content"] for m in sim.custom_sent] == [f"回复{i}" for i in range(5)]
    assert sim.refused[-1]["errcode"] == 45047 and sim.refused[-1]["openid"] == "o_a"
    sim.text("o_a", "再问一下")  # a new message refills the quota
    assert (await call(cli, CUSTOM, tok, text_msg("o_a")))["errcode"] == 0


async def test_window_closes_after_48_hours(cli, sim, tick):
    tok = await token(cli)
    sim.text("o_a", "在吗")
    tick.now += 48 * 3600 - 1
    tok = await token(cli)
    assert (await call(cli, CUSTOM, tok, text_msg("o_a")))["errcode"] == 0
    tick.now += 1
    assert (await call(cli, CUSTOM, tok, text_msg("o_a")))["errcode"] == 45015
    sim.add_user("o_quiet")  # follows but never wrote
    assert (await call(cli, CUSTOM, tok, text_msg("o_quiet")))["errcode"] == 45015


@pytest.mark.parametrize("action", ["follow", "scan", "click"])
async def test_three_sends_within_a_minute_after_an_event(cli, sim, tick, action):
    tok = await token(cli)
    if action == "follow":
        sim.subscribe("o_a")
    elif action == "scan":
        sim.add_user("o_a")
        sim.scan("o_a", "clerk_0042")
    else:
        sim.add_user("o_a")
        sim.click("o_a", "MENU_ADVISOR")
    for _ in range(3):
        assert (await call(cli, CUSTOM, tok, text_msg("o_a")))["errcode"] == 0
    assert (await call(cli, CUSTOM, tok, text_msg("o_a")))["errcode"] == 45047
    tick.now += 60
    assert (await call(cli, CUSTOM, tok, text_msg("o_a")))["errcode"] == 45015


async def test_view_opens_no_window_and_windows_do_not_add_up(cli, sim, tick):
    tok = await token(cli)
    sim.add_user("o_a")
    sim.view("o_a", "https://shop.example.com/")
    sim.location_event("o_a", 23.1, 113.3)
    assert (await call(cli, CUSTOM, tok, text_msg("o_a")))["errcode"] == 45015
    sim.text("o_a", "在吗")
    for _ in range(4):
        await call(cli, CUSTOM, tok, text_msg("o_a"))
    sim.click("o_a", "MENU")  # 1 left of 5; the click lifts it to 3, not 1 + 3
    for _ in range(3):
        assert (await call(cli, CUSTOM, tok, text_msg("o_a")))["errcode"] == 0
    assert (await call(cli, CUSTOM, tok, text_msg("o_a")))["errcode"] == 45047
    tick.now += 3600  # the click's minute is over but the message's 48 h are not
    sim.click("o_a", "MENU")
    assert (await call(cli, CUSTOM, tok, text_msg("o_a")))["errcode"] == 0


async def test_not_following_and_unknown_users(cli, sim):
    tok = await token(cli)
    sim.text("o_a", "在吗")
    sim.unsubscribe("o_a")
    sim.add_user("o_never", following=False)
    assert (await call(cli, CUSTOM, tok, text_msg("o_a")))["errcode"] == 43004
    assert (await call(cli, CUSTOM, tok, text_msg("o_never")))["errcode"] == 43004
    assert (await call(cli, CUSTOM, tok, text_msg("o_nobody")))["errcode"] == 40003
    assert [r["errcode"] for r in sim.refused] == [43004, 43004, 40003] and not sim.custom_sent
    with pytest.raises(ValueError):
        sim.text("o_a", "an unfollowed user cannot write")
    sim.subscribe("o_a")  # following again: only the follow's 3 sends, the old message window is gone
    for code in (0, 0, 0, 45047):
        assert (await call(cli, CUSTOM, tok, text_msg("o_a")))["errcode"] == code


async def test_custom_payload_rules(cli, sim):
    tok = await token(cli)
    _, body = sim.image("o_a")
    media_id = fields(body)["MediaId"]
    article = {"title": "新品", "description": "到店有礼", "url": "https://shop.example.com/a", "picurl": ""}
    cases = [
        (text_msg("o_a", "好" * 683), 45002),  # 2049 bytes
        (text_msg("o_a", ""), 44004),
        ({"touser": "o_a", "msgtype": "news", "news": {"articles": [article, article]}}, 45008),
        ({"touser": "o_a", "msgtype": "link", "link": article}, 40008),
        ({"touser": "o_a", "msgtype": "image", "image": {"media_id": "nope"}}, 40007),
    ]
    for payload, code in cases:
        assert (await call(cli, CUSTOM, tok, payload))["errcode"] == code, payload
    assert (await call(cli, CUSTOM, tok, text_msg("o_a", "好" * 682)))["errcode"] == 0
    assert (await call(cli, CUSTOM, tok, {"touser": "o_a", "msgtype": "news",
                                         "news": {"articles": [article]}}))["errcode"] == 0
    image = {"touser": "o_a", "msgtype": "image", "image": {"media_id": media_id}}
    assert (await call(cli, CUSTOM, tok, image))["errcode"] == 0
    assert [m["msgtype"] for m in sim.custom_sent] == ["text", "news", "image"]


# ---- template messages and subscription notifications ----------------------------------------------
async def test_template_send(cli, sim):
    tok = await token(cli)
    sim.add_user("o_a")
    sim.add_user("o_gone", following=False)
    msg = {"touser": "o_a", "template_id": TPL, "url": "https://shop.example.com/o/1",
           "data": {"thing1": {"value": "羊绒大衣"}, "time2": {"value": "2026-03-10 10:00", "color": "#173177"}}}
    ok = await call(cli, TEMPLATE, tok, msg)
    assert ok["errcode"] == 0 and isinstance(ok["msgid"], int)
    assert sim.template_sent[0]["msgid"] == ok["msgid"] and sim.template_sent[0]["data"] == msg["data"]
    assert (await call(cli, TEMPLATE, tok, {**msg, "template_id": "nope"}))["errcode"] == 40037
    assert (await call(cli, TEMPLATE, tok, {**msg, "touser": "o_gone"}))["errcode"] == 43004
    keyed = {**msg, "client_msg_id": "order-1-shipped"}
    first, again = await call(cli, TEMPLATE, tok, keyed), await call(cli, TEMPLATE, tok, keyed)
    assert first["msgid"] == again["msgid"] and len(sim.template_sent) == 2
    query, body = sim.template_finish(ok["msgid"])
    f = fields(body)
    assert (f["Event"], f["MsgID"], f["Status"], query["openid"]) == ("TEMPLATESENDJOBFINISH", str(ok["msgid"]), "success", "o_a")


async def test_template_send_needs_a_service_account(tick, aiohttp_client):
    sim = make_sim(tick, service_account=False)
    cli = await aiohttp_client(sim.app())
    sim.add_user("o_a")
    msg = {"touser": "o_a", "template_id": TPL, "data": {"thing1": {"value": "x"}}}
    assert (await call(cli, TEMPLATE, await token(cli), msg))["errcode"] == 48001 and not sim.template_sent


async def test_subscribe_notification_authorisations(cli, sim):
    tok = await token(cli)
    sim.add_user("o_a")
    msg = {"touser": "o_a", "template_id": SUB_TPL, "data": {"thing1": {"value": "周六 14:00 试穿"}}}
    assert (await call(cli, BIZSEND, tok, msg))["errcode"] == 40037  # no such template yet
    query, body = sim.authorize_subscribe("o_a", SUB_TPL, n=2)
    assert "SubscribeMsgPopupEvent" in body.decode() and query["openid"] == "o_a"
    sim.authorize_subscribe("o_other", SUB_TPL)
    assert (await call(cli, BIZSEND, tok, msg))["errcode"] == 0
    assert (await call(cli, BIZSEND, tok, msg))["errcode"] == 0
    assert (await call(cli, BIZSEND, tok, msg))["errcode"] == 43101
    assert len(sim.subscribe_sent) == 2
    assert (await call(cli, BIZSEND, tok, {**msg, "touser": "o_other"}))["errcode"] == 0


# ---- QR codes and users -----------------------------------------------------------------------------
async def test_permanent_str_qrcode_and_image(cli, sim):
    tok = await token(cli)
    req = {"action_name": "QR_LIMIT_STR_SCENE", "action_info": {"scene": {"scene_str": "clerk_0042"}}}
    qr = await call(cli, QR, tok, req)
    assert set(qr) == {"ticket", "url"} and qr["url"].startswith("http://weixin.qq.com/q/")
    assert sim.qrcodes[qr["ticket"]]["scene_str"] == "clerk_0042" and sim.qrcodes[qr["ticket"]]["permanent"]
    assert (await call(cli, QR, tok, req))["ticket"] == qr["ticket"]  # same permanent scene, same code
    img = await cli.get("/cgi-bin/showqrcode", params={"ticket": qr["ticket"]})
    assert img.status == 200 and (await img.read()).startswith(b"\x89PNG\r\n\x1a\n")
    assert (await cli.get("/cgi-bin/showqrcode", params={"ticket": "nope"})).status == 404


async def test_temporary_qrcode_expiry(cli, sim, tick):
    tok = await token(cli)
    short = await call(cli, QR, tok, {"action_name": "QR_STR_SCENE", "action_info": {"scene": {"scene_str": "c1"}}})
    assert short["expire_seconds"] == 60  # doc default
    long = await call(cli, QR, tok, {"expire_seconds": 90 * 86400, "action_name": "QR_SCENE",
                                     "action_info": {"scene": {"scene_id": 7}}})
    assert long["expire_seconds"] == 2_592_000  # doc: at most 30 days
    tick.now += 60
    assert (await cli.get("/cgi-bin/showqrcode", params={"ticket": short["ticket"]})).status == 404
    with pytest.raises(ValueError, match="expired"):
        sim.subscribe("o_late", scene="c1")
    assert (await cli.get("/cgi-bin/showqrcode", params={"ticket": long["ticket"]})).status == 200


async def test_qrcode_scene_limits(cli):
    tok = await token(cli)

    def req(action, **scene):
        return {"action_name": action, "action_info": {"scene": scene}}

    assert "ticket" in await call(cli, QR, tok, req("QR_LIMIT_STR_SCENE", scene_str="s" * 64))
    assert (await call(cli, QR, tok, req("QR_LIMIT_STR_SCENE", scene_str="s" * 65)))["errcode"] == 40053
    assert (await call(cli, QR, tok, req("QR_STR_SCENE", scene_str="")))["errcode"] == 40053
    assert (await call(cli, QR, tok, req("QR_LIMIT_SCENE", scene_id=100_001)))["errcode"] == 40053
    assert "ticket" in await call(cli, QR, tok, req("QR_SCENE", scene_id=100_001))
    assert (await call(cli, QR, tok, req("QR_CODE", scene_id=1)))["errcode"] == 40052


async def test_subscribe_from_a_scene_code_ties_the_user(cli, sim, tick):
    tok = await token(cli)
    qr = await call(cli, QR, tok, {"action_name": "QR_LIMIT_STR_SCENE",
                                   "action_info": {"scene": {"scene_str": "clerk_0042"}}})
    tick.now += 30
    query, body = sim.subscribe("o_new", scene="clerk_0042", unionid="u_union_1")
    f = fields(body)
    assert (f["Event"], f["EventKey"], f["Ticket"]) == ("subscribe", "qrscene_clerk_0042", qr["ticket"])
    info = await call(cli, USER, tok, method="GET", openid="o_new", lang="zh_CN")
    assert info == {"subscribe": 1, "openid": "o_new", "subscribe_time": int(tick.now), "unionid": "u_union_1",
                    "remark": "", "groupid": 0, "tagid_list": [], "subscribe_scene": "ADD_SCENE_QR_CODE",
                    "qr_scene": 0, "qr_scene_str": "clerk_0042"}
    assert "nickname" not in info and "headimgurl" not in info
    query, body = sim.scan("o_new", "clerk_0042")
    f = fields(body)
    assert (f["Event"], f["EventKey"], f["Ticket"]) == ("SCAN", "clerk_0042", qr["ticket"])
    with pytest.raises(ValueError):
        sim.scan("o_stranger", "clerk_0042")


async def test_user_info_after_unsubscribe_and_unknown(cli, sim):
    tok = await token(cli)
    sim.subscribe("o_a", scene=12, unionid="u_1")
    sim.unsubscribe("o_a")
    assert await call(cli, USER, tok, method="GET", openid="o_a") == {"subscribe": 0, "openid": "o_a", "unionid": "u_1"}
    assert (await call(cli, USER, tok, method="GET", openid="o_nobody"))["errcode"] == 40003
    sim.subscribe("o_b", scene=12)
    assert (await call(cli, USER, tok, method="GET", openid="o_b"))["qr_scene"] == 12


async def test_message_pushes_and_media(cli, sim):
    tok = await token(cli)
    f = fields(sim.image("o_a")[1])
    assert f["MsgType"] == "image" and f["PicUrl"].startswith("http")
    resp = await cli.get("/cgi-bin/media/get", params={"access_token": tok, "media_id": f["MediaId"]})
    assert resp.status == 200 and (await resp.read()).startswith(b"\x89PNG")
    v = fields(sim.voice("o_a", recognition="明天有空")[1])
    assert (v["Format"], v["Recognition"]) == ("amr", "明天有空")
    assert "Recognition" not in fields(sim.voice("o_a")[1])
    loc = fields(sim.location("o_a", 23.134521, 113.358803, "广州市海珠区")[1])
    assert (loc["Location_X"], loc["Location_Y"], loc["Label"]) == ("23.134521", "113.358803", "广州市海珠区")
    assert len({v["MsgId"], loc["MsgId"], f["MsgId"]}) == 3
    assert (await call(cli, "/cgi-bin/media/get", tok, method="GET", media_id="nope"))["errcode"] == 40007


async def test_media_upload_and_three_day_life(cli, sim, tick):
    tok = await token(cli)
    form = aiohttp.FormData()
    form.add_field("media", b"\xff\xd8\xff\xe0jpeg", filename="a.jpg", content_type="image/jpeg")
    up = await (await cli.post("/cgi-bin/media/upload", params={"access_token": tok, "type": "image"}, data=form)).json()
    assert up["type"] == "image" and up["created_at"] == int(tick.now)
    got = await cli.get("/cgi-bin/media/get", params={"access_token": tok, "media_id": up["media_id"]})
    assert await got.read() == b"\xff\xd8\xff\xe0jpeg" and got.content_type == "image/jpeg"
    tick.now += 3 * 86400
    tok = await token(cli)
    assert (await call(cli, "/cgi-bin/media/get", tok, method="GET", media_id=up["media_id"]))["errcode"] == 40007


# ---- mass sending -----------------------------------------------------------------------------------
async def test_mass_send_basics(cli, sim):
    tok = await token(cli)
    for o in ("o_a", "o_b"):
        sim.add_user(o)
    sim.add_user("o_gone", following=False)
    text = {"msgtype": "text", "text": {"content": "春季上新"}}
    assert (await call(cli, MASS, tok, {"touser": ["o_a"], **text}))["errcode"] == 40130
    assert (await call(cli, MASS, tok, {"touser": ["o_a", "o_a"], **text}))["errcode"] == 40130
    ok = await call(cli, MASS, tok, {"touser": ["o_a", "o_b", "o_gone"], **text})
    assert ok["errcode"] == 0 and ok["errmsg"] == "send job submission success" and "msg_data_id" not in ok
    assert sim.mass_jobs[ok["msg_id"]]["outcomes"] == {"o_a": "received", "o_b": "received", "o_gone": "not_following"}
    news = await call(cli, MASS, tok, {"touser": ["o_a", "o_b"], "msgtype": "mpnews", "mpnews": {"media_id": "m1"}})
    assert isinstance(news["msg_data_id"], int)


async def test_mass_clientmsgid_dedupe(cli, sim, tick):
    tok = await token(cli)
    for o in ("o_a", "o_b"):
        sim.add_user(o)
    msg = {"touser": ["o_a", "o_b"], "msgtype": "text", "text": {"content": "x"}, "clientmsgid": "campaign-7"}
    first = await call(cli, MASS, tok, msg)
    again = await call(cli, MASS, tok, msg)
    assert again["errcode"] == 45065 and again["msg_id"] == first["msg_id"] and len(sim.mass_jobs) == 1
    assert (await call(cli, MASS, tok, {**msg, "clientmsgid": "c" * 65}))["errcode"] == 45067
    tick.now += 86400
    tok = await token(cli)
    assert (await call(cli, MASS, tok, msg))["errcode"] == 0


async def test_service_account_four_per_user_per_month(cli, sim, tick):
    tok = await token(cli)
    for o in ("o_a", "o_b", "o_c"):
        sim.add_user(o)
    msg = {"msgtype": "text", "text": {"content": "x"}}
    for _ in range(4):
        assert (await call(cli, MASS, tok, {"touser": ["o_a", "o_b"], **msg}))["errcode"] == 0
    fifth = await call(cli, MASS, tok, {"touser": ["o_a", "o_c"], **msg})
    assert fifth["errcode"] == 0  # the call succeeds; the capped user just does not receive it
    assert sim.mass_jobs[fifth["msg_id"]]["outcomes"] == {"o_a": "over_cap", "o_c": "received"}
    query, body = sim.finish_mass(fifth["msg_id"])
    f = fields(body)
    assert (f["Event"], f["MsgID"], f["Status"]) == ("MASSSENDJOBFINISH", str(fifth["msg_id"]), "send success")
    assert (f["TotalCount"], f["FilterCount"], f["SentCount"], f["ErrorCount"]) == ("2", "1", "1", "0")
    tick.now = cst(2026, 4, 1, 0, 0)  # a new natural month on the Beijing calendar
    tok = await token(cli)
    sixth = await call(cli, MASS, tok, {"touser": ["o_a", "o_b"], **msg})
    assert set(sim.mass_jobs[sixth["msg_id"]]["outcomes"].values()) == {"received"}


async def test_subscription_account_mass_is_once_a_day(tick, aiohttp_client):
    sim = make_sim(tick, service_account=False)
    cli = await aiohttp_client(sim.app())
    tok = await token(cli)
    for o in ("o_a", "o_b"):
        sim.add_user(o, tags=[101] if o == "o_a" else [])
    msg = {"msgtype": "text", "text": {"content": "今日推荐"}}
    assert (await call(cli, MASS, tok, {"touser": ["o_a", "o_b"], **msg}))["errcode"] == 48001
    ok = await call(cli, SENDALL, tok, {"filter": {"is_to_all": False, "tag_id": 101}, **msg})
    assert sim.mass_jobs[ok["msg_id"]]["outcomes"] == {"o_a": "received"}
    assert (await call(cli, SENDALL, tok, {"filter": {"is_to_all": True}, **msg}))["errcode"] == 45028
    tick.now = cst(2026, 3, 11, 0, 0)
    tok = await token(cli)
    nxt = await call(cli, SENDALL, tok, {"filter": {"is_to_all": True}, **msg})
    assert sim.mass_jobs[nxt["msg_id"]]["outcomes"] == {"o_a": "received", "o_b": "received"}


async def test_mass_api_sixty_calls_a_minute(cli, sim, tick):
    tok = await token(cli)
    bad = {"touser": ["o_a"], "msgtype": "text", "text": {"content": "x"}}  # refused, but still counted
    for _ in range(60):
        assert (await call(cli, MASS, tok, bad))["errcode"] == 40130
    assert (await call(cli, MASS, tok, bad))["errcode"] == 45009
    assert (await call(cli, SENDALL, tok, {"filter": {"is_to_all": True}}))["errcode"] == 45009
    tick.now += 60
    assert (await call(cli, MASS, tok, bad))["errcode"] == 40130
    assert sim.calls[MASS] == 62


# ---- fault injection --------------------------------------------------------------------------------
async def test_fail_next_kinds(cli, sim):
    tok = await token(cli)
    sim.text("o_a", "在吗")
    sim.fail_next(1, "http500", "/cgi-bin/message/")
    sim.fail_next(1, "html", "/cgi-bin/message/custom")
    sim.fail_next(1, "errcode-1", CUSTOM)
    sim.fail_next(1, "errcode45009", CUSTOM)
    assert (await call(cli, USER, tok, method="GET", openid="o_a"))["subscribe"] == 1  # other paths untouched
    r = await cli.post(CUSTOM, params={"access_token": tok}, json=text_msg("o_a"))
    assert r.status == 500
    r = await cli.post(CUSTOM, params={"access_token": tok}, json=text_msg("o_a"))
    assert r.status == 502 and r.content_type == "text/html" and "502 Bad Gateway" in await r.text()
    assert (await call(cli, CUSTOM, tok, text_msg("o_a")))["errcode"] == -1
    assert (await call(cli, CUSTOM, tok, text_msg("o_a")))["errcode"] == 45009
    assert (await call(cli, CUSTOM, tok, text_msg("o_a")))["errcode"] == 0
    assert len(sim.custom_sent) == 1 and sim.calls[CUSTOM] == 5
    with pytest.raises(ValueError):
        sim.fail_next(1, "teapot")


async def test_fail_next_timeout_still_delivers_late(cli, sim):
    tok = await token(cli)
    sim.text("o_a", "在吗")
    sim.timeout_delay = 0.3
    sim.fail_next(1, "timeout", CUSTOM)
    with pytest.raises(asyncio.TimeoutError):
        await cli.post(CUSTOM, params={"access_token": tok}, json=text_msg("o_a"),
                       timeout=aiohttp.ClientTimeout(total=0.05))
    assert not sim.custom_sent
    await asyncio.sleep(0.4)
    assert len(sim.custom_sent) == 1  # the caller saw a timeout but the message went out
