"""The WeCom simulator itself, exercised over HTTP the way an adapter would use it.

Expected values are computed here independently (the wechatpy vector from PLATFORM_RULES.md, wechatpy's
own WeChatCrypto, sha1 signatures, calendar arithmetic), so a simulator bug cannot hide behind its own
helpers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta, timezone

import aiohttp
import pytest
from wechatpy.enterprise.crypto import WeChatCrypto

from adapters.wecom.simulator import PNG_1PX, WeComCrypto, WeComSimulator

CST = timezone(timedelta(hours=8))
CORP, AGENT, SECRET, CONTACT_SECRET = "ww0123456789abcdef", "1000002", "app-secret-01", "contact-secret-01"
TOKEN = "simtoken"
AES_KEY = base64.b64encode(b"advisor-gateway-wecom-sim-aeskey").decode().rstrip("=")  # 43 chars
MEMBERS = ("zhangsan", "lisi", "wangwu")
VECTOR = dict(  # PLATFORM_RULES.md, from wechatpy tests/test_crypto.py
    token="123456", key="kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR", corp="wx49f0ab532d5d035a",
    signature="dd6b9c95b495b3f7e2901bfbc76c664930ffdb96", timestamp="1411443780", nonce="437374425",
    echostr="4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q==",
    plain="5927782489442352469",
)
GET_CONTACT, SEND = "/cgi-bin/externalcontact/get", "/cgi-bin/message/send"
TEMPLATE, RESULT = "/cgi-bin/externalcontact/add_msg_template", "/cgi-bin/externalcontact/get_groupmsg_send_result"
TRANSFER, TRANSFER_RESULT = "/cgi-bin/externalcontact/transfer_customer", "/cgi-bin/externalcontact/transfer_result"


def cst(*args) -> float:
    return datetime(*args, tzinfo=CST).timestamp()


class Tick:
    """An injectable clock the tests move by hand."""

    def __init__(self, now: float = cst(2026, 2, 10, 10, 0)):  # a Tuesday in a 28-day month
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tick() -> Tick:
    return Tick()


def make_sim(tick, **kw) -> WeComSimulator:
    kw = {"contact_secret": CONTACT_SECRET, "members": MEMBERS, **kw}
    return WeComSimulator(corp_id=CORP, agent_id=AGENT, secret=SECRET, token=TOKEN, encoding_aes_key=AES_KEY,
                          now=tick, **kw)


@pytest.fixture
def sim(tick) -> WeComSimulator:
    return make_sim(tick)


@pytest.fixture
async def cli(sim, aiohttp_client):
    return await aiohttp_client(sim.app())


async def token(cli, secret=SECRET) -> str:
    body = await (await cli.get("/cgi-bin/gettoken", params={"corpid": CORP, "corpsecret": secret})).json()
    assert body["errcode"] == 0, body
    return body["access_token"]


async def call(cli, path, tok, body=None, method="POST", **params) -> dict:
    query = {"access_token": tok, **params} if tok else params
    resp = await cli.request(method, path, params=query, json=body)
    assert resp.status == 200 and resp.content_type == "application/json"
    return await resp.json()


def text_msg(users="zhangsan", content="到店有礼", **extra) -> dict:
    return {"touser": users, "msgtype": "text", "agentid": int(AGENT), "text": {"content": content}, **extra}


def open_event(query: dict, body: bytes) -> list[tuple[str, str]]:
    """Check the envelope, decrypt with wechatpy, return the plaintext XML's (tag, text) in order."""
    envelope = {e.tag: e.text for e in ET.fromstring(body)}
    assert envelope["ToUserName"] == CORP and envelope["AgentID"] == AGENT and envelope["Encrypt"]
    signed = hashlib.sha1("".join(sorted([TOKEN, query["timestamp"], query["nonce"], envelope["Encrypt"]])).encode())
    assert query["msg_signature"] == signed.hexdigest()
    plain = WeChatCrypto(TOKEN, AES_KEY, CORP).decrypt_message(
        body.decode(), query["msg_signature"], query["timestamp"], query["nonce"])
    return [(e.tag, e.text) for e in ET.fromstring(plain)]


# ---- crypto and inbound callbacks -------------------------------------------------------------------
def test_wechatpy_vector_and_receive_id_check():
    crypto = WeComCrypto(VECTOR["token"], VECTOR["key"], VECTOR["corp"])
    assert crypto.sign(VECTOR["timestamp"], VECTOR["nonce"], VECTOR["echostr"]) == VECTOR["signature"]
    assert crypto.decrypt(VECTOR["echostr"]) == VECTOR["plain"]
    with pytest.raises(ValueError, match="ReceiveId"):
        WeComCrypto(VECTOR["token"], VECTOR["key"], "wxsomeoneelse").decrypt(VECTOR["echostr"])
    encrypted = crypto.encrypt("回执")
    wechatpy = WeChatCrypto(VECTOR["token"], VECTOR["key"], VECTOR["corp"])
    assert wechatpy.check_signature(crypto.sign("1", "2", encrypted), "1", "2", encrypted) == "回执"


