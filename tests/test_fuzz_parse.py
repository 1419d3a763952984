"""Property tests of every adapter's pure parse / decode step on arbitrary input.

The contract each property checks: a parser returns a well-formed result, or raises the adapter's
documented rejection — BadRequest (the ingress answers 400) for malformed input, Unauthorized (401)
for a signature or envelope that does not check out. Never any other exception, never a hang
(each call runs under an alarm), and whatever it returns can be stored as a claim: the events
serialise to strict JSON (no NaN — PostgreSQL's json type refuses it), encode as UTF-8, and
survive Event.to_dict / from_dict (how a claim is replayed). Round trips: what the platforms' SDK
crypto (and the simulators' independent cipher) encrypts, the adapters decrypt to the same text.
"""

from __future__ import annotations

import json
import signal
import string
from contextlib import contextmanager
from datetime import UTC, datetime
from xml.sax.saxutils import escape, quoteattr

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from adapters import webim, wxml
from adapters.dingtalk import crypto as dt_crypto
from adapters.dingtalk import events as dt_events
from adapters.media import MediaLinks
from adapters.simkit import CallbackCipher
from adapters.webchat import crypto as wc_crypto
from adapters.webchat import events as webchat_events
from adapters.wechat_mp import crypto as mp_crypto
from adapters.wechat_mp import events as mp_events
from adapters.wecom import crypto as wecom_crypto
from adapters.wecom import events as wecom_events
from adapters.workbench import events as workbench_events
from gateway.adapter import BadRequest, Unauthorized
from gateway.model import Event, Message

# No hypothesis deadline: on a loaded CI box timings are noise (a slow example is re-run and reported
# as Flaky). Hangs are caught by `bounded()` instead, which interrupts a call after 2 s.
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = datetime(2026, 1, 1, tzinfo=UTC)
AES_KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
TOKEN, CORP, APP_ID = "fuzztoken", "wwfuzzcorp000001", "wxfuzz0000000001"
SECRET = "fuzz-webchat-secret-0123456789"


