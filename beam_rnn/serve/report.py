"""The streaming-versus-bidirectional report: latency, plots, HTML (the numbers: `beam_rnn.serve.evaluate`).

`write_report` writes ``metrics.json`` (what `EvaluateModels` computed, plus the
run's counts and `measure_latency`), three PNG plots (early prediction, accuracy
by length, calibration) and a self-contained ``report.html`` with the plots inline.
"""

import base64
import html
import io
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from beam_rnn.core import constants as C
from beam_rnn.core.artifacts import ModelInfo
from beam_rnn.serve.evaluate import LENGTH_BUCKETS, PREFIX_FRACTIONS, EvaluationModels

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
PLOT_FILES = {"early": "early_prediction.png", "length": "accuracy_by_length.png",
              "calibration": "calibration.png"}


# --------------------------------------------------------------------------- latency


def measure_latency(infos: Sequence[ModelInfo], texts: Sequence[str], repeats: int = 200) -> dict[str, Any]:
    """Median per-token step time of the streaming model and per-document full-pass time of each model."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from beam_rnn.stream import step as rnn_step  # pylint: disable=import-outside-toplevel

    models = EvaluationModels(infos, PREFIX_FRACTIONS)
    out: dict[str, Any] = {}
    texts = list(texts) or ["a"]
    for name, loaded in zip(models.names, models.loaded):
        fn = loaded.serve
        fn(text=tf.constant(texts[:1]))  # warm-up (tracing, table init)
        times = []
        for t in texts[: min(len(texts), 50)]:
            start = time.perf_counter()
            fn(text=tf.constant([t]))
            times.append(time.perf_counter() - start)
        out[f"{name}_full_pass_ms_per_document"] = float(np.median(times) * 1e3)
    if models.streaming:
        state = rnn_step.initial_state(models.step_weights)
        ids = np.random.default_rng(0).integers(1, models.step_weights.vocab_size, size=repeats)
        times = []
        for token in ids:
            start = time.perf_counter()
            _, state = rnn_step.step(models.step_weights, int(token), state)
            times.append(time.perf_counter() - start)
        out["lstm_step_us_per_token"] = float(np.median(times) * 1e6)
    return out


def latency_texts(model_dir: str, n: int = 50, words: int = 230) -> list[str]:
    """Documents of a typical IMDB length (230 words) drawn from the model's vocabulary."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from beam_rnn.train.export import VOCAB_TEXT_FILE  # pylint: disable=import-outside-toplevel

    with tf.io.gfile.GFile(os.path.join(model_dir, VOCAB_TEXT_FILE)) as f:
        vocab = [w for w in f.read().split("\n") if w] or ["a"]
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(vocab[:5000], size=words)) for _ in range(n)]