def test_url_check_verifies_with_wechatpy(sim):
    query, expected = sim.url_check()
    assert set(query) == {"msg_signature", "timestamp", "nonce", "echostr"} and expected.isdigit()
    wechatpy = WeChatCrypto(TOKEN, AES_KEY, CORP)
    assert wechatpy.check_signature(query["msg_signature"], query["timestamp"], query["nonce"],
                                    query["echostr"]) == expected


def test_text_message_callback_is_the_documented_xml(sim, tick):
    first = open_event(*sim.message_callback("zhangsan", "你好 <b>&"))
    assert first == [("ToUserName", CORP), ("FromUserName", "zhangsan"), ("CreateTime", str(int(tick.now))),
                     ("MsgType", "text"), ("Content", "你好 <b>&"), ("MsgId", first[5][1]), ("AgentID", AGENT)]
    second = dict(open_event(*sim.message_callback("zhangsan", "again")))
    assert first[5][1].isdigit() and int(first[5][1]) < 2**64 and second["MsgId"] != first[5][1]
    given = dict(open_event(*sim.message_callback("lisi", "x", msg_id="42", create_time=1700000000)))
    assert (given["MsgId"], given["CreateTime"]) == ("42", "1700000000")


async def test_media_message_callbacks_and_media_get(cli, sim):
    tok = await token(cli)
    image = dict(open_event(*sim.message_callback("zhangsan", msgtype="image")))
    assert image["MsgType"] == "image" and image["PicUrl"].startswith("https://")
    resp = await cli.get("/cgi-bin/media/get", params={"access_token": tok, "media_id": image["MediaId"]})
    assert resp.content_type == "image/png" and await resp.read() == PNG_1PX
    voice = dict(open_event(*sim.message_callback("zhangsan", msgtype="voice")))
    assert voice["Format"] == "amr" and sim.media[voice["MediaId"]][1] == "audio/amr"
    video = dict(open_event(*sim.message_callback("zhangsan", msgtype="video")))
    assert {video["MediaId"], video["ThumbMediaId"]} <= set(sim.media)
    where = dict(open_event(*sim.message_callback("zhangsan", msgtype="location", Label="门店")))
    assert float(where["Location_X"]) and float(where["Location_Y"]) and where["Scale"].isdigit()
    assert where["Label"] == "门店"
    link = open_event(*sim.message_callback("zhangsan", msgtype="link"))
    assert [tag for tag, _ in link][4:8] == ["Title", "Description", "Url", "PicUrl"]

    media_id = sim.add_media(b"#!AMR\n", "audio/amr", "v.amr")
    resp = await cli.get("/cgi-bin/media/get", params={"access_token": tok, "media_id": media_id})
    assert resp.content_type == "audio/amr" and 'filename="v.amr"' in resp.headers["Content-disposition"]
    assert (await call(cli, "/cgi-bin/media/get", tok, method="GET", media_id="nope"))["errcode"] == 40007
    assert (await call(cli, "/cgi-bin/media/get", tok, method="GET"))["errcode"] == 41006


async def test_add_external_contact_event_and_profile(cli, sim, tick):
    fields = open_event(*sim.add_external_contact("zhangsan", "wmC1", state="store-12", unionid="o-union"))
    code = sim.last_welcome_code
    assert fields == [("ToUserName", CORP), ("FromUserName", "sys"), ("CreateTime", str(int(tick.now))),
                      ("MsgType", "event"), ("Event", "change_external_contact"),
                      ("ChangeType", "add_external_contact"), ("UserID", "zhangsan"), ("ExternalUserID", "wmC1"),
                      ("State", "store-12"), ("WelcomeCode", code)]
    bare = dict(open_event(*sim.add_external_contact("lisi", "wmC2", welcome_code=False)))
    assert "State" not in bare and "WelcomeCode" not in bare

    tok = await token(cli, CONTACT_SECRET)
    got = await call(cli, GET_CONTACT, tok, method="GET", external_userid="wmC1")
    assert got["errcode"] == 0
    assert got["external_contact"]["external_userid"] == "wmC1" and got["external_contact"]["unionid"] == "o-union"
    assert got["external_contact"]["type"] == 1
    (follow,) = got["follow_user"]
    assert (follow["userid"], follow["state"], follow["createtime"]) == ("zhangsan", "store-12", int(tick.now))
    assert (await call(cli, GET_CONTACT, tok, method="GET", external_userid="wmNone"))["errcode"] == 84061
    assert (await call(cli, GET_CONTACT, tok, method="GET"))["errcode"] == 41035


