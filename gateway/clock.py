"""One clock injected everywhere time matters, so tests move time instead of sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class Clock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock(Clock):
    def __init__(self, start: datetime | None = None):
        self._now = start or datetime(2026, 1, 5, 2, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, **kw) -> datetime:
        self._now += timedelta(**kw)
        return self._now

    def set(self, when: datetime) -> None:
        self._now = when


# Times taken from outside (orders, coupons, schedules, report periods) must lie in this range:
# year 1 or 9999 overflowed on conversion to UTC or on date arithmetic (a 500), and no order,
# coupon or campaign of this business is dated outside it.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def sane(t: datetime) -> datetime:
    """`t` if it lies in [EARLIEST, LATEST), else ValueError (naive times: read as UTC for this)."""
    try:
        utc = t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise ValueError(f"must lie between {EARLIEST:%Y-%m-%d} and {LATEST - timedelta(days=1):%Y-%m-%d}")
    return t


def parse_local(raw: str, tz) -> datetime:
    """A date or ISO time given by a person (a report's ?from=, --to): without an offset it is in
    `tz`. ValueError when it is not one, or lies outside the accepted range."""
    t = datetime.fromisoformat(raw)
    return sane(t if t.tzinfo else t.replace(tzinfo=tz))
