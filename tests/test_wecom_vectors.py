"""WeCom parsing against the plaintext XML WeCom documents (and sends), tagged with the expected Events.

Each vector in tests/vectors/wecom names its source page. The XML goes through `xml_fields` exactly as
the decrypted callback does in the adapter, then through `parse`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from adapters.media import MediaLinks
from adapters.wecom import events
from adapters.wxml import xml_fields
from gateway.adapter import BadRequest
from gateway.model import Event

VECTORS = sorted((Path(__file__).parent / "vectors" / "wecom").glob("*.json"))
RECEIVED = datetime(2026, 1, 1, tzinfo=UTC)
MEDIA = MediaLinks("http://gw.example/media/wc")


def _raw(data: dict[str, str]) -> events.WeComRaw:
    return events.WeComRaw("wc", "callback", data, RECEIVED, MEDIA)


def _parse_xml(xml: str) -> list[Event]:
    return events.parse(_raw(xml_fields(xml)))


def _as_dict(e: Event) -> dict:
    return {"type": e.type, "side": e.side, "sender": [e.sender.platform, e.sender.account, e.sender.external_id],
            "dedupe_key": e.dedupe_key, "segments": [s.to_dict() for s in e.message.segments] if e.message else None,
            "payload": e.payload, "profile": e.profile, "occurred_at": e.occurred_at.isoformat()}


def test_there_are_vectors():
    assert len(VECTORS) >= 18


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_parse_vector(path):
    v = json.loads(path.read_text(encoding="utf-8"))
    got = _parse_xml(v["xml"])
    assert [_as_dict(e) for e in got] == v["expected"], v["name"]
    assert not any(e.reply_required for e in got)  # WeCom callbacks are acknowledged first, processed after


# --- malformed input -------------------------------------------------------------------------------

def test_msg_type_missing():
    with pytest.raises(BadRequest) as e:
        _parse_xml("<xml><ToUserName><![CDATA[toUser]]></ToUserName><FromUserName><![CDATA[fromUser]]></FromUserName>"
                   "<CreateTime>1348831860</CreateTime><Content><![CDATA[hi]]></Content><MsgId>1</MsgId></xml>")
    assert e.value.field == "MsgType"


def test_text_message_without_msg_id():
    with pytest.raises(BadRequest) as e:
        _parse_xml("<xml><ToUserName><![CDATA[toUser]]></ToUserName><FromUserName><![CDATA[fromUser]]></FromUserName>"
                   "<CreateTime>1348831860</CreateTime><MsgType><![CDATA[text]]></MsgType>"
                   "<Content><![CDATA[this is a test]]></Content><AgentID>1</AgentID></xml>")
    assert e.value.field == "MsgId"


def test_add_external_contact_without_external_user_id():
    with pytest.raises(BadRequest) as e:
        _parse_xml("<xml><ToUserName><![CDATA[toUser]]></ToUserName><FromUserName><![CDATA[sys]]></FromUserName>"
                   "<CreateTime>1403610513</CreateTime><MsgType><![CDATA[event]]></MsgType>"
                   "<Event><![CDATA[change_external_contact]]></Event>"
                   "<ChangeType><![CDATA[add_external_contact]]></ChangeType><UserID><![CDATA[zhangsan]]></UserID>"
                   "<State><![CDATA[gw:abc12345]]></State><WelcomeCode><![CDATA[WELCOMECODE]]></WelcomeCode></xml>")
    assert e.value.field == "ExternalUserID"


# --- property: parse never fails with anything but BadRequest ---------------------------------------

KEYS = ("MsgType", "Event", "ChangeType", "MsgId", "FromUserName", "UserID", "ExternalUserID", "CreateTime",
        "Content", "State", "WelcomeCode", "Source", "FailReason", "MediaId")
# Per key, the values the parser branches on (so that random dicts reach every branch), arbitrary short
# text, and digit strings (CreateTime is documented as an integer timestamp; 13 digits is a millisecond one).
MEANINGFUL = {
    "MsgType": ("text", "image", "voice", "video", "file", "location", "link", "event"),
    "Event": ("change_external_contact", "change_contact", "enter_agent"),
    "ChangeType": ("delete_user", "add_external_contact", "add_half_external_contact", "edit_external_contact",
                   "del_external_contact", "del_follow_user", "transfer_fail"),
    "FromUserName": ("sys",),
    "State": ("gw:", "gw:abc12345"),
    "Source": ("DELETE_BY_TRANSFER",),
    "FailReason": ("customer_refused", "customer_limit_exceed"),
}


def _values(key: str) -> st.SearchStrategy[str]:
    digits = st.sampled_from(range(1, 14)).flatmap(lambda n: st.text("0123456789", min_size=n, max_size=n))
    text = st.text(max_size=13)
    if key == "CreateTime":
        return st.one_of(digits, text)
    return st.one_of(st.sampled_from(MEANINGFUL[key]), text) if key in MEANINGFUL else st.one_of(text, digits)


@settings(max_examples=1000, deadline=None)
@given(st.fixed_dictionaries({}, optional={k: _values(k) for k in KEYS}))
@example({"MsgType": "event", "Event": "enter_agent", "FromUserName": "u", "CreateTime": "1700000000000"})  # ms, not s
@example({"MsgType": "text", "MsgId": "1", "FromUserName": "u", "Content": "hi", "CreateTime": "\u00b2"})  # isdigit()
def test_parse_returns_events_or_raises_bad_request(data):
    try:
        out = events.parse(_raw(data))
    except BadRequest:
        return
    assert isinstance(out, list) and all(isinstance(e, Event) for e in out)