async def test_removal_transfer_fail_and_member_left_events(cli, sim):
    sim.add_external_contact("zhangsan", "wmC1")
    sim.add_external_contact("lisi", "wmC1")
    removed = dict(open_event(*sim.del_external_contact("zhangsan", "wmC1", source="DELETE_BY_TRANSFER")))
    assert (removed["ChangeType"], removed["Source"], removed["FromUserName"]) == (
        "del_external_contact", "DELETE_BY_TRANSFER", "sys")
    assert "Source" not in dict(open_event(*sim.del_external_contact("zhangsan", "wmC1")))
    dropped = dict(open_event(*sim.del_follow_user("lisi", "wmC1")))
    assert dropped["ChangeType"] == "del_follow_user" and "Source" not in dropped
    tok = await token(cli, CONTACT_SECRET)
    assert (await call(cli, GET_CONTACT, tok, method="GET", external_userid="wmC1"))["errcode"] == 84061

    failed = open_event(*sim.transfer_fail("wangwu", "wmC1", "customer_limit_exceed"))
    assert [t for t, _ in failed][5:9] == ["ChangeType", "FailReason", "UserID", "ExternalUserID"]
    assert dict(failed)["FailReason"] == "customer_limit_exceed"
    left = dict(open_event(*sim.delete_user("wangwu")))
    assert (left["Event"], left["ChangeType"], left["UserID"]) == ("change_contact", "delete_user", "wangwu")
    assert "wangwu" in sim.resigned


# ---- tokens ------------------------------------------------------------------------------------------
async def test_gettoken_errors_reuse_and_errmsg_shape(cli, sim, tick):
    async def get(**params):
        return await (await cli.get("/cgi-bin/gettoken", params=params)).json()

    wrong_corp = await get(corpid="wwother", corpsecret=SECRET)
    assert wrong_corp["errcode"] == 40013 and "more info at" in wrong_corp["errmsg"]
    assert wrong_corp["errmsg"].endswith("?e=40013")
    assert (await get(corpid=CORP, corpsecret="nope"))["errcode"] == 40001
    assert (await get(corpsecret=SECRET))["errcode"] == 41002
    first = await get(corpid=CORP, corpsecret=SECRET)
    assert first["expires_in"] == 7200
    tick.now += 600
    again = await get(corpid=CORP, corpsecret=SECRET)
    assert again["access_token"] == first["access_token"] and again["expires_in"] == 6600
    assert await token(cli, CONTACT_SECRET) != first["access_token"]
    assert sim.tokens_issued == 3


async def test_missing_unknown_and_expired_tokens(cli, tick):
    assert (await call(cli, SEND, None, text_msg()))["errcode"] == 41001
    assert (await call(cli, SEND, "forged", text_msg()))["errcode"] == 40014
    tok = await token(cli)
    tick.now += 7199
    assert (await call(cli, SEND, tok, text_msg()))["errcode"] == 0
    tick.now += 1
    assert (await call(cli, SEND, tok, text_msg()))["errcode"] == 42001
    assert await token(cli) != tok


async def test_token_scopes(cli, tick, aiohttp_client):
    app_tok, contact_tok = await token(cli), await token(cli, CONTACT_SECRET)
    assert (await call(cli, GET_CONTACT, app_tok, method="GET", external_userid="x"))["errcode"] == 48002
    assert (await call(cli, SEND, contact_tok, text_msg()))["errcode"] == 48002
    assert (await call(cli, "/cgi-bin/media/get", contact_tok, method="GET", media_id="x"))["errcode"] == 48002

    solo = make_sim(tick, contact_secret=None)  # the app is in 「可调用应用」: one token for everything
    solo.add_external_contact("zhangsan", "wmC1")
    solo_cli = await aiohttp_client(solo.app())
    tok = await token(solo_cli)
    assert (await call(solo_cli, GET_CONTACT, tok, method="GET", external_userid="wmC1"))["errcode"] == 0
    assert (await call(solo_cli, SEND, tok, text_msg()))["errcode"] == 0
    bad = await (await solo_cli.get("/cgi-bin/gettoken", params={"corpid": CORP, "corpsecret": "x"})).json()
    assert bad["errcode"] == 40001


# ---- app messages ------------------------------------------------------------------------------------
async def test_message_send_delivers_and_reports_invalid_users(cli, sim, tick):
    tok = await token(cli)
    sim.resign("wangwu")
    body = await call(cli, SEND, tok, text_msg("zhangsan|Ghost|LISI|wangwu"))
    assert body["errcode"] == 0 and body["invaliduser"] == "ghost|wangwu" and body["msgid"]
    assert [(d["user"], d["payload"]["content"], d["at"]) for d in sim.delivered] == [
        ("zhangsan", "到店有礼", tick.now), ("lisi", "到店有礼", tick.now)]
    nobody = await call(cli, SEND, tok, text_msg("ghost|wangwu"))
    assert nobody["errcode"] == 81013 and len(sim.delivered) == 2
    everyone = await call(cli, SEND, tok, text_msg("@all"))
    assert everyone["errcode"] == 0 and [d["user"] for d in sim.delivered[2:]] == ["zhangsan", "lisi"]
    sim.other_agent_ids.add("1000003")
    assert (await call(cli, SEND, tok, {**text_msg(), "agentid": 1000003}))["errcode"] == 301002


