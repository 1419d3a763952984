"""Benchmark: more processes on one PostgreSQL database — two `gateway serve` instances, or one
`gateway serve --workers 2` — against one `gateway serve --workers 1` (issue 17, aim 5).

Three configurations, each on a fresh PostgreSQL database, with real `gateway serve` subprocesses
and the same config (workbench + webchat, `server.fanout: auto`, everything else default, access
log on as in production, logs to files):

  * one        — one process, `--workers 1` (the baseline of both comparisons);
  * instances  — two processes, each `--workers 1`, on their own ports;
  * workers    — one process `--workers 2`: a supervisor and two workers on one port
                 (SO_REUSEPORT: the kernel spreads the connections over them).

One store, C clerks, K webchat customers bound round robin through the invites. Each clerk has
their workbench WebSocket open on the first process (with workers: on whichever worker the kernel
gives the connection to): a relay sent by another process reaches it over PostgreSQL
LISTEN/NOTIFY (gateway/hub.py PgHub). The load generator (this process) spreads the messages
round robin over the instances' ports (a customer's messages alternate between them: no sticky
sessions), or opens its many connections to the workers' one port; it counts the relays
`【name #n】m<seq> …` received on the sockets; a message's end-to-end latency runs from its POST to
its relay's arrival.

    .venv/bin/python bench/instances.py [--compare instances|workers|both] [--clerks C [C …]]
                                        [--messages N] [--concurrency C] [--customers K]
                                        [--rate R --seconds S] [--json] [--profile PREFIX]

Closed loop by default (msgs/s and p99 of each configuration, and its ratio to one process);
`--rate R --seconds S` drives every configuration with the open-loop fixed-rate generator instead.
`--clerks 5 50` runs the comparison for each clerk count (aims: ≥ 1.5× with 5 clerks, ≥ 1.8× with
50). At the end of each run the database is checked: every message stored once, relayed once (one
outbound message and one sent outbox row per message), and every relay received exactly once on
the sockets; the run's deadlocks and retries are counted (common.RunHealth).
`--profile PREFIX` runs each single-worker process under cProfile (PREFIX.<config>.<i>.prof,
written at SIGTERM); the workers of `--workers 2` are not profiled.

The exit code is non-zero only when something failed (a refused request, a relay missing or
doubled, a process or worker that died); a missed aim is reported, not an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp  # noqa: E402
from common import (  # noqa: E402
    TEXT,
    WARMUP,
    BenchError,
    Database,
    Instance,
    RunHealth,
    client,
    drive,
    e2e_stats,
    fmt_table,
    health_cell,
    health_line,
    log_lines,
    machine,
    machine_busy,
    machine_line,
    make_clerks,
    ms,
    open_loop,
    open_loop_summary,
    quiet_logging,
    scan_logs,
    top_functions,
    wait_arrivals,
    write_serve_config,
)
from sqlalchemy import func, select  # noqa: E402

from adapters.webchat.simulator import BrandApp  # noqa: E402
from gateway.db import make_engine, session_factory  # noqa: E402
from gateway.models import ChatMessage, InboundClaim, Outbox  # noqa: E402

TO_CLERK = re.compile(r"^【[^】]*】([mw])(\d+) ")
AIMS = {5: 1.5, 50: 1.8}  # issue 17, aim 5: two processes vs one, by clerk count


@dataclass(frozen=True)
class Setup:
    key: str
    label: str
    processes: int  # `gateway serve` processes, each on its own port
    workers: int  # `--workers` of each


ONE = Setup("one", "1 process", 1, 1)
SETUPS = {"instances": Setup("instances", "2 instances", 2, 1),
          "workers": Setup("workers", "1 process × 2 workers", 1, 2)}


# -- the clerks' workbench pages -------------------------------------------------------------------------


class Sockets:
    """The clerks' workbench WebSockets, all on the first process (with workers: on whichever the
    kernel gives each connection to); stamps each relay as it arrives."""

    def __init__(self):
        self.arrived: dict[str, dict[int, float]] = {"m": {}, "w": {}}
        self.duplicates = 0
        self.other = 0
        self._ws: list[aiohttp.ClientWebSocketResponse] = []
        self._tasks: list[asyncio.Task] = []
        self._http: aiohttp.ClientSession | None = None

    async def open(self, base: str, tokens: list[str]) -> None:
        # Their own session: a socket holds its connection for good, and must not take one of the
        # load generator's connections (with as many clerks as connections, nothing would be sent).
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        for token in tokens:
            ws = await self._http.ws_connect(f"{base}/workbench/api/ws", params={"token": token}, heartbeat=20)
            self._ws.append(ws)
            self._tasks.append(asyncio.create_task(self._read(ws)))
        await asyncio.sleep(0.3)  # the server subscribes after the upgrade

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            now = time.perf_counter()
            try:
                text = json.loads(msg.data).get("text") or ""
            except ValueError:
                continue
            m = TO_CLERK.search(text)
            if not m:
                self.other += 1
                continue
            got = self.arrived[m.group(1)]
            if int(m.group(2)) in got:
                self.duplicates += 1
            else:
                got[int(m.group(2))] = now

    async def wait(self, tag: str, n: int, timeout: float, *, partial_ok: bool = False) -> bool:
        def alive() -> None:
            if any(t.done() for t in self._tasks):
                raise BenchError("a workbench socket closed")

        return await wait_arrivals(self.arrived[tag], n, timeout, "the workbench sockets", alive=alive,
                                   partial_ok=partial_ok)

    async def close(self) -> None:
        for ws in self._ws:
            await ws.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()


# -- one configuration -------------------------------------------------------------------------------------


def profile_tops(paths: list[str | None]) -> dict[str, str]:
    return {p: top_functions(p) for p in paths if p and os.path.exists(p)}


def write_config(path: Path, url: str, secret: str, workers: int = 1) -> None:
    write_serve_config(path, url, [{"name": "workbench", "platform": "workbench"},
                                   {"name": "webchat", "platform": "webchat", "secret": secret}], workers)


async def check_database(url: str, n: int) -> dict:
    """Every measured message stored once and relayed once, counted in the database; and how the
    relays' sends were shared among the processes (outbox.claimed_by names the process)."""
    engine = make_engine(url)
    try:
        async with session_factory(engine)() as s:
            m = ChatMessage
            inbound = (await s.execute(select(func.count(), func.count(func.distinct(m.client_msg_id)))
                                       .where(m.direction == "in", m.text.like("m%")))).one()
            relays = (await s.execute(select(func.count(), func.count(func.distinct(m.text)))
                                      .where(m.direction == "out", m.platform == "workbench",
                                             m.text.like("【%】m%")))).one()
            sent = (await s.execute(select(func.count()).select_from(Outbox)
                                    .where(Outbox.kind == "relay", Outbox.status == "sent"))).scalar()
            pid = func.split_part(Outbox.claimed_by, ":", 2)  # claimed_by: host:pid:lane
            senders = (await s.execute(select(pid, func.count()).where(Outbox.kind == "relay", Outbox.status == "sent")
                                       .group_by(pid))).all()
            claims = (await s.execute(select(InboundClaim.status, func.count()).group_by(InboundClaim.status))).all()
    finally:
        await engine.dispose()
    return {"inbound_rows": inbound[0], "inbound_distinct": inbound[1], "relay_rows": relays[0],
            "relay_distinct": relays[1], "relays_sent_in_outbox": sent, "claims": dict(claims),
            "relays_sent_by_process": sorted((c for _, c in senders), reverse=True),
            "exactly_once": inbound[0] == inbound[1] == n and relays[0] == relays[1] == n and sent == n + WARMUP}


