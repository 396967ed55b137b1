"""The service's Prometheus metrics, in a registry of its own per app (``GET /metrics``).

The per-message ones (messages, tokens, message latency, batch rows) are plain Python
numbers that the event loop, their only writer, adds to; a collector turns them into
Prometheus families when /metrics is read.  A prometheus_client ``Counter.inc`` and
``Histogram.observe`` take a lock and several calls each, several per message
(`benchmarks/load_service.py --compare`, RESULTS.md).  The rare ones (sessions, errors,
reloads, classified texts) stay prometheus_client metrics.

With ``--workers N`` each worker has its own numbers; `merge_expositions` sums the
workers' expositions into the service's (what ``GET /metrics`` answers).
"""

import bisect
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

PREFIX = "beam_rnn_serve_"
# Per-message latency: sub-millisecond steps up to a second (the goal is p99 <= 50 ms).
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
CONTENT_TYPE = CONTENT_TYPE_LATEST
TRANSPORTS = ("ws", "http")
LATENCY_KINDS = (*TRANSPORTS, "classify")


class Buckets:
    """A histogram's bucket counts and sum (Prometheus semantics: a value goes in the first bucket ``le`` >= it)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]):
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, observations <= le)`` per bucket, +Inf last (what `HistogramMetricFamily` takes)."""
        out, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            total += count
            out.append((floatToGoString(bound), total))
        return out


class ServiceMetrics:
    """Sessions, messages, tokens (rate() of the counter is tokens/s), latency, errors, reloads.

    Attributes:
        messages: Client messages answered, by transport (add to it).
        tokens: Tokens stepped through the streaming model (add to it).
        latency: Time from a client message to its answer, by transport and "classify".
        step_rows: Sessions advanced by one batched NumPy step.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sessions_open = Gauge(PREFIX + "sessions_open", "Open sessions.", ["transport"], registry=r)
        self.sessions_closed = Counter(PREFIX + "sessions_closed", "Sessions closed, by reason.", ["reason"],
                                       registry=r)
        self.errors = Counter(PREFIX + "errors", "Messages answered with an error, by reason.", ["reason"],
                              registry=r)
        self.reloads = Counter(PREFIX + "model_reloads", "Model reloads, by outcome (loaded, refused).",
                               ["outcome"], registry=r)
        self.classified = Counter(PREFIX + "classified_texts", "Texts answered by /v1/classify.", registry=r)
        self.forwarded = Counter(PREFIX + "forwarded_requests", "/v1/stream requests passed on to the worker that "
                                 "holds the session (--workers).", registry=r)
        self.messages = dict.fromkeys(TRANSPORTS, 0)
        self.tokens = 0
        self.latency = {kind: Buckets(LATENCY_BUCKETS) for kind in LATENCY_KINDS}
        self.step_rows = Buckets(ROW_BUCKETS)
        r.register(_PerMessage(self))
        for transport in TRANSPORTS:  # present (at 0) from the start
            self.sessions_open.labels(transport)
        for outcome in ("loaded", "refused"):
            self.reloads.labels(outcome)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)


class _PerMessage:
    """The collector of the per-message numbers of a `ServiceMetrics`."""

    def __init__(self, metrics: ServiceMetrics):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        messages = CounterMetricFamily(PREFIX + "messages", "Client messages answered.", labels=["transport"])
        for transport, count in m.messages.items():
            messages.add_metric([transport], count)
        yield messages
        yield CounterMetricFamily(PREFIX + "tokens", "Tokens stepped through the streaming model.", value=m.tokens)
        latency = HistogramMetricFamily(PREFIX + "message_latency_seconds", "Time from a client message to its answer.",
                                        labels=["transport"])
        for kind, buckets in m.latency.items():
            latency.add_metric([kind], buckets.cumulative(), buckets.sum)
        yield latency
        rows = HistogramMetricFamily(PREFIX + "step_batch_rows", "Sessions advanced by one batched NumPy step.")
        rows.add_metric([], m.step_rows.cumulative(), m.step_rows.sum)
        yield rows


class _Fixed:
    """A collector of fixed families (what `merge_expositions` exports)."""

    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def merge_expositions(texts: Sequence[bytes]) -> bytes:
    """The workers' Prometheus texts as one service's: every sample with the same name and labels summed.

    Counters, the open-session gauges and histogram buckets, sums and counts add up
    across processes; a ``_created`` timestamp is the earliest one.  Families and
    samples keep the order of their first appearance.
    """
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text.decode("utf-8")):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                values[family.name] = {}
            merged = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sample.labels.items()))
                if key not in merged:
                    merged[key] = sample.value
                elif sample.name.endswith("_created"):
                    merged[key] = min(merged[key], sample.value)
                else:
                    merged[key] += sample.value
    registry = CollectorRegistry(auto_describe=False)
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)