def card(**fields) -> dict:
    return {"touser": "zhangsan", "msgtype": "textcard", "agentid": AGENT,
            "textcard": {"title": "新品", "description": "到店", "url": "https://a.example/", **fields}}


@pytest.mark.parametrize(("body", "code"), [
    ({**text_msg(), "agentid": None}, 41011),
    ({**text_msg(), "agentid": 999}, 40056),
    ({**text_msg(), "msgtype": "sms"}, 40008),
    (text_msg(content=""), 44004),
    (text_msg(content="x" * 5121), 40058),
    (text_msg(""), 82001),
    ({**text_msg(), "msgtype": "markdown", "markdown": {"content": "#" * 2049}}, 45002),
    (card(title=""), 41016),
    (card(description=None), 41033),
    (card(url=""), 41010),
    ({**text_msg(), "msgtype": "news", "news": {"articles": [{"title": "t", "url": "https://a/"}] * 9}}, 45008),
    ({**text_msg(), "msgtype": "news", "news": {"articles": [{"title": "t"}]}}, 41010),
    ({**text_msg(), "msgtype": "image", "image": {}}, 41006),
    ({**text_msg(), "msgtype": "file", "file": {"media_id": "unknown"}}, 40007),
])
async def test_message_send_rejections(cli, sim, body, code):
    assert (await call(cli, SEND, await token(cli), body))["errcode"] == code
    assert not sim.delivered


async def test_long_parts_are_truncated_as_documented(cli, sim):
    tok = await token(cli)
    assert (await call(cli, SEND, tok, text_msg(content="测" * 700)))["errcode"] == 0  # 2,100 bytes
    assert sim.delivered[-1]["payload"]["content"] == "测" * 682  # 2,046 bytes: whole characters only
    assert (await call(cli, SEND, tok, card(title="t" * 200, btntxt="查看详情更多")))["errcode"] == 0
    assert sim.delivered[-1]["payload"]["title"] == "t" * 128 and sim.delivered[-1]["payload"]["btntxt"] == "查看详情"


async def test_per_member_minute_cap_drops_silently_then_blocks_60s(cli, sim, tick):
    tok, t0 = await token(cli), tick.now
    for i in range(30):
        assert (await call(cli, SEND, tok, text_msg(content=f"m{i}")))["errcode"] == 0
    tick.now = t0 + 50
    assert (await call(cli, SEND, tok, text_msg(content="31st")))["errcode"] == 0  # accepted...
    assert len(sim.delivered) == 30 and (sim.dropped[-1]["cap"], sim.dropped[-1]["blocked"]) == ("minute", False)
    tick.now = t0 + 65  # the sliding window is empty now, but the penalty runs until t0 + 110
    assert (await call(cli, SEND, tok, text_msg(content="blocked")))["errcode"] == 0
    assert len(sim.delivered) == 30 and sim.dropped[-1]["blocked"] is True
    assert (await call(cli, SEND, tok, text_msg("lisi")))["errcode"] == 0  # per member: lisi is fine
    tick.now = t0 + 111
    await call(cli, SEND, tok, text_msg(content="after"))
    assert sim.delivered[-1]["payload"]["content"] == "after" and len(sim.dropped) == 2


async def test_per_member_hour_cap_drops_silently_then_blocks_an_hour(cli, sim, tick):
    tok, t0 = await token(cli), tick.now
    for i in range(1000):  # 2.1 s apart: never 30 in a minute
        tick.now = t0 + 2.1 * i
        await call(cli, SEND, tok, text_msg(content=f"m{i}"))
    assert len(sim.delivered) == 1000 and not sim.dropped
    tick.now = t0 + 2100
    assert (await call(cli, SEND, tok, text_msg(content="1001st")))["errcode"] == 0
    assert len(sim.delivered) == 1000 and sim.dropped[-1]["cap"] == "hour"
    tick.now = t0 + 2100 + 3599  # the hour window holds far fewer than 1000 now; still blocked
    await call(cli, SEND, tok, text_msg(content="still"))
    assert len(sim.delivered) == 1000 and sim.dropped[-1]["blocked"] is True
    tick.now = t0 + 2100 + 3600
    await call(cli, SEND, tok, text_msg(content="free"))
    assert sim.delivered[-1]["payload"]["content"] == "free"


