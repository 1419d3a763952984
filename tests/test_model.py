"""The normalised model: segment fallbacks and lossless round trips."""

from datetime import UTC, datetime

from gateway.model import Event, Identity, Message, Segment


def test_unsupported_segments_fall_back_to_text():
    msg = Message([Segment.text("新品到店："), Segment("product", {"name": "托特包", "price": "399.00", "url": "https://x/p/1"}),
                   Segment("image", {"url": "https://x/a.png"})])
    assert msg.render(frozenset({"text", "image"})) == [
        Segment.text("新品到店：\n【托特包】¥399.00 https://x/p/1"), Segment("image", {"url": "https://x/a.png"})]
    assert msg.render(frozenset({"text"})) == [Segment.text("新品到店：\n【托特包】¥399.00 https://x/p/1\n[图片] https://x/a.png")]
    assert msg.plain_text == "新品到店：\n【托特包】¥399.00 https://x/p/1\n[图片] https://x/a.png"


def test_event_round_trip():
    ev = Event("message", "customer", Identity("webchat", "app", "u1"), "msg:u1:1", datetime(2026, 5, 1, tzinfo=UTC),
               message=Message([Segment.text("hi"), Segment("location", {"lat": 31.2, "lng": 121.4, "label": "店"})], "小林"),
               payload={"client_msg_id": "1"}, profile={"name": "A"})
    assert Event.from_dict(ev.to_dict()) == ev