@contextmanager
def bounded(seconds: float = 2.0):
    """A parser that loops forever fails the property instead of hanging the run."""
    def expired(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def outcome(fn, *args, rejections=(BadRequest,)):
    """fn(*args), or None when it raised one of the documented rejections."""
    with bounded():
        try:
            return fn(*args)
        except rejections:
            return None


def storable(events) -> None:
    """What the ingress does with parsed events: claim them as strict JSON, replay them from it."""
    assert isinstance(events, list) and all(isinstance(e, Event) for e in events)
    for e in events:
        assert e.side in ("clerk", "customer") and e.sender.external_id and e.dedupe_key
        assert e.occurred_at.tzinfo is not None
        d = e.to_dict()
        text = json.dumps(d, ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")  # no lone surrogates
        assert Event.from_dict(json.loads(text)).to_dict() == json.loads(text)


# -- strategies ---------------------------------------------------------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
JSON_TREES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
ANY_TEXT = st.text(max_size=60)  # hypothesis leaves out surrogates: what a JSON body can hold after loads_json


def one_of_or_any(*values):
    return st.sampled_from(values) | JSON_TREES


DT_ROBOT = st.fixed_dictionaries({}, optional={
    "msgId": one_of_or_any("msgA", "m" * 128, "m" * 129, ""),
    "senderStaffId": one_of_or_any("manager7521", "", "s" * 129),
    "conversationType": one_of_or_any("1", "2", 1, 2),
    "msgtype": one_of_or_any("text", "richText", "picture", "file", "audio", "video"),
    "text": one_of_or_any({"content": "#1 hi"}, {"content": "  "}, {}) | st.fixed_dictionaries(
        {"content": JSON_TREES | ANY_TEXT}),
    "content": st.fixed_dictionaries({}, optional={
        "richText": st.lists(st.fixed_dictionaries({}, optional={
            "text": JSON_TREES, "type": one_of_or_any("picture", "text"), "downloadCode": JSON_TREES}), max_size=4)
        | JSON_TREES,
        "downloadCode": one_of_or_any("code1", "") | JSON_TREES, "fileName": JSON_TREES,
        "recognition": JSON_TREES}) | JSON_TREES,
    "createAt": one_of_or_any(1_700_000_000_000, 10**30, -(10**30), 1e308, float("nan"), float("inf"), True),
    "senderNick": JSON_TREES,
})

DT_EVENT = st.fixed_dictionaries({}, optional={
    "EventType": one_of_or_any("user_leave_org", "check_url", "user_add_org"),
    "eventType": one_of_or_any("user_leave_org"),
    "UserId": JSON_TREES | st.lists(st.text(max_size=8) | st.integers(), max_size=3),
    "userId": JSON_TREES,
    "TimeStamp": JSON_TREES,
    "CorpId": JSON_TREES,
})


# -- DingTalk -------------------------------------------------------------------------------------------

def _dt(body, kind="robot"):
    return dt_events.DingTalkRaw("dt", kind, body, NOW, MediaLinks("http://gw.example/media/dt"))


@FUZZ
@given(st.one_of(DT_ROBOT, st.dictionaries(st.text(max_size=12), JSON_TREES, max_size=6)))
@example({"msgId": "m", "senderStaffId": "s", "msgtype": "text", "text": "not an object"})
@example({"msgId": "m", "senderStaffId": "s", "msgtype": "richText", "content": {"richText": 5}})
@example({"msgId": "m", "senderStaffId": "s", "msgtype": "text", "text": {"content": "x"}, "createAt": 1e300})
@example({"msgId": "m", "senderStaffId": "s", "msgtype": "text", "text": {"content": "x"}, "createAt": float("nan")})
def test_dingtalk_robot_parse(body):
    events = outcome(dt_events.parse, _dt(body))
    if events is not None:
        storable(events)
        assert all(e.type == "message" and e.side == "clerk" for e in events)


DT_CRYPTO = dt_crypto.EventCrypto(TOKEN, AES_KEY, CORP)
DT_CIPHER = CallbackCipher(TOKEN, AES_KEY, CORP)  # the simulators' cipher, written from the docs


@FUZZ
@given(st.text(max_size=60), st.text(max_size=20), st.text(max_size=20), st.text(max_size=200))
@example("0" * 40, "1445827045067", "nEXhMP4r", "not base64!")
@example("", "", "", "")
def test_dingtalk_event_decrypt_rejects_anything_forged(signature, timestamp, nonce, encrypt):
    with bounded(), pytest.raises(Unauthorized):
        DT_CRYPTO.decrypt(signature, timestamp, nonce, encrypt)


@FUZZ
@given(st.text(max_size=300), st.text(string.ascii_letters + string.digits, min_size=1, max_size=16))
def test_dingtalk_event_round_trip(plaintext, nonce):
    env = DT_CRYPTO.encrypt(plaintext)  # dingtalk-sdk's own encryption
    assert DT_CRYPTO.decrypt(env["msg_signature"], env["timeStamp"], env["nonce"], env["encrypt"]) == plaintext
    encrypt = DT_CIPHER.encrypt(plaintext)  # an independent implementation of the same algorithm
    assert DT_CRYPTO.decrypt(DT_CIPHER.sign("1700000000000", nonce, encrypt), "1700000000000", nonce,
                             encrypt) == plaintext
    with pytest.raises(Unauthorized):  # the signature covers the ciphertext
        DT_CRYPTO.decrypt(DT_CIPHER.sign("1700000000001", nonce, encrypt), "1700000000000", nonce, encrypt)


@FUZZ
@given(DT_EVENT | st.dictionaries(st.text(max_size=12), JSON_TREES, max_size=6) | JSON_TREES,
       st.text(string.ascii_letters, min_size=1, max_size=8))
@example({"EventType": "user_leave_org", "UserId": 5}, "n")
@example({"EventType": "user_leave_org", "UserId": [[1], {"a": None}]}, "n")
@example({"EventType": "user_leave_org", "UserId": ["u" * 129]}, "n")
def test_dingtalk_org_event_pipeline(tree, nonce):
    """What DingTalkAdapter.verify + parse do with an event push: decrypt, read the JSON, parse."""
    encrypt = DT_CIPHER.encrypt(json.dumps(tree))
    plain = DT_CRYPTO.decrypt(DT_CIPHER.sign("1700000000000", nonce, encrypt), "1700000000000", nonce, encrypt)
    data = outcome(webim.loads_json, plain)
    if data is not None or plain == "null":
        events = outcome(dt_events.parse, _dt(data if isinstance(data, dict) else {}, "event"))
        if events is not None:
            storable(events)
            assert all(e.type == "clerk_left" for e in events)


@FUZZ
@given(st.text(max_size=40), st.text(max_size=60), st.integers(min_value=0, max_value=2**45))
@example("¹²³", "x", 0)
@example("1", "签名", 1)
def test_dingtalk_robot_sign_check(timestamp, sign, now_ms):
    with bounded(), pytest.raises(Unauthorized):  # nothing random passes, and nothing random crashes it
        dt_crypto.check_robot_sign("secret", timestamp, sign, now_ms, 3600)
    ts = str(now_ms)
    dt_crypto.check_robot_sign("secret", ts, dt_crypto.robot_sign("secret", ts), now_ms, 3600)


# -- JSON bodies: the webchat / workbench / DingTalk readers --------------------------------------------

@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode)
       | JSON_TREES.map(lambda t: json.dumps(t).encode()))
