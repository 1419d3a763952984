"""DingTalk parsing against vectors tagged with the expected Events, and its signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapters.dingtalk import crypto, events
from adapters.media import MediaLinks
from gateway.adapter import BadRequest, Unauthorized

VECTORS = sorted((Path(__file__).parent / "vectors" / "dingtalk").glob("*.json"))


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_parse_vector(path):
    v = json.loads(path.read_text(encoding="utf-8"))
    raw = events.DingTalkRaw("dt", v["kind"], v["body"], datetime(2026, 1, 1, tzinfo=UTC),
                             MediaLinks("http://gw.example/media/dt"))
    got = [
        {"type": e.type, "side": e.side, "sender": [e.sender.platform, e.sender.account, e.sender.external_id],
         "dedupe_key": e.dedupe_key, "segments": [s.to_dict() for s in e.message.segments] if e.message else None,
         "profile": e.profile, **({"occurred_at": e.occurred_at.isoformat()} if e.message else {}),
         **({"quote": e.payload["quote"]} if "quote" in e.payload else {})}
        for e in events.parse(raw)
    ]
    assert got == v["expected"]


@pytest.mark.parametrize("body, field", [({"msgtype": "text"}, "msgId"), ({"msgId": "m", "msgtype": "text"}, "senderStaffId")])
def test_malformed_robot_message(body, field):
    with pytest.raises(BadRequest) as e:
        events.parse(events.DingTalkRaw("dt", "robot", body, datetime.now(UTC)))
    assert e.value.field == field


def test_robot_sign_is_the_documented_formula():
    secret, ts = "this-is-secret", "1577262236757"
    expected = base64.b64encode(hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest()).decode()
    assert crypto.robot_sign(secret, ts) == expected
    now = int(ts)
    crypto.check_robot_sign(secret, ts, expected, now, 3600)
    crypto.check_robot_sign(secret, ts, expected, now + 3599_000, 3600)
    for args in [(ts, "AAAA", now), (ts, expected, now + 3601_000), (ts, expected, now - 3601_000), ("", expected, now),
                 (ts, crypto.robot_sign("other-secret", ts), now)]:
        with pytest.raises(Unauthorized):
            crypto.check_robot_sign(secret, args[0], args[1], args[2], 3600)


def test_event_envelope_round_trip_and_tampering():
    c = crypto.EventCrypto("123456", "4g5j64qlyl3zvetqxz5jiocdr586fn2zvjpa8zls3ij", "suite4xxxxxxxxxxxxxxx")
    env = c.encrypt('{"EventType": "check_url"}')
    assert c.decrypt(env["msg_signature"], env["timeStamp"], env["nonce"], env["encrypt"]) == '{"EventType": "check_url"}'
    with pytest.raises(Unauthorized):
        c.decrypt("0" * 40, env["timeStamp"], env["nonce"], env["encrypt"])
    other = crypto.EventCrypto("123456", "4g5j64qlyl3zvetqxz5jiocdr586fn2zvjpa8zls3ij", "dingcorp-other")
    with pytest.raises(Unauthorized):  # the receiveId (corp id) must match
        other.decrypt(env["msg_signature"], env["timeStamp"], env["nonce"], env["encrypt"])


def test_published_dingtalk_sdk_vector_decrypts():
    """PLATFORM_RULES.md's vector (dingtalk-sdk tests/test_crypto.py) through our event crypto."""
    c = crypto.EventCrypto("123456", "4g5j64qlyl3zvetqxz5jiocdr586fn2zvjpa8zls3ij", "suite4xxxxxxxxxxxxxxx")
    encrypt = ("1a3NBxmCFwkCJvfoQ7WhJHB+iX3qHPsc9JbaDznE1i03peOk1LaOQoRz3+nlyGNhwmwJ3vDMG+OzrHMeiZI7gTRWVdUBm"
               "fxjZ8Ej23JVYa9VrYeJ5as7XM/ZpulX8NEQis44w53h1qAgnC3PRzM7Zc/D6Ibr0rgUathB6zRHP8PYrfgnNOS9PhSBdH"
               "legK+AGGanfwjXuQ9+0pZcy0w9lQ==")
    plain = c.decrypt("5a65ceeef9aab2d149439f82dc191dd6c5cbe2c0", "1445827045067", "nEXhMP4r", encrypt)
    assert json.loads(plain)["EventType"] == "check_create_suite_url"
    with pytest.raises(Unauthorized):
        c.decrypt("5a65ceeef9aab2d149439f82dc191dd6c5cbe2c0", "1445827045068", "nEXhMP4r", encrypt)