async def test_duplicate_check(cli, sim, tick):
    tok, t0 = await token(cli), tick.now
    dup = {"enable_duplicate_check": 1}
    assert (await call(cli, SEND, tok, text_msg(**dup)))["errcode"] == 0
    assert (await call(cli, SEND, tok, text_msg(**dup)))["errcode"] == 0
    assert len(sim.delivered) == 1 and sim.dropped[-1]["cap"] == "duplicate"
    await call(cli, SEND, tok, text_msg(content="其他内容", **dup))
    await call(cli, SEND, tok, text_msg("zhangsan|lisi", **dup))  # lisi has not had it yet
    assert [d["user"] for d in sim.delivered] == ["zhangsan", "zhangsan", "lisi"]
    tick.now = t0 + 1799
    await call(cli, SEND, tok, text_msg(**dup))
    assert len(sim.delivered) == 3
    tick.now = t0 + 1800  # default interval 1800 s
    await call(cli, SEND, tok, text_msg(**dup))
    assert len(sim.delivered) == 4
    tick.now += 61
    await call(cli, SEND, tok, text_msg(enable_duplicate_check=1, duplicate_check_interval=60))
    await call(cli, SEND, tok, text_msg())  # no check asked: delivered again
    assert len(sim.delivered) == 6


# ---- 联系我, welcome message -------------------------------------------------------------------------
async def test_add_contact_way(cli, sim):
    tok = await token(cli, CONTACT_SECRET)
    way = {"type": 1, "scene": 2, "user": ["zhangsan"], "state": "s" * 30, "remark": "门店一号"}
    body = await call(cli, "/cgi-bin/externalcontact/add_contact_way", tok, way)
    assert body["errcode"] == 0 and body["qr_code"].startswith("https://") and body["config_id"] in sim.contact_ways
    assert "qr_code" not in await call(cli, "/cgi-bin/externalcontact/add_contact_way", tok, {**way, "scene": 1})
    for bad, code in [({"state": "s" * 31}, 40058), ({"remark": "r" * 31}, 40058), ({"user": ["ghost"]}, 610004),
                      ({"user": ["zhangsan", "lisi"]}, 40058), ({"type": None}, 41037), ({"type": 3}, 41039),
                      ({"scene": None}, 41038), ({"type": 2, "user": [f"u{i}" for i in range(101)]}, 41041)]:
        answer = await call(cli, "/cgi-bin/externalcontact/add_contact_way", tok, {**way, **bad})
        assert answer["errcode"] == code, bad
    assert len(sim.contact_ways) == 2


async def test_welcome_only_within_20s_and_only_once(cli, sim, tick):
    tok, path = await token(cli, CONTACT_SECRET), "/cgi-bin/externalcontact/send_welcome_msg"
    sim.add_external_contact("zhangsan", "wmC1")
    code = sim.last_welcome_code
    assert (await call(cli, path, tok, {"welcome_code": code}))["errcode"] == 44004  # nothing to send
    bad_link = {"welcome_code": code, "attachments": [{"msgtype": "link", "link": {"title": "t"}}]}
    assert (await call(cli, path, tok, bad_link))["errcode"] == 40058
    tick.now += 20
    hello = {"welcome_code": code, "text": {"content": "欢迎"},
             "attachments": [{"msgtype": "image", "image": {"pic_url": "https://p/1.png"}}]}
    assert (await call(cli, path, tok, hello))["errcode"] == 0
    assert sim.welcomes["wmC1"][0]["text"] == {"content": "欢迎"} and sim.welcomes["wmC1"][0]["userid"] == "zhangsan"
    assert (await call(cli, path, tok, hello))["errcode"] == 41051

    sim.add_external_contact("lisi", "wmC2")
    tick.now += 21
    assert (await call(cli, path, tok, {**hello, "welcome_code": sim.last_welcome_code}))["errcode"] == 41050
    assert (await call(cli, path, tok, {**hello, "welcome_code": "made-up"}))["errcode"] == 41050
    assert (await call(cli, path, tok, {"text": {"content": "x"}}))["errcode"] == 41049
    assert list(sim.welcomes) == ["wmC1"] and len(sim.welcomes["wmC1"]) == 1


async def test_injected_41096_leaves_the_code_usable(cli, sim):
    tok, path = await token(cli, CONTACT_SECRET), "/cgi-bin/externalcontact/send_welcome_msg"
    sim.add_external_contact("zhangsan", "wmC1")
    sim.fail_next(1, "errcode41096", path)
    hello = {"welcome_code": sim.last_welcome_code, "text": {"content": "欢迎"}}
    assert (await call(cli, path, tok, hello))["errcode"] == 41096
    assert (await call(cli, path, tok, hello))["errcode"] == 0
    assert sim.calls[path] == 2 and len(sim.welcomes["wmC1"]) == 1


# ---- mass sending ------------------------------------------------------------------------------------
async def make_task(cli, tok, ext_ids, sender="zhangsan") -> dict:
    return await call(cli, TEMPLATE, tok, {"chat_type": "single", "external_userid": ext_ids, "sender": sender,
                                          "text": {"content": "本周新品"}})


async def send_status(cli, tok, msgid, userid="zhangsan") -> dict:
    body = await call(cli, RESULT, tok, {"msgid": msgid, "userid": userid})
    return {row["external_userid"]: row["status"] for row in body["send_list"]}


