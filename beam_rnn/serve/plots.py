"""The report's figures (matplotlib, Agg): early prediction, accuracy by length, calibration, confusion matrices.

Every figure reads `ReportCombineFn`'s metrics (plus the run's ``split``), puts
accuracy on a 0-1 axis with its Wilson interval, shows how many documents each
point stands on, and names what it was measured on (`measured_on`).
"""

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from beam_rnn.core import constants as C

FIXED_PLOT_FILES = {"early": "early_prediction.png", "length": "accuracy_by_length.png",
                    "calibration": "calibration.png", "incremental": "incremental.png"}
CONFUSION_PREFIX = "confusion_"
_ANNOTATE_UP_TO = 12  # classes: counts written in the confusion cells up to this many
_MAX_NAME = 18  # characters of a class name on an axis


def model_label(name: str) -> str:
    """How the report names a model: the streaming LSTM, the BiLSTM, or its given name."""
    return {C.MODEL_LSTM: "streaming LSTM", C.MODEL_BILSTM: "BiLSTM"}.get(name, name)


def measured_on(metrics: Mapping[str, Any]) -> str:
    """What the numbers were measured on: the split and how many documents."""
    n = metrics.get("documents", 0)
    split = metrics.get("split")
    if split == "eval":
        what = f"the held-out eval split, {n:,} documents"
    elif split == "train":
        what = f"the training split, {n:,} documents (seen in training: not a held-out estimate)"
    else:
        what = f"all {n:,} documents of the corpus (no split filter)"
    corpus = metrics.get("input")
    return f"{what} of {corpus}" if isinstance(corpus, str) and corpus else what


def plot_file(key: str) -> str:
    """The PNG file name of a plot key (``early``, ``length``, ``calibration``, ``confusion_<model>``)."""
    if key in FIXED_PLOT_FILES:
        return FIXED_PLOT_FILES[key]
    if key.startswith(CONFUSION_PREFIX):
        return f"confusion_matrix_{key[len(CONFUSION_PREFIX):]}.png"
    raise KeyError(key)


def _pyplot():
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    return plt


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _errors(values: Sequence[float | None], intervals: Sequence[Sequence[float] | None]) -> np.ndarray:
    """Asymmetric error bars (2 x N) from values and [low, high] intervals (0 where undefined)."""
    lo = [max(0.0, v - ci[0]) if v is not None and ci else 0.0 for v, ci in zip(values, intervals)]
    hi = [max(0.0, ci[1] - v) if v is not None and ci else 0.0 for v, ci in zip(values, intervals)]
    return np.array([lo, hi])


def _majority_rate(metrics: Mapping[str, Any]) -> float | None:
    """Accuracy of always predicting the most frequent class of the data."""
    n = metrics.get("documents", 0)
    first = next(iter(metrics["models"].values()), None)
    if not n or first is None:
        return None
    return max(s["support"] for s in first["per_class"].values()) / n


def _finish_accuracy_axis(fig, ax, metrics: Mapping[str, Any], title: str) -> None:
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.grid(axis="y", alpha=0.3)
    baseline = _majority_rate(metrics)
    if baseline is not None:
        ax.axhline(baseline, color="grey", linestyle=":", linewidth=1,
                   label=f"most frequent class ({baseline:.0%})")
    ax.set_title(f"{title}\n{measured_on(metrics)}", fontsize=10)
    fig.legend(fontsize=8, loc="outside lower center", ncol=3, frameon=False)


def early_plot(metrics: Mapping[str, Any]) -> bytes:
    """Accuracy after each share of a document's tokens, with Wilson bands (every point: all documents)."""
    plt = _pyplot()
    level = metrics.get("confidence_level", 0.95)
    fig, ax = plt.subplots(figsize=(6.4, 4.6), layout="constrained")
    for name, m in metrics["models"].items():
        xs = [int(k.rstrip("%")) for k in m["early_accuracy"]]
        ys = list(m["early_accuracy"].values())
        cis = list(m.get("early_accuracy_interval", {}).values())
        line, = ax.plot(xs, ys, marker="o", markersize=4, label=model_label(name))
        if cis and all(cis):
            ax.fill_between(xs, [c[0] for c in cis], [c[1] for c in cis], color=line.get_color(), alpha=0.2,
                            linewidth=0)
    ax.set_xlabel(f"% of each document's tokens seen\n(n = {metrics.get('documents', 0):,} documents at every "
                  f"point; bands: Wilson {level:.0%} intervals)", fontsize=9)
    ax.set_xticks(range(10, 101, 10))
    _finish_accuracy_axis(fig, ax, metrics, "Early prediction: accuracy from a prefix of each document")
    return _png(plt, fig)


