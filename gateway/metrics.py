"""Prometheus metrics for `/metrics`: one registry per gateway (tests run several in a process).

Counters are bumped where things happen; what lives in the database (outbox depth and age) is
read when Prometheus scrapes, so every instance reports the shared queue the same way.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from sqlalchemy import func, select

from gateway.models import Outbox

if TYPE_CHECKING:
    from gateway.runtime import Gateway

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _RateLimitWaits:
    """Seconds and times senders waited for a platform's cap, per account (read off the buckets)."""

    def __init__(self, gw: Gateway):
        self.gw = gw

    def collect(self):
        seconds = CounterMetricFamily("gateway_ratelimit_wait_seconds", "Time sends waited for a platform's rate cap",
                                      labels=["account"])
        waits = CounterMetricFamily("gateway_ratelimit_waits", "Sends that had to wait for a platform's rate cap",
                                    labels=["account"])
        for account, bucket in sorted(self.gw.outbox.limiters().items()):
            seconds.add_metric([account], bucket.waited)
            waits.add_metric([account], bucket.waits)
        yield seconds
        yield waits


class Metrics:
    def __init__(self, gw: Gateway):
        self.gw = gw
        r = self.registry = CollectorRegistry()
        self.inbound = Counter("gateway_inbound", "Platform callbacks and messages received, by result",
                               ["platform", "result"], registry=r)
        self.sends = Counter("gateway_sends", "Outbound send attempts, by result", ["platform", "result"], registry=r)
        self.scheduler_runs = Counter("gateway_scheduler_runs", "Campaign runs made, materialised or skipped",
                                      ["result"], registry=r)
        self.leader = Gauge("gateway_scheduler_leader", "1 while this instance leads the campaign scheduler",
                            registry=r)
        self.http = Counter("gateway_http_requests", "HTTP requests, by route and status",
                            ["method", "route", "status"], registry=r)
        self.latency = Histogram("gateway_http_request_seconds", "HTTP request time", ["route"], registry=r,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.depth = Gauge("gateway_outbox_depth", "Outbox rows by status (shared by all instances)", ["status"],
                           registry=r)
        self.age = Gauge("gateway_outbox_oldest_due_seconds",
                         "How long the oldest due pending outbox row has waited", registry=r)
        r.register(_RateLimitWaits(gw))

    async def render(self) -> bytes:
        async with self.gw.db() as s:
            rows = (await s.execute(select(Outbox.status, func.count()).group_by(Outbox.status))).all()
            oldest = (await s.execute(select(func.min(Outbox.next_attempt_at)).where(
                Outbox.status == "pending", Outbox.next_attempt_at <= self.gw.clock.now()))).scalar()
        counts = dict(rows)
        for status in ("pending", "sending", "sent", "held", "dead", "cancelled"):
            self.depth.labels(status).set(counts.get(status, 0))
        self.age.set(max(0.0, (self.gw.clock.now() - oldest).total_seconds()) if oldest else 0.0)
        self.leader.set(1 if self.gw.leadership.is_leader else 0)
        return generate_latest(self.registry)

    def observe_http(self, method: str, route: str, status: int, started: float) -> None:
        self.http.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(time.perf_counter() - started)