async def test_mass_task_waits_for_the_members_confirmation(cli, sim, tick):
    tok = await token(cli, CONTACT_SECRET)
    for ext in ("wmA", "wmB", "wmC"):
        sim.add_external_contact("zhangsan", ext)
    sim.add_external_contact("lisi", "wmL")
    task = await make_task(cli, tok, ["wmA", "wmB", "wmC", "wmL", "wmGhost"])
    assert task["errcode"] == 0 and task["fail_list"] == ["wmL", "wmGhost"]
    assert await send_status(cli, tok, task["msgid"]) == {"wmA": 0, "wmB": 0, "wmC": 0}
    assert not sim.mass_received
    sim.del_follow_user("zhangsan", "wmC")  # the customer left before the member confirmed
    tick.now += 300
    sim.confirm_task(task["msgid"])
    assert await send_status(cli, tok, task["msgid"]) == {"wmA": 1, "wmB": 1, "wmC": 2}
    rows = (await call(cli, RESULT, tok, {"msgid": task["msgid"], "userid": "zhangsan"}))["send_list"]
    assert rows[0]["send_time"] == int(tick.now) and rows[0]["chat_id"] == "" and "send_time" not in rows[2]
    assert sorted(sim.mass_received) == ["wmA", "wmB"]


async def test_mass_task_rejections(cli, sim):
    tok = await token(cli, CONTACT_SECRET)
    sim.add_external_contact("zhangsan", "wmA")
    assert (await call(cli, TEMPLATE, tok, {"external_userid": ["wmA"], "sender": "zhangsan"}))["errcode"] == 44004
    nobody = await make_task(cli, tok, ["wmA"], sender="lisi")
    assert nobody["errcode"] == 41048 and nobody["fail_list"] == ["wmA"]
    assert (await make_task(cli, tok, [f"wm{i}" for i in range(10_001)]))["errcode"] == 40058
    assert (await call(cli, RESULT, tok, {"msgid": "msgnope", "userid": "zhangsan"}))["errcode"] == 41047
    assert (await call(cli, RESULT, tok, {"userid": "zhangsan"}))["errcode"] == 41046
    assert not sim.tasks


async def test_send_result_pages(cli, sim):
    tok = await token(cli, CONTACT_SECRET)
    ext_ids = [f"wm{i}" for i in range(5)]
    for ext in ext_ids:
        sim.add_external_contact("zhangsan", ext)
    msgid = (await make_task(cli, tok, ext_ids))["msgid"]
    seen, cursor, pages = [], None, 0
    while True:
        body = await call(cli, RESULT, tok, {"msgid": msgid, "userid": "zhangsan", "limit": 2,
                                            **({"cursor": cursor} if cursor else {})})
        seen += [r["external_userid"] for r in body["send_list"]]
        pages, cursor = pages + 1, body["next_cursor"]
        if not cursor:
            break
    assert (seen, pages) == (ext_ids, 3)
    assert (await call(cli, RESULT, tok, {"msgid": msgid, "userid": "lisi"}))["send_list"] == []
    assert (await call(cli, RESULT, tok, {"msgid": msgid, "userid": "zhangsan", "limit": 1001}))["errcode"] == 40058


async def receive_until_capped(cli, sim, tok, ext="wmA") -> int:
    """Confirm one task after another for one customer; how many reached them before status 3."""
    for n in range(40):
        msgid = (await make_task(cli, tok, [ext]))["msgid"]
        sim.confirm_task(msgid)
        if (await send_status(cli, tok, msgid))[ext] == 3:
            return n
    raise AssertionError("no cap")


async def test_push_cap_month_is_days_in_the_month(tick, aiohttp_client):
    sim = make_sim(tick)
    cli = await aiohttp_client(sim.app())
    tok = await token(cli, CONTACT_SECRET)
    sim.add_external_contact("zhangsan", "wmA")
    assert await receive_until_capped(cli, sim, tok) == 28  # February 2026
    tick.now = datetime(2026, 2, 28, 16, 30, tzinfo=UTC).timestamp()  # 1 March, 00:30 in Shanghai
    tok = await token(cli, CONTACT_SECRET)  # the old one expired meanwhile
    msgid = (await make_task(cli, tok, ["wmA"]))["msgid"]
    sim.confirm_task(msgid)
    assert (await send_status(cli, tok, msgid))["wmA"] == 1


async def test_push_cap_week_is_seven_from_monday(tick, aiohttp_client):
    sim = make_sim(tick, push_cap="week")
    cli = await aiohttp_client(sim.app())
    tok = await token(cli, CONTACT_SECRET)
    sim.add_external_contact("zhangsan", "wmA")
    assert await receive_until_capped(cli, sim, tok) == 7
    tick.now = cst(2026, 2, 15, 23, 59)  # Sunday night: the same week
    tok = await token(cli, CONTACT_SECRET)
    msgid = (await make_task(cli, tok, ["wmA"]))["msgid"]
    sim.confirm_task(msgid)
    assert (await send_status(cli, tok, msgid))["wmA"] == 3
    tick.now = datetime(2026, 2, 15, 16, 30, tzinfo=UTC).timestamp()  # Monday 00:30 in Shanghai
    msgid = (await make_task(cli, tok, ["wmA"]))["msgid"]
    sim.confirm_task(msgid)
    assert (await send_status(cli, tok, msgid))["wmA"] == 1


