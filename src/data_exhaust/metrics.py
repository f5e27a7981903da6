"""Prometheus metrics of one process, in a registry of its own (no global state)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from data_exhaust.jobs import Status
from data_exhaust.store import JobFilter


class JobsCollector(Collector):
    """Jobs by status, read from the job table at scrape time (true across processes)."""

    def __init__(self, count: Callable[[JobFilter], int]) -> None:
        self.count = count

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "exhaust_jobs", "Jobs in the job table by status", labels=["status"]
        )
        for status in Status:
            gauge.add_metric([status.value], self.count(JobFilter(status=status)))
        yield gauge


class Metrics:
    def __init__(self, count_jobs: Callable[[JobFilter], int]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(JobsCollector(count_jobs))
        self.requests = Counter(
            "exhaust_http_requests",
            "HTTP requests answered",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "exhaust_http_request_seconds", "HTTP answer time", ["route"], registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
