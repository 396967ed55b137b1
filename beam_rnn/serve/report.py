"""The streaming-versus-bidirectional report: metrics, early prediction, plots, HTML.

`EvaluateModels` scores a labelled corpus with every exported model in a models
directory (``bilstm/`` and/or ``lstm/``) and computes, with a Beam combiner:

* per model: accuracy, AUC (binary), F1 (binary: positive class; K > 2: macro),
  log loss, expected calibration error (10 equal-width confidence bins),
  confusion matrix, accuracy by document length bucket;
* early prediction: accuracy after the first 10%, 20%, ... 100% of each document's
  tokens — the streaming model from its per-token NumPy step (one pass over the
  document, O(1) per token), the BiLSTM by re-running it on each prefix (it has no
  per-token state, which is the point of the comparison);
* agreement between the models.

Token ids come from the exported `tokenize` signature (the TFT graph), so every
model sees exactly the ids it was trained on.  Per-document work is distributed;
the combiner keeps counts and sums and, for the AUC, a histogram of at most
65,536 float32 scores per model (exact while the distinct scores fit, then
coarsened with a stated error bound), so its state does not grow with the corpus.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import os
import time
from typing import Any, Iterable, Mapping, Sequence

import apache_beam as beam
import numpy as np

from beam_rnn.core import constants as C
from beam_rnn.core.metrics import (
    auc_from_histogram,
    class_probabilities,
    coarsen_histogram,
    f1_from_confusion,
    float32_bits,
    predicted_labels,
)

PREFIX_FRACTIONS = tuple(round(0.1 * i, 1) for i in range(1, 11))
DEFAULT_LENGTH_BOUNDARIES = (100, 300)  # tokens: short < 100 <= medium < 300 <= long
LENGTH_BUCKETS = ("short", "medium", "long")
ECE_BINS = 10
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
PLOT_FILES = {"early": "early_prediction.png", "length": "accuracy_by_length.png",
              "calibration": "calibration.png"}
EPS = 1e-7


# --------------------------------------------------------------------------- pure helpers


def length_bucket(length: int, boundaries: Sequence[int] = DEFAULT_LENGTH_BOUNDARIES) -> int:
    """Index into LENGTH_BUCKETS for a document of `length` tokens."""
    return int(np.searchsorted(np.asarray(boundaries), length, side="right"))


def prefix_lengths(length: int, fractions: Sequence[float] = PREFIX_FRACTIONS) -> list[int]:
    """Tokens in each prefix: ceil(f * length), at least 1 token for a non-empty document."""
    return [max(1, math.ceil(round(f * length, 6))) if length else 0 for f in fractions]


# --------------------------------------------------------------------------- scoring


@dataclasses.dataclass
class LoadedModels:
    """Exported models of a models dir, loaded once per worker."""

    names: list[str]
    saved: dict[str, Any]
    num_classes: int
    streaming: str | None
    step_weights: Any | None

    @classmethod
    def load(cls, models_dir: str) -> "LoadedModels":
        import tensorflow as tf

        from beam_rnn.stream import step as rnn_step

        names = available_models(models_dir)
        saved = {n: tf.saved_model.load(os.path.join(models_dir, n, C.SAVED_MODEL_DIR)) for n in names}
        card = read_card(os.path.join(models_dir, names[0]))
        streaming = C.MODEL_LSTM if C.MODEL_LSTM in names else None
        weights = None
        if streaming:
            weights = rnn_step.StepWeights.load(_local(os.path.join(models_dir, streaming, C.STEP_WEIGHTS_FILE)))
        return cls(names, saved, int(card.get("num_classes", 2)), streaming, weights)


def _local(path: str) -> str:
    """np.load needs a local file: copy gs:// (or other remote) paths to a local temp file."""
    if "://" not in path:
        return path
    import tempfile

    import tensorflow as tf

    local = os.path.join(tempfile.gettempdir(), "beam_rnn_" + os.path.basename(path))
    tf.io.gfile.copy(path, local, overwrite=True)
    return local


def read_card(model_dir: str) -> dict[str, Any]:
    import tensorflow as tf

    with tf.io.gfile.GFile(os.path.join(model_dir, C.MODEL_CARD_FILE)) as f:
        return json.loads(f.read())


