"""beam_rnn.service: ``beam-rnn serve``, predictions while people type (see docs/ARCHITECTURE.md).

    config     `ServiceConfig`: every setting and default of ``beam-rnn serve`` (its flags)
    models     `load_models`, `ModelSet`: the verified models, whole-text classification, reload checks
    sessions   `SessionTable`, `StatePool`, `Batcher`: per-session state, one batched step per round
    protocol   message parsing and the prediction / decision / error frames (`Streams`)
    metrics    `ServiceMetrics`: the Prometheus registry of one app
    app        `create_app`, `Service`: the Starlette routes, reloads, idle sweeps
    server     `serve`: uvicorn on a bound socket, the serving line, signals
    workers    ``--workers N``: the supervisor of N worker processes on one port, the shared session quota
    cluster    `Peers`: a worker's view of the others (the /v1/stream owner, /metrics and /readyz of all)

The public names below are imported on first use, so importing the package loads
neither Starlette nor TensorFlow.
"""

from beam_rnn.core.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "config": ("ServiceConfig",),
        "models": ("ModelSet", "load_models"),
        "app": ("create_app", "Service"),
        "server": ("serve",),
    },
)
