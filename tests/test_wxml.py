"""The XML reader both Tencent adapters use: hostile and malformed documents are bad requests,
never parsed into something; only flat text fields come through."""

from __future__ import annotations

import pytest

from adapters.wxml import split_text, xml_fields
from gateway.adapter import BadRequest

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE xml [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<xml><FromUserName>u</FromUserName><MsgType>text</MsgType><MsgId>1</MsgId><Content>&lol9;</Content></xml>"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<xml><FromUserName>u</FromUserName><MsgType>text</MsgType><MsgId>1</MsgId><Content>&xxe;</Content></xml>"""


@pytest.mark.parametrize("text", [
    pytest.param("", id="empty"),
    pytest.param("<xml><MsgType>text</MsgType>", id="unclosed"),
    pytest.param("<xml><MsgType>text</msgtype></xml>", id="mismatched-tag"),
    pytest.param("not xml at all", id="not-xml"),
    pytest.param(b"<xml><Content>\xff\xfe</Content></xml>", id="bad-utf8"),
    pytest.param("<xml><Content>&undefined;</Content></xml>", id="undefined-entity"),
    pytest.param('<!DOCTYPE xml [<!ENTITY a "b">]><xml><Content>&a;</Content></xml>', id="entity-declaration"),
    pytest.param(BILLION_LAUGHS, id="billion-laughs"),
    pytest.param(EXTERNAL_ENTITY, id="external-entity"),
])
def test_not_well_formed_or_entities_are_bad_requests(text):
    with pytest.raises(BadRequest, match="not well-formed"):
        xml_fields(text)


@pytest.mark.parametrize("text", [
    pytest.param("<root><MsgType>text</MsgType></root>", id="other-root"),
    pytest.param("<xml/>", id="empty-root"),
    pytest.param("<xml>just text</xml>", id="text-root"),
])
def test_no_xml_root_is_a_bad_request(text):
    with pytest.raises(BadRequest, match="no <xml> root"):
        xml_fields(text)


def test_xml_fields_keeps_only_flat_text_fields():
    fields = xml_fields("<xml><A><![CDATA[a]]></A><B><C>c</C></B><D><![CDATA[]]></D><E>1</E><E>2</E></xml>")
    assert fields == {"A": "a"}


def test_split_text_never_cuts_a_character_and_prefers_line_ends():
    text = "第一行\n" + "好" * 700  # 10 + 2,100 bytes
    parts = split_text(text, 2048)
    assert "".join(parts) == text and all(len(p.encode()) <= 2048 for p in parts)
    assert split_text("", 10) == [] and split_text("abc", 10) == ["abc"]