async def test_push_cap_day_counts_per_customer_across_members(tick, aiohttp_client):
    sim = make_sim(tick, push_cap="day")
    cli = await aiohttp_client(sim.app())
    tok = await token(cli, CONTACT_SECRET)
    sim.add_external_contact("zhangsan", "wmA")
    sim.add_external_contact("lisi", "wmA")
    first, second = (await make_task(cli, tok, ["wmA"]))["msgid"], (await make_task(cli, tok, ["wmA"], "lisi"))["msgid"]
    sim.confirm_task(first)
    sim.confirm_task(second)
    assert (await send_status(cli, tok, first))["wmA"] == 1
    assert (await send_status(cli, tok, second, "lisi"))["wmA"] == 3
    tick.now = datetime(2026, 2, 10, 16, 0, tzinfo=UTC).timestamp()  # midnight in Shanghai
    tok = await token(cli, CONTACT_SECRET)
    third = (await make_task(cli, tok, ["wmA"], "lisi"))["msgid"]
    sim.confirm_task(third)
    assert (await send_status(cli, tok, third, "lisi"))["wmA"] == 1


# ---- handover ----------------------------------------------------------------------------------------
async def transfer(cli, tok, ext_ids, handover="zhangsan", takeover="lisi", path=TRANSFER, **extra) -> dict:
    body = {"handover_userid": handover, "takeover_userid": takeover, "external_userid": ext_ids, **extra}
    return await call(cli, path, tok, body)


async def results(cli, tok, handover="zhangsan", takeover="lisi", path=TRANSFER_RESULT) -> dict:
    body = await call(cli, path, tok, {"handover_userid": handover, "takeover_userid": takeover})
    assert body["errcode"] == 0 and body["next_cursor"] == ""
    return {r["external_userid"]: (r["status"], r["takeover_time"]) for r in body["customer"]}


async def test_in_service_transfer_settles_and_respects_90_days(cli, sim, tick):
    tok = await token(cli, CONTACT_SECRET)
    sim.add_external_contact("zhangsan", "wmA")
    body = await transfer(cli, tok, ["wmA"], transfer_success_msg="您好，我是新的导购" * 20)  # 200 chars
    assert body == {"errcode": 0, "errmsg": "ok", "customer": [{"external_userid": "wmA", "errcode": 0}]}
    assert await results(cli, tok) == {"wmA": (2, int(tick.now) + 86400)}  # waiting: due in 24 h
    tick.now += 3600
    sim.settle_transfer("wmA")
    assert await results(cli, tok) == {"wmA": (1, int(tick.now))}
    follow = (await call(cli, GET_CONTACT, tok, method="GET", external_userid="wmA"))["follow_user"]
    assert [f["userid"] for f in follow] == ["lisi"]

    assert (await transfer(cli, tok, ["wmA"], "lisi", "zhangsan"))["customer"][0]["errcode"] == 0
    sim.settle_all()
    third = await transfer(cli, tok, ["wmA"], "zhangsan", "lisi")
    assert third["errcode"] == 0 and third["customer"][0]["errcode"] == 40128
    tick.now += 90 * 86400 - 3600  # 90 days after the first transfer
    tok = await token(cli, CONTACT_SECRET)
    assert (await transfer(cli, tok, ["wmA"], "zhangsan", "lisi"))["customer"][0]["errcode"] == 0


async def test_in_service_transfer_rejections(cli, sim):
    tok = await token(cli, CONTACT_SECRET)
    sim.add_external_contact("zhangsan", "wmA")
    sim.add_external_contact("wangwu", "wmW")
    assert (await transfer(cli, tok, [f"wm{i}" for i in range(101)]))["errcode"] == 40058
    assert (await transfer(cli, tok, ["wmA"], transfer_success_msg="x" * 201))["errcode"] == 40058
    assert (await transfer(cli, tok, []))["errcode"] == 41035
    assert (await transfer(cli, tok, ["wmA"], takeover="ghost"))["errcode"] == 40003
    mixed = await transfer(cli, tok, ["wmA", "wmW", "wmNone"])
    assert [c["errcode"] for c in mixed["customer"]] == [0, 40131, 40096]
    assert (await transfer(cli, tok, ["wmA"], takeover="wangwu"))["customer"][0]["errcode"] == 40129
    assert (await transfer(cli, tok, ["wmW"], "wangwu", "wangwu"))["customer"][0]["errcode"] == 40130
    assert [t["external_userid"] for t in sim.transfers] == ["wmA"]


