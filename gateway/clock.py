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