async def run_config(setup: Setup, clerk_count: int, args, workdir: Path) -> dict:
    secret = secrets.token_hex(16)
    instances: list[Instance] = []
    sockets = Sockets()
    n = int(args.rate * args.seconds) if args.rate else args.messages
    async with Database("postgres") as url:
        health = await RunHealth(url).start()
        cfg = workdir / f"gateway-{setup.key}-{clerk_count}.yaml"
        write_config(cfg, url, secret, setup.workers)
        try:
            engine = make_engine(url)
            try:
                clerks = await make_clerks(SimpleNamespace(engine=engine), clerk_count)
            finally:
                await engine.dispose()
            for i in range(setup.processes):
                prof = f"{args.profile}.{setup.key}-{clerk_count}.{i + 1}.prof" if args.profile else None
                instances.append(Instance(i + 1, workdir, prof, setup.workers))
                await instances[-1].start(cfg)
            async with aiohttp.ClientSession() as http:
                for inst in instances:
                    await inst.ready(http)
                brand = BrandApp(http, instances[0].url, "webchat", secret)
                tokens = []
                for i in range(args.customers):
                    c = await brand.login(f"bench-{i}", f"顾客{i:03d}")
                    status, body = await c.bind(clerks[i % len(clerks)][2])
                    if status != 200:
                        raise BenchError(f"bind of customer {i} failed: {status} {body}")
                    tokens.append(c.token)
            k = len(tokens)

            def request_for(seq: int, tag: str):
                inst = instances[(seq + seq // k) % len(instances)]  # alternate, and move each customer along
                body = {"text": f"{tag}{seq} {TEXT}", "client_msg_id": f"{tag}-{seq}-{uuid.uuid4().hex[:12]}"}
                return f"{inst.url}/webchat/webchat/messages", {"Authorization": f"Bearer {tokens[seq % k]}"}, body

            async with client(args.connections if args.rate else args.concurrency, timeout=args.timeout) as http:
                await sockets.open(instances[0].url, [t for _, t, _ in clerks])
                warm = await drive(http, request_for, WARMUP, args.concurrency, tag="w")
                if warm.errors:
                    raise BenchError(f"warm-up: {len(warm.errors)} failed requests, first: {warm.errors[0]}")
                await sockets.wait("w", WARMUP, args.timeout)
                await asyncio.sleep(0.5)  # let the outboxes record the warm-up

                cpu0 = [inst.cpu_seconds() for inst in instances]
                busy0, total0 = machine_busy()
                if args.rate:
                    load = await open_loop(http, request_for, args.rate, args.seconds)
                else:
                    load = await drive(http, request_for, n, args.concurrency)
                if load.errors:
                    raise BenchError(f"{len(load.errors)} failed requests, first: {load.errors[0]}")
                try:
                    if args.rate:  # a configuration that fell behind gets `--drain` s after the last was due
                        cutoff = load.window_end + args.drain - time.perf_counter()
                        complete = await sockets.wait("m", n, max(1.0, cutoff), partial_ok=True)
                    else:
                        complete = await sockets.wait("m", n, args.timeout)
                except BenchError as e:
                    raise BenchError(f"{setup.label}: {e}; the database shows "
                                     f"{await check_database(url, n)}") from None
                cpu1 = [inst.cpu_seconds() for inst in instances]
                busy1, total1 = machine_busy()
                for inst, a, b in zip(instances, cpu0, cpu1, strict=True):
                    inst.check_alive()
                    if set(a) != set(b):  # the supervisor started a worker again: one died
                        raise BenchError(f"{setup.label}: a worker of instance {inst.index} died during the run "
                                         f"(pids {sorted(a)} → {sorted(b)}):\n{inst.log_tail()}")
            window = max(sockets.arrived["m"].values()) - load.started
            # the outboxes record sends in the background: give them a moment before counting
            deadline = time.monotonic() + 30
            while complete:
                db = await check_database(url, n)
                if db["exactly_once"] or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            else:  # cut off: what is in so far; the rest is still being processed
                db = await check_database(url, n)
        finally:
            await sockets.close()
            codes = [await inst.stop() for inst in instances]
            gateway_log = scan_logs([inst.log_path for inst in instances])
        run_health = await health.finish(log=gateway_log)
    e2e = e2e_stats(load, sockets.arrived["m"], n)
    result = {
        "config": setup.key,
        "label": setup.label,
        "processes": setup.processes,
        "workers": setup.workers,
        "ack": load.stats().as_dict(),
        "e2e": e2e.as_dict(),
        # per serving process (each instance, or each worker)
        "cpu_s_per_process": [round(b[pid] - a[pid], 2) for a, b in zip(cpu0, cpu1, strict=True) for pid in sorted(a)],
        "machine_busy": round((busy1 - busy0) / max(1.0, total1 - total0), 3),
        "window_s": round(window, 2),
        "ws_duplicates": sockets.duplicates,
        "ws_other": sockets.other,
        "database": db,
        "all_relayed": complete,
        "exit_codes": codes,
        "gateway_log": gateway_log,
        "health": run_health,
    }
    if args.rate:
        result["open_loop"] = open_loop_summary(load, sockets.arrived["m"], args.rate, n)
    if args.profile:
        result["profiles"] = [inst.profile for inst in instances if inst.profile]
        result["profile_top"] = profile_tops(result["profiles"])
    problems = []
    if sockets.duplicates:
        problems.append(f"{sockets.duplicates} relays arrived twice on the sockets")
    if complete and not db["exactly_once"]:
        problems.append(f"database: {db}")
    if not complete and (db["inbound_rows"] != db["inbound_distinct"] or db["relay_rows"] != db["relay_distinct"]):
        problems.append(f"database (cut off): duplicates: {db}")
    if problems:
        raise BenchError(f"{setup.label}: " + "; ".join(problems))
    return result


async def run_clerks(clerk_count: int, args, workdir: Path) -> dict:
    """The baseline and the compared configurations for one clerk count; their ratios to it."""
    runs = {ONE.key: await run_config(ONE, clerk_count, args, workdir)}
    for key in compared(args):
        runs[key] = await run_config(SETUPS[key], clerk_count, args, workdir)
    base = runs[ONE.key]["e2e"]["msgs_per_s"]
    scale = {key: round(runs[key]["e2e"]["msgs_per_s"] / base, 3) if base else None for key in compared(args)}
    aim = AIMS.get(clerk_count)
    return {"clerks": clerk_count, "runs": runs, "scale": scale, "aim": aim,
            "aim_met": {key: (v is not None and v >= aim) if aim else None for key, v in scale.items()}}


def compared(args) -> tuple[str, ...]:
    return tuple(SETUPS) if args.compare == "both" else (args.compare,)


# -- report ------------------------------------------------------------------------------------------------


def table(one_set: dict) -> str:
    rows = []
    base = one_set["runs"][ONE.key]["e2e"]["msgs_per_s"]
    for r in one_set["runs"].values():
        ratio = r["e2e"]["msgs_per_s"] / base if base else float("nan")
        rows.append([r["label"], f"{r['ack']['msgs_per_s']:.1f}", ms(r["ack"]["p50_ms"]), ms(r["ack"]["p99_ms"]),
                     f"{r['e2e']['msgs_per_s']:.1f}", ms(r["e2e"]["p50_ms"]), ms(r["e2e"]["p99_ms"]),
                     ms(r["e2e"]["max_ms"]), f"{ratio:.2f}×",
                     " + ".join(f"{c:.0f}" for c in r["cpu_s_per_process"]), f"{r['machine_busy'] * 100:.0f} %",
                     health_cell(r["health"])])
    return fmt_table(["", "ack/s", "ack p50", "ack p99", "e2e msgs/s", "e2e p50", "e2e p99", "e2e max", "vs 1",
                      "CPU s (processes)", "machine busy", "deadlocks / retries"], rows)


def report(result: dict, args) -> str:
    mode = (f"fixed rate {args.rate:g} msgs/s for {args.seconds:g} s (open loop)" if args.rate
            else f"{args.messages} messages, concurrency {args.concurrency}")
    lines = [f"Advisor Gateway instances benchmark — {mode}, {args.customers} customers, PostgreSQL; "
             f"webchat → workbench, the clerks' sockets on the first process",
             machine_line(result["machine"])]
    for one_set in result["sets"]:
        c = one_set["clerks"]
        lines += ["", f"{c} clerk{'s' if c != 1 else ''}:", table(one_set), ""]
        for r in one_set["runs"].values():
            db = r["database"]
            once = ("yes" if db["exactly_once"] else "NO") if r["all_relayed"] else "not checked (cut off)"
            lines.append(f"{r['label']}: database — {db['inbound_rows']} messages stored ({db['inbound_distinct']} "
                         f"distinct), {db['relay_rows']} relays ({db['relay_distinct']} distinct), "
                         f"{db['relays_sent_in_outbox']} relay rows sent incl. {WARMUP} warm-up (by process: "
                         f"{' + '.join(map(str, db['relays_sent_by_process']))}); sockets: {r['e2e']['n']} relays "
                         f"received, {r['ws_duplicates']} doubled; exactly once: {once}")
            lines.append(f"    {health_line(r['health'])}")
            if "open_loop" in r:
                ol = r["open_loop"]
                drained = (f"drained {ol['drain_after_window_s']:g} s later" if r["all_relayed"] else
                           f"cut off {args.drain:g} s later with {ol['not_relayed_at_cutoff']} not relayed (counted "
                           f"as infinitely late)")
                lines.append(f"    offered {ol['offered_per_s']:g}/s: acked {ol['acked_per_s']:g}/s, relayed "
                             f"{ol['relayed_per_s']:g}/s; backlog when the last was due: {ol['unacked_at_window_end']} "
                             f"unacked, {ol['unrelayed_at_window_end']} unrelayed; {drained}; "
                             f"kept up: {'yes' if ol['kept_up'] else 'NO'}")
            lines += ["    " + x for x in log_lines(r["gateway_log"])]
            for path, top in (r.get("profile_top") or {}).items():
                lines.append(f"\nprofile {path} — top functions:\n{top}\n")
        for key, v in one_set["scale"].items():
            aim = one_set["aim"]
            verdict = (f"aim ≥ {aim:g}×: {'MET' if one_set['aim_met'][key] else 'NOT MET'}" if aim
                       else "no aim for this clerk count")
            lines.append(f"{SETUPS[key].label} vs 1 process (end to end msgs/s), {c} clerks: "
                         f"{v:.2f}× — {verdict}" if v is not None else f"{SETUPS[key].label}: no baseline")
    lines.append(f"wall time {result['wall_s']} s")
    return "\n".join(lines)


async def main_async(args) -> dict:
    host = await machine()  # the commit as the run starts
    sets = []
    with tempfile.TemporaryDirectory(prefix="gw-instances-") as tmp:
        for clerk_count in args.clerks:
            sets.append(await run_clerks(clerk_count, args, Path(tmp)))
    return {
        "mode": "fixed rate" if args.rate else "closed loop",
        "compare": args.compare,
        "messages": int(args.rate * args.seconds) if args.rate else args.messages,
        "concurrency": args.concurrency, "customers": args.customers, "clerks": args.clerks,
        "rate": args.rate, "seconds": args.seconds if args.rate else None,
        "machine": host, "sets": sets,
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--compare", choices=("instances", "workers", "both"), default="both",
                   help="what to compare with one `gateway serve --workers 1`: two such instances, one "
                        "`--workers 2`, or both (default)")
    p.add_argument("--clerks", type=int, nargs="+", default=[5],
                   help="clerks, each with a socket on the first process; several counts run one after the "
                        "other (default 5; the aims are for 5 and 50)")
    p.add_argument("--messages", type=int, default=1000, help="messages per measured run (default 1000)")
    p.add_argument("--concurrency", type=int, default=50, help="concurrent client workers (default 50)")
    p.add_argument("--customers", type=int, default=50, help="bound customers (default 50)")
    p.add_argument("--rate", type=float, help="fixed-rate (open-loop) mode: messages per second")
    p.add_argument("--seconds", type=float, default=10.0, help="with --rate: how long (default 10)")
    p.add_argument("--connections", type=int, default=500, help="with --rate: the client's connection limit")
    p.add_argument("--drain", type=float, default=60.0,
                   help="with --rate: seconds after the last request was due until missing relays are cut off")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for every relay, and for each answer (default 300)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--profile", metavar="PREFIX",
                   help="run each single-worker process under cProfile: PREFIX.<config>-<clerks>.<i>.prof")
    args = p.parse_args(argv)
    if min(args.messages, args.concurrency, args.customers, *args.clerks) < 1 or max(args.clerks) > args.customers:
        p.error("--messages, --concurrency, --customers, --clerks must be positive, clerks ≤ customers")
    if args.rate is not None and (args.rate <= 0 or args.seconds <= 0):
        p.error("--rate and --seconds must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_logging()
    started = time.monotonic()
    try:
        result = asyncio.run(main_async(args))
    except BenchError as e:
        print(f"BENCH FAILED: {e}", file=sys.stderr)
        return 1
    result["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, ensure_ascii=False, indent=2) if args.json else report(result, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
