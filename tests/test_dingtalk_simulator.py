"""The DingTalk simulator itself, exercised over HTTP the way an adapter would use it.

Expected values are computed here independently (signatures, vectors from dingtalk-sdk's tests and
the official DingCallbackCrypto3 sample), so a simulator bug cannot hide behind its own helpers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json

import aiohttp
import pytest
from dingtalk.crypto import DingTalkCrypto

from adapters.dingtalk.simulator import DEFAULT_AES_KEY, ROBOT_TOPIC, DingTalkSimulator, EventCrypto

APP_KEY, APP_SECRET, ROBOT, AGENT = "dingappkey01", "app-secret-01", "dingrobot01", "3001"
SDK_VECTOR = dict(  # PLATFORM_RULES.md + dingtalk-sdk tests/test_crypto.py
    token="123456", key="4g5j64qlyl3zvetqxz5jiocdr586fn2zvjpa8zls3ij", rid="suite4xxxxxxxxxxxxxxx",
    signature="5a65ceeef9aab2d149439f82dc191dd6c5cbe2c0", timestamp="1445827045067", nonce="nEXhMP4r",
    encrypt="1a3NBxmCFwkCJvfoQ7WhJHB+iX3qHPsc9JbaDznE1i03peOk1LaOQoRz3+nlyGNhwmwJ3vDMG+OzrHMeiZI7gTRWVdUBm"
            "fxjZ8Ej23JVYa9VrYeJ5as7XM/ZpulX8NEQis44w53h1qAgnC3PRzM7Zc/D6Ibr0rgUathB6zRHP8PYrfgnNOS9PhSBdH"
            "legK+AGGanfwjXuQ9+0pZcy0w9lQ==",
)


class Tick:
    """An injectable clock the tests move by hand."""

    def __init__(self, now: float = 1_767_200_000.0):  # 2026-01-01 01:33 CST
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tick() -> Tick:
    return Tick()


@pytest.fixture
def sim(tick) -> DingTalkSimulator:
    return DingTalkSimulator(app_key=APP_KEY, app_secret=APP_SECRET, robot_code=ROBOT, agent_id=AGENT, clock=tick)


@pytest.fixture
async def cli(sim, aiohttp_client):
    return await aiohttp_client(sim.app())


async def v1_token(cli) -> str:
    resp = await cli.post("/v1.0/oauth2/accessToken", json={"appKey": APP_KEY, "appSecret": APP_SECRET})
    assert resp.status == 200
    return (await resp.json())["accessToken"]


async def oapi_token(cli) -> str:
    resp = await cli.get("/gettoken", params={"appkey": APP_KEY, "appsecret": APP_SECRET})
    body = await resp.json()
    assert body["errcode"] == 0, body
    return body["access_token"]


def oto(users, key="sampleText", param=None, robot=ROBOT) -> dict:
    param = json.dumps(param or {"content": "您好"}, ensure_ascii=False) if not isinstance(param, str) else param
    return {"robotCode": robot, "userIds": users, "msgKey": key, "msgParam": param}


async def batch_send(cli, token, body) -> tuple[int, dict]:
    resp = await cli.post("/v1.0/robot/oToMessages/batchSend", json=body,
                          headers={"x-acs-dingtalk-access-token": token})
    return resp.status, await resp.json()


async def notice(cli, token, users: str, msg: dict, agent=AGENT) -> dict:
    resp = await cli.post("/topapi/message/corpconversation/asyncsend_v2", params={"access_token": token},
                          json={"agent_id": agent, "userid_list": users, "msg": msg})
    assert resp.status == 200
    return await resp.json()


# ---- tokens ------------------------------------------------------------------------------------------
async def test_v1_token_is_checked_renewed_and_expires(cli, sim, tick):
    resp = await cli.post("/v1.0/oauth2/accessToken", json={"appKey": APP_KEY, "appSecret": "wrong"})
    assert resp.status == 400 and (await resp.json())["code"] == "invalidClientIdOrSecret"
    assert sim.tokens_issued == 0

    token = await v1_token(cli)
    tick.now += 3600
    assert await v1_token(cli) == token  # within validity: the same token, renewed for another 7200 s
    assert sim.tokens_issued == 2
    tick.now += 7199
    assert (await batch_send(cli, token, oto(["u1"])))[0] == 200
    tick.now += 2
    status, body = await batch_send(cli, token, oto(["u1"]))
    assert status == sim.invalid_token_status == 400
    assert body["code"] == "InvalidAuthentication" and set(body) == {"code", "message", "requestid"}
    assert await v1_token(cli) != token  # after expiry a new one

    resp = await cli.post("/v1.0/robot/oToMessages/batchSend", json=oto(["u1"]))
    assert resp.status == 400 and (await resp.json())["code"] == "AuthenticationFailed.MissingParameter"
    assert sim.robot_inbox["u1"] and len(sim.robot_inbox["u1"]) == 1


async def test_oapi_gettoken_and_expired_token_on_topapi(cli, sim, tick):
    body = await (await cli.get("/gettoken", params={"appkey": APP_KEY, "appsecret": "nope"})).json()
    assert body["errcode"] == 40096
    body = await (await cli.get("/gettoken", params={"appkey": APP_KEY, "appsecret": APP_SECRET})).json()
    assert body["errcode"] == 0 and body["expires_in"] == 7200
    token = body["access_token"]
    assert (await notice(cli, token, "u1", {"msgtype": "text", "text": {"content": "a"}}))["errcode"] == 0
    tick.now += 7200
    expired = await notice(cli, token, "u1", {"msgtype": "text", "text": {"content": "b"}})
    assert (expired["errcode"], expired["sub_code"]) == (88, "40014")
    missing = await (await cli.post("/topapi/message/corpconversation/asyncsend_v2", json={})).json()
    assert (missing["errcode"], missing["sub_code"]) == (88, "40000")
    assert [n["msg"]["text"]["content"] for n in sim.work_notices["u1"]] == ["a"]


# ---- robot 1:1 messages ------------------------------------------------------------------------------
async def test_batch_send_delivers_and_reports_invalid_and_flow_controlled(cli, sim):
    sim.known_users = {"u1", "u2", "u3"}
    sim.flow_controlled_users = {"u3"}
    token = await v1_token(cli)
    status, body = await batch_send(cli, token, oto(["u1", "u2", "ghost", "u3"], "sampleMarkdown",
                                                    {"title": "新品", "text": "## 到店"}))
    assert status == 200
    assert body["invalidStaffIdList"] == ["ghost"] and body["flowControlledStaffIdList"] == ["u3"]
    assert sorted(sim.robot_inbox) == ["u1", "u2"]
    entry = sim.robot_inbox["u1"][0]
    assert entry["msgKey"] == "sampleMarkdown" and entry["msgParam"] == {"title": "新品", "text": "## 到店"}

    pqk, headers = body["processQueryKey"], {"x-acs-dingtalk-access-token": token}
    params = {"robotCode": ROBOT, "processQueryKey": pqk}
    read = await (await cli.get("/v1.0/robot/oToMessages/readStatus", params=params, headers=headers)).json()
    assert {i["userId"]: i["readStatus"] for i in read["messageReadInfoList"]} == {"u1": "UNREAD", "u2": "UNREAD"}
    sim.mark_read(pqk, "u1")
    read = await (await cli.get("/v1.0/robot/oToMessages/readStatus", params=params, headers=headers)).json()
    assert {i["userId"]: i["readStatus"] for i in read["messageReadInfoList"]}["u1"] == "READ"


@pytest.mark.parametrize(("body", "code"), [
    (oto([f"u{i}" for i in range(21)]), "invalidParameter.userIds.overMax"),
    (oto([]), "invalidParameter.userIds.empty"),
    (oto(["u1"], robot="dingsomeoneelse"), "invalidParameter.robotCode.auth"),
    (oto(["u1"], robot=""), "invalidParameter.robotCode.empty"),
    (oto(["u1"], key="sampleVoice"), "invalidParameter.msgKey.invalid"),
    ({**oto(["u1"]), "msgParam": {"content": "a dict, not a JSON string"}}, "invalidParameter.msgParam.invalid"),
    (oto(["u1"], param="content=hi"), "invalidParameter.msgParam.invalid"),
    (oto(["u1"], key="sampleLink", param={"title": "t", "text": "x"}), "invalidParameter.param.invalid"),
])
async def test_batch_send_rejections(cli, sim, body, code):
    status, answer = await batch_send(cli, await v1_token(cli), body)
    assert (status, answer["code"]) == (400, code)
    assert not sim.robot_inbox


async def test_twenty_users_is_still_accepted(cli, sim):
    status, _ = await batch_send(cli, await v1_token(cli), oto([f"u{i}" for i in range(20)]))
    assert status == 200 and len(sim.robot_inbox) == 20


async def test_message_file_download(cli, sim):
    _, raw = sim.robot_callback("u1", msgtype="picture")
    code = json.loads(raw)["content"]["downloadCode"]
    headers = {"x-acs-dingtalk-access-token": await v1_token(cli)}
    bad = await cli.post("/v1.0/robot/messageFiles/download", json={"downloadCode": code, "robotCode": "x"},
                         headers=headers)
    assert bad.status == 400
    resp = await cli.post("/v1.0/robot/messageFiles/download", json={"downloadCode": code, "robotCode": ROBOT},
                          headers=headers)
    url = (await resp.json())["downloadUrl"]
    async with aiohttp.ClientSession() as http, http.get(url) as got:
        assert got.content_type == "image/png" and (await got.read()).startswith(b"\x89PNG")


# ---- work notifications --------------------------------------------------------------------------------
async def test_work_notice_silent_drops(cli, sim, tick):
    token, hello = await oapi_token(cli), {"msgtype": "text", "text": {"content": "今天到店有礼"}}
    first = await notice(cli, token, "u1,u2", hello)
    again = await notice(cli, token, "u1", hello)
    assert first["errcode"] == again["errcode"] == 0 and "task_id" in again and "request_id" in again
    assert len(sim.work_notices["u1"]) == 1 and len(sim.work_notices["u2"]) == 1
    assert sim.dropped_notices[0]["userid"] == "u1"
    assert sim.dropped_notices[0]["reason"] == "duplicate_content_today"

    resp = await cli.post("/topapi/message/corpconversation/getsendresult", params={"access_token": token},
                          json={"agent_id": AGENT, "task_id": again["task_id"]})
    result = (await resp.json())["send_result"]
    assert result["forbidden_user_id_list"] == ["u1"] and result["forbidden_list"][0]["code"] == "143106"
    result = await (await cli.post("/topapi/message/corpconversation/getsendresult", params={"access_token": token},
                                   json={"agent_id": AGENT, "task_id": first["task_id"]})).json()
    assert result["send_result"]["unread_user_id_list"] == ["u1", "u2"]

    tick.now += 86400  # the next day the same content is allowed again
    token = await oapi_token(cli)
    await notice(cli, token, "u1", hello)
    assert len(sim.work_notices["u1"]) == 2

    assert sim.notice_daily_limit == 500
    sim.notice_daily_limit = 3  # the rule at a size a unit test can reach
    for i in range(3):
        assert (await notice(cli, token, "u1", {"msgtype": "text", "text": {"content": f"#{i}"}}))["errcode"] == 0
    assert [n["msg"]["text"]["content"] for n in sim.work_notices["u1"]] == ["今天到店有礼", "今天到店有礼", "#0", "#1"]
    assert [d["reason"] for d in sim.dropped_notices] == ["duplicate_content_today", "user_daily_limit"]
    assert sim.dropped_notices[-1]["msg"]["text"]["content"] == "#2"


async def test_work_notice_validation(cli, sim):
    token, msg = await oapi_token(cli), {"msgtype": "text", "text": {"content": "x"}}
    assert (await notice(cli, token, "u1", msg, agent="999"))["errcode"] == 40056
    assert (await notice(cli, token, ",".join(f"u{i}" for i in range(101)), msg))["errcode"] == 40035
    assert (await notice(cli, token, ",".join(f"u{i}" for i in range(100)), msg))["errcode"] == 0
    big = {"msgtype": "text", "text": {"content": "长" * 700}}  # 2100 bytes of UTF-8
    assert (await notice(cli, token, "u1", big))["errcode"] == 40035
    resp = await cli.post("/topapi/message/corpconversation/asyncsend_v2", params={"access_token": token},
                          json={"agent_id": AGENT, "userid_list": ["u1"], "msg": msg})
    assert (await resp.json())["errcode"] == 40035  # a JSON array is not the documented String
    form = await cli.post("/topapi/message/corpconversation/asyncsend_v2", params={"access_token": token},
                          data={"agent_id": AGENT, "userid_list": "u7", "msg": json.dumps(msg)})
    assert (await form.json())["errcode"] == 0 and sim.work_notices["u7"]


# ---- faults and throttling ------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "v1_status", "v1_code", "oapi_status", "oapi_errcode"), [
    ("http429", 429, "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi", 429, 90018),
    ("errcode90002", 403, "Forbidden.AccessDenied.QpsLimitForApi", 200, 90002),
    ("errcode90018", 403, "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi", 200, 90018),
    ("http500", 500, "unknownError", 500, -1),
])
async def test_fail_next_json_kinds(cli, sim, kind, v1_status, v1_code, oapi_status, oapi_errcode):
    token, otoken = await v1_token(cli), await oapi_token(cli)
    sim.fail_next(1, kind, "/v1.0/robot")
    sim.fail_next(1, kind, "/topapi")
    status, body = await batch_send(cli, token, oto(["u1"]))
    assert (status, body["code"]) == (v1_status, v1_code)
    resp = await cli.post("/topapi/message/corpconversation/asyncsend_v2", params={"access_token": otoken},
                          json={"agent_id": AGENT, "userid_list": "u1", "msg": {"msgtype": "text", "text": {"content": "x"}}})
    assert (resp.status, (await resp.json())["errcode"]) == (oapi_status, oapi_errcode)
    assert not sim.robot_inbox and not sim.work_notices
    assert (await batch_send(cli, token, oto(["u1"])))[0] == 200  # the fault is used up
    assert sim.calls["/v1.0/robot/oToMessages/batchSend"] == 2


async def test_fail_next_html_throttle_and_prefix(cli, sim):
    sim.fail_next(2, "html_throttle", "/gettoken")
    assert (await v1_token(cli))  # another path is unaffected
    for _ in range(2):
        resp = await cli.get("/gettoken", params={"appkey": APP_KEY, "appsecret": APP_SECRET})
        assert resp.status == 200 and resp.content_type == "text/html" and "punish" in await resp.text()
    assert await oapi_token(cli)
    with pytest.raises(ValueError):
        sim.fail_next(1, "http418")


async def test_fail_next_timeout_still_delivers_late(cli, sim):
    token = await v1_token(cli)
    sim.timeout_delay = 0.3
    sim.fail_next(1, "timeout")
    with pytest.raises(asyncio.TimeoutError):
        await cli.post("/v1.0/robot/oToMessages/batchSend", json=oto(["u1"]),
                       headers={"x-acs-dingtalk-access-token": token}, timeout=aiohttp.ClientTimeout(total=0.1))
    assert not sim.robot_inbox
    await asyncio.sleep(0.4)
    assert len(sim.robot_inbox["u1"]) == 1  # the caller cannot tell: a retry would deliver twice


async def test_qps_limit_sliding_window(cli, sim):
    now = [100.0]
    sim.qps_clock = lambda: now[0]
    token = await v1_token(cli)
    sim.qps_limit = 2
    assert (await batch_send(cli, token, oto(["u1"])))[0] == 200
    now[0] += 0.5
    assert (await batch_send(cli, token, oto(["u1"])))[0] == 200
    status, body = await batch_send(cli, token, oto(["u1"]))
    assert (status, body["code"]) == (403, "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi")
    throttled = await (await cli.get("/gettoken", params={"appkey": APP_KEY, "appsecret": APP_SECRET})).json()
    assert throttled["errcode"] == 90018  # one window per app, across APIs
    now[0] += 0.6  # the first call left the window, the second has not
    assert (await batch_send(cli, token, oto(["u1"])))[0] == 200
    assert (await batch_send(cli, token, oto(["u1"])))[0] == 403
    assert len(sim.robot_inbox["u1"]) == 3


# ---- inbound callbacks ----------------------------------------------------------------------------------
def test_robot_callback_signature_follows_documented_formula(sim, tick):
    headers, raw = sim.robot_callback("u1", "在吗", msg_id="msgA")
    ts = headers["timestamp"]
    assert ts == str(int(tick.now * 1000))
    digest = hmac.new(APP_SECRET.encode(), (ts + "\n" + APP_SECRET).encode(), hashlib.sha256).digest()
    assert headers["sign"] == base64.b64encode(digest).decode()
    body = json.loads(raw)
    assert (body["senderStaffId"], body["text"]["content"], body["msgId"]) == ("u1", "在吗", "msgA")
    assert (body["conversationType"], body["robotCode"], body["createAt"]) == ("1", ROBOT, int(ts))
    assert body["senderNick"] == "张三" and body["sessionWebhook"].startswith("https://")

    forged, _ = sim.robot_callback("u1", "x", secret="not-the-secret")
    assert forged["sign"] != sim.robot_callback("u1", "x", timestamp_ms=int(forged["timestamp"]))[0]["sign"]
    old, _ = sim.robot_callback("u1", "x", timestamp_ms=1_000)
    assert old["timestamp"] == "1000"
    _, rich = sim.robot_callback("u1", "图文", msgtype="richText")
    assert json.loads(rich)["content"]["richText"][0]["text"] == "图文"


def test_event_callback_decrypts_with_dingtalk_sdk(sim):
    event = {"EventType": "user_leave_org", "UserId": ["u9"], "CorpId": sim.corp_id, "TimeStamp": "1767200000000"}
    query, raw = sim.event_callback(event)
    sdk = DingTalkCrypto("sim-token", DEFAULT_AES_KEY, sim.corp_id)
    plain = sdk.decrypt_message(raw, query["signature"], query["timestamp"], query["nonce"])
    assert json.loads(plain) == event and query["msg_signature"] == query["signature"]
    query, raw = sim.url_check_callback()
    assert json.loads(sdk.decrypt_message(raw, query["signature"], query["timestamp"], query["nonce"])) == {
        "EventType": "check_url"}


def test_decrypt_reply_checks_signature_and_receive_id(sim):
    sdk = DingTalkCrypto("sim-token", DEFAULT_AES_KEY, sim.corp_id)
    reply = sdk.encrypt_message("success")
    assert sim.decrypt_reply(json.dumps(reply).encode()) == "success"
    with pytest.raises(ValueError):
        sim.decrypt_reply({**reply, "msg_signature": "0" * 40})
    other = DingTalkCrypto("sim-token", DEFAULT_AES_KEY, "dingsomeothercorp").encrypt_message("success")
    with pytest.raises(ValueError):
        sim.decrypt_reply(other)
    with pytest.raises(ValueError):
        sim.decrypt_reply({"encrypt": reply["encrypt"]})


def test_independent_crypto_matches_published_vectors():
    v = SDK_VECTOR
    crypto = EventCrypto(v["token"], v["key"], v["rid"])
    assert crypto.sign(v["timestamp"], v["nonce"], v["encrypt"]) == v["signature"]
    assert json.loads(crypto.decrypt(v["encrypt"]))["EventType"] == "check_create_suite_url"
    # dingtalk-sdk test_encrypt_message: fixed random '1234567890123456'
    msg = '{"EventType":"check_create_suite_url","Random":"LPIdSnlF","TestSuiteKey":"suite4xxxxxxxxxxxxxxx"}'
    enc = crypto.encrypt(msg, random16=b"1234567890123456")
    assert enc == ("5DJFWzjRNOQk+5GSZxW+VrFMDWCIidPjEjg3//gm5x556BedVi62rDj1F9uXU97a4jw1R4FACUv9RCpoDobNqxhxRB2Yt"
                   "W901k4KHbP1/wpFJ3xdLG0n0A8U1VhENg80zKJd+YROR0YMGum4WYuoXJ6J98vt0ihYeIFoapNddLML5MyNAGM9saSpko"
                   "uDMSvD+iU14i7V8ix1ia1Tb9ogog==")
    assert crypto.sign(v["timestamp"], v["nonce"], enc) == "bcf6dcefa4ce2dbaf7b0666c7264d46fd9aad4bd"
    # the official DingCallbackCrypto3 sample from DingTalk's docs
    official = EventCrypto("mryue", "Yue0EfdN5900c1ce5cf6A152c63DDe1808a60c5ecd7", "ding6ccabc44d2c8d38b")
    sample = ("0vJiX6vliEpwG3U45CtXqi+m8PXbQRARJ8p8BbDuD1EMTDf0jKpQ79QS93qEk7XHpP6u+oTTrd15NRPvNvmBKyDCYxxOK+HZ"
              "eKju4yhELOFchzNukR+t8SB/qk4ROMu3")
    assert official.sign("1608001896814", "WL4PK6yA", sample) == "03044561471240d4a14bb09372dfcfd4fd0e40cb"
    assert official.decrypt(sample) == '{"EventType":"check_url"}'
    with pytest.raises(ValueError):
        EventCrypto(v["token"], v["key"], "dingwrongcorp").decrypt(v["encrypt"])


# ---- Stream mode ----------------------------------------------------------------------------------------
async def open_stream(cli, subscriptions=None) -> dict:
    subs = subscriptions or [{"type": "CALLBACK", "topic": ROBOT_TOPIC}, {"type": "EVENT", "topic": "*"}]
    resp = await cli.post("/v1.0/gateway/connections/open", headers={"Accept": "application/json"}, json={
        "clientId": APP_KEY, "clientSecret": APP_SECRET, "subscriptions": subs,
        "ua": "dingtalk-sdk-python/v0.24", "localIp": "10.0.0.2"})
    assert resp.status == 200
    return await resp.json()


async def receive_json(ws) -> dict:
    msg = await ws.receive(timeout=2)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def until(predicate, timeout: float = 2.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_stream_gateway_push_ack_ping_and_drop(cli, sim):
    bad = await cli.post("/v1.0/gateway/connections/open", json={"clientId": APP_KEY, "clientSecret": "no",
                                                                 "subscriptions": [{"type": "EVENT", "topic": "*"}]})
    assert bad.status == 400
    opened = await open_stream(cli)
    assert opened["endpoint"].startswith("ws://") and opened["ticket"]
    with pytest.raises(LookupError):
        await sim.push_stream("u1", "nobody listens yet")

    async with cli.session.ws_connect(opened["endpoint"], params={"ticket": opened["ticket"]}) as ws:
        assert sim.stream_connections == 1
        mid = await sim.push_stream("u1", "我要预约", msg_id="msgS1")
        frame = await receive_json(ws)
        assert (frame["specVersion"], frame["type"]) == ("1.0", "CALLBACK")
        assert frame["headers"]["topic"] == ROBOT_TOPIC and frame["headers"]["messageId"] == mid
        data = json.loads(frame["data"])  # a JSON string inside the frame
        assert (data["senderStaffId"], data["text"]["content"], data["msgId"]) == ("u1", "我要预约", "msgS1")
        await ws.send_json({"code": 200, "headers": {"contentType": "application/json", "messageId": mid},
                            "message": "OK", "data": json.dumps({"response": None})})
        await until(lambda: mid in sim.stream_acks)
        assert sim.stream_acks[mid]["code"] == 200

        event_mid = await sim.push_stream_event("user_leave_org", {"userId": ["u1"], "timeStamp": "1"})
        event = await receive_json(ws)
        assert event["type"] == "EVENT" and event["headers"]["eventType"] == "user_leave_org"
        assert event["headers"]["messageId"] == event_mid

        [ping_mid] = await sim.ping_stream()
        ping = await receive_json(ws)
        assert (ping["type"], ping["headers"]["topic"]) == ("SYSTEM", "ping")
        await ws.send_json({"code": 200, "headers": ping["headers"], "message": "OK", "data": ping["data"]})
        await until(lambda: ping_mid in sim.stream_pongs)
        await ws.send_str("not an ack")
        await until(lambda: sim.stream_bad_frames == ["not an ack"])

        dropping = asyncio.ensure_future(sim.drop_stream())
        disconnect = await receive_json(ws)
        assert (disconnect["type"], disconnect["headers"]["topic"]) == ("SYSTEM", "disconnect")
        assert (await ws.receive(timeout=2)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        await dropping
    assert sim.stream_connections == 0

    with pytest.raises(aiohttp.WSServerHandshakeError):  # a ticket opens one connection only
        await cli.session.ws_connect(opened["endpoint"], params={"ticket": opened["ticket"]})
    reopened = await open_stream(cli)
    async with cli.session.ws_connect(reopened["endpoint"], params={"ticket": reopened["ticket"]}):
        assert sim.stream_connections == 1


async def test_stream_ticket_expires_and_event_topic_must_be_star(cli, sim, tick):
    opened = await open_stream(cli)
    tick.now += 91
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await cli.session.ws_connect(opened["endpoint"], params={"ticket": opened["ticket"]})
    resp = await cli.post("/v1.0/gateway/connections/open", json={
        "clientId": APP_KEY, "clientSecret": APP_SECRET, "subscriptions": [{"type": "EVENT", "topic": "user_leave_org"}]})
    assert resp.status == 400
    xml = await cli.post("/v1.0/gateway/connections/open", json={  # without Accept: application/json
        "clientId": APP_KEY, "clientSecret": APP_SECRET, "subscriptions": [{"type": "EVENT", "topic": "*"}]})
    assert xml.content_type == "application/xml" and "<ticket>" in await xml.text()


async def test_v1_endpoints_take_json_bodies_only(cli, sim):
    resp = await cli.post("/v1.0/oauth2/accessToken", data={"appKey": APP_KEY, "appSecret": APP_SECRET})
    assert resp.status == 400 and (await resp.json())["code"] == "Missingbody"
    assert sim.tokens_issued == 0
