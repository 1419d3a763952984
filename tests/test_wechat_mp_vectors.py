"""Official Account parsing against the plaintext XML WeChat documents (and sends), tagged with the expected Events.

Each vector in tests/vectors/wechat_mp names its source page. The XML goes through `xml_fields` exactly as
the (decrypted) callback does in the adapter, then through `parse`. Where the documentation and the parser
disagree the vector keeps what the documentation implies and is listed in DISAGREEMENTS (a strict xfail:
it turns into a failure once the parser is fixed, so the entry is then removed).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from adapters.media import MediaLinks
from adapters.wechat_mp import events
from adapters.wxml import xml_fields
from gateway.adapter import BadRequest
from gateway.model import Event

VECTORS = sorted((Path(__file__).parent / "vectors" / "wechat_mp").glob("*.json"))
RECEIVED = datetime(2026, 1, 1, tzinfo=UTC)
MEDIA = MediaLinks("http://gw.example/media/mp")

# vector stem -> what the documentation says that the parser does not do
DISAGREEMENTS: dict[str, str] = {}


def _raw(data: dict[str, str]) -> events.WeChatMpRaw:
    return events.WeChatMpRaw("mp", "callback", data, RECEIVED, MEDIA)


def _parse_xml(xml: str | bytes) -> list[Event]:
    return events.parse(_raw(xml_fields(xml)))


def _as_dict(e: Event) -> dict:
    return {"type": e.type, "side": e.side, "sender": [e.sender.platform, e.sender.account, e.sender.external_id],
            "dedupe_key": e.dedupe_key, "segments": [s.to_dict() for s in e.message.segments] if e.message else None,
            "payload": e.payload, "profile": e.profile, "occurred_at": e.occurred_at.isoformat()}


def test_there_are_vectors():
    assert len(VECTORS) >= 20
    assert set(DISAGREEMENTS) <= {p.stem for p in VECTORS}


@pytest.mark.parametrize("path", [
    pytest.param(p, id=p.stem, marks=[pytest.mark.xfail(reason=DISAGREEMENTS[p.stem], strict=True)]
                 if p.stem in DISAGREEMENTS else [])
    for p in VECTORS
])
def test_parse_vector(path):
    v = json.loads(path.read_text(encoding="utf-8"))
    got = _parse_xml(v["xml"])
    assert [_as_dict(e) for e in got] == v["expected"], v["name"]
    assert not any(e.reply_required for e in got)  # callbacks are acknowledged first, processed after


# --- malformed input -------------------------------------------------------------------------------

# The documented text message (Receiving_standard_messages 文本消息) with one field left out at a time.
TEXT_FIELDS = {
    "ToUserName": "<ToUserName><![CDATA[toUser]]></ToUserName>",
    "FromUserName": "<FromUserName><![CDATA[fromUser]]></FromUserName>",
    "CreateTime": "<CreateTime>1348831860</CreateTime>",
    "MsgType": "<MsgType><![CDATA[text]]></MsgType>",
    "Content": "<Content><![CDATA[this is a test]]></Content>",
    "MsgId": "<MsgId>1234567890123456</MsgId>",
}


def _text_without(field: str) -> str:
    return "<xml>" + "".join(v for k, v in TEXT_FIELDS.items() if k != field) + "</xml>"


@pytest.mark.parametrize("field", ["MsgType", "FromUserName", "MsgId"])
def test_documented_text_message_missing_a_required_field(field):
    with pytest.raises(BadRequest) as e:
        _parse_xml(_text_without(field))
    assert e.value.field == field


def test_documented_text_message_with_all_fields_parses():
    assert [e.dedupe_key for e in _parse_xml(_text_without(""))] == ["msg:1234567890123456"]


def test_event_without_from_user_name():
    with pytest.raises(BadRequest) as e:
        _parse_xml("<xml><ToUserName><![CDATA[toUser]]></ToUserName><CreateTime>123456789</CreateTime>"
                   "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event>"
                   "<EventKey><![CDATA[qrscene_gw:abc12345]]></EventKey><Ticket><![CDATA[TICKET]]></Ticket></xml>")
    assert e.value.field == "FromUserName"


# --- property: parse never fails with anything but BadRequest ---------------------------------------

KEYS = ("MsgType", "Event", "EventKey", "MsgId", "FromUserName", "CreateTime", "Content", "MediaId", "PicUrl",
        "Format", "Recognition", "Location_X", "Location_Y", "Label", "Title", "Url", "Description", "Ticket")
# Per key, the values the parser branches on (so that random dicts reach every branch), arbitrary short
# text, and digit strings (CreateTime is documented as an integer timestamp; 13 digits is a millisecond one).
MEANINGFUL = {
    "MsgType": ("text", "image", "voice", "video", "shortvideo", "location", "link", "event"),
    "Event": ("subscribe", "unsubscribe", "SCAN", "CLICK", "VIEW", "LOCATION", "MASSSENDJOBFINISH",
              "TEMPLATESENDJOBFINISH"),
    "EventKey": ("qrscene_gw:abc12345", "gw:abc12345", "qrscene_gw:", "gw:", "qrscene_", "qrscene_123123"),
    "Location_X": ("23.134521", "nan", "-inf", "1e999", "1_0"),
    "Location_Y": ("113.358803", "nan", "-inf", "1e999", "1_0"),
    "Content": (" ", "\n"),
}


def _values(key: str) -> st.SearchStrategy[str]:
    digits = st.sampled_from(range(1, 14)).flatmap(lambda n: st.text("0123456789", min_size=n, max_size=n))
    text = st.text(max_size=13)
    if key == "CreateTime":
        return st.one_of(digits, text)
    return st.one_of(st.sampled_from(MEANINGFUL[key]), text) if key in MEANINGFUL else st.one_of(text, digits)


@settings(max_examples=1000, deadline=None)
@given(st.fixed_dictionaries({}, optional={k: _values(k) for k in KEYS}))
@example({"MsgType": "event", "Event": "subscribe", "FromUserName": "u", "CreateTime": "1700000000000"})  # ms
@example({"MsgType": "text", "MsgId": "1", "FromUserName": "u", "Content": "hi", "CreateTime": "\u00b2"})  # isdigit()
@example({"MsgType": "location", "MsgId": "1", "FromUserName": "u", "Location_X": "\u0661\u0662"})  # Arabic digits
def test_parse_returns_events_or_raises_bad_request(data):
    try:
        out = events.parse(_raw(data))
    except BadRequest:
        return
    assert isinstance(out, list) and all(isinstance(e, Event) for e in out)
    assert all(e.side == "customer" and e.sender.external_id == data["FromUserName"] for e in out)
