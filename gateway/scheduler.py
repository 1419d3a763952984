"""Campaign schedules that survive restarts and never fire twice.

The campaign table is the source of truth (`next_run_at`); APScheduler's triggers compute the
fire times (cron in the configured zone, correct across DST; one-off dates). A tick driven by the
injected clock turns each due fire time into a run keyed (campaign, scheduled time) — the UNIQUE
key, plus a row lock on the campaign, means two instances or a restart cannot make it twice.
Missed fire times (the gateway was down): only the latest one runs, and only if it is at most
`campaigns.misfire_grace_seconds` old; the others are counted as skipped on the campaign.
Runs are claimed with a lease, so any instance may materialise them and a dead one's run resumes
after its cursor.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from sqlalchemy import or_, select, update

from gateway import campaigns
from gateway.models import Campaign, CampaignRun
from gateway.sql import insert_ignore

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger("gateway.scheduler")


def trigger(schedule: dict, tz):
    if schedule.get("cron"):
        end = datetime.fromisoformat(schedule["until"]) if schedule.get("until") else None
        return CronTrigger(**cron_fields(schedule["cron"]), timezone=tz, end_date=end)
    return DateTrigger(run_date=datetime.fromisoformat(schedule["at"]), timezone=tz)


_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def cron_fields(expr: str) -> dict:
    """A five-field crontab as APScheduler 3 arguments. Crontab counts weekdays from Sunday = 0;
    APScheduler 3 from Monday = 0 (its from_crontab does not convert): numbers become names."""
    parts = expr.split()
    if len(parts) != 5:
        raise ValueError(f"a cron expression has 5 fields, got {len(parts)}: {expr!r}")
    minute, hour, day, month, dow = parts
    dow = re.sub(r"\d+", lambda m: _DAYS[int(m.group())] if int(m.group()) <= 7 else m.group(), dow)
    return {"minute": minute, "hour": hour, "day": day, "month": month, "day_of_week": dow}


def first_fire(schedule: dict, tz, now: datetime) -> datetime | None:
    t = trigger(schedule, tz)
    if isinstance(t, DateTrigger):
        return t.run_date
    return t.get_next_fire_time(None, now)


def _after(t, fired: datetime) -> datetime | None:
    return None if isinstance(t, DateTrigger) else t.get_next_fire_time(fired, fired)


async def tick(gw: Gateway) -> list[int]:
    """Make the runs that are due. Returns the new runs' ids."""
    now = gw.clock.now()
    grace = timedelta(seconds=gw.config.campaigns.misfire_grace_seconds)
    made = []
    async with gw.db() as s:
        due = (await s.execute(
            select(Campaign).where(Campaign.status == "scheduled", Campaign.next_run_at <= now)
            .order_by(Campaign.next_run_at).with_for_update(skip_locked=True)
        )).scalars().all()
        for c in due:
            t = trigger(c.schedule, gw.tz)
            fire, skipped = c.next_run_at, 0
            while (nxt := _after(t, fire)) is not None and nxt <= now:  # coalesce what was missed
                fire, skipped = nxt, skipped + 1
            if now - fire <= grace:
                row = (await s.execute(insert_ignore(s, CampaignRun, conflict=["campaign_id", "scheduled_for"])
                                       .values(campaign_id=c.id, scheduled_for=fire, status="pending", cursor=0,
                                               counts={}).returning(CampaignRun.id))).scalar()
                if row is not None:
                    made.append(row)
            else:
                skipped += 1
            if skipped:
                gw.metrics.scheduler_runs.labels("skipped").inc(skipped)
                log.warning("campaign %s: %d missed fire time(s) skipped (gateway was down)", c.id, skipped)
                c.skipped_runs += skipped
            nxt = _after(t, fire)
            c.next_run_at = nxt
            if nxt is None:
                c.status = "done"
        await s.commit()
    gw.metrics.scheduler_runs.labels("made").inc(len(made))
    return made


async def claim_run(gw: Gateway, worker: str) -> int | None:
    """A pending run, one whose materialiser died (lease ran out), or one this worker dropped.

    A worker materialises one run at a time, so a run still marked as its own here was abandoned
    when materialize() failed (the database went away): resume it now, not after the lease."""
    now = gw.clock.now()
    async with gw.db() as s:
        run_id = (await s.execute(
            select(CampaignRun.id).where(or_(
                CampaignRun.status == "pending",
                (CampaignRun.status == "materializing")
                & ((CampaignRun.lease_until < now) | (CampaignRun.claimed_by == worker))))
            .order_by(CampaignRun.id).limit(1).with_for_update(skip_locked=True))).scalar()
        if run_id is None:
            return None
        await s.execute(update(CampaignRun).where(CampaignRun.id == run_id)
                        .values(status="materializing", claimed_by=worker,
                                lease_until=now + timedelta(seconds=gw.config.campaigns.lease_seconds)))
        await s.commit()
    return run_id


async def run_pending(gw: Gateway, worker: str) -> int:
    """Materialise every claimable run (what the loop and the tests call). Returns runs done."""
    n = 0
    while (run_id := await claim_run(gw, worker)) is not None:
        await campaigns.materialize(gw, run_id)
        gw.metrics.scheduler_runs.labels("materialized").inc()
        n += 1
    return n


async def loop(gw: Gateway, every: float) -> None:
    worker = f"{gw.instance_id}:scheduler"
    while True:
        try:
            if await gw.leadership.check():  # one leader among instances; the rest stand by
                await tick(gw)
                await run_pending(gw, worker)
                await campaigns.finish_dispatched(gw)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the next tick tries again; runs resume after their cursor
            log.exception("campaign scheduler tick failed")
        await asyncio.sleep(every)