async def test_resigned_transfer(cli, sim, tick):
    tok = await token(cli, CONTACT_SECRET)
    resigned_path = "/cgi-bin/externalcontact/resigned/transfer_customer"
    resigned_result = "/cgi-bin/externalcontact/resigned/transfer_result"
    sim.add_external_contact("zhangsan", "wmA")
    assert (await transfer(cli, tok, ["wmA"], path=resigned_path))["errcode"] == 40097
    sim.delete_user("zhangsan")
    assert (await transfer(cli, tok, ["wmA"], path=resigned_path))["customer"][0]["errcode"] == 0
    assert await results(cli, tok) == {}  # the in-service results do not list it
    assert await results(cli, tok, path=resigned_result) == {"wmA": (2, int(tick.now) + 86400)}
    assert sim.settle_all() == 1
    assert (await results(cli, tok, path=resigned_result))["wmA"][0] == 1
    # a resigned transfer does not count against the in-service limit of 2 in 90 days
    assert (await transfer(cli, tok, ["wmA"], "lisi", "wangwu"))["customer"][0]["errcode"] == 0
    sim.settle_all()
    assert (await transfer(cli, tok, ["wmA"], "wangwu", "lisi"))["customer"][0]["errcode"] == 0


async def test_receiver_limit_and_refusal(tick, aiohttp_client):
    sim = make_sim(tick, customer_limit=1)
    cli = await aiohttp_client(sim.app())
    tok = await token(cli, CONTACT_SECRET)
    for ext in ("wmA", "wmB", "wmC"):
        sim.add_external_contact("zhangsan", ext)
    sim.add_external_contact("lisi", "wmL")  # lisi is full
    await transfer(cli, tok, ["wmA"])
    assert (await results(cli, tok))["wmA"][0] == 4
    await transfer(cli, tok, ["wmA", "wmB", "wmC"], takeover="wangwu")
    sim.settle_transfer("wmC", status=3)  # the customer refused: stays with zhangsan
    sim.settle_transfer("wmB")  # wangwu is full from now on
    assert sim.settle_transfer("wmA")["status"] == 4  # so this 1 turns into 4
    now = int(tick.now)
    assert await results(cli, tok, takeover="wangwu") == {"wmA": (4, now), "wmB": (1, now), "wmC": (3, now)}
    assert {ext: set(sim.contacts[ext]["follow_user"]) for ext in ("wmA", "wmB", "wmC")} == {
        "wmA": {"zhangsan"}, "wmB": {"wangwu"}, "wmC": {"zhangsan"}}


# ---- faults and the corp-wide API cap ----------------------------------------------------------------
@pytest.mark.parametrize(("kind", "status", "errcode"), [
    ("http500", 500, -1), ("errcode-1", 200, -1), ("errcode45009", 200, 45009), ("errcode45033", 200, 45033),
    ("html", 502, None),
])
async def test_fail_next_kinds(cli, sim, kind, status, errcode):
    tok = await token(cli)
    sim.fail_next(2, kind, SEND)
    assert await token(cli) == tok  # another path is untouched
    for _ in range(2):
        resp = await cli.post(SEND, params={"access_token": tok}, json=text_msg())
        assert resp.status == status
        if errcode is None:
            assert resp.content_type == "text/html" and "502 Bad Gateway" in await resp.text()
        else:
            assert (await resp.json())["errcode"] == errcode
    assert not sim.delivered
    assert (await call(cli, SEND, tok, text_msg()))["errcode"] == 0 and len(sim.delivered) == 1
    with pytest.raises(ValueError):
        sim.fail_next(1, "http429")


async def test_timeout_fault_still_takes_effect_later(cli, sim):
    tok = await token(cli)
    sim.timeout_delay = 0.3
    sim.fail_next(1, "timeout", SEND)
    with pytest.raises(asyncio.TimeoutError):
        await cli.post(SEND, params={"access_token": tok}, json=text_msg(),
                       timeout=aiohttp.ClientTimeout(total=0.1))
    assert not sim.delivered
    await asyncio.sleep(0.4)
    assert len(sim.delivered) == 1


async def test_corp_api_cap_per_path_with_60s_penalty(cli, sim, tick):
    assert sim.api_limits.caps == {"minute": (10_000, 60), "hour": (150_000, 3600)}
    tok, t0 = await token(cli, CONTACT_SECRET), tick.now
    sim.api_limits.caps["minute"] = (3, 60)

    async def lookup():
        return (await call(cli, GET_CONTACT, tok, method="GET", external_userid="wmNone"))["errcode"]

    assert [await lookup() for _ in range(3)] == [84061] * 3
    tick.now = t0 + 59
    assert await lookup() == 45009
    assert (await call(cli, TEMPLATE, tok, {"external_userid": ["x"], "text": {"content": "x"}}))["errcode"] != 45009
    app_tok = await token(cli)
    assert all([(await call(cli, SEND, app_tok, text_msg("lisi", str(i))))["errcode"] == 0 for i in range(5)])
    tick.now = t0 + 70  # no call in the last minute, still inside the penalty (until t0 + 119)
    assert await lookup() == 45009
    tick.now = t0 + 120
    assert await lookup() == 84061
