"""Prometheus metrics in a registry of their own (one per Services, so tests can build many)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bot.outbox import SenderStats
from storage.stats import QueueFigures
from storage.tables import TicketState

SWEEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class SenderCollector(Collector):
    """The outbox sender's running totals, read when scraped."""

    def __init__(self, stats: SenderStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        for name, doc, value in (
            ("qunban_messages_sent", "Messages Telegram accepted.", s.sent),
            ("qunban_messages_retried", "Sends retried after a network error.", s.retried),
            (
                "qunban_messages_given_up",
                "Messages given up (403, 400, too many tries).",
                s.failed,
            ),
            ("qunban_telegram_429", "429 Too Many Requests answers seen.", s.rate_limited),
            ("qunban_ambiguous_sends", "Sends that timed out: maybe delivered.", s.ambiguous),
        ):
            yield CounterMetricFamily(name, doc, value=value)


class TicketStateCollector(Collector):
    """Tickets by state, from the last GROUP BY the scrape ran (collect() cannot await)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("qunban_tickets", "Tickets by state.", labels=["state"])
        for state in TicketState:
            family.add_metric([state.value], self.counts.get(state.value, 0))
        yield family


class Metrics:
    """Counters the parts of the bot move, and gauges the scrape refreshes from the database."""

    def __init__(self, stats: SenderStats, *, version: str, engine: str) -> None:
        self.registry = r = CollectorRegistry()
        self.updates_received = Counter(
            "qunban_updates_received", "Updates stored in the inbox.", registry=r
        )
        self.updates_handled = Counter(
            "qunban_updates_handled", "Updates the Application has handled.", registry=r
        )
        self.nudges_sent = Counter(
            "qunban_nudges_sent", "Nudges and escalations queued.", registry=r
        )
        self.digests_sent = Counter("qunban_digests_sent", "Leaders' digests queued.", registry=r)
        self.sweep_seconds = Histogram(
            "qunban_sweep_duration_seconds",
            "How long each sweep took.",
            ["sweep"],
            buckets=SWEEP_BUCKETS,
            registry=r,
        )
        for sweep in ("scan", "digest"):
            self.sweep_seconds.labels(sweep)  # the series exist before the first sweep
        self.inbox_lag = Gauge(
            "qunban_inbox_lag_seconds", "Age of the oldest unprocessed update.", registry=r
        )
        self.inbox_pending = Gauge("qunban_inbox_pending", "Updates waiting.", registry=r)
        self.parked = Gauge("qunban_inbox_parked", "Updates parked after failing.", registry=r)
        self.outbox_depth = Gauge("qunban_outbox_depth", "Messages waiting to go.", registry=r)
        self.outbox_oldest = Gauge(
            "qunban_outbox_oldest_pending_seconds",
            "Age of the oldest waiting message.",
            registry=r,
        )
        self.heartbeat_age = Gauge(
            "qunban_heartbeat_age_seconds",
            "Time since each part last ran.",
            ["component"],
            registry=r,
        )
        self.database_up = Gauge("qunban_database_up", "1 when the database answered.", registry=r)
        self.started = Gauge("qunban_start_time_seconds", "When this process started.", registry=r)
        Info("qunban", "Version and database engine.", registry=r).info(
            {"version": version, "engine": engine}
        )
        r.register(SenderCollector(stats))
        self.tickets = TicketStateCollector()
        r.register(self.tickets)

    def show(
        self,
        now: datetime,
        figures: QueueFigures,
        tickets: Mapping[str, int],
        beats: Mapping[str, datetime],
    ) -> None:
        """Set the gauges from what the database said."""
        self.database_up.set(1)
        self.inbox_lag.set(_age(now, figures.inbox_oldest))
        self.inbox_pending.set(figures.inbox_pending)
        self.parked.set(figures.parked)
        self.outbox_depth.set(figures.outbox_depth)
        self.outbox_oldest.set(_age(now, figures.outbox_oldest))
        self.tickets.counts = dict(tickets)
        for component, at in beats.items():
            self.heartbeat_age.labels(component).set(_age(now, at))


def _age(now: datetime, then: datetime | None) -> float:
    return max((now - then).total_seconds(), 0.0) if then is not None else 0.0
