"""Prometheus metrics, one collector registry per app so that apps don't share counters."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ..tenancy import BackgroundWriter
    from .registry import ModelRegistry

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5)


class _EngineCollector(Collector):
    """Reads engine state at scrape time rather than mirroring it on every step."""

    def __init__(self, models: ModelRegistry):
        self.models = models

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily("tramontane_requests_running", "Requests being generated", labels=["model"])
        waiting = GaugeMetricFamily("tramontane_requests_waiting", "Requests queued in the engine", labels=["model"])
        kv = GaugeMetricFamily(
            "tramontane_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use", labels=["model"]
        )
        hits = CounterMetricFamily(
            "tramontane_prefix_cache_hits", "Prompt tokens served from the prefix cache", labels=["model"]
        )
        queries = CounterMetricFamily(
            "tramontane_prefix_cache_queries", "Prompt tokens looked up in the prefix cache", labels=["model"]
        )
        shed = CounterMetricFamily(
            "tramontane_requests_shed", "Requests refused with a 503 once queued, the engine being saturated",
            labels=["model"],
        )
        preempted = CounterMetricFamily(
            "tramontane_preemptions", "Sequences that gave their KV cache back, to be recomputed", labels=["model"]
        )
        for name, engine in self.models.engines():
            stats = engine.stats()
            running.add_metric([name], stats.num_running)
            waiting.add_metric([name], stats.num_waiting)
            kv.add_metric([name], stats.kv_cache_usage)
            hits.add_metric([name], stats.prefix_cache_hits)
            queries.add_metric([name], stats.prefix_cache_queries)
            shed.add_metric([name], stats.num_shed)
            preempted.add_metric([name], stats.num_preemptions)
        yield from (running, waiting, kv, hits, queries, shed, preempted)


class _WriterCollector(Collector):
    """A background writer's queue (request logs, usage records) and the items it could not store."""

    def __init__(self, writer: BackgroundWriter, name: str, title: str):
        self.writer = writer
        self.name = name
        self.title = title

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            f"tramontane_{self.name}_dropped",
            f"{self.title} not stored: the writer's queue was full or the database write failed",
            value=self.writer.dropped,
        )
        yield GaugeMetricFamily(
            f"tramontane_{self.name}_queued", f"{self.title} waiting to be written", value=self.writer.queued
        )


class Metrics:
    def __init__(
        self,
        models: ModelRegistry,
        request_logs: BackgroundWriter | None = None,
        usage_records: BackgroundWriter | None = None,
    ):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tramontane_http_requests", "HTTP requests", ["method", "route", "status"], registry=r)
        self.request_latency = Histogram(
            "tramontane_http_request_duration_seconds",
            "HTTP request latency, to the last byte",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("tramontane_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.completion_tokens = Counter("tramontane_completion_tokens", "Tokens generated", ["model"], registry=r)
        self.ttft = Histogram(
            "tramontane_time_to_first_token_seconds",
            "Submission to the engine to first generated token",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "tramontane_inter_token_latency_seconds",
            "Time between generated tokens",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self._model_series: dict[str, _ModelSeries] = {}
        self._request_series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        r.register(_EngineCollector(models))
        if request_logs is not None:
            r.register(_WriterCollector(request_logs, "request_logs", "Request logs"))
        if usage_records is not None:
            r.register(_WriterCollector(usage_records, "usage_records", "Usage records"))

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Counts and times one HTTP request, through its series looked up once (as `timer`)."""
        key = (method, route, status)
        series = self._request_series.get(key)
        if series is None:
            count = self.requests.labels(method, route, str(status))
            series = self._request_series.setdefault(key, (count, self.request_latency.labels(method, route)))
        count, latency = series
        count.inc()
        latency.observe(seconds)

    def timer(self, model: str, started: float) -> GenerationTimer:
        series = self._model_series.get(model)
        if series is None:
            series = self._model_series.setdefault(model, _ModelSeries.of(self, model))
        return GenerationTimer(series, started)


@dataclass(frozen=True, slots=True)
class _ModelSeries:
    """One model's generation series, looked up once: `labels()` takes a lock and
    builds its key on every call, four calls per request otherwise."""

    ttft: Histogram
    itl: Histogram
    completion: Counter
    prompt: Counter

    @classmethod
    def of(cls, metrics: Metrics, model: str) -> _ModelSeries:
        return cls(
            metrics.ttft.labels(model),
            metrics.itl.labels(model),
            metrics.completion_tokens.labels(model),
            metrics.prompt_tokens.labels(model),
        )


class GenerationTimer:
    """Feeds TTFT, inter-token latency and token counts for one request."""

    def __init__(self, series: _ModelSeries, started: float):
        self._ttft = series.ttft
        self._itl = series.itl
        self._completion = series.completion
        self._prompt = series.prompt
        self._last: float | None = None
        self._started = started

    def prompt(self, num_tokens: int) -> None:
        self._prompt.inc(num_tokens)

    def tokens(self, num_new: int) -> None:
        """Called once per engine step with the tokens it produced over all sequences."""
        if num_new <= 0:
            return
        now = time.perf_counter()
        if self._last is None:
            self._ttft.observe(now - self._started)
        else:
            # One observation per engine step: with n > 1 each sequence still got one token.
            self._itl.observe(now - self._last)
        self._last = now
        self._completion.inc(num_new)
