"""Operations: /metrics, /readyz, JSON logs with request ids and masked phones, scheduler leadership."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from sqlalchemy import text

from gateway import logs
from gateway.db import make_engine
from gateway.leader import Leadership
from tests.test_relay import sims


def sample(body: str, name: str, **labels) -> float | None:
    """The value of one Prometheus sample in the text exposition, or None."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in body.splitlines():
        head, _, value = line.rpartition(" ")
        if head == (f"{name}{{{want}}}" if want else name):
            return float(value)
    return None


async def test_metrics_count_inbound_sends_and_requests(client, gw, world):
    brand, clerk = sims(client, world)
    alice = await brand.login("u-metrics", "Alice")
    await alice.bind(world.invite)
    await alice.say("你好")
    await clerk.wait_for(lambda m: m["text"].startswith("【Alice #1】你好"))
    async with client.session.post(f"{alice.base}/messages", json={"text": "x", "client_msg_id": "m1"},
                                   headers={"Authorization": "Bearer forged"}) as resp:
        assert resp.status == 401
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.content_type == "text/plain"
    body = await resp.text()
    assert sample(body, "gateway_inbound_total", platform="webchat", result="accepted") >= 1
    assert sample(body, "gateway_sends_total", platform="workbench", result="sent") >= 1
    assert sample(body, "gateway_outbox_depth", status="sent") >= 2  # the welcome and the relay
    assert sample(body, "gateway_outbox_oldest_due_seconds") is not None
    assert sample(body, "gateway_scheduler_leader") is not None
    assert sample(body, "gateway_http_requests_total", method="GET", route="/metrics", status="200") is None
    again = await (await client.get("/metrics")).text()  # the first scrape is counted by the second
    assert sample(again, "gateway_http_requests_total", method="GET", route="/metrics", status="200") == 1
    assert sample(again, "gateway_http_requests_total", method="POST", route="/webchat/webchat/messages",
                  status="401") == 1


async def test_readyz_reports_database_adapters_and_scheduler(client, gw, world, monkeypatch):
    gw.started = False
    assert (await client.get("/readyz")).status == 503  # not started (or stopping)
    gw.started = True
    for _ in range(50):  # the scheduler loop checks leadership on its first tick
        if gw.leadership.is_leader:
            break
        await asyncio.sleep(0.05)
    body = await (await client.get("/readyz")).json()
    assert body["status"] == "ready"
    assert body["checks"]["adapters"] == {"workbench": True, "webchat": True}
    assert body["checks"]["database"] is True and body["checks"]["scheduler"] == "leader"
    monkeypatch.setattr(gw.adapters["workbench"], "connected", lambda: False)
    resp = await client.get("/readyz")
    assert resp.status == 503 and (await resp.json())["checks"]["adapters"]["workbench"] is False
    assert (await client.get("/healthz")).status == 200  # the process is alive all the same


async def test_logs_are_json_lines_with_request_id_and_masked_phones(client, gw, world):
    out = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.setup("json", stream=out)
    try:
        resp = await client.get("/api/v1/stores", headers={"X-Request-Id": "req-42",
                                                           "Authorization": f"Bearer {world.admin_token}"})
        assert resp.status == 200 and resp.headers["X-Request-Id"] == "req-42"
        resp = await client.get("/healthz", headers={"X-Request-Id": "bad id with spaces"})
        generated = resp.headers["X-Request-Id"]
        assert generated != "bad id with spaces" and len(generated) == 16
        logging.getLogger("gateway.test").warning("customer phone 13812345678 changed", extra={"note": "+8613912345678"})
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    access = [x for x in lines if x.get("logger") == "gateway.access"]
    assert {"event": "GET /api/v1/stores 200", "request_id": "req-42", "status": 200}.items() <= access[0].items()
    assert access[1]["request_id"] == generated and access[0]["timestamp"].endswith("Z")
    masked = [x for x in lines if x.get("logger") == "gateway.test"][0]
    assert masked["event"] == "customer phone 138****5678 changed" and masked["note"] == "+86139****5678"
    assert masked["level"] == "warning" and "request_id" not in masked


async def test_one_scheduler_leader_and_takeover_when_it_dies(pg_database):
    db_url = pg_database
    a_engine, b_engine = make_engine(db_url), make_engine(db_url)
    a, b = Leadership(a_engine, key=991), Leadership(b_engine, key=991)
    try:
        assert await a.check() is True
        assert await b.check() is False and await a.check() is True  # one leader; it keeps leading
        pid = (await a._conn.execute(text("SELECT pg_backend_pid()"))).scalar()
        async with b_engine.connect() as c:  # the leader's connection dies (as when its process is killed)
            await c.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        for _ in range(100):  # the server frees the lock once the backend has exited: a later check takes it
            if await b.check():
                break
            await asyncio.sleep(0.05)
        assert b.is_leader
        assert await a.check() is False  # it notices and stands by
        await b.release()
        assert await a.check() is True  # a clean stop hands leadership on at once
    finally:
        await a.release()
        await b.release()
        await a_engine.dispose()
        await b_engine.dispose()