@example(b"[" * 5000)
@example(b'{"a": "\\ud800"}')
@example(b'{"a": "\\u0000"}')
@example(b'{"a": NaN, "b": 1e999}')
@example(b'"\xed\xa0\x80"')
def test_loads_json(raw):
    data = outcome(webim.loads_json, raw)
    if data is not None or raw.strip() in (b"null", b""):
        json.dumps(data, ensure_ascii=False, allow_nan=False).encode("utf-8")  # storable as it is


@FUZZ
@given(st.dictionaries(st.text(max_size=14), JSON_TREES, max_size=5) | st.fixed_dictionaries({}, optional={
    "client_msg_id": one_of_or_any("c1", "c" * 129, ""),
    "text": one_of_or_any("hi", " ", "x" * 41) | ANY_TEXT,
    "segments": st.lists(st.fixed_dictionaries({"type": one_of_or_any("text", "image", "link", "location", "product")},
                                               optional={"text": ANY_TEXT | JSON_TREES, "url": one_of_or_any(
                                                   "https://x", "javascript:alert(1)", "data:x") | ANY_TEXT,
                                                   "lat": JSON_TREES}), max_size=22) | JSON_TREES}))
def test_web_message_bodies(body):
    """The webchat and workbench message path: the body through loads_json (as read_json does), then parse."""
    body = outcome(webim.loads_json, json.dumps(body).encode())  # NaN / Infinity in the tree: refused here
    if not isinstance(body, dict):
        return
    for parse, raw in ((webchat_events.parse, webchat_events.WebchatRaw("webchat", "message", "u-1", "名", body, NOW,
                                                                        "req", 40)),
                       (workbench_events.parse, workbench_events.WorkbenchRaw("workbench", 7, body, NOW, 40))):
        events = outcome(parse, raw)
        if events is not None:
            storable(events)
            msg = events[0].message
            assert isinstance(msg, Message) and msg.segments
            assert all(s.type in webim.CLIENT_SEGMENTS for s in msg.segments)
            assert all(str(s.data.get("url", "http://")).startswith(("http://", "https://")) for s in msg.segments)
            assert all(len(s.data["text"]) <= 40 for s in msg.segments if "text" in s.data and s.type == "text")