def _bucket_label(bucket: Mapping[str, Any]) -> str:
    low, high = bucket["min_tokens"], bucket["max_tokens"]
    if high is None:
        span = f">= {low} tokens"
    elif low == high:
        span = f"{low} tokens"
    else:
        span = f"{low}-{high} tokens"
    return f"{bucket['name']}\n{span}\nn = {bucket['documents']:,}"


def length_plot(metrics: Mapping[str, Any]) -> bytes:
    """Accuracy per length bucket: bars with Wilson error bars; tick labels give token range and n."""
    plt = _pyplot()
    buckets = metrics.get("length_buckets", [])
    models = metrics["models"]
    fig, ax = plt.subplots(figsize=(6.4, 4.6), layout="constrained")
    x = np.arange(len(buckets))
    width = 0.8 / max(1, len(models))
    for i, (name, m) in enumerate(models.items()):
        vals = [m["accuracy_by_length"].get(b["name"]) for b in buckets]
        cis = [m.get("accuracy_by_length_interval", {}).get(b["name"]) for b in buckets]
        heights = [v if v is not None else 0.0 for v in vals]
        ax.bar(x + i * width, heights, width, yerr=_errors(vals, cis), capsize=3, label=model_label(name),
               error_kw={"elinewidth": 1, "alpha": 0.8})
    ax.set_xticks(x + width * (len(models) - 1) / 2)
    ax.set_xticklabels([_bucket_label(b) for b in buckets], fontsize=8)
    source = metrics.get("length_boundaries_from", "")
    ax.set_xlabel(f"document length (buckets: {source})\nerror bars: Wilson "
                  f"{metrics.get('confidence_level', 0.95):.0%} intervals", fontsize=9)
    _finish_accuracy_axis(fig, ax, metrics, "Accuracy by document length")
    return _png(plt, fig)


