"""The service's Prometheus metrics, in a registry of its own per app (``GET /metrics``)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "beam_rnn_serve_"
# Per-message latency: sub-millisecond steps up to a second (the goal is p99 <= 50 ms).
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServiceMetrics:
    """Sessions, messages, tokens (rate() of the counter is tokens/s), latency, errors, reloads."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sessions_open = Gauge(PREFIX + "sessions_open", "Open sessions.", ["transport"], registry=r)
        self.sessions_closed = Counter(PREFIX + "sessions_closed", "Sessions closed, by reason.", ["reason"],
                                       registry=r)
        self.messages = Counter(PREFIX + "messages", "Client messages answered.", ["transport"], registry=r)
        self.tokens = Counter(PREFIX + "tokens", "Tokens stepped through the streaming model.", registry=r)
        self.latency = Histogram(PREFIX + "message_latency_seconds", "Time from a client message to its answer.",
                                 ["transport"], buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter(PREFIX + "errors", "Messages answered with an error, by reason.", ["reason"],
                              registry=r)
        self.reloads = Counter(PREFIX + "model_reloads", "Model reloads, by outcome (loaded, refused).",
                               ["outcome"], registry=r)
        self.step_rows = Histogram(PREFIX + "step_batch_rows", "Sessions advanced by one batched NumPy step.",
                                   buckets=ROW_BUCKETS, registry=r)
        self.classified = Counter(PREFIX + "classified_texts", "Texts answered by /v1/classify.", registry=r)
        for transport in ("ws", "http"):  # present (at 0) from the start
            self.sessions_open.labels(transport)
            self.messages.labels(transport)
        for outcome in ("loaded", "refused"):
            self.reloads.labels(outcome)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