@FUZZ
@given(st.dictionaries(st.text(max_size=10), JSON_TREES, max_size=5) | st.fixed_dictionaries({}, optional={
    "invite": one_of_or_any("abc12345", "", "a" * 33) | ANY_TEXT, "consent": one_of_or_any(True, False, "yes"),
    "switch": one_of_or_any(True, False, 1)}))
def test_webchat_bind_bodies(body):
    events = outcome(webchat_events.parse, webchat_events.WebchatRaw("webchat", "bind", "u-1", None, body, NOW, "r"))
    if events is not None:
        storable(events)
        assert events[0].reply_required and isinstance(events[0].payload["consent"], bool)


@FUZZ
@given(st.text(max_size=120))
@example("abc.é")
@example("é")
@example(".")
def test_webchat_tokens_never_raise(token):
    with bounded():
        assert wc_crypto.read_token(SECRET, token, 0) is None  # nothing random is a token we issued


@FUZZ
@given(st.text(min_size=1, max_size=128), st.none() | st.text(max_size=64), st.none() | st.text(min_size=1,
                                                                                                   max_size=128),
       st.text(max_size=70))
def test_webchat_token_round_trip_and_session_sig(user_id, name, unionid, sig):
    token = wc_crypto.issue_token(SECRET, user_id, name, 2_000_000_000, unionid)
    claims = wc_crypto.read_token(SECRET, token, 1_000_000_000)
    assert claims["u"] == user_id and claims["n"] == name and claims.get("x") == unionid
    assert wc_crypto.read_token("another-secret-0123456789", token, 1_000_000_000) is None
    assert wc_crypto.read_token(SECRET, token, 2_000_000_001) is None  # expired
    good = wc_crypto.sign_v2(SECRET, user_id, 1, unionid)
    assert wc_crypto.check_session(SECRET, user_id, 1, good.upper(), version=2, unionid=unionid) is None
    assert (wc_crypto.check_session(SECRET, user_id, 1, sig, version=2, unionid=unionid) is None) == (sig.lower() == good)


# -- the Tencent XML (WeCom, the Official Account) -------------------------------------------------------

NAMES = st.sampled_from(["MsgType", "FromUserName", "ToUserName", "MsgId", "CreateTime", "Content", "Event",
                         "EventKey", "ChangeType", "UserID", "ExternalUserID", "State", "WelcomeCode", "MediaId",
                         "PicUrl", "Location_X", "Location_Y", "Label", "Title", "Url", "Recognition", "Format",
                         "Encrypt", "FailReason", "Source"]) | st.builds(
    str.__add__, st.sampled_from(string.ascii_letters + "_"), st.text(string.ascii_letters + string.digits + "_.-",
                                                                      max_size=8))
VALUES = st.sampled_from(["text", "image", "voice", "video", "shortvideo", "file", "location", "link", "event",
                          "subscribe", "SCAN", "CLICK", "VIEW", "unsubscribe", "change_external_contact",
                          "change_contact", "add_external_contact", "del_follow_user", "transfer_fail",
                          "delete_user", "qrscene_gw:abc12345", "gw:abc12345", "sys", "1700000000", "nan",
                          "1e999", "-0", "]]>", "&amp;", "&lt;x&gt;"]) | st.text(max_size=20)


@st.composite
def xml_element(draw, depth=0):
    name = draw(NAMES)
    attrs = "".join(f" {draw(st.text(string.ascii_lowercase, min_size=1, max_size=4))}="
                    f"{quoteattr(draw(st.text(max_size=6)))}" for _ in range(draw(st.integers(0, 2))))
    kind = draw(st.sampled_from(["escaped", "cdata", "raw", "empty", "nested"] if depth < 2 else
                                ["escaped", "cdata", "raw", "empty"]))
    value = draw(VALUES)
    if kind == "escaped":
        inner = escape(value)
    elif kind == "cdata":  # split a "]]>" the way a careful sender does, or not (then it is malformed)
        inner = ("<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>" if draw(st.booleans())
                 else f"<![CDATA[{value}]]>")
    elif kind == "raw":
        inner = value
    elif kind == "empty":
        return f"<{name}{attrs}/>"
    else:
        inner = "".join(draw(st.lists(xml_element(depth + 1), max_size=3)))
    return f"<{name}{attrs}>{inner}</{name}>"