def available_models(models_dir: str) -> list[str]:
    """Model kinds exported under `models_dir` (those with a saved_model/ and a card)."""
    import tensorflow as tf

    return [
        n for n in C.MODEL_NAMES
        if tf.io.gfile.exists(os.path.join(models_dir, n, C.SAVED_MODEL_DIR, "saved_model.pb"))
        and tf.io.gfile.exists(os.path.join(models_dir, n, C.MODEL_CARD_FILE))
    ]


def _probs(logits: np.ndarray, num_classes: int) -> np.ndarray:
    from beam_rnn.stream.step import probabilities

    p = probabilities(np.asarray(logits, dtype=np.float32), num_classes)
    return p[..., 0] if num_classes == 2 and p.ndim == 2 else p


def score_documents(models: LoadedModels, docs: Sequence[Mapping[str, Any]],
                    fractions: Sequence[float] = PREFIX_FRACTIONS) -> list[dict[str, Any]]:
    """Per-document full-pass and prefix predictions of every model.

    Returns one record per document: `{id, label, length, probability: {model: p},
    early: {model: [p at each fraction]}}` (p = P(1) for binary, a list for K classes).
    """
    import tensorflow as tf

    from beam_rnn.stream import step as rnn_step

    texts = tf.constant([d[C.TEXT_KEY] for d in docs])
    first = models.saved[models.names[0]]
    tok = first.signatures["tokenize"](text=texts)
    ids = tok["token_ids"].numpy()
    lengths = tok["lengths"].numpy().astype(int)
    k = models.num_classes
    full = {n: models.saved[n].signatures["serving_default"](text=texts)["probabilities"].numpy() for n in models.names}
    cuts = [prefix_lengths(int(n), fractions) for n in lengths]
    early: dict[str, np.ndarray] = {}
    for name in models.names:
        if name == models.streaming:
            # One pass over the batch: advance every stream a token at a time, read the
            # prediction whenever a document reaches one of its prefix lengths.
            state = rnn_step.initial_state(models.step_weights, len(docs))
            out = np.zeros((len(docs), len(fractions)) + (() if k == 2 else (k,)), dtype=np.float32)
            wanted = {}
            for i, c in enumerate(cuts):
                for j, t in enumerate(c):
                    wanted.setdefault(t, []).append((i, j))
            for t in range(1, ids.shape[1] + 1):
                logits, state = rnn_step.step_batch(models.step_weights, ids[:, t - 1], state)
                for i, j in wanted.get(t, ()):
                    out[i, j] = _probs(logits[i : i + 1], k)[0]
            for i, c in enumerate(cuts):  # empty documents: the prediction of no tokens
                if lengths[i] == 0:
                    logits, _ = rnn_step.step_batch(models.step_weights, np.zeros(1, np.int64),
                                                    rnn_step.initial_state(models.step_weights, 1))
                    out[i, :] = _probs(logits, k)[0]
            early[name] = out
        else:
            fn = models.saved[name].signatures["classify_ids"]
            cols = []
            for j in range(len(fractions)):
                prefix = np.zeros_like(ids)
                for i, c in enumerate(cuts):
                    prefix[i, : c[j]] = ids[i, : c[j]]
                cols.append(fn(token_ids=tf.constant(prefix))["probabilities"].numpy())
            early[name] = np.stack(cols, axis=1)
    records = []
    for i, d in enumerate(docs):
        records.append({
            C.ID_KEY: d[C.ID_KEY],
            C.LABEL_KEY: int(d[C.LABEL_KEY]),
            "length": int(lengths[i]),
            "probability": {n: np.asarray(full[n][i]).tolist() for n in models.names},
            "early": {n: np.asarray(early[n][i]).tolist() for n in models.names},
        })
    return records


class _ScoreDoFn(beam.DoFn):
    def __init__(self, models_dir: str):
        self._models_dir = models_dir
        self._models = None
        self._docs = beam.metrics.Metrics.counter("beam_rnn.serve.report", "documents_scored")

    def setup(self):
        self._models = LoadedModels.load(self._models_dir)

    def process(self, batch):
        records = score_documents(self._models, batch)
        self._docs.inc(len(records))
        yield from records


# --------------------------------------------------------------------------- aggregation