def calibration_plot(metrics: Mapping[str, Any]) -> bytes:
    """Reliability diagram (accuracy per confidence bin, Wilson error bars) over the documents per bin."""
    plt = _pyplot()
    fig, (ax, bars) = plt.subplots(2, 1, figsize=(5.6, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "k--", alpha=0.5, linewidth=1, label="perfectly calibrated")
    models = metrics["models"]
    width = 0.1 / (max(1, len(models)) + 1)
    for i, (name, m) in enumerate(models.items()):
        bins = [c for c in m["calibration"] if c["count"]]
        if not bins:
            continue
        xs = [c["confidence"] for c in bins]
        ys = [c["accuracy"] for c in bins]
        ax.errorbar(xs, ys, yerr=_errors(ys, [c.get("accuracy_interval") for c in bins]), marker="o",
                    markersize=4, capsize=3, label=f"{model_label(name)} (ECE {m['ece']:.3f})")
        edges = [c["bin"] / 10 for c in m["calibration"]]
        bars.bar([e + (i + 0.5) * width for e in edges], [c["count"] for c in m["calibration"]], width,
                 align="edge", label=model_label(name))
    lowest = math.floor(10 / len(metrics["class_names"])) / 10  # no prediction is less confident than 1/K
    ax.set_ylim(0, 1)
    ax.set_xlim(lowest, 1)
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.set_title(f"Calibration: accuracy per confidence bin\n{measured_on(metrics)}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    bars.set_yscale("symlog", linthresh=10)
    bars.set_ylim(0, 3 * max([c["count"] for m in models.values() for c in m["calibration"]] + [1]))
    bars.set_ylabel("documents (n)")
    bars.set_xlabel(f"confidence (probability of the predicted class); error bars: Wilson "
                    f"{metrics.get('confidence_level', 0.95):.0%}")
    bars.grid(axis="y", alpha=0.3)
    return _png(plt, fig)


def _short(name: str) -> str:
    return name if len(name) <= _MAX_NAME else name[: _MAX_NAME - 1] + "…"


def confusion_plot(metrics: Mapping[str, Any], name: str) -> bytes:
    """A heatmap of one model's confusion matrix: colour = share of the true class, class names on both axes."""
    plt = _pyplot()
    from matplotlib.colors import PowerNorm  # pylint: disable=import-outside-toplevel

    classes = list(metrics["class_names"])
    k = len(classes)
    counts = np.asarray(metrics["models"][name]["confusion_matrix"], dtype=np.int64)
    support = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
    side = max(4.6, 0.22 * k + 2.5)  # inches: 22 pixels a class at 100 dpi, room for 8-point labels
    font = 10 if k <= 10 else 8
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    # Many classes: a square-root colour scale, so that a few confusions still show without counts in the cells.
    norm = PowerNorm(0.5 if k > _ANNOTATE_UP_TO else 1.0, vmin=0, vmax=1)
    image = ax.imshow(shares, cmap="Blues", norm=norm, aspect="equal")
    labels = [_short(c) for c in classes]
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(labels, fontsize=font, rotation=0 if k <= 4 else 90)
    ax.set_yticklabels([f"{label} (n = {int(s):,})" for label, s in zip(labels, support[:, 0])], fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (n = its documents)")
    if k <= _ANNOTATE_UP_TO:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{counts[i, j]:,}", ha="center", va="center", fontsize=font,
                        color="white" if shares[i, j] > 0.6 else "black")
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("share of the true class's documents (row)")
    ax.set_title(f"{model_label(name)}: confusion matrix"
                 f"{' (counts in cells)' if k <= _ANNOTATE_UP_TO else ''}\n{measured_on(metrics)}", fontsize=10)
    return _png(plt, fig)


def incremental_plot(metrics: Mapping[str, Any]) -> bytes:
    """The incremental sample: accuracy and relative correctness against tokens read; where labels become final."""
    plt = _pyplot()
    inc = metrics["incremental"]
    fig, (left, right, third) = plt.subplots(1, 3, figsize=(15.5, 4.6), layout="constrained")
    names = list(inc["models"])
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        m = inc["models"][name]
        xs = [round(100 * float(f)) for f in m["accuracy_at_fraction"]]
        line, = left.plot(xs, list(m["accuracy_at_fraction"].values()), marker="o", markersize=4,
                          label=f"{model_label(name)}: accuracy")
        left.plot(xs, list(m["relative_correctness_at_fraction"].values()), linestyle="--", color=line.get_color(),
                  label=f"{model_label(name)}: agrees with its final label (RC)")
        total = max(sum(m["final_from_deciles"]), 1)
        right.bar(np.arange(10) + (k - (len(names) - 1) / 2) * width, [c / total for c in m["final_from_deciles"]],
                  width=width, color=line.get_color(), label=f"{model_label(name)} ({m['mode']})")
        decisions = m.get("decisions", {})
        if decisions:
            xs = [100 * d["read_fraction"] for d in decisions.values()]
            ys = [d["accuracy"] for d in decisions.values()]
            third.plot(xs, ys, marker="o", markersize=4, color=line.get_color(), label=model_label(name))
            for p_key, x, y in zip(decisions, xs, ys):
                third.annotate(p_key, (x, y), textcoords="offset points", xytext=(3, -9), fontsize=6,
                               color=line.get_color())
    left.set_ylim(0, 1.02)
    left.set_xticks(range(10, 101, 10))
    left.set_xlabel("% of each document's tokens read", fontsize=9)
    left.grid(axis="y", alpha=0.3)
    left.set_title("Label after each share of the text", fontsize=10)
    left.legend(fontsize=7, loc="lower right")
    right.set_xticks(range(10), [f"{10 * i}–{10 * (i + 1)}%" for i in range(10)], rotation=45, fontsize=7)
    right.set_xlabel("where the label becomes final (% of the text read)", fontsize=9)
    right.set_ylabel("share of documents")
    right.set_title("When the decision stops changing", fontsize=10)
    right.legend(fontsize=7)
    third.set_xlim(0, 100)
    third.set_xlabel("% of the text read when the decision fires (mean)", fontsize=9)
    third.set_ylabel("accuracy of the decision")
    third.set_title("Deciding early: --decide-at P (points labelled P)", fontsize=10)
    third.grid(alpha=0.3)
    third.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Incremental reading, every token, of a sample of {inc['documents_read']:,} documents",
                 fontsize=10)
    return _png(plt, fig)


def make_plots(metrics: Mapping[str, Any]) -> dict[str, bytes]:
    """PNG bytes of every figure, by plot key (see `plot_file`)."""
    plots = {"early": early_plot(metrics), "length": length_plot(metrics), "calibration": calibration_plot(metrics)}
    if metrics.get("incremental"):
        plots["incremental"] = incremental_plot(metrics)
    for name in metrics["models"]:
        plots[CONFUSION_PREFIX + name] = confusion_plot(metrics, name)
    return plots
