"""platform_faults: customers' messages relayed to clerks on DingTalk while DingTalk misbehaves.

The DingTalk simulator runs in this process on a loopback port; the gateway (a real `serve`
process) has a `dingtalk` account pointed at it, and the 50 clerks have DingTalk user ids.
Customers on webchat send their messages (each its own text); every one goes out as a robot
batchSend. The simulator fails `fault_rate` of API calls at random — HTTP 500, 429, the HTML
throttle page (which says wait 5 s), and timeouts that it does not process (timeout_delivers is
off: a timeout after DingTalk accepted cannot be told from one before, and batchSend has no
idempotency key, so such a retry would show twice — a limit of the platform, see the README) —
and enforces its QPS limit at the adapter's configured rate.

Counted at the simulator's robot inbox per message text: delivered, duplicates, lost, and whether it
reached the right clerk. `over_cap` counts the simulator's own QPS refusals (we went over the cap;
nothing injected); `early_retries` counts retries of a throttled call sooner than its wait (429 and
the QPS refusal: 1 s, the HTML page: 5 s).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import aiohttp
from aiohttp import web

from adapters.dingtalk.simulator import SIM_FAULT, DingTalkSimulator
from adapters.webchat.simulator import BrandApp
from chaos.common import WEBCHAT_SECRET, Database, GatewayProc, Result, free_port, gateway_config, say, seed

APP = {"app_key": "dingchaoskey", "app_secret": "ding-chaos-secret-0001", "robot_code": "dingchaosrobot",
       "agent_id": "2001"}
WAITS = {"http429": 1.0, "qps": 1.0, "html_throttle": 5.0}  # what each refusal tells the caller to wait
SLACK = 0.05  # both stamps are taken here, at arrival; only scheduling noise remains


class CallLog:
    """Outermost middleware on the simulator: every batchSend attempt, by message text, with when it
    arrived and how the simulator answered (its fault mark, or the HTTP status)."""

    def __init__(self) -> None:
        self.attempts: dict[str, list[tuple[float, str]]] = defaultdict(list)

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        at = time.monotonic()
        text = None
        if request.path.endswith("/batchSend"):
            try:
                param = json.loads(json.loads(await request.read()).get("msgParam") or "{}")
                text = param.get("content") or param.get("text") or param.get("title")
            except (ValueError, AttributeError):
                pass
        outcome = "error"
        try:
            resp = await handler(request)
            outcome = request.get(SIM_FAULT) or ("ok" if resp.status < 300 else f"status{resp.status}")
            return resp
        finally:
            if text:
                self.attempts[text].append((at, outcome))

    def early_retries(self) -> list[str]:
        bad = []
        for text, tries in self.attempts.items():
            tries.sort()
            for (t1, o1), (t2, _) in zip(tries, tries[1:], strict=False):
                if o1 in WAITS and t2 - t1 < WAITS[o1] - SLACK:
                    bad.append(f"{text[:40]!r}: retried {t2 - t1:.2f} s after {o1}")
        return bad


def inbox_texts(sim: DingTalkSimulator) -> list[tuple[str, str]]:
    out = []
    for user, msgs in sim.robot_inbox.items():
        for m in msgs:
            p = m["msgParam"]
            out.append((user, p.get("content") or p.get("text") or p.get("title") or ""))
    return out


async def send_all(brand: BrandApp, plan: dict[int, list[str]], stats: Counter, deadline: float) -> None:
    """Each customer types their messages one after another; a refused one is retried with the same
    client_msg_id, as the brand's app does."""

    async def one(customer_id: int, texts: list[str]) -> None:
        client = await brand.login(f"u-{customer_id}")
        for text in texts:
            body = {"text": text, "client_msg_id": uuid.uuid4().hex}
            while True:
                try:
                    async with brand.http.post(f"{client.base}/messages", json=body, headers=client.headers) as r:
                        if r.status < 300:
                            stats["acked"] += 1
                            break
                        stats[f"http{r.status}"] += 1
                except (aiohttp.ClientError, TimeoutError):
                    stats["connection"] += 1
                if time.monotonic() > deadline:
                    stats["gave_up"] += 1
                    break
                await asyncio.sleep(0.5)

    await asyncio.gather(*(one(c, texts) for c, texts in plan.items()))


