"""Benchmark: one `gateway serve` process vs two on the same PostgreSQL database (issue 10).

For each configuration (1 instance, then 2) a fresh PostgreSQL database is migrated, and real
`gateway serve` subprocesses are started on their own ports with the same config (workbench +
webchat, `server.fanout: auto`, everything else default, access log on as in production, logs to
files). One store, C clerks, K webchat customers bound round robin through the invites. Each
clerk has their workbench WebSocket open on instance 1 only: a relay sent by instance 2's outbox
reaches it over PostgreSQL LISTEN/NOTIFY (gateway/hub.py PgHub). The load generator (this
process) spreads the messages round robin over the instances (a customer's messages alternate
between them: no sticky sessions) and counts the relays `【name #n】m<seq> …` received on those
sockets; a message's end-to-end latency runs from its POST to its relay's arrival.

    .venv/bin/python bench/instances.py [--messages N] [--concurrency C] [--customers K] [--clerks C]
                                        [--rate R --seconds S] [--json] [--profile PREFIX]

Closed loop by default (msgs/s and p99 for 1 vs 2 instances, and the ratio); `--rate R --seconds S`
drives both configurations with the open-loop fixed-rate generator instead. At the end of each
run the database is checked: every message stored once, relayed once (one outbound message and
one sent outbox row per message), and every relay received exactly once on the sockets.
`--profile PREFIX` runs each instance under cProfile (PREFIX.<n>x.<i>.prof, written at SIGTERM).

The exit code is non-zero only when something failed (a refused request, a relay missing or
doubled, a process that died); a missed aim is reported, not an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp  # noqa: E402
import yaml  # noqa: E402
from common import (  # noqa: E402
    BENCH_POLICIES,
    ROOT,
    TEXT,
    WARMUP,
    BenchError,
    Database,
    client,
    drive,
    e2e_stats,
    fmt_table,
    free_port,
    log_lines,
    machine,
    machine_line,
    make_clerks,
    ms,
    open_loop,
    open_loop_summary,
    quiet_logging,
    top_functions,
    wait_arrivals,
)
from sqlalchemy import func, select  # noqa: E402

from adapters.webchat.simulator import BrandApp  # noqa: E402
from gateway.db import make_engine, session_factory  # noqa: E402
from gateway.models import ChatMessage, InboundClaim, Outbox  # noqa: E402

TO_CLERK = re.compile(r"^【[^】]*】([mw])(\d+) ")
READY_TIMEOUT = 60.0


# -- processes ------------------------------------------------------------------------------------------


class Instance:
    """One `gateway serve` subprocess; stdout/stderr go to a log file."""

    def __init__(self, index: int, workdir: Path, profile: str | None):
        self.index, self.port = index, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"instance-{index}.log"
        self.profile = profile
        self.proc: asyncio.subprocess.Process | None = None
        self._log = None

    async def start(self, config: Path) -> None:
        cmd = [sys.executable]
        if self.profile:
            cmd += ["-m", "cProfile", "-o", self.profile]
        cmd += ["-m", "gateway", "serve", "--config", str(config), "--port", str(self.port)]
        self._log = open(self.log_path, "wb")  # noqa: SIM115, ASYNC230 - closed in stop()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, stdout=self._log,
                                                         stderr=subprocess.STDOUT, env=env)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        """user + system CPU time of the process so far (Linux /proc)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    async def ready(self, http: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise BenchError(f"instance {self.index} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                async with http.get(f"{self.url}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise BenchError(f"instance {self.index} not ready within {READY_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def check_alive(self) -> None:
        if self.proc.returncode is not None:
            raise BenchError(f"instance {self.index} died with {self.proc.returncode}:\n{self.log_tail()}")

    async def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (the graceful shutdown), then SIGKILL after `timeout`. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._log is not None:
            self._log.close()
        return self.proc.returncode


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU jiffies of the whole machine so far (Linux /proc/stat)."""
    try:
        nums = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = nums[3] + (nums[4] if len(nums) > 4 else 0)
        return float(sum(nums) - idle), float(sum(nums))
    except (OSError, ValueError, IndexError):
        return float("nan"), float("nan")


# -- the clerks' workbench pages -------------------------------------------------------------------------


class Sockets:
    """The clerks' workbench WebSockets, all on instance 1; stamps each relay as it arrives."""

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


def scan_logs(paths: list[Path]) -> dict:
    """Warnings and errors in the instances' JSON logs, counted like common.LogDigest does."""
    counts: dict[tuple[str, str, str], int] = {}
    deadlocks = 0
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if '"level"' not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("level") not in ("warning", "error", "critical"):
                continue
            key = (rec.get("logger", ""), rec["level"].upper(), re.sub(r"\d+", "N", str(rec.get("event", "")))[:120])
            counts[key] = counts.get(key, 0) + 1
            deadlocks += "deadlock detected" in line
    return {"deadlocks": deadlocks,
            "records": [{"logger": n, "level": lv, "message": m, "count": c}
                        for (n, lv, m), c in sorted(counts.items(), key=lambda kv: -kv[1])]}


def profile_tops(paths: list[str | None]) -> dict[str, str]:
    return {p: top_functions(p) for p in paths if p and os.path.exists(p)}


def write_config(path: Path, url: str, secret: str) -> None:
    path.write_text(yaml.safe_dump({
        "database": {"url": url},
        "server": {"host": "127.0.0.1", "first_run_seed": False, "log_format": "json", "workers": 1},
        "policies": BENCH_POLICIES,
        "accounts": [{"name": "workbench", "platform": "workbench"},
                     {"name": "webchat", "platform": "webchat", "secret": secret}],
    }, allow_unicode=True))


async def check_database(url: str, n: int) -> dict:
    """Every measured message stored once and relayed once, counted in the database."""
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
            claims = (await s.execute(select(InboundClaim.status, func.count()).group_by(InboundClaim.status))).all()
    finally:
        await engine.dispose()
    return {"inbound_rows": inbound[0], "inbound_distinct": inbound[1], "relay_rows": relays[0],
            "relay_distinct": relays[1], "relays_sent_in_outbox": sent, "claims": dict(claims),
            "exactly_once": inbound[0] == inbound[1] == n and relays[0] == relays[1] == n and sent == n + WARMUP}


async def run_config(n_inst: int, args, workdir: Path) -> dict:
    secret = secrets.token_hex(16)
    instances: list[Instance] = []
    sockets = Sockets()
    n = int(args.rate * args.seconds) if args.rate else args.messages
    async with Database("postgres") as url:
        cfg = workdir / f"gateway-{n_inst}x.yaml"
        write_config(cfg, url, secret)
        try:
            engine = make_engine(url)
            try:
                clerks = await make_clerks(SimpleNamespace(engine=engine), args.clerks)
            finally:
                await engine.dispose()
            for i in range(n_inst):
                prof = f"{args.profile}.{n_inst}x.{i + 1}.prof" if args.profile else None
                instances.append(Instance(i + 1, workdir, prof))
                await instances[-1].start(cfg)
            async with aiohttp.ClientSession() as setup:
                for inst in instances:
                    await inst.ready(setup)
                brand = BrandApp(setup, instances[0].url, "webchat", secret)
                tokens = []
                for i in range(args.customers):
                    c = await brand.login(f"bench-{i}", f"顾客{i:03d}")
                    status, body = await c.bind(clerks[i % len(clerks)][2])
                    if status != 200:
                        raise BenchError(f"bind of customer {i} failed: {status} {body}")
                    tokens.append(c.token)
            k = len(tokens)

            def request_for(seq: int, tag: str):
                inst = instances[(seq + seq // k) % n_inst]  # alternate, and move each customer along
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
                    raise BenchError(f"{n_inst} instance(s): {e}; the database shows "
                                     f"{await check_database(url, n)}") from None
                cpu1 = [inst.cpu_seconds() for inst in instances]
                busy1, total1 = machine_busy()
                for inst in instances:
                    inst.check_alive()
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
    e2e = e2e_stats(load, sockets.arrived["m"], n)
    result = {
        "instances": n_inst,
        "ack": load.stats().as_dict(),
        "e2e": e2e.as_dict(),
        "cpu_s_per_instance": [round(b - a, 2) for a, b in zip(cpu0, cpu1, strict=True)],
        "machine_busy": round((busy1 - busy0) / max(1.0, total1 - total0), 3),
        "window_s": round(window, 2),
        "ws_duplicates": sockets.duplicates,
        "ws_other": sockets.other,
        "database": db,
        "all_relayed": complete,
        "exit_codes": codes,
        "gateway_log": gateway_log,
    }
    if args.rate:
        result["open_loop"] = open_loop_summary(load, sockets.arrived["m"], args.rate, n)
    if args.profile:
        result["profiles"] = [inst.profile for inst in instances]
        result["profile_top"] = profile_tops([inst.profile for inst in instances])
    problems = []
    if sockets.duplicates:
        problems.append(f"{sockets.duplicates} relays arrived twice on the sockets")
    if complete and not db["exactly_once"]:
        problems.append(f"database: {db}")
    if not complete and (db["inbound_rows"] != db["inbound_distinct"] or db["relay_rows"] != db["relay_distinct"]):
        problems.append(f"database (cut off): duplicates: {db}")
    if problems:
        raise BenchError(f"{n_inst} instance(s): " + "; ".join(problems))
    return result


# -- report ------------------------------------------------------------------------------------------------


def table(result: dict) -> str:
    rows = []
    one = result["runs"]["1"]
    for key in ("1", "2"):
        r = result["runs"][key]
        name = f"{key} instance{'s' if key != '1' else ''}"
        ratio = r["e2e"]["msgs_per_s"] / one["e2e"]["msgs_per_s"]
        rows.append([name, f"{r['ack']['msgs_per_s']:.1f}", ms(r["ack"]["p50_ms"]), ms(r["ack"]["p99_ms"]),
                     f"{r['e2e']['msgs_per_s']:.1f}", ms(r["e2e"]["p50_ms"]), ms(r["e2e"]["p99_ms"]),
                     ms(r["e2e"]["max_ms"]), f"{ratio:.2f}×",
                     " + ".join(f"{c:.0f}" for c in r["cpu_s_per_instance"]), f"{r['machine_busy'] * 100:.0f} %"])
    return fmt_table(["", "ack/s", "ack p50", "ack p99", "e2e msgs/s", "e2e p50", "e2e p99", "e2e max", "vs 1",
                      "CPU s (instances)", "machine busy"], rows)


def report(result: dict, args) -> str:
    mode = (f"fixed rate {args.rate:g} msgs/s for {args.seconds:g} s (open loop)" if args.rate
            else f"{args.messages} messages, concurrency {args.concurrency}")
    lines = [f"Advisor Gateway instances benchmark — {mode}, {args.customers} customers of {args.clerks} clerk{'s' if args.clerks != 1 else ''}, "
             f"PostgreSQL; webchat → workbench, the clerks' sockets on instance 1",
             machine_line(result["machine"]), "", table(result), ""]
    for key in ("1", "2"):
        r = result["runs"][key]
        db = r["database"]
        once = ("yes" if db["exactly_once"] else "NO") if r["all_relayed"] else "not checked (cut off)"
        lines.append(f"{key}×: database — {db['inbound_rows']} messages stored ({db['inbound_distinct']} distinct), "
                     f"{db['relay_rows']} relays ({db['relay_distinct']} distinct), {db['relays_sent_in_outbox']} relay "
                     f"rows sent incl. {WARMUP} warm-up; sockets: {r['e2e']['n']} relays received, "
                     f"{r['ws_duplicates']} doubled; exactly once: {once}")
        if "open_loop" in r:
            ol = r["open_loop"]
            drained = (f"drained {ol['drain_after_window_s']:g} s later" if r["all_relayed"] else
                       f"cut off {args.drain:g} s later with {ol['not_relayed_at_cutoff']} not relayed (counted as "
                       f"infinitely late)")
            lines.append(f"    offered {ol['offered_per_s']:g}/s: acked {ol['acked_per_s']:g}/s, relayed "
                         f"{ol['relayed_per_s']:g}/s; backlog when the last was due: {ol['unacked_at_window_end']} "
                         f"unacked, {ol['unrelayed_at_window_end']} unrelayed; {drained}; "
                         f"kept up: {'yes' if ol['kept_up'] else 'NO'}")
        lines += ["    " + x for x in log_lines(r["gateway_log"])]
        for path, top in (r.get("profile_top") or {}).items():
            lines.append(f"\nprofile {path} — top functions:\n{top}\n")
    lines.append(f"two instances vs one (end to end msgs/s): {result['scale']:.2f}× — "
                 f"{'more' if result['scale'] > 1.05 else 'NOT more'} than one instance")
    lines.append(f"wall time {result['wall_s']} s")
    return "\n".join(lines)


async def main_async(args) -> dict:
    runs = {}
    host = await machine()  # the commit as the run starts
    with tempfile.TemporaryDirectory(prefix="gw-instances-") as tmp:
        for n_inst in (1, 2):
            runs[str(n_inst)] = await run_config(n_inst, args, Path(tmp))
    return {
        "mode": "fixed rate" if args.rate else "closed loop",
        "messages": int(args.rate * args.seconds) if args.rate else args.messages,
        "concurrency": args.concurrency, "customers": args.customers, "clerks": args.clerks,
        "rate": args.rate, "seconds": args.seconds if args.rate else None,
        "machine": host, "runs": runs,
        "scale": round(runs["2"]["e2e"]["msgs_per_s"] / runs["1"]["e2e"]["msgs_per_s"], 3),
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=1000, help="messages per measured run (default 1000)")
    p.add_argument("--concurrency", type=int, default=50, help="concurrent client workers (default 50)")
    p.add_argument("--customers", type=int, default=50, help="bound customers (default 50)")
    p.add_argument("--clerks", type=int, default=5, help="clerks, each with a socket on instance 1 (default 5)")
    p.add_argument("--rate", type=float, help="fixed-rate (open-loop) mode: messages per second")
    p.add_argument("--seconds", type=float, default=10.0, help="with --rate: how long (default 10)")
    p.add_argument("--connections", type=int, default=500, help="with --rate: the client's connection limit")
    p.add_argument("--drain", type=float, default=60.0,
                   help="with --rate: seconds after the last request was due until missing relays are cut off")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for every relay, and for each answer (default 300)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--profile", metavar="PREFIX", help="run each instance under cProfile: PREFIX.<n>x.<i>.prof")
    args = p.parse_args(argv)
    if min(args.messages, args.concurrency, args.customers, args.clerks) < 1 or args.clerks > args.customers:
        p.error("--messages, --concurrency, --customers, --clerks must be positive, clerks ≤ customers")
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
