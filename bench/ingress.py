"""Benchmark: webchat inbound → persisted → relayed to the workbench.

Two servers in this one process, driven by the same load generator (one aiohttp.ClientSession,
TCPConnector(limit=C), C workers posting N messages in all, latency = perf_counter around each POST):

  * baseline — a bare aiohttp app whose only handler reads the JSON body and answers 202;
  * gateway  — an in-process gateway on a temporary SQLite (or a fresh PostgreSQL database with
    `--db postgres`), one store, one clerk with the workbench open (a hub subscription), and K
    customers logged in through the brand's signed session and bound through an invite.

For the gateway two things are measured: the ack of the POST (claim persisted, 202 returned), and
end to end: from the first POST until the relay `【name #n】m<seq> …` of every message has been
published to the clerk's workbench by the outbox. Per message end-to-end latency is send → relayed.

    .venv/bin/python bench/ingress.py [--messages N] [--concurrency C] [--customers K]
                                      [--db sqlite|postgres] [--json] [--profile FILE]

The aim (from the issue): end-to-end msgs/s ≥ 25 % of the bare handler's msgs/s. Missing the aim
is reported, not an error; the exit code is non-zero only when something failed. The run's
deadlocks and retries are printed too (common.RunHealth).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import sys
import time
import uuid
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp  # noqa: E402
from common import (  # noqa: E402
    BASELINE_ROUNDS,
    BENCH_POLICIES,
    TEXT,
    WARMUP,
    Backlog,
    BareShape,
    BenchError,
    Database,
    HubCounter,
    Profile,
    RunHealth,
    Stats,
    drive,
    e2e_stats,
    health_line,
    machine,
    make_world,
    outbox_idle,
    quiet_logging,
    run_baseline,
    serve,
)
from sqlalchemy import func, select  # noqa: E402

from adapters.webchat.simulator import BrandApp  # noqa: E402
from gateway.app import create_app  # noqa: E402
from gateway.config import build_config  # noqa: E402
from gateway.models import Outbox  # noqa: E402
from gateway.runtime import Gateway  # noqa: E402
from gateway.serve import tune_interpreter  # noqa: E402

AIM = 0.25
E2E_TIMEOUT = 120.0
_SEQ = re.compile(r"^【[^】]*】([mw])(\d+) ")


def message_body(seq: int, tag: str) -> dict:
    return {"text": f"{tag}{seq} {TEXT}", "client_msg_id": f"{tag}-{seq}-{uuid.uuid4().hex[:12]}"}


async def run_baseline_webchat(args) -> Stats:
    headers = {"Authorization": "Bearer " + "x" * 120}  # about the size of a webchat session token

    def requests_for(server: str):
        url = f"{server}/webchat/x/messages"
        return lambda seq, tag: (url, headers, message_body(seq, tag))

    return await run_baseline(BareShape(202, echo_json=True), requests_for, messages=args.messages,
                              concurrency=args.concurrency)


# -- gateway --------------------------------------------------------------------------------------


async def run_gateway(args, url: str) -> dict:
    secret = secrets.token_hex(16)
    cfg = build_config({
        "database": {"url": url},
        "server": {"first_run_seed": False},
        "policies": BENCH_POLICIES,
        "accounts": [{"name": "workbench", "platform": "workbench"},
                     {"name": "webchat", "platform": "webchat", "secret": secret}],
    }, env={})
    gw = Gateway(cfg)
    await gw.start()
    runner, server = await serve(create_app(gw, manage_lifecycle=False))
    cfg.server.public_url = server
    relays: HubCounter | None = None
    try:
        clerk_id, invite = await make_world(gw)
        relays = HubCounter(gw.hub(), [("workbench", str(clerk_id))], _SEQ)
        async with aiohttp.ClientSession() as setup:
            brand = BrandApp(setup, server, "webchat", secret)
            customers = []
            for i in range(args.customers):
                c = await brand.login(f"bench-{i}", f"顾客{i:03d}")
                status, body = await c.bind(invite)
                if status != 200:
                    raise BenchError(f"bind of customer {i} failed: {status} {body}")
                customers.append(c)
        await outbox_idle(gw)
        msg_url = f"{server}/webchat/webchat/messages"
        headers = [c.headers for c in customers]

        def request_for(seq: int, tag: str):
            return msg_url, headers[seq % len(headers)], message_body(seq, tag)

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency)) as http:
            warm = await drive(http, request_for, WARMUP, args.concurrency, tag="w")
            if warm.errors:
                raise BenchError(f"gateway warm-up: {len(warm.errors)} failed, first: {warm.errors[0]}")
            await relays.wait("w", WARMUP, E2E_TIMEOUT, "the workbench")
            await outbox_idle(gw)

            with Profile(args.profile):
                backlog = Backlog(gw)
                load = await drive(http, request_for, args.messages, args.concurrency)
                relayed_at_last_ack = len(relays.arrived["m"])
                await backlog.close()
                if load.errors:
                    raise BenchError(f"gateway: {len(load.errors)} failed requests, first: {load.errors[0]}")
                await relays.wait("m", args.messages, E2E_TIMEOUT, "the workbench")

        await outbox_idle(gw)  # the relays are out; let the outbox record them before checking
        drained = time.perf_counter() - load.started
        e2e = e2e_stats(load, relays.arrived["m"], args.messages)
        async with gw.db() as s:
            sent = (await s.execute(select(func.count()).select_from(Outbox)
                                    .where(Outbox.kind == "relay", Outbox.status == "sent"))).scalar()
        if sent != args.messages + WARMUP:
            raise BenchError(f"outbox shows {sent} relays sent, expected {args.messages + WARMUP}")
        return {"ack": load.stats(), "e2e": e2e, "drained_s": round(drained, 2), "peak_backlog": backlog.peak,
                "relayed_at_last_ack": relayed_at_last_ack,
                "limiter_wait_s": round(sum(b.waited for b in gw.outbox._limiters.values()), 3)}
    finally:
        if relays is not None:
            await relays.close()
        await runner.cleanup()
        await gw.stop()


# -- report ---------------------------------------------------------------------------------------


def table(result: dict) -> str:
    base, ack, e2e = result["baseline"], result["gateway_ack"], result["gateway_e2e"]
    rows = [
        (f"bare aiohttp handler (median of {BASELINE_ROUNDS})", base, None),
        (f"gateway ack (POST → 202, {result['db']})", ack, result["ack_ratio"]),
        (f"gateway end to end ({result['db']})", e2e, result["e2e_ratio"]),
    ]
    lines = [f"{'':<36} {'msgs/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'vs bare':>8}"]
    for name, st, r in rows:
        ratio = "" if r is None else f"{r * 100:.1f} %"
        lines.append(f"{name:<36} {st['msgs_per_s']:>9.1f} {st['p50_ms']:>9.2f} {st['p99_ms']:>9.2f} {ratio:>8}")
    return "\n".join(lines)


async def main_async(args) -> dict:
    base = await run_baseline_webchat(args)
    async with Database(args.db) as url:
        health = await RunHealth(url).start()
        gw = await run_gateway(args, url)
        run_health = await health.finish()
    ack_ratio = gw["ack"].rate / base.rate
    e2e_ratio = gw["e2e"].rate / base.rate
    return {
        "db": args.db,
        "messages": args.messages,
        "concurrency": args.concurrency,
        "customers": args.customers,
        "machine": await machine(),
        "baseline": base.as_dict(),
        "gateway_ack": gw["ack"].as_dict(),
        "gateway_e2e": gw["e2e"].as_dict(),
        "ack_ratio": round(ack_ratio, 4),
        "e2e_ratio": round(e2e_ratio, 4),
        "outbox_rate_limiter_wait_s": gw["limiter_wait_s"],
        "outbox_drained_s": gw["drained_s"],
        "peak_ingress_backlog": gw["peak_backlog"],
        "relayed_when_last_post_acked": gw["relayed_at_last_ack"],
        "aim": AIM,
        "aim_met": e2e_ratio >= AIM,
        "health": run_health,
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=3000, help="messages per measured run (default 3000)")
    p.add_argument("--concurrency", type=int, default=50, help="concurrent client workers (default 50)")
    p.add_argument("--customers", type=int, default=50, help="bound customers the messages are spread over")
    p.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--profile", metavar="FILE", help="cProfile the measured gateway run into FILE (pstats)")
    args = p.parse_args(argv)
    if args.messages < 1 or args.concurrency < 1 or args.customers < 1:
        p.error("--messages, --concurrency and --customers must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    digest = quiet_logging()
    started = time.monotonic()
    try:
        tune_interpreter()  # as `gateway serve` does
        result = asyncio.run(main_async(args))
    except BenchError as e:
        print(f"BENCH FAILED: {e}", file=sys.stderr)
        return 1
    result["wall_s"] = round(time.monotonic() - started, 1)
    result["gateway_log"] = digest.summary()
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return 0
    m = result["machine"]
    print(f"Advisor Gateway ingress benchmark — {args.messages} messages, concurrency {args.concurrency}, "
          f"{args.customers} customers, {args.db}")
    print(f"machine: {m['cpus']} CPUs, Python {m['python']}, {m['platform']}; aiohttp {m['aiohttp']}, "
          f"SQLAlchemy {m['sqlalchemy']}; commit {m['commit']}\n")
    print(table(result))
    print(f"\nwhile posting: peak {result['peak_ingress_backlog']} acknowledged messages waiting to be processed; "
          f"{result['relayed_when_last_post_acked']} of {args.messages} relayed when the last POST was acknowledged")
    print(f"outbox: every row recorded as sent {result['outbox_drained_s']} s after the first POST; "
          f"its rate limiter waited {result['outbox_rate_limiter_wait_s']} s in total")
    verdict = "MET" if result["aim_met"] else "NOT MET"
    print(f"aim (end to end ≥ {AIM:.0%} of the bare handler): {verdict} — "
          f"{result['e2e_ratio'] * 100:.1f} % (ack {result['ack_ratio'] * 100:.1f} %)")
    print(health_line(result["health"]))
    for line in digest.lines():
        print(line)
    print(f"wall time {result['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