async def trial(db: Database, i: int, *, messages: int, customers: int, rate: float, fault_rate: float,
                rng: random.Random, logdir: Path) -> dict:
    await db.reset()
    await seed(db, customers)
    await db.q("INSERT INTO clerk_identity (clerk_id, platform, account, external_id) "
               "SELECT id, 'dingtalk', 'dt', 'staff' || id FROM clerk")
    sim = DingTalkSimulator(**APP)
    sim.qps_limit, sim.timeout_delivers, sim.timeout_delay = rate, False, 1.5
    sim.fault_rate, sim.fault_random = fault_rate, random.Random(rng.random())
    calls = CallLog()
    app = sim.app()
    app.middlewares.insert(0, calls.middleware)  # outside the simulator's: sees its fault marks
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    sim_url = f"http://127.0.0.1:{port}"
    account = {"name": "dt", "platform": "dingtalk", **APP, "api_base": sim_url, "oapi_base": sim_url,
               "timeout": 1.0, "rate_per_sec": rate}
    cfg = gateway_config(db.url, free_port(), accounts=[account],
                         # a 30 % storm is far past what max_attempts 8 is tuned for: do not give up
                         # (a dead letter would count as lost) and keep the backoff short
                         outbox={"max_attempts": 30, "backoff_base": 1.5, "backoff_max": 8})
    gw = GatewayProc(f"platform-{i + 1}", cfg, logdir)
    marker = f"chaos-dt{i}-{uuid.uuid4().hex[:4]}"
    plan: dict[int, list[str]] = defaultdict(list)
    for k in range(messages):
        plan[1 + k % customers].append(f"{marker}-{k}")
    stats: Counter = Counter()
    problems: list[str] = []
    pattern = re.compile(re.escape(marker) + r"-(\d+)$")
    timeout = 60 + 3 * messages / rate
    try:
        await gw.start()
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            await send_all(BrandApp(http, gw.base, "webchat", WEBCHAT_SECRET), plan, stats, deadline)
        while time.monotonic() < deadline:  # every text arrived and nothing is left to retry
            got = {m.group(1) for _, t in inbox_texts(sim) if (m := pattern.search(t))}
            if len(got) >= messages and not await db.val(
                    "SELECT count(*) FROM outbox WHERE status IN ('pending', 'sending')"):
                break
            if not gw.check():
                problems.append(f"{gw.name} died by itself; see {gw.log_path}")
                await gw.start()
            await asyncio.sleep(0.5)
        else:
            problems.append(f"not settled after {timeout:.0f} s")
        await asyncio.sleep(1.0)  # a late duplicate would land now
        code = await gw.stop()
        if code not in (0, None):
            problems.append(f"{gw.name} exited with {code} on SIGTERM; see {gw.log_path}")
    finally:
        if gw.alive():
            await gw.kill9()
        await runner.cleanup()
    seen: Counter = Counter()
    misrouted = 0
    for user, text in inbox_texts(sim):
        if m := pattern.search(text):
            k = int(m.group(1))
            seen[k] += 1
            misrouted += user != f"staff{1 + (1 + k % customers) % 50}"  # bench's seed: customer c -> clerk 1 + c % 50
    stored = dict(await db.q("SELECT substring(text from $1), count(*) FROM message WHERE direction = 'out' "
                             "AND side = 'clerk' AND strpos(text, $2) > 0 GROUP BY 1",
                             re.escape(marker) + r"-(\d+)$", marker))
    duplicates = sum(max(seen[k], stored.get(str(k), 0)) - 1 for k in range(messages) if max(seen[k], stored.get(str(k), 0)) > 1)
    delivered = sum(1 for k in range(messages) if seen[k])
    early = calls.early_retries()
    dead = await db.val("SELECT count(*) FROM outbox WHERE status IN ('dead', 'held')")
    if misrouted:
        problems.append(f"{misrouted} messages reached the wrong clerk")
    if sim.throttled:
        problems.append(f"{sim.throttled} calls over the QPS cap of {rate:g}/s (refused by the simulator)")
    problems += [f"early retry: {e}" for e in early[:5]] + ([f"... {len(early) - 5} more"] if len(early) > 5 else [])
    if dead:
        problems.append(f"{dead} outbox rows dead or held")
    if stats["gave_up"]:
        problems.append(f"{stats['gave_up']} messages never accepted by the gateway")
    batch_calls = sum(len(v) for v in calls.attempts.values())
    return {"expected": messages, "delivered": delivered, "duplicates": duplicates, "lost": messages - delivered,
            "over_cap": sim.throttled, "early_retries": len(early), "injected": dict(sim.injected),
            "calls": batch_calls, "inbound_refused": sum(v for k, v in stats.items() if k != "acked"),
            "problems": problems}


async def run(db: Database, *, trials: int = 1, messages: int = 2000, customers: int = 200, rate: float = 20.0,
              fault_rate: float = 0.3, rng: random.Random, logdir: Path) -> Result:
    res = Result("platform_faults")
    totals: Counter = Counter()
    for i in range(trials):
        t0 = time.monotonic()
        c = await trial(db, i, messages=messages, customers=customers, rate=rate, fault_rate=fault_rate, rng=rng,
                        logdir=logdir)
        res.add(c)
        res.problems += [f"platform trial {i + 1}: {p}" for p in c["problems"]]
        for k in ("over_cap", "early_retries", "calls"):
            totals[k] += c[k]
        totals["injected"] += sum(c["injected"].values())
        say(f"platform_faults {i + 1}/{trials}: {messages} messages from {customers} customers to 50 DingTalk clerks, "
            f"{fault_rate:.0%} of calls failed ({', '.join(f'{k} {v}' for k, v in sorted(c['injected'].items()))}), "
            f"{c['calls']} batchSend calls; {time.monotonic() - t0:.1f} s -> delivered {c['delivered']}/{c['expected']}, "
            f"duplicates {c['duplicates']}, lost {c['lost']}, over_cap {c['over_cap']}, early_retries {c['early_retries']}"
            + "".join(f"\n    PROBLEM: {p}" for p in c["problems"]))
    res.extra = {"over_cap": totals["over_cap"], "early_retries": totals["early_retries"],
                 "injected": totals["injected"], "calls": totals["calls"]}
    return res