XML_DOCS = st.builds(
    lambda decl, root, children, tail: f"{decl}<{root}>{''.join(children)}</{root}>{tail}",
    st.sampled_from(["", '<?xml version="1.0" encoding="utf-8"?>', "<!DOCTYPE xml>",
                     '<!DOCTYPE xml [<!ENTITY e "x">]>', '<!DOCTYPE xml [<!ENTITY e SYSTEM "file:///etc/passwd">]>']),
    st.sampled_from(["xml", "xml", "xml", "root"]),
    st.lists(xml_element(), max_size=8),
    st.sampled_from(["", "", "<!-- c -->", "trailing", "<xml/>"]))


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=200) | st.text("<>/![]CDATA&;xml \"'=", max_size=80))
@example(b"<xml><Content>\xff\xfe</Content></xml>")
@example("<xml><A>1</A><A>2</A><B x='1'>b</B></xml>")
def test_xml_fields(doc):
    fields = outcome(wxml.xml_fields, doc)
    if fields is not None:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())


def _wecom(fields):
    return wecom_events.WeComRaw("wc", "callback", fields, NOW, MediaLinks("http://gw.example/media/wc"))


def _mp(fields):
    return mp_events.WeChatMpRaw("mp", "callback", fields, NOW, MediaLinks("http://gw.example/media/mp"))


WECOM_CRYPTO = wecom_crypto.CallbackCrypto(TOKEN, AES_KEY, CORP)
MP_ENVELOPE = mp_crypto.Envelope(TOKEN, AES_KEY, APP_ID)


@FUZZ
@given(st.text(max_size=60), st.text(max_size=20), st.text(max_size=20), st.text(max_size=200))
@example("0" * 40, "1411443780", "437374425", "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Y")
@example("签名", "", "", "")
def test_tencent_decrypt_rejects_anything_forged(signature, timestamp, nonce, encrypt):
    for decrypt in (WECOM_CRYPTO.decrypt, WECOM_CRYPTO.check_url, MP_ENVELOPE.decrypt):
        with bounded(), pytest.raises(Unauthorized):
            decrypt(signature, timestamp, nonce, encrypt)
    with bounded(), pytest.raises(Unauthorized):
        mp_crypto.check(TOKEN, signature, timestamp, nonce, now=1_700_000_000, window=300)


def _envelope_parts(xml: str) -> dict:
    return wxml.xml_fields(xml, "reply")


@FUZZ
@given(st.text(max_size=300), st.text(string.digits, min_size=1, max_size=10), st.text(string.digits, min_size=1,
                                                                                      max_size=10))
def test_tencent_round_trips(plaintext, nonce, timestamp):
    # wechatpy's own encryption (what WeCom / WeChat do), read back through the adapters
    for crypto, decrypt in ((WECOM_CRYPTO, WECOM_CRYPTO.decrypt), (MP_ENVELOPE, MP_ENVELOPE.decrypt)):
        env = _envelope_parts(crypto.encrypt(plaintext, nonce, timestamp))
        assert decrypt(env["MsgSignature"], env["TimeStamp"], env["Nonce"], env["Encrypt"]) == plaintext
    # the simulators' cipher, an independent implementation from the docs
    for receive_id, decrypt in ((CORP, WECOM_CRYPTO.decrypt), (APP_ID, MP_ENVELOPE.decrypt)):
        cipher = CallbackCipher(TOKEN, AES_KEY, receive_id)
        encrypt = cipher.encrypt(plaintext)
        assert decrypt(cipher.sign(timestamp, nonce, encrypt), timestamp, nonce, encrypt) == plaintext
        other = CallbackCipher(TOKEN, AES_KEY, receive_id + "x")  # another corp / app inside: forged
        encrypt = other.encrypt(plaintext)
        with pytest.raises(Unauthorized):
            decrypt(other.sign(timestamp, nonce, encrypt), timestamp, nonce, encrypt)


