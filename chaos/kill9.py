"""kill9: SIGKILL `gateway serve` at a random moment of a campaign run, restart it, count.

Each trial starts from empty tables: N consented webchat customers bound to 50 clerks and a direct
campaign due now (no quiet hours, no cap in the way, no holdout). Every third trial runs two
gateways on different ports, so the scheduler's leadership moves (gateway/leader.py) and outbox
rows are claimed across instances. The kill point is drawn uniformly over the run's work —
materialising N deliveries, then sending N pushes — as read from the database, plus a jitter of up
to 0.25 s so that it lands inside a batch rather than on its commit. Three trials in ten kill
twice. A killed process is restarted at once, like a supervisor would.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from chaos.common import (
    Database,
    GatewayProc,
    Result,
    WireObserver,
    campaign_state,
    count_campaign,
    create_campaign,
    expire_leases,
    finished,
    free_port,
    gateway_config,
    phase,
    say,
    seed,
)


async def until(db: Database, cid: int, procs: list[GatewayProc], problems: list[str],
                pred: Callable[[dict], bool], timeout: float) -> dict:
    """Poll the run's state until `pred`; restart (and note) a gateway that died on its own."""
    deadline = time.monotonic() + timeout
    while True:
        state = await campaign_state(db, cid)
        if pred(state) or time.monotonic() > deadline:
            return state
        for p in procs:
            if not p.check():
                problems.append(f"{p.name} died by itself (exit {p.unexpected_exits[-1]}); see {p.log_path}")
                await p.start()
        await asyncio.sleep(0.05)


async def trial(db: Database, wire: WireObserver, i: int, n: int, rng: random.Random, logdir: Path) -> dict:
    marker = f"chaos-kill9-{i}-{uuid.uuid4().hex[:6]}"
    names = ("a", "b") if i % 3 == 1 else ("a",)
    procs = [GatewayProc(f"kill9-{i + 1}-{x}", gateway_config(db.url, free_port()), logdir) for x in names]
    problems: list[str] = []
    kills: list[str] = []
    timeout = 60 + n / 100
    try:
        for p in procs:  # importing the gateway takes seconds: let it happen while the rows are made
            await p.start(ready=False)
        await db.reset()
        await seed(db, n)
        await asyncio.gather(*(p.wait_ready() for p in procs))
        t_run = time.monotonic()
        wire.watch(marker)
        cid = await create_campaign(db, f"{marker} {{customer_name}}您好，我是{{advisor_name}}：新品到店")
        work, done = 2 * n, 0.0
        for _ in range(2 if rng.random() < 0.3 else 1):
            at = rng.uniform(done, 0.95) * work
            state = await until(db, cid, procs, problems, lambda s, at=at: s["mat"] + s["sent"] >= at or finished(s),
                                timeout)
            if finished(state):
                kills.append("none (finished first)")
                break
            await asyncio.sleep(rng.uniform(0, 0.25))
            victim = rng.choice(procs)
            role = await victim.role() if len(procs) > 1 else None
            state = await campaign_state(db, cid)
            await victim.kill9()
            kills.append(f"{victim.name[-1]}{f' ({role})' if role else ''} at {phase(state, n)}")
            # The run lease (5 min, not configurable) and the outbox leases (outbox.lease_seconds) of
            # the dead process are moved to now instead of being waited out; nothing else is touched.
            await expire_leases(db, victim.pid)
            await victim.start()
            done = (state["mat"] + state["sent"]) / work
        state = await until(db, cid, procs, problems, finished, timeout)
        if not finished(state):
            problems.append(f"not finished after {timeout:.0f} s: {state}")
        t_end = time.monotonic()
        await wire.settle()
        for p, code in zip(procs, await asyncio.gather(*(p.stop() for p in procs)), strict=True):
            if code not in (0, None):
                problems.append(f"{p.name} exited with {code} on SIGTERM; see {p.log_path}")
        counts = await count_campaign(db, cid, marker, n, wire.seen)
        counts["timing"] = f"run {t_end - t_run:.0f} s, after {time.monotonic() - t_end:.0f} s"
    finally:
        for p in procs:
            if p.alive():
                await p.kill9()
    counts["problems"] = problems + counts["problems"]
    counts["kills"] = kills
    counts["instances"] = len(procs)
    return counts


async def run(db: Database, *, trials: int = 20, customers: int = 10_000, rng: random.Random,
              logdir: Path) -> Result:
    res = Result("kill9")
    wire = WireObserver()
    await wire.start(db.dsn)
    kills = resent = two = 0
    try:
        for i in range(trials):
            t0 = time.monotonic()
            c = await trial(db, wire, i, customers, rng, logdir)
            res.add(c)
            res.problems += [f"kill9 trial {i + 1}: {p}" for p in c["problems"]]
            kills += sum(not k.startswith("none") for k in c["kills"])
            resent += c["resent"]
            two += c["instances"] > 1
            say(f"kill9 {i + 1}/{trials}: {customers} customers, {c['instances']} instance(s), "
                f"killed {'; '.join(c['kills'])}; {time.monotonic() - t0:.0f} s ({c['timing']}) -> delivered "
                f"{c['delivered']}/{c['expected']}, duplicates {c['duplicates']}, lost {c['lost']}, "
                f"resent {c['resent']}" + "".join(f"\n    PROBLEM: {p}" for p in c["problems"]))
    finally:
        await wire.stop()
    res.extra = {"kills": kills, "two_instance_trials": two, "resent": resent}
    return res