class ReportCombineFn(beam.CombineFn):
    """Counts and sums for every metric, and an AUC histogram: state does not grow with the corpus.

    The AUC is exact (float32 scores, ties 1/2) while a model has at most
    `auc_max_bins` distinct scores, then a bounded histogram with a guaranteed
    error bound (`auc_method`, `auc_max_error`), as in `beam_rnn.serve.scoring.ScoreSummaryFn`.
    """

    def __init__(self, model_names: Sequence[str], num_classes: int, fractions: Sequence[float] = PREFIX_FRACTIONS,
                 length_boundaries: Sequence[int] = DEFAULT_LENGTH_BOUNDARIES, auc_max_bins: int = 1 << 16):
        if auc_max_bins < 2:
            raise ValueError(f"auc_max_bins must be >= 2, got {auc_max_bins}.")
        self._max_bins = auc_max_bins
        self._names = list(model_names)
        self._k = num_classes
        self._fractions = list(fractions)
        self._boundaries = list(length_boundaries)

    def create_accumulator(self):
        k, nb, nf = self._k, len(LENGTH_BUCKETS), len(self._fractions)
        return {
            "n": 0,
            "agree": 0,
            "bucket_docs": np.zeros(nb, np.int64),
            "models": {n: {"confusion": np.zeros((k, k), np.int64), "log_loss": 0.0,
                           "ece_count": np.zeros(ECE_BINS, np.int64), "ece_conf": np.zeros(ECE_BINS),
                           "ece_correct": np.zeros(ECE_BINS), "bucket_correct": np.zeros(nb, np.int64),
                           # Memory: a bounded {float32 bits >> shift: [neg, pos]} histogram, not a score per
                           # document (a list grew ~0.3 KB/doc/model with its pickled merge copies).
                           "early_correct": np.zeros(nf, np.int64), "auc_hist": {}, "auc_shift": 0}
                       for n in self._names},
        }

    def add_input(self, acc, record):
        label = record[C.LABEL_KEY]
        bucket = length_bucket(record["length"], self._boundaries)
        acc["n"] += 1
        acc["bucket_docs"][bucket] += 1
        preds = []
        for name in self._names:
            m = acc["models"][name]
            p = np.asarray(record["probability"][name], dtype=np.float64)
            cp = class_probabilities(p[None])[0]
            pred = int(predicted_labels(p[None])[0])
            preds.append(pred)
            m["confusion"][label, pred] += 1
            m["log_loss"] += -math.log(max(cp[label], EPS))
            conf = float(cp.max())
            b = min(int(conf * ECE_BINS), ECE_BINS - 1)
            m["ece_count"][b] += 1
            m["ece_conf"][b] += conf
            m["ece_correct"][b] += pred == label
            m["bucket_correct"][bucket] += pred == label
            early = np.asarray(record["early"][name], dtype=np.float64)
            m["early_correct"] += predicted_labels(early) == label
            if self._k == 2 and cp[1] == cp[1]:  # NaN scores have no rank
                counts = m["auc_hist"].setdefault(float32_bits(float(cp[1])) >> m["auc_shift"], [0, 0])
                counts[label] += 1
                if len(m["auc_hist"]) > self._max_bins:
                    self._shrink(m)
        acc["agree"] += len(set(preds)) == 1
        return acc

    def merge_accumulators(self, accumulators):
        accumulators = list(accumulators)
        out = accumulators[0]
        for acc in accumulators[1:]:
            out["n"] += acc["n"]
            out["agree"] += acc["agree"]
            out["bucket_docs"] += acc["bucket_docs"]
            for name in self._names:
                a, b = out["models"][name], acc["models"][name]
                for key in a:
                    if key not in ("auc_hist", "auc_shift"):
                        a[key] = a[key] + b[key]
                shift = max(a["auc_shift"], b["auc_shift"])
                merged = coarsen_histogram(a["auc_hist"], a["auc_shift"], shift)
                if merged is a["auc_hist"]:
                    merged = dict(merged)
                for key, (neg, pos) in coarsen_histogram(b["auc_hist"], b["auc_shift"], shift).items():
                    bucket = merged.setdefault(key, [0, 0])
                    merged[key] = [bucket[0] + neg, bucket[1] + pos]
                a["auc_hist"], a["auc_shift"] = merged, shift
                self._shrink(a)
        return out

    def _shrink(self, m: dict) -> None:
        """Drops low float32 bits until the histogram has at most auc_max_bins keys."""
        while len(m["auc_hist"]) > self._max_bins:
            m["auc_hist"] = coarsen_histogram(m["auc_hist"], m["auc_shift"], m["auc_shift"] + 1)
            m["auc_shift"] += 1

    def extract_output(self, acc):
        n = acc["n"]
        models = {}
        for name in self._names:
            m = acc["models"][name]
            confusion = m["confusion"]
            ece = float(np.sum(np.abs(m["ece_correct"] - m["ece_conf"]))) / n if n else 0.0
            auc, _, _, tied = auc_from_histogram(m["auc_hist"]) if self._k == 2 else (None, 0, 0, 0.0)
            exact = m["auc_shift"] == 0
            models[name] = {
                "documents": n,
                "accuracy": float(np.trace(confusion)) / n if n else 0.0,
                "auc": auc,
                "auc_method": None if auc is None else ("exact" if exact else "histogram"),
                "auc_max_error": None if auc is None else (0.0 if exact else 0.5 * tied),
                "f1": f1_from_confusion(confusion),
                "log_loss": m["log_loss"] / n if n else 0.0,
                "ece": ece,
                "confusion_matrix": confusion.tolist(),
                "accuracy_by_length": {
                    LENGTH_BUCKETS[i]: (float(m["bucket_correct"][i] / acc["bucket_docs"][i])
                                        if acc["bucket_docs"][i] else None)
                    for i in range(len(LENGTH_BUCKETS))
                },
                "early_accuracy": {f"{int(round(f * 100))}%": float(c) / n if n else 0.0
                                   for f, c in zip(self._fractions, m["early_correct"])},
                "calibration": [
                    {"bin": b, "count": int(m["ece_count"][b]),
                     "confidence": float(m["ece_conf"][b] / m["ece_count"][b]) if m["ece_count"][b] else None,
                     "accuracy": float(m["ece_correct"][b] / m["ece_count"][b]) if m["ece_count"][b] else None}
                    for b in range(ECE_BINS)
                ],
            }
        return {
            "documents": n,
            "documents_by_length": {LENGTH_BUCKETS[i]: int(acc["bucket_docs"][i]) for i in range(len(LENGTH_BUCKETS))},
            "length_boundaries": self._boundaries,
            "agreement": (acc["agree"] / n) if n and len(self._names) > 1 else None,
            "models": models,
        }


