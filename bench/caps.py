"""Benchmark: a platform's rate cap held across processes (issue 17, aim 8).

A DingTalk simulator (adapters/dingtalk/simulator.py) refuses any API call that would make more
than `--cap` calls (default 20, DingTalk's per-app cap) in a sliding second, and counts it in
`throttled`. Two gateway setups send to it, each on a fresh PostgreSQL database:

  * instances — two `gateway serve --workers 1` processes on their own ports;
  * workers   — one `gateway serve --workers 2` (a supervisor and two workers on one port);
  * one       — (a control, not run by default) one `gateway serve --workers 1`.

Both processes have the same DingTalk account (`api_base`/`oapi_base` pointing at the simulator,
the platform's own cap: they pace it together through the `rate_slot` table). One store, C clerks
whose work id is on DingTalk (no workbench), K webchat customers bound round robin through the
invites. Measured: N customer messages (default cap × `--seconds`) posted round robin over the
processes (closed loop, acks are fast); each is relayed to its clerk through DingTalk's
`batchSend` by whichever process's outbox claims it, so both send until the backlog is gone.

Reported per setup, as the simulator saw the calls (its own clock, every API path it counts
against the cap, token calls included): calls/s achieved, `throttled` (aim: 0), the most calls in
any 1-second window (arrived, and accepted; aim: ≤ cap), how the sends were shared among the
processes, the run's deadlocks and retries (common.RunHealth). Exactly once is checked in the
database (every message stored once, relayed once, one sent outbox row each) and at the simulator
(every relay delivered once); also reported: relays a clerk got after one made later (by message
id) — the outbox sends each peer's messages in order, and the clerk's "current customer" is the
one shown last.

    .venv/bin/python bench/caps.py [--setup one|instances|workers …] [--cap 20] [--seconds 10]
                                   [--messages N] [--customers K] [--clerks C] [--concurrency C]
                                   [--json]

The exit code is non-zero only when a message was lost or duplicated (or the run itself failed:
a refused request, a process that died, the database unreachable); calls over the cap are the
measurement, reported, not an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402
from common import (  # noqa: E402
    TEXT,
    BenchError,
    Database,
    Instance,
    RunHealth,
    client,
    count_outbox,
    drive,
    fmt_table,
    health_cell,
    health_line,
    log_lines,
    machine,
    machine_line,
    make_clerks,
    outbox_idle,
    quiet_logging,
    scan_logs,
    serve,
    wait_arrivals,
    write_serve_config,
)
from inbound import DingTalk  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from adapters.dingtalk.simulator import API_PATHS, SIM_FAULT, DingTalkSimulator  # noqa: E402
from adapters.webchat.simulator import BrandApp  # noqa: E402
from gateway.db import make_engine, session_factory  # noqa: E402
from gateway.models import ChatMessage, Outbox  # noqa: E402

SETUPS = {"one": ("1 process", 1, 1), "instances": ("2 instances", 2, 1),  # label, processes, workers
          "workers": ("1 process × 2 workers", 1, 2)}
RELAY = re.compile(r"【[^】]*】([mw])(\d+) ")  # the relay as the clerk sees it: 【<name> #n】m<seq> …
SETUP_TIMEOUT = 120.0


class Calls:
    """Every call the simulator counts against its cap, stamped on its own clock (the middleware
    runs just outside the simulator's, with nothing in between that waits): (when, path, refused)."""

    def __init__(self, sim: DingTalkSimulator):
        self.sim = sim
        self.seen: list[tuple[float, str, bool]] = []

    def app(self) -> web.Application:
        app = self.sim.app()

        @web.middleware
        async def stamp(request: web.Request, handler):
            if not request.path.startswith(API_PATHS):
                return await handler(request)
            at = self.sim.qps_clock()
            try:
                return await handler(request)
            finally:
                self.seen.append((at, request.path, request.get(SIM_FAULT) == "qps"))

        app.middlewares.insert(0, stamp)
        return app

    def since(self, t0: float, t1: float = float("inf")) -> list[tuple[float, str, bool]]:
        return sorted(c for c in self.seen if t0 <= c[0] <= t1)


def max_in_second(times: list[float]) -> int:
    """The most stamps in any window (t - 1 s, t] — the simulator's own sliding window."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


class Inbox:
    """The clerks' DingTalk chats at the simulator: when each relay `m<seq>` arrived, doubles, and
    the order each clerk got them in."""

    def __init__(self, sim: DingTalkSimulator):
        self.sim = sim
        self.arrived: dict[int, float] = {}
        self.duplicates = 0
        self.order: dict[str, list[int]] = {}  # clerk's DingTalk id -> seqs as delivered
        self._read: dict[str, int] = {}

    def scan(self) -> None:
        for user, items in list(self.sim.robot_inbox.items()):
            for item in items[self._read.get(user, 0):]:
                p = item["msgParam"] or {}
                m = RELAY.search(p.get("content") or p.get("text") or "")
                if not m or m.group(1) != "m":
                    continue
                seq = int(m.group(2))
                self.order.setdefault(user, []).append(seq)
                if seq in self.arrived:
                    self.duplicates += 1
                else:
                    self.arrived[seq] = self.sim.qps_clock()
            self._read[user] = len(items)

    def out_of_order(self, made: dict[int, int]) -> int:
        """Relays a clerk got after one made later (`made`: seq -> the relay's message id, which
        grows in the order relays are made): the outbox keeps each peer's sends in order."""
        late = 0
        for seqs in self.order.values():
            newest = 0
            for seq in seqs:
                late += made.get(seq, 0) < newest
                newest = max(newest, made.get(seq, 0))
        return late



async def check_database(url: str, n: int) -> dict:
    """Every measured message stored once, relayed once to DingTalk, one sent outbox row each;
    and how the sends were shared among the processes (outbox.claimed_by names the process)."""
    engine = make_engine(url, pool_size=1)
    try:
        async with session_factory(engine)() as s:
            m = ChatMessage
            inbound = (await s.execute(select(func.count(), func.count(func.distinct(m.client_msg_id)))
                                       .where(m.direction == "in", m.text.like("m%")))).one()
            out = (m.direction == "out", m.platform == "dingtalk", m.text.like("【%】m%"))
            relays = (await s.execute(select(func.count(), func.count(func.distinct(m.text))).where(*out))).one()
            made = {int(hit.group(2)): mid for mid, text in (await s.execute(select(m.id, m.text).where(*out))).all()
                    if (hit := RELAY.search(text or "")) and hit.group(1) == "m"}
            where = (Outbox.kind == "relay", Outbox.account == DingTalk.account, Outbox.status == "sent")
            sent = (await s.execute(select(func.count()).select_from(Outbox).where(*where))).scalar()
            pid = func.split_part(Outbox.claimed_by, ":", 2)  # claimed_by: host:pid:lane
            senders = (await s.execute(select(pid, func.count()).where(Outbox.account == DingTalk.account,
                                                                       Outbox.status == "sent").group_by(pid))).all()
    finally:
        await engine.dispose()
    return {"inbound_rows": inbound[0], "inbound_distinct": inbound[1], "relay_rows": relays[0],
            "relay_distinct": relays[1], "relays_sent_in_outbox": sent,
            "sends_by_process": sorted((c for _, c in senders), reverse=True), "made": made,
            "exactly_once": inbound[0] == inbound[1] == n and relays[0] == relays[1] == n and sent == n}


async def run_setup(key: str, args, workdir: Path) -> dict:
    label, processes, workers = SETUPS[key]
    n = args.messages or int(args.cap * args.seconds)
    sc = DingTalk(args.customers, args.clerks)  # its accounts, clerks' DingTalk ids and webchat customers
    sim = sc.simulator()
    sim.qps_limit = args.cap
    # DingTalk's refusal names its scope: QpsLimitForAppkeyAndApi (90018), one window per app and API,
    # so the access-token call each process makes does not count against batchSend's cap.
    sim.qps_scope = "api"
    calls = Calls(sim)
    inbox = Inbox(sim)
    sim_runner, sim_url = await serve(calls.app())
    instances: list[Instance] = []
    try:
        async with Database("postgres") as url:
            health = await RunHealth(url).start()
            cfg = workdir / f"gateway-{key}.yaml"
            write_serve_config(cfg, url, sc.accounts(sim_url), workers)
            engine = make_engine(url, pool_size=2)
            db = SimpleNamespace(engine=engine, db=session_factory(engine))
            try:
                clerks = await make_clerks(db, args.clerks, sc.clerk_identity)
                for i in range(processes):
                    instances.append(Instance(i + 1, workdir, workers=workers))
                    await instances[-1].start(cfg)
                async with aiohttp.ClientSession() as http:
                    for inst in instances:
                        await inst.ready(http)
                    brand = BrandApp(http, instances[0].url, "webchat", sc.secret)
                    tokens = []
                    for i in range(args.customers):
                        c = await brand.login(f"bench-{i}", f"顾客{i:03d}")
                        status, body = await c.bind(clerks[i % len(clerks)][2])
                        if status != 200:
                            raise BenchError(f"bind of customer {i} failed: {status} {body}")
                        tokens.append(c.token)
                await outbox_idle(db, timeout=SETUP_TIMEOUT)  # the binds' welcomes and notices are out

                def request_for(seq: int, tag: str):
                    inst = instances[(seq + seq // len(tokens)) % len(instances)]  # alternate, move each customer
                    body = {"text": f"{tag}{seq} {TEXT}", "client_msg_id": f"{tag}-{seq}-{uuid.uuid4().hex[:12]}"}
                    return (f"{inst.url}/webchat/webchat/messages", {"Authorization": f"Bearer {tokens[seq % len(tokens)]}"},
                            body)

                t0 = sim.qps_clock()
                throttled0 = sim.throttled
                async with client(args.concurrency, timeout=args.timeout) as http:
                    load = await drive(http, request_for, n, args.concurrency)
                if load.errors:
                    raise BenchError(f"{label}: {len(load.errors)} failed requests, first: {load.errors[0]}")
                posted = sim.qps_clock() - t0

                def alive() -> None:
                    inbox.scan()
                    for inst in instances:
                        inst.check_alive()

                await wait_arrivals(inbox.arrived, n, args.timeout, "the clerks' DingTalk chats", alive=alive)
                inbox.scan()
                t1 = max(inbox.arrived.values())
                throttled_in_window = sim.throttled - throttled0
                await outbox_idle(db, Outbox.account == DingTalk.account, timeout=SETUP_TIMEOUT)
                unsent = await count_outbox(db, Outbox.status.in_(("pending", "sending")))
            finally:
                await engine.dispose()
                codes = [await inst.stop() for inst in instances]
            gateway_log = scan_logs([inst.log_path for inst in instances])
            checked = await check_database(url, n)
            run_health = await health.finish(log=gateway_log)
    finally:
        await sim_runner.cleanup()
    window = calls.since(t0, t1)
    accepted = [t for t, _, refused in window if not refused]
    sends = [t for t, path, refused in window if not refused and path.endswith("/batchSend")]
    span = (accepted[-1] - accepted[0]) if len(accepted) > 1 else 0.0
    relays_span = t1 - min(inbox.arrived.values())
    by_path: dict[str, int] = {}
    for _, path, _ in window:
        by_path[path] = by_path.get(path, 0) + 1
    result = {
        "setup": key, "label": label, "processes": processes, "workers": workers, "messages": n,
        "posted_s": round(posted, 2),
        "window_s": round(t1 - t0, 2),
        "calls": len(window), "calls_accepted": len(accepted), "batch_send_accepted": len(sends),
        "calls_by_path": by_path,
        "calls_per_s": round((len(accepted) - 1) / span, 2) if span else None,
        "relays_per_s": round((n - 1) / relays_span, 2) if relays_span else None,
        "throttled": sim.throttled, "throttled_in_window": throttled_in_window,
        "max_calls_in_1s": max_in_second([t for t, _, _ in window]),
        "max_accepted_in_1s": max_in_second(accepted),
        "max_calls_in_1s_whole_run": max_in_second(sorted(t for t, _, _ in calls.seen)),
        "unsent_at_end": unsent,
        "relays_delivered": len(inbox.arrived),
        "out_of_order": inbox.out_of_order(checked.pop("made")),
        "sim_duplicates": inbox.duplicates,
        "database": checked,
        "exit_codes": codes,
        "gateway_log": gateway_log,
        "health": run_health,
    }
    result["within_cap"] = result["throttled"] == 0 and result["max_calls_in_1s_whole_run"] <= args.cap
    problems = []
    if inbox.duplicates:
        problems.append(f"{inbox.duplicates} relays reached the clerks twice")
    if not checked["exactly_once"]:
        problems.append(f"database: {checked}")
    if problems:
        raise BenchError(f"{label}: " + "; ".join(problems))
    return result


# -- report ------------------------------------------------------------------------------------------------


def table(result: dict) -> str:
    rows = []
    for r in result["runs"].values():
        rows.append([r["label"], r["messages"], f"{r['window_s']:.1f}", r["calls_accepted"],
                     "" if r["calls_per_s"] is None else f"{r['calls_per_s']:.1f}", r["throttled"],
                     r["max_calls_in_1s"], r["max_accepted_in_1s"],
                     " + ".join(map(str, r["database"]["sends_by_process"])), health_cell(r["health"]),
                     "yes" if r["within_cap"] else "NO"])
    return fmt_table(["", "relays", "window s", "calls accepted", "calls/s", "throttled", "max in 1 s", "max accepted in 1 s",
                      "sends by process", "deadlocks / retries", "0 over the cap"], rows)


def report(result: dict, args) -> str:
    lines = [f"Advisor Gateway caps benchmark — a DingTalk simulator capped at {args.cap:g} calls/s, "
             f"{args.customers} webchat customers of {args.clerks} clerk{'s' if args.clerks != 1 else ''} on DingTalk, "
             "PostgreSQL",
             machine_line(result["machine"]), "", table(result), ""]
    for r in result["runs"].values():
        db = r["database"]
        lines.append(f"{r['label']}: {r['messages']} messages posted in {r['posted_s']:g} s, all relayed "
                     f"{r['window_s']:g} s after the first POST ({r['relays_per_s']} relays/s); calls by path: "
                     + ", ".join(f"{p} {c}" for p, c in sorted(r["calls_by_path"].items()))
                     + f"; throttled {r['throttled']} in the whole run ({r['throttled_in_window']} while measured), "
                       f"at most {r['max_calls_in_1s_whole_run']} calls in 1 s in the whole run")
        lines.append(f"    database — {db['inbound_rows']} messages stored ({db['inbound_distinct']} distinct), "
                     f"{db['relay_rows']} relays ({db['relay_distinct']} distinct), {db['relays_sent_in_outbox']} relay "
                     f"rows sent; simulator: {r['relays_delivered']} relays delivered, "
                     f"{r['sim_duplicates']} doubled; exactly once: {'yes' if db['exactly_once'] else 'NO'}; "
                     f"each clerk's relays in the order they were made: "
                     f"{'yes' if not r['out_of_order'] else 'NO, ' + str(r['out_of_order']) + ' after a later one'}")
        lines.append(f"    {health_line(r['health'])}")
        lines += ["    " + x for x in log_lines(r["gateway_log"])]
    met = all(r["within_cap"] for r in result["runs"].values())
    lines.append(f"aim (0 calls over the cap of {args.cap:g}/s, from every setup): {'MET' if met else 'NOT MET'}")
    lines.append(f"wall time {result['wall_s']} s")
    return "\n".join(lines)


async def main_async(args) -> dict:
    host = await machine()  # the commit as the run starts
    runs = {}
    with tempfile.TemporaryDirectory(prefix="gw-caps-") as tmp:
        for key in dict.fromkeys(args.setup):
            runs[key] = await run_setup(key, args, Path(tmp))
    return {"cap": args.cap, "messages": args.messages or int(args.cap * args.seconds), "customers": args.customers,
            "clerks": args.clerks, "concurrency": args.concurrency, "machine": host, "runs": runs}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setup", choices=tuple(SETUPS), nargs="+", default=["instances", "workers"],
                   help="what sends, one after the other: two `gateway serve` instances, one `--workers 2`, one "
                        "single process (a control) (default: instances workers)")
    p.add_argument("--cap", type=float, default=20.0,
                   help="the simulator's cap, calls per sliding second (default 20, DingTalk's); the gateway "
                        "paces at the platform's own cap")
    p.add_argument("--seconds", type=float, default=10.0,
                   help="how long the sends should last at the cap: messages = cap × seconds (default 10)")
    p.add_argument("--messages", type=int, help="messages to relay (default: cap × seconds)")
    p.add_argument("--customers", type=int, default=50, help="webchat customers (default 50)")
    p.add_argument("--clerks", type=int, default=5, help="clerks on DingTalk (default 5)")
    p.add_argument("--concurrency", type=int, default=20, help="concurrent client workers posting (default 20)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for every relay (default 300)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    if min(args.cap, args.seconds, args.customers, args.clerks, args.concurrency, args.messages or 1) <= 0:
        p.error("--cap, --seconds, --messages, --customers, --clerks, --concurrency must be positive")
    if args.clerks > args.customers:
        p.error("--clerks must not exceed --customers")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    digest = quiet_logging()
    started = time.monotonic()
    try:
        result = asyncio.run(main_async(args))
    except BenchError as e:
        print(f"BENCH FAILED: {e}", file=sys.stderr)
        print("\n".join(digest.lines()), file=sys.stderr)
        return 1
    result["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, ensure_ascii=False, indent=2) if args.json else report(result, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