@FUZZ
@given(XML_DOCS)
@example("<xml><MsgType>location</MsgType><FromUserName>u</FromUserName><MsgId>1</MsgId>"
         "<Location_X>nan</Location_X><Location_Y>1e999</Location_Y></xml>")
@example(f"<xml><MsgType>text</MsgType><FromUserName>{'u' * 129}</FromUserName><MsgId>1</MsgId></xml>")
def test_tencent_callback_pipeline(doc):
    """What the WeCom and Official Account adapters' verify + parse do with random XML built from
    element names, values, CDATA and attributes: the envelope (made by wechatpy, as the platforms
    make it), its decryption, the message XML, the parse."""
    for crypto, parse, raw in ((WECOM_CRYPTO, wecom_events.parse, _wecom), (MP_ENVELOPE, mp_events.parse, _mp)):
        env = wxml.xml_fields(crypto.encrypt(doc, "123456", "1700000000"), "envelope")
        with bounded():
            assert crypto.decrypt(env["MsgSignature"], env["TimeStamp"], env["Nonce"], env["Encrypt"]) == doc
        fields = outcome(wxml.xml_fields, doc)
        if fields is None:
            continue
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
        events = outcome(parse, raw(fields))
        if events is not None:
            storable(events)
            if parse is mp_events.parse:
                assert all(e.side == "customer" and e.sender.external_id == fields["FromUserName"] for e in events)


@FUZZ
@given(st.text(max_size=40), st.integers(min_value=0, max_value=2**40))
@example("¹²³", 0)
@example("", 0)
def test_mp_timestamp_window(timestamp, now):
    from wechatpy.utils import WeChatSigner

    signer = WeChatSigner()
    signer.add_data(TOKEN, timestamp, "n")
    ok = timestamp.isascii() and timestamp.isdigit() and abs(now - int(timestamp)) <= 300
    try:
        with bounded():
            mp_crypto.check(TOKEN, signer.signature, timestamp, "n", now=now, window=300)
        refused = False
    except Unauthorized:
        refused = True
    assert refused == (not ok)


# -- adapters/wxml.py helpers -----------------------------------------------------------------------------

@FUZZ
@given(st.text(max_size=400), st.integers(min_value=1, max_value=64))
@example("😀😀", 2)
@example("a\nb\n\n", 1)
@example("好" * 700, 2048)
def test_split_text(text, limit):
    with bounded():
        parts = wxml.split_text(text, limit)
    assert "".join(parts) == text
    assert all(parts)
    # within the limit, unless one character alone is longer than the limit
    assert all(len(p.encode()) <= limit or len(p) == 1 for p in parts)


@FUZZ
@given(st.dictionaries(st.sampled_from(["CreateTime", "MsgType", "MediaId", "PicUrl", "Content", "Recognition",
                                        "Format", "FileName", "Title", "Location_X", "Location_Y", "Label", "Url",
                                        "Description"]), VALUES | st.text(max_size=20)),
       st.booleans())
@example({"CreateTime": "99999999999999999999"}, True)
@example({"CreateTime": "\u00b2"}, False)
@example({"MsgType": "location", "Location_X": "nan", "Location_Y": "1e999"}, False)
def test_wxml_segments_and_create_time(d, pic_first):
    with bounded():
        at = wxml.create_time(d, NOW)
        segs = wxml.segments(d, MediaLinks("http://gw.example/media/x", b"k" * 32), NOW, pic_first=pic_first)
    assert at.tzinfo is not None
    json.dumps([s.to_dict() for s in segs], allow_nan=False)
    for key in ("MsgType", "Content", "CreateTime"):
        v = outcome(wxml.need, d, key)
        assert v is None or (v == d[key] and 0 < len(v) <= wxml.MAX_ID)
