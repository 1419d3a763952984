"""`python -m chaos [--fault F ...] [--trials N] [--customers N] [--messages N] [--seed S]`

Without options: every fault with the issue's numbers (kill9: 20 trials of 10,000 customers;
platform_faults: 2,000 messages; pg_restart: 5,000 customers). Exits 1 on any duplicate, loss or
other problem.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from chaos import kill9, pg_restart, platform
from chaos.common import Database, Result, say

FAULTS = ("kill9", "platform_faults", "pg_restart")


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n\n")[0])
    ap.add_argument("--fault", action="append", choices=FAULTS, help="run only this fault (repeatable)")
    ap.add_argument("--trials", type=int, help="trials per fault (kill9 20, the others 1)")
    ap.add_argument("--customers", type=int, help="customers (kill9 10000, pg_restart 5000, platform_faults 200)")
    ap.add_argument("--messages", type=int, help="platform_faults: messages in all (2000)")
    ap.add_argument("--seed", type=int, default=random.randrange(1 << 30), help="replay a run's random choices")
    ap.add_argument("--keep-logs", action="store_true", help="keep the gateways' logs and configs")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    faults = args.fault or list(FAULTS)
    rng = random.Random(args.seed)
    logdir = Path(tempfile.mkdtemp(prefix="gw_chaos_"))
    say(f"chaos: faults {', '.join(faults)}; seed {args.seed}; logs in {logdir}")
    t0 = time.monotonic()
    db = await Database.create()
    results: list[Result] = []
    try:
        say(f"database {db.url.rsplit('/', 1)[1]} created and migrated")
        for fault in faults:
            t = time.monotonic()
            if fault == "kill9":
                res = await kill9.run(db, trials=args.trials or 20, customers=args.customers or 10_000, rng=rng,
                                      logdir=logdir)
            elif fault == "platform_faults":
                res = await platform.run(db, trials=args.trials or 1, messages=args.messages or 2000,
                                         customers=args.customers or 200, rng=rng, logdir=logdir)
            else:
                res = await pg_restart.run(db, trials=args.trials or 1, customers=args.customers or 5000, rng=rng,
                                           logdir=logdir)
            res.extra["seconds"] = round(time.monotonic() - t)
            results.append(res)
            say(res.line())
    finally:
        await db.drop()
    ok = all(r.ok for r in results) and len(results) == len(faults)
    say("")
    say(Result.HEADER)
    for r in results:
        say(r.line())
    for r in results:
        for p in r.problems:
            say(f"PROBLEM {r.fault}: {p}")
    say(f"total {time.monotonic() - t0:.0f} s; seed {args.seed}; {'OK' if ok else 'FAILED'}")
    if ok and not args.keep_logs:
        shutil.rmtree(logdir, ignore_errors=True)
    else:
        say(f"logs kept in {logdir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
