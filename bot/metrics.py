"""What operators watch, in Prometheus' text format: jobs by outcome and platform, upstream
latency and errors, render times, the queue, money reserved and spent, refunds. One registry
per bot (never the process-global one), filled as jobs end and read on each scrape."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .errors import BotError, UpstreamError
from .models import JobResult
from .ports import Reports
from .settings import micros_to_usd

SECONDS = (0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 300, 600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Counter(
            "sam3d_jobs",
            "Jobs that ended, by platform and outcome",
            ["platform", "outcome"],
            registry=self.registry,
        )
        self.upstream_seconds = Histogram(
            "sam3d_upstream_seconds",
            "Time Segmind took per job",
            buckets=SECONDS,
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "sam3d_upstream_errors", "Segmind failures by code", ["code"], registry=self.registry
        )
        self.render_seconds = Histogram(
            "sam3d_render_seconds",
            "Time to draw a picture",
            ["kind"],
            buckets=SECONDS,
            registry=self.registry,
        )
        self.refunds = Counter(
            "sam3d_refunds", "Jobs refunded", ["platform"], registry=self.registry
        )
        self.queue_length = Gauge(
            "sam3d_queue_length", "Jobs waiting for an upstream slot", registry=self.registry
        )
        self.data_bytes = Gauge(
            "sam3d_data_bytes",
            "Bytes under DATA_DIR (jobs' files, the cache, the ledger), as of the last prune",
            registry=self.registry,
        )
        self.usd = Gauge(
            "sam3d_budget_usd",
            "This month's global budget, by state",
            ["state"],
            registry=self.registry,
        )

    # -- what the pipeline reports --------------------------------------------------------------

    def delivered(self, platform: str, result: JobResult) -> None:
        self.jobs.labels(platform, "cached" if result.cached else "delivered").inc()
        if "upstream" in result.timings:
            self.upstream_seconds.observe(result.timings["upstream"])
        for kind, stage in (("thumbnail", "render"), ("turntable", "turntable")):
            if stage in result.timings:
                self.render_seconds.labels(kind).observe(result.timings[stage])

    def failed(self, platform: str, error: BotError, refunded: bool) -> None:
        self.jobs.labels(platform, "refunded" if refunded else "failed").inc()
        if isinstance(error, UpstreamError):
            self.upstream_errors.labels(error.code).inc()
        if refunded:
            self.refunds.labels(platform).inc()

    # -- read on each scrape --------------------------------------------------------------------

    async def scrape(self, ledger: Reports, queue_length: Callable[[], int]) -> bytes:
        budget = await ledger.budget()
        self.usd.labels("reserved").set(float(micros_to_usd(budget.reserved_micros)))
        self.usd.labels("committed").set(float(micros_to_usd(budget.committed_micros)))
        if budget.cap_micros is not None:
            self.usd.labels("cap").set(float(micros_to_usd(budget.cap_micros)))
        self.queue_length.set(queue_length())
        return generate_latest(self.registry)