class EvaluateModels(beam.PTransform):
    """Labelled documents → (per-document records, one metrics dict).

    Returns a tuple `(records, metrics)` of PCollections.
    """

    def __init__(self, *, models_dir: str, model_names: Sequence[str], num_classes: int,
                 batch_size: int = 64, length_boundaries: Sequence[int] = DEFAULT_LENGTH_BOUNDARIES) -> None:
        super().__init__()
        self._models_dir = models_dir
        self._names = list(model_names)
        self._k = num_classes
        self._batch_size = batch_size
        self._boundaries = tuple(length_boundaries)

    def expand(self, documents):
        records = (
            documents
            | "BatchDocuments" >> beam.BatchElements(min_batch_size=1, max_batch_size=self._batch_size)
            | "ScoreWithPrefixes" >> beam.ParDo(_ScoreDoFn(self._models_dir))
        )
        metrics = records | "CombineMetrics" >> beam.CombineGlobally(
            ReportCombineFn(self._names, self._k, length_boundaries=self._boundaries))
        return records, metrics


# --------------------------------------------------------------------------- latency


def measure_latency(models_dir: str, texts: Sequence[str], repeats: int = 200) -> dict[str, Any]:
    """Median per-token step time of the streaming model and per-document full-pass time of each model."""
    import tensorflow as tf

    from beam_rnn.stream import step as rnn_step

    models = LoadedModels.load(models_dir)
    out: dict[str, Any] = {}
    texts = list(texts) or ["a"]
    for name in models.names:
        fn = models.saved[name].signatures["serving_default"]
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
    import tensorflow as tf

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


def read_records(pattern: str) -> Iterable[dict[str, Any]]:
    """Per-document records written by the evaluate pipeline (JSON Lines)."""
    import tensorflow as tf

    for path in sorted(tf.io.gfile.glob(pattern)):
        with tf.io.gfile.GFile(path) as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)