# --------------------------------------------------------------------------- plots and HTML


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def make_plots(metrics: Mapping[str, Any]) -> dict[str, bytes]:
    """PNG bytes of the early-prediction curve, accuracy by length and calibration plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = metrics["models"]
    plots = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, m in models.items():
        xs = [int(k.rstrip("%")) for k in m["early_accuracy"]]
        ax.plot(xs, list(m["early_accuracy"].values()), marker="o", label=_label(name))
    ax.set_xlabel("% of the document's tokens seen")
    ax.set_ylabel("accuracy")
    ax.set_title("Early prediction")
    ax.grid(alpha=0.3)
    ax.legend()
    plots["early"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / max(1, len(models))
    for i, (name, m) in enumerate(models.items()):
        vals = [v if v is not None else 0.0 for v in m["accuracy_by_length"].values()]
        ax.bar(np.arange(len(LENGTH_BUCKETS)) + i * width, vals, width, label=_label(name))
    b = metrics["length_boundaries"]
    ax.set_xticks(np.arange(len(LENGTH_BUCKETS)) + width * (len(models) - 1) / 2)
    ax.set_xticklabels([f"short (<{b[0]})", f"medium ({b[0]}-{b[1] - 1})", f"long (>={b[1]})"])
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Accuracy by document length (tokens)")
    ax.legend()
    plots["length"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", alpha=0.5, label="perfectly calibrated")
    for name, m in models.items():
        pts = [(c["confidence"], c["accuracy"]) for c in m["calibration"] if c["count"]]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"{_label(name)} (ECE {m['ece']:.3f})")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("Calibration")
    ax.legend()
    plots["calibration"] = _png(fig)
    plt.close(fig)
    return plots


def _label(name: str) -> str:
    return {C.MODEL_LSTM: "streaming LSTM", C.MODEL_BILSTM: "BiLSTM"}.get(name, name)


def summary_text(metrics: Mapping[str, Any]) -> list[str]:
    """Plain-language sentences on the trade-off, from the numbers."""
    models = metrics["models"]
    lines = []
    if C.MODEL_LSTM in models and C.MODEL_BILSTM in models:
        s, b = models[C.MODEL_LSTM], models[C.MODEL_BILSTM]
        diff = (b["accuracy"] - s["accuracy"]) * 100
        lines.append(
            f"On these {metrics['documents']} documents the BiLSTM is {abs(diff):.1f} accuracy points "
            f"{'better' if diff >= 0 else 'worse'} than the streaming LSTM "
            f"({b['accuracy']:.3f} vs {s['accuracy']:.3f})."
        )
        half_s, half_b = s["early_accuracy"].get("50%"), b["early_accuracy"].get("50%")
        lines.append(
            f"Half-way through a document the streaming model is right {half_s:.1%} of the time "
            f"(the BiLSTM, re-run on the same half, {half_b:.1%}); the streaming model got there with "
            f"one O(1) step per token, the BiLSTM needs a full pass over the prefix for every update."
        )
        lat = metrics.get("latency", {})
        if "lstm_step_us_per_token" in lat:
            lines.append(
                f"Updating the streaming prediction costs {lat['lstm_step_us_per_token']:.0f} µs per token; "
                f"re-running the BiLSTM on a document costs {lat.get('bilstm_full_pass_ms_per_document', float('nan')):.1f} ms."
            )
        if metrics.get("agreement") is not None:
            lines.append(f"The two models agree on {metrics['agreement']:.1%} of documents.")
        lines.append(
            "Choose the streaming LSTM when predictions must update as text arrives (chat, live "
            "transcripts, typing); choose the BiLSTM when whole documents are scored at once and the "
            "accuracy difference above matters."
        )
    else:
        for name, m in models.items():
            lines.append(f"{_label(name)}: accuracy {m['accuracy']:.3f} on {metrics['documents']} documents.")
    return lines


def render_html(metrics: Mapping[str, Any], plots: Mapping[str, bytes]) -> str:
    """A self-contained HTML report: summary, metric table and the plots inline (base64)."""
    rows = []
    for name, m in metrics["models"].items():
        auc = f"{m['auc']:.4f}" if m["auc"] is not None else "n/a"
        rows.append(
            f"<tr><td>{html.escape(_label(name))}</td><td>{m['accuracy']:.4f}</td><td>{auc}</td>"
            f"<td>{m['f1']:.4f}</td><td>{m['log_loss']:.4f}</td><td>{m['ece']:.4f}</td>"
            f"<td>{html.escape(json.dumps(m['confusion_matrix']))}</td></tr>"
        )
    imgs = "".join(
        f'<figure><img alt="{key}" src="data:image/png;base64,{base64.b64encode(png).decode()}"/></figure>'
        for key, png in plots.items()
    )
    summary = "".join(f"<p>{html.escape(line)}</p>" for line in summary_text(metrics))
    latency = html.escape(json.dumps(metrics.get("latency", {}), indent=1))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>beam_rnn: streaming vs bidirectional</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:.3em .8em;border-bottom:1px solid #ddd}}
figure{{display:inline-block;margin:.5em}}img{{max-width:28em}}</style></head><body>
<h1>Streaming LSTM vs BiLSTM</h1>
<h2>Summary</h2>{summary}
<h2>Metrics</h2>
<table><tr><th>model</th><th>accuracy</th><th>AUC</th><th>F1</th><th>log loss</th><th>ECE</th><th>confusion (rows: true)</th></tr>
{''.join(rows)}</table>
<h2>Plots</h2>{imgs}
<h2>Latency</h2><pre>{latency}</pre>
</body></html>
"""


def write_report(output_dir: str, metrics: Mapping[str, Any]) -> dict[str, str]:
    """Write metrics.json, the PNG plots and report.html; return their paths."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    tf.io.gfile.makedirs(output_dir)
    paths = {"metrics": os.path.join(output_dir, METRICS_FILE), "report": os.path.join(output_dir, REPORT_FILE)}
    with tf.io.gfile.GFile(paths["metrics"], "w") as f:
        f.write(json.dumps(metrics, indent=2))
    plots = make_plots(metrics)
    for key, png in plots.items():
        path = os.path.join(output_dir, PLOT_FILES[key])
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(png)
        paths[key] = path
    with tf.io.gfile.GFile(paths["report"], "w") as f:
        f.write(render_html(metrics, plots))
    return paths


def read_metrics(output_dir: str) -> dict[str, Any]:
    """The metrics.json of a report directory."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    with tf.io.gfile.GFile(os.path.join(output_dir, METRICS_FILE)) as f:
        return json.loads(f.read())


def read_records(pattern: str) -> Iterable[dict[str, Any]]:
    """Per-document records written by the evaluate pipeline (JSON Lines)."""
    import tensorflow as tf

    for path in sorted(tf.io.gfile.glob(pattern)):
        with tf.io.gfile.GFile(path) as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)
