"""Benchmark: a campaign to N customers, materialised and dispatched at a platform's cap.

A fresh PostgreSQL database (server from TEST_PG_URL) gets N customers, each with a webchat
identity and an open binding to one of 50 clerks (written with set-based SQL, not timed). Then:

  * materialise — the scheduler's tick creates the run and `run_pending` turns the audience into
    deliveries and outbox rows, batch by batch, exactly as in production. Timed, with the peak
    RSS of this process before and after;
  * dispatch — the outbox sends for `--dispatch-seconds` through the webchat account capped with
    `rate_per_sec = --cap` (burst = cap). Every send is timestamped; the achieved rate is sends /
    window as % of the cap, and "over cap" counts the 1-second windows (sliding, at each send)
    holding more than cap + burst sends — it must be 0.

    .venv/bin/python bench/campaign.py [--customers N] [--cap R] [--dispatch-seconds S] [--batch B]

Aims (issue 7): materialise 1,000,000 in < 60 s, peak RSS < 300 MB, ≥ 99 % of the cap, 0 over it.
The run's deadlocks and retries are printed too (common.RunHealth).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import platform
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "bench"):  # run as a script, or imported as bench.campaign (chaos)
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import asyncpg  # noqa: E402
from common import RunHealth, health_line, quiet_logging  # noqa: E402

from gateway import scheduler  # noqa: E402
from gateway.config import build_config  # noqa: E402
from gateway.db import upgrade  # noqa: E402
from gateway.models import Campaign  # noqa: E402
from gateway.runtime import Gateway  # noqa: E402

PG_DEFAULT = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
COMMIT = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def seed(dsn: str, n: int) -> None:
    """N customers with a webchat identity and an advisor, in a few set-based statements."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO store (name, created_at) VALUES ('静安店', now())")
        await conn.execute("INSERT INTO clerk (name, display_name, store_id, role, status, created_at) "
                           "SELECT '导购' || g, '导购' || g, 1, 'clerk', 'active', now() FROM generate_series(1, 50) g")
        await conn.execute("INSERT INTO customer (name, store_id, created_at) "
                           "SELECT '顾客' || g, 1, now() FROM generate_series(1, $1) g", n)
        await conn.execute("INSERT INTO identity (customer_id, platform, account, external_id, profile, created_at) "
                           "SELECT id, 'webchat', 'webchat', 'u-' || id, json_build_object('name', name), now() "
                           "FROM customer")
        await conn.execute("UPDATE customer c SET last_identity_id = i.id FROM identity i WHERE i.customer_id = c.id")
        await conn.execute("INSERT INTO binding (customer_id, clerk_id, store_id, valid_from, source) "
                           "SELECT id, 1 + id % 50, 1, now() - interval '30 days', 'invite' FROM customer")
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def over_cap(times: list[float], cap: float) -> int:
    """Sends that made any 1-second window hold more than cap + burst (= 2 × cap) sends."""
    limit = 2 * cap
    return sum(1 for i, t in enumerate(times) if i + 1 - bisect.bisect_left(times, t - 1.0) > limit)


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--cap", type=float, default=2000.0)
    ap.add_argument("--dispatch-seconds", type=float, default=20.0)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    digest = quiet_logging()

    admin = os.environ.get("TEST_PG_URL", PG_DEFAULT)
    name = f"gw_bench_{uuid.uuid4().hex[:10]}"
    aconn = await asyncpg.connect(admin.replace("postgresql+asyncpg://", "postgresql://"))
    await aconn.execute(f'CREATE DATABASE "{name}"')
    url = admin.rsplit("/", 1)[0] + f"/{name}"
    out: dict = {"customers": args.customers, "cap_per_sec": args.cap, "batch": args.batch,
                 "machine": f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}",
                 "commit": COMMIT}
    try:
        await upgrade(url)
        health = await RunHealth(url).start()
        t0 = time.perf_counter()
        await seed(url.replace("postgresql+asyncpg://", "postgresql://"), args.customers)
        out["seed_s"] = round(time.perf_counter() - t0, 1)
        cfg = build_config({
            "database": {"url": url, "pool_size": 10},
            "server": {"first_run_seed": False},
            "policies": {"quiet_hours": None, "max_pushes": {"per_week": None}},
            "campaigns": {"batch": args.batch},
            "outbox": {"concurrency": 256, "batch": 500, "poll_interval": 0.05},
            "accounts": [{"name": "workbench", "platform": "workbench"},
                         {"name": "webchat", "platform": "webchat", "secret": "x" * 32, "rate_per_sec": args.cap}],
        }, env={})
        gw = Gateway(cfg)
        async with gw.db() as s:
            c = Campaign(name="bench", kind="notice", content={"text": "{customer_name}您好，{advisor_name}：新品到店"},
                         audience={}, sender="advisor", schedule={"at": gw.clock.now().isoformat()},
                         status="scheduled", next_run_at=gw.clock.now())
            s.add(c)
            await s.commit()
        rss0 = rss_mb()
        t0 = time.perf_counter()
        await scheduler.tick(gw)
        await scheduler.run_pending(gw, "bench")
        out["materialize_s"] = round(time.perf_counter() - t0, 1)
        out["materialize_per_s"] = round(args.customers / out["materialize_s"])
        out["rss_before_mb"], out["rss_peak_mb"] = round(rss0), round(rss_mb())

        times: list[float] = []
        webchat = gw.adapters["webchat"]
        real_send = webchat.send

        async def timed_send(*a, **kw):
            times.append(time.perf_counter())
            return await real_send(*a, **kw)

        webchat.send = timed_send
        await gw.start()
        await asyncio.sleep(args.dispatch_seconds)
        await gw.stop()
        window = times[-1] - times[0] if len(times) > 1 else 0
        rate = (len(times) - 1) / window if window else 0
        out.update(dispatched=len(times), dispatch_window_s=round(window, 1), achieved_per_s=round(rate),
                   achieved_pct_of_cap=round(100 * rate / args.cap, 1), over_cap=over_cap(times, args.cap),
                   rss_peak_after_dispatch_mb=round(rss_mb()))
        await gw.engine.dispose()
        out["health"] = await health.finish()
    finally:
        await aconn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await aconn.close()
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
    else:
        for k, v in out.items():
            if k != "health":
                print(f"{k:>28}: {v}")
        print(health_line(out["health"]))
        for line in digest.lines():
            print(line)
        aims = [("materialise < 60 s (at 1M)", out["materialize_s"] * 1_000_000 / args.customers < 60),
                ("peak RSS < 300 MB", out["rss_peak_after_dispatch_mb"] < 300),
                ("≥ 99 % of the cap", out["achieved_pct_of_cap"] >= 99), ("0 sends over the cap", out["over_cap"] == 0)]
        for label, ok in aims:
            print(f"{'met' if ok else 'NOT MET':>28}: {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
