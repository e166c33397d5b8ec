"""The server's Prometheus metrics: the one source for ``/metrics`` and for the ``ServerStats`` RPC.

prometheus-client holds the counters and latency histograms, recorded by the server's own
interceptor (it already knows each call's final status code, after the error table has mapped it,
which a generic gRPC metrics interceptor would not). ``ServerStats`` reads the same registry: its
count and errors are the counters' sums and its percentiles are estimated from the histogram
buckets, by linear interpolation inside the bucket as Prometheus' ``histogram_quantile`` does.

Metric names (Prometheus text at ``/metrics``):

- ``ecgsearch_rpc_requests_total{method,code}``: finished calls by final status code;
- ``ecgsearch_rpc_latency_seconds{method}``: histogram of call latency;
- ``ecgsearch_rpc_in_flight``: calls being served now;
- ``ecgsearch_store_points``: points in the served collection (as last refreshed in the background);
- ``ecgsearch_ecgs_prepared_total``: raw ECGs prepared since start;
- ``ecgsearch_heavy_calls{state}``: heavy calls ``running`` in the heavy budget and ``waiting`` for it;
  ``ecgsearch_heavy_budget_bytes{kind}``: the budget's ``capacity`` and the weight ``in_use``;
- ``ecgsearch_model_info{version,dim}`` and ``ecgsearch_build_info{version,python,grpc}``: always 1;
- ``ecgsearch_start_time_seconds``: when the server started (Unix time).
"""

from __future__ import annotations

import math
import platform
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# Latency buckets (seconds): a search takes milliseconds, a big batch seconds.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, math.inf)


class _ServiceCollector(Collector):
    """Figures read from the running service at scrape time: store size, model, prepared ECGs."""

    def __init__(self, service: Callable[[], Any]) -> None:
        self._service = service

    def collect(self) -> Iterator[Any]:
        svc = self._service()
        if svc is None:
            return
        info = svc.info(sites=None)
        points = GaugeMetricFamily("ecgsearch_store_points", "Points in the served collection.")
        points.add_metric([], info.count)
        yield points
        model = GaugeMetricFamily(
            "ecgsearch_model_info", "The encoder serving queries (always 1).", labels=["version", "dim"]
        )
        model.add_metric([info.model_version, str(info.dim)], 1)
        yield model
        prepared = CounterMetricFamily("ecgsearch_ecgs_prepared", "Raw ECGs prepared since start.")
        prepared.add_metric([], svc.prepared_count)
        yield prepared


class _HeavyCollector(Collector):
    """The heavy-call budget at scrape time (``cost.HeavyBudget``): calls running and waiting, bytes."""

    def __init__(self, budget: Any) -> None:
        self._budget = budget

    def collect(self) -> Iterator[Any]:
        budget = self._budget
        calls = GaugeMetricFamily("ecgsearch_heavy_calls", "Heavy calls by state.", labels=["state"])
        calls.add_metric(["running"], budget.running)
        calls.add_metric(["waiting"], budget.waiting)
        yield calls
        size = GaugeMetricFamily("ecgsearch_heavy_budget_bytes", "The heavy-call budget.", labels=["kind"])
        size.add_metric(["capacity"], budget.capacity)
        size.add_metric(["in_use"], budget.in_use)
        yield size


class Telemetry:
    """A registry of its own per server (several servers run in one test process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.started = time.monotonic()
        self.started_at = datetime.now(UTC)
        self.requests = Counter(
            "ecgsearch_rpc_requests",
            "Finished calls by method and final status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ecgsearch_rpc_latency_seconds",
            "Call latency by method.",
            ["method"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge("ecgsearch_rpc_in_flight", "Calls being served now.", registry=self.registry)
        start = Gauge("ecgsearch_start_time_seconds", "When the server started.", registry=self.registry)
        start.set(time.time())
        build = Gauge(
            "ecgsearch_build_info",
            "Package, Python and gRPC versions (always 1).",
            ["version", "python", "grpc"],
            registry=self.registry,
        )
        build.labels(_package_version(), platform.python_version(), _grpc_version()).set(1)
        self.http_port: int | None = None
        self._http: Any = None
        self._lock = threading.Lock()

    def watch(self, service: Callable[[], Any]) -> None:
        """Report store size, model and prepared ECGs of whatever ``service()`` returns (None: nothing)."""
        self.registry.register(_ServiceCollector(service))

    def watch_heavy(self, budget: Any) -> None:
        """Report the state of the heavy-call budget (``cost.HeavyBudget``)."""
        self.registry.register(_HeavyCollector(budget))

    def record(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def serve_http(self, host: str, port: int) -> int:
        """Serve Prometheus text at ``/metrics`` on ``host:port`` (0: any free port); the bound port."""
        try:
            self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None
        self.http_port = int(self._http.server_port)
        return self.http_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    # --- ServerStats, read off the same registry ------------------------------------------------

    def per_method(self) -> dict[str, dict[str, float]]:
        """Per RPC: count, errors (any code but OK), and p50/p95/p99 latency in ms from the histogram."""
        counts: dict[str, list[float]] = {}
        buckets: dict[str, list[tuple[float, float]]] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                method = sample.labels.get("method")
                if method is None:
                    continue
                if sample.name == "ecgsearch_rpc_requests_total":
                    row = counts.setdefault(method, [0.0, 0.0])
                    row[0] += sample.value
                    row[1] += 0 if sample.labels["code"] == "OK" else sample.value
                elif sample.name == "ecgsearch_rpc_latency_seconds_bucket":
                    buckets.setdefault(method, []).append((float(sample.labels["le"]), sample.value))
        out = {}
        for method, (count, errors) in sorted(counts.items()):
            cumulative = sorted(buckets.get(method, []))
            out[method] = {
                "count": count,
                "errors": errors,
                **{f"p{q}_ms": quantile(cumulative, q / 100) * 1000 for q in (50, 95, 99)},
            }
        return out

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started


def quantile(cumulative: list[tuple[float, float]], q: float) -> float:
    """The q-quantile of a cumulative histogram ``[(upper bound, count), ...]``, interpolated in its bucket.

    Observations in the last (infinite) bucket are reported at the largest finite bound.
    """
    if not cumulative or cumulative[-1][1] == 0:
        return 0.0
    rank = q * cumulative[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def _package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ecgsearch")
    except metadata.PackageNotFoundError:
        return "unknown"


def _grpc_version() -> str:
    import grpc

    return str(getattr(grpc, "__version__", "unknown"))
