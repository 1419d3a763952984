"""`gateway` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from gateway.config import Config, ConfigError, find_config_file, load_config


def _config(path: str | None) -> Config:
    return load_config(find_config_file(path))


def _fail_config(e: ConfigError) -> int:
    print("configuration is invalid:", file=sys.stderr)
    for key, reason in e.problems:
        print(f"  {key}: {reason}", file=sys.stderr)
    return 2


def cmd_check_config(args) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as e:
        return _fail_config(e)
    names = ", ".join(f"{a.name} ({a.platform})" for a in cfg.accounts)
    print(f"{args.file}: OK — database {cfg.database.url.split('://')[0]}, accounts: {names}")
    return 0


def cmd_db_upgrade(args) -> int:
    from gateway.db import upgrade_sync

    try:
        cfg = _config(args.config)
    except ConfigError as e:
        return _fail_config(e)
    upgrade_sync(cfg.database.url)
    print("database is at the latest revision")
    return 0


def cmd_token_create(args) -> int:
    from gateway.db import make_engine, session_factory
    from gateway.tokens import create_token

    try:
        cfg = _config(args.config)
    except ConfigError as e:
        return _fail_config(e)

    async def run() -> str:
        engine = make_engine(cfg.database.url)
        try:
            async with session_factory(engine)() as s:
                _, token = await create_token(s, args.role, store_id=args.store, clerk_id=args.clerk, name=args.name)
                await s.commit()
                return token
        finally:
            await engine.dispose()

    if cfg.database.is_sqlite:
        from gateway.db import upgrade_sync

        upgrade_sync(cfg.database.url)
    try:
        token = asyncio.run(run())
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # an unknown store or clerk id is a foreign-key failure
        print(f"error: could not create the token: {type(e).__name__}: {e}".splitlines()[0], file=sys.stderr)
        return 1
    print(token)
    print("Store it now: it is not shown again.", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    from gateway.serve import serve

    try:
        cfg = _config(args.config)
    except ConfigError as e:
        return _fail_config(e)
    if args.host:
        cfg.server.host = args.host
    if args.port:
        cfg.server.port = args.port
    if args.workers:
        if args.workers > 1 and cfg.database.is_sqlite:
            return _fail_config(ConfigError([("--workers", "more than one worker needs PostgreSQL (SQLite has one "
                                                           "writer, and live messages cannot cross processes)")]))
        cfg.server.workers = args.workers
    return serve(cfg)


def cmd_campaigns(args) -> int:
    """Campaign runs and their progress, from the database (what the API's report shows)."""
    try:
        cfg = _config(args.config)
    except ConfigError as e:
        return _fail_config(e)
    from gateway.runtime import Gateway

    async def run() -> list[dict]:
        from sqlalchemy import select

        from gateway.campaigns import report
        from gateway.models import Campaign

        gw = Gateway(cfg)
        try:
            async with gw.db() as s:
                q = select(Campaign).order_by(Campaign.id.desc()).limit(20)
                if args.id:
                    q = select(Campaign).where(Campaign.id == args.id)
                rows = (await s.execute(q)).scalars().all()
            return [await report(gw, c) for c in rows]
        finally:
            await gw.engine.dispose()

    def show(reports: list[dict]) -> None:
        print(f"{'campaign':<24} {'run':<26} {'status':<14} {'audience':>8} {'queued':>7} {'sent':>7} "
              f"{'pending':>7} {'held':>5} {'failed':>6} {'clicked':>7}")
        for r in reports:
            for run_ in r["runs"] or [{"scheduled_for": "—", "status": r["status"]}]:
                print(f"{('#' + str(r['id']) + ' ' + r['name'])[:24]:<24} {run_['scheduled_for'][:25]:<26} "
                      f"{run_['status']:<14} {run_.get('audience', 0):>8} {run_.get('queued', 0):>7} "
                      f"{run_.get('sent', 0):>7} {run_.get('pending', 0):>7} {run_.get('held', 0):>5} "
                      f"{run_.get('failed', 0):>6} {run_.get('clicked', 0):>7}")

    async def watch() -> int:
        while True:
            reports = await run()
            if not reports:
                print("no campaigns" if not args.id else f"no campaign {args.id}", file=sys.stderr)
                return 1 if args.id else 0
            show(reports)
            if not args.watch or all(x["status"] in ("done", "cancelled") for r in reports for x in r["runs"]):
                return 0
            await asyncio.sleep(args.watch)
            print()

    return asyncio.run(watch())


def cmd_report(args) -> int:
    """`gateway report clerks|stores|campaigns|funnel`: the same figures as /api/v1/reports."""
    import json as _json
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    try:
        cfg = _config(args.config)
    except ConfigError as e:
        return _fail_config(e)
    from gateway import clock, reports
    from gateway.runtime import Gateway

    period = {}
    for flag, raw in (("--from", args.frm), ("--to", args.to)):
        try:
            period[flag] = clock.parse_local(raw, ZoneInfo(cfg.timezone)) if raw else None
        except ValueError as e:
            print(f"{flag}: not a date or ISO time ({e})", file=sys.stderr)
            return 2

    async def run():
        gw = Gateway(cfg)
        try:
            now = gw.clock.now()
            return await reports.build(gw, args.kind, period["--from"] or now - timedelta(days=30), period["--to"] or now)
        finally:
            await gw.engine.dispose()

    rows = asyncio.run(run())
    if args.format == "json":
        print(_json.dumps(rows, ensure_ascii=False, indent=2))
    elif args.format == "csv":  # bytes: the BOM and UTF-8 whatever the terminal's encoding
        sys.stdout.flush()
        sys.stdout.buffer.write(reports.to_csv(rows).encode("utf-8"))
        sys.stdout.buffer.flush()
    else:
        print(reports.to_table(rows))
    return 0


def cmd_import(args) -> int:
    """`gateway import clerks|stores|customers FILE.csv`: bulk upsert with a per-row error report."""
    try:
        cfg = _config(args.config)
    except ConfigError as e:
        return _fail_config(e)
    from gateway.importer import main as run_import

    return run_import(cfg, args.kind, args.file, dry_run=args.dry_run, errors_file=args.errors)


def cmd_demo(args) -> int:
    from gateway.demo import main as demo

    logging.getLogger().setLevel(logging.WARNING)  # the story is the output

    return asyncio.run(demo(args.clerk_on))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description="Advisor Gateway (导购网关)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the HTTP server, adapters and workers")
    s.add_argument("--config")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--workers", type=int, help="processes serving the port (default: one per CPU on PostgreSQL, "
                                               "1 on SQLite)")
    s.set_defaults(fn=cmd_serve)

    s = sub.add_parser("demo", help="scripted end-to-end story on the built-in simulators")
    s.add_argument("--clerk-on", choices=["workbench", "dingtalk", "wecom"], default="workbench",
                   help="where the clerk works: the web workbench or (simulated) DingTalk / WeCom")
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("campaigns", help="campaign runs and their progress")
    s.add_argument("id", nargs="?", type=int)
    s.add_argument("--watch", type=float, metavar="SECONDS", help="repeat until every run is done")
    s.add_argument("--config")
    s.set_defaults(fn=cmd_campaigns)

    s = sub.add_parser("report", help="clerk, store, campaign and funnel reports")
    s.add_argument("kind", choices=["clerks", "stores", "campaigns", "funnel"])
    s.add_argument("--from", dest="frm", help="date or ISO time (default: 30 days ago)")
    s.add_argument("--to", help="date or ISO time (default: now)")
    s.add_argument("--format", choices=["table", "csv", "json"], default="table")
    s.add_argument("--config")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("import", help="bulk import stores, clerks or customers from CSV (per-row error report)")
    s.add_argument("kind", choices=["clerks", "stores", "customers"])
    s.add_argument("file", help="UTF-8 CSV with a header row")
    s.add_argument("--config")
    s.add_argument("--dry-run", action="store_true", help="check every row and print the report; write nothing")
    s.add_argument("--errors", metavar="FILE.csv", help="also write the failing rows here, with an error column")
    s.set_defaults(fn=cmd_import)

    s = sub.add_parser("db", help="database maintenance")
    dbsub = s.add_subparsers(dest="db_command", required=True)
    u = dbsub.add_parser("upgrade", help="apply migrations")
    u.add_argument("--config")
    u.set_defaults(fn=cmd_db_upgrade)

    s = sub.add_parser("check-config", help="validate a configuration file")
    s.add_argument("file")
    s.set_defaults(fn=cmd_check_config)

    s = sub.add_parser("token", help="API tokens")
    tsub = s.add_subparsers(dest="token_command", required=True)
    t = tsub.add_parser("create", help="print a new API token once; only its hash is stored")
    t.add_argument("--role", required=True, choices=["admin", "marketer", "store_manager", "clerk"])
    t.add_argument("--store", type=int, help="the store of a store_manager")
    t.add_argument("--clerk", type=int, help="the clerk of a clerk (workbench) token")
    t.add_argument("--name")
    t.add_argument("--config")
    t.set_defaults(fn=cmd_token_create)
    return p


def main(argv: list[str] | None = None) -> int:
    from gateway import logs

    logs.setup("text")  # `serve` switches to server.log_format once the config is read
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    raise SystemExit(main())
