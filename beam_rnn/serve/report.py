"""The streaming-versus-bidirectional report: latency, plots, HTML (the numbers: `beam_rnn.serve.evaluate`).

`write_report` writes ``metrics.json`` (what `EvaluateModels` computed, plus the
run's counts and `measure_latency`), the PNG figures of `beam_rnn.serve.plots`
(early prediction, accuracy by length, calibration, one confusion matrix per
model) and a self-contained ``report.html`` with the figures inline: warnings
(a class never predicted, one class only), a conclusion that says whether the
models differ significantly (McNemar), the metric and per-class tables.
"""

import base64
import html
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from beam_rnn.core import constants as C
from beam_rnn.core.artifacts import ModelInfo
from beam_rnn.core.errors import reason_counts_text
from beam_rnn.serve.evaluate import PREFIX_FRACTIONS, EvaluationModels
from beam_rnn.serve.plots import CONFUSION_PREFIX, make_plots, measured_on, model_label, plot_file

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
_LOG = logging.getLogger(__name__)
_SMALL_CONFUSION = 12  # classes: up to this many, two confusion matrices side by side


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


# --------------------------------------------------------------------------- words and HTML


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _interval(ci: Sequence[float] | None) -> str:
    return "n/a" if not ci else f"{ci[0]:.1%}–{ci[1]:.1%}"


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def comparison_text(metrics: Mapping[str, Any], comparison: Mapping[str, Any]) -> str:
    """One sentence: is the accuracy difference of two models significant (McNemar on paired predictions)?"""
    a, b = comparison["models"]
    ma, mb = metrics["models"][a], metrics["models"][b]
    if ma["accuracy"] >= mb["accuracy"]:
        better, worse, better_only, worse_only = a, b, comparison["only_first_right"], comparison["only_second_right"]
    else:
        better, worse, better_only, worse_only = b, a, comparison["only_second_right"], comparison["only_first_right"]
    diff = abs(ma["accuracy"] - mb["accuracy"]) * 100
    level = comparison["significance_level"]
    method = ("exact binomial test" if comparison["method"] == "exact_binomial"
              else "chi-square with continuity correction")
    evidence = (f"McNemar's test on the {comparison['documents']:,} paired predictions: only the "
                f"{model_label(better)} is right on {better_only:,} document{'' if better_only == 1 else 's'}, only the {model_label(worse)} on "
                f"{worse_only:,}; {method}, {_p(comparison['p_value'])}")
    if comparison["significant"]:
        return (f"The {model_label(better)} is more accurate than the {model_label(worse)} by {diff:.1f} points, "
                f"a statistically significant difference at the {level:.0%} level ({evidence}).")
    return (f"The {diff:.1f}-point accuracy difference between the {model_label(better)} and the "
            f"{model_label(worse)} is not statistically significant at the {level:.0%} level ({evidence}): "
            f"on this data the two cannot be told apart by accuracy.")


def summary_text(metrics: Mapping[str, Any]) -> list[str]:
    """Plain-language sentences on the trade-off, from the numbers."""
    models = metrics["models"]
    level = metrics.get("confidence_level", 0.95)
    accuracies = "; ".join(
        f"the {model_label(name)} is right on {_pct(m['accuracy'])} of them (Wilson {level:.0%} interval "
        f"{_interval(m.get('accuracy_interval'))})" for name, m in models.items())
    lines = [f"On {measured_on(metrics)}, {accuracies}."]
    comparisons = {tuple(c["models"]): c for c in metrics.get("comparisons", [])}
    for comparison in comparisons.values():
        lines.append(comparison_text(metrics, comparison))
    pair = comparisons.get((C.MODEL_BILSTM, C.MODEL_LSTM)) or comparisons.get((C.MODEL_LSTM, C.MODEL_BILSTM))
    if pair is None:
        return lines
    s, b = models[C.MODEL_LSTM], models[C.MODEL_BILSTM]
    half_s, half_b = s["early_accuracy"].get("50%"), b["early_accuracy"].get("50%")
    if half_s is not None and half_b is not None:
        lines.append(
            f"Half-way through a document the streaming model is right {half_s:.1%} of the time "
            f"(the BiLSTM, re-run on the same half, {half_b:.1%}); the streaming model got there with "
            f"one O(1) step per token, the BiLSTM needs a full pass over the prefix for every update.")
    lat = metrics.get("latency", {})
    if "lstm_step_us_per_token" in lat:
        lines.append(
            f"Updating the streaming prediction costs {lat['lstm_step_us_per_token']:.0f} µs per token; "
            f"re-running the BiLSTM on a document costs "
            f"{lat.get('bilstm_full_pass_ms_per_document', float('nan')):.1f} ms.")
    if metrics.get("agreement") is not None:
        lines.append(f"The two models predict the same class for {metrics['agreement']:.1%} of documents.")
    if not pair["significant"]:
        cost = "here streaming costs no measurable accuracy."
    elif b["accuracy"] > s["accuracy"]:
        cost = (f"choose the BiLSTM when whole documents are scored at once and its "
                f"{(b['accuracy'] - s['accuracy']) * 100:.1f} accuracy points matter.")
    else:
        cost = "here the streaming LSTM is also the more accurate of the two."
    lines.append("Choose the streaming LSTM when predictions must update as text arrives (chat, live "
                 f"transcripts, typing); {cost}")
    return lines


def _f(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    models = metrics["models"]
    binary = len(metrics["class_names"]) == 2
    level = metrics.get("confidence_level", 0.95)
    head = ["model", "accuracy", f"Wilson {level:.0%} interval", "macro-F1"]
    if binary:
        head.append(f"F1 of class {html.escape(metrics['class_names'][1])}")
        head.append("AUC")
    head += ["log loss", "ECE"]
    rows = []
    for name, m in models.items():
        cells = [html.escape(model_label(name)), _f(m["accuracy"], 4), _interval(m.get("accuracy_interval")),
                 _f(m["macro_f1"], 4)]
        if binary:
            cells += [_f(m["f1"], 4), _f(m["auc"], 4)]
        cells += [_f(m["log_loss"], 4), _f(m["ece"], 4)]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>")


def _per_class_table(metrics: Mapping[str, Any]) -> str:
    models = metrics["models"]
    first = next(iter(models.values()))
    head = ("<tr><th rowspan=2>class</th><th rowspan=2>support</th>"
            + "".join(f"<th colspan=4 class=group>{html.escape(model_label(n))}</th>" for n in models)
            + "</tr><tr>" + "<th>precision</th><th>recall</th><th>F1</th><th>predicted</th>" * len(models) + "</tr>")
    rows = []
    for cls in metrics["class_names"]:
        cells = [f"<td class=name>{html.escape(cls)}</td><td>{first['per_class'][cls]['support']:,}</td>"]
        for m in models.values():
            s = m["per_class"][cls]
            never = ' class=warn title="never predicted"' if not s["predicted"] else ""
            cells.append(f"<td>{_f(s['precision'])}</td><td>{_f(s['recall'])}</td><td>{_f(s['f1'])}</td>"
                         f"<td{never}>{s['predicted']:,}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class=perclass>{head}{''.join(rows)}</table>"


def _comparison_table(metrics: Mapping[str, Any]) -> str:
    rows = []
    for c in metrics.get("comparisons", []):
        a, b = (html.escape(model_label(n)) for n in c["models"])
        rows.append(f"<tr><td>{a} vs {b}</td><td>{c['both_right']:,}</td><td>{a}: {c['only_first_right']:,}</td>"
                    f"<td>{b}: {c['only_second_right']:,}</td><td>{c['both_wrong']:,}</td>"
                    f"<td>{html.escape(c['method'].replace('_', ' '))}</td><td>{_p(c['p_value'])}</td>"
                    f"<td>{'yes' if c['significant'] else 'no'} (at {c['significance_level']:.0%})</td></tr>")
    if not rows:
        return ""
    return ("<h2>Paired comparison (McNemar)</h2><table><tr><th>models</th><th>both right</th>"
            "<th colspan=2>only one model right</th><th>both wrong</th><th>test</th>"
            "<th>p</th><th>significant</th></tr>" + "".join(rows) + "</table>"
            "<p class=note>McNemar's test looks only at the documents exactly one of the two models gets "
            "right: if the models were equally accurate, each would be the one right half of the time.</p>")


def _incremental_table(metrics: Mapping[str, Any]) -> str:
    """The incremental sample's measures per model (empty without ``evaluate --incremental-sample``)."""
    inc = metrics.get("incremental")
    if not inc:
        return ""
    columns = [("EO", "edit_overhead"), ("EO, delay 1", "edit_overhead_d1"), ("EO, delay 2", "edit_overhead_d2"),
               ("CT", "correction_time"), ("RC", "relative_correctness"), ("RC, delay 1", "relative_correctness_d1"),
               ("RC, delay 2", "relative_correctness_d2"), ("RR", "reanalysis_rate")]
    rows = "".join(
        f"<tr><td>{html.escape(model_label(name))}</td><td>{html.escape(m['mode'])}</td>"
        + "".join(f"<td>{_f(m['mean'].get(key))}</td>" for _, key in columns)
        + f"<td>{m['microseconds_per_token']:,.1f}</td></tr>"
        for name, m in inc["models"].items())
    head = "".join(f"<th>{html.escape(label)}</th>" for label, _ in columns)
    return (f"<h2>Incremental reading ({inc['documents_read']:,} documents, every token)</h2>"
            f"<table><tr><th>model</th><th>how</th>{head}<th>µs per token</th></tr>{rows}</table>"
            "<p class=note>The label after every token of a fixed sample (the same documents every run). "
            "EO, edit overhead: label changes / all edits (the first label is the one necessary edit). CT, "
            "correction time: where the label stops changing, as a share of the text. RC, relative correctness: "
            "share of prefixes already showing the final label. RR: label changes per token. With a delay of d, "
            "a label is shown only once it held for d more tokens. The streaming LSTM reads each token once "
            "(incremental); the BiLSTM is re-run on every prefix (restart-incremental).</p>")


def _dead_letter_note(metrics: Mapping[str, Any]) -> str:
    """The report's sentence on the rows that are not in its figures (empty when every row was evaluated)."""
    dead = metrics.get("dead_lettered") or 0
    if not dead:
        return ""
    reasons = reason_counts_text(metrics.get("dead_letter_by_reason"), limit=None)
    why = f" ({html.escape(reasons)})" if reasons else ""
    were = "was a dead letter" if dead == 1 else "were dead letters"
    return (f" Of the {metrics.get('rows_in', 0):,} rows read, {dead:,} {were}{why}, not in these figures:"
            " see <code>dead_letter-*.jsonl</code>.")


def _latency_table(latency: Mapping[str, float]) -> str:
    """Median latencies (`measure_latency`), one row each, on the launcher's CPU."""
    rows = []
    for key, value in latency.items():
        if key.endswith("_full_pass_ms_per_document"):
            what = f"{model_label(key[: -len('_full_pass_ms_per_document')])}: a full pass over one document"
            rows.append(f"<tr><td>{html.escape(what)}</td><td>{value:.1f} ms</td></tr>")
        elif key == "lstm_step_us_per_token":
            rows.append(f"<tr><td>streaming LSTM: one token step</td><td>{value:.0f} µs</td></tr>")
    if not rows:
        return "<p>not measured</p>"
    return ("<table>" + "".join(rows) + "</table><p class=note>Medians on the machine that launched the run, one "
            "document at a time (IMDB-length documents of words drawn from the model's vocabulary).</p>")


_STYLE = """body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em;line-height:1.4}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child,td.name{text-align:left}th.group{text-align:center;border-left:1px solid #ccc}
.warnings{background:#fff4d6;border:1px solid #e0b64a;padding:.5em 1em;border-radius:4px}
td.warn{background:#fde2e1;font-weight:bold}.note,figcaption{color:#555;font-size:.9em}
figure{display:inline-block;margin:.5em 0;vertical-align:top}figure.small{width:49.5%}figure.small img{width:100%}
figure.wide{display:block;width:96vw;max-width:none;position:relative;left:50%;transform:translateX(-50%);text-align:center}
figure.wide img{max-width:100%}td{white-space:nowrap}"""


def render_html(metrics: Mapping[str, Any], plots: Mapping[str, bytes]) -> str:
    """A self-contained HTML report: warnings, conclusion, tables and the plots inline (base64)."""
    def figure(key: str, png: bytes) -> str:
        many = key.startswith(CONFUSION_PREFIX) and len(metrics["class_names"]) > _SMALL_CONFUSION
        kind = "wide" if many or key == "incremental" else "small"  # three panels need the page's width
        name = html.escape(plot_file(key))
        caption = f'<figcaption>full size: <a href="{name}">{name}</a></figcaption>' if kind == "wide" else ""
        return (f'<figure class={kind}><img alt="{name}" '
                f'src="data:image/png;base64,{base64.b64encode(png).decode()}"/>{caption}</figure>')

    warnings = metrics.get("warnings", [])
    warning_box = ("<div class=warnings><strong>Warnings</strong><ul>"
                   + "".join(f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul></div>") if warnings else ""
    summary = "".join(f"<p>{html.escape(line)}</p>" for line in summary_text(metrics))
    first = next(iter(metrics["models"].values()), {})
    f1_note = html.escape(first.get("f1_definition", ""))
    latency = _latency_table(metrics.get("latency", {}))
    plots_small = "".join(figure(k, v) for k, v in plots.items() if not k.startswith(CONFUSION_PREFIX))
    plots_wide = "".join(figure(k, v) for k, v in plots.items() if k.startswith(CONFUSION_PREFIX))
    level = metrics.get("confidence_level", 0.95)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>beam_rnn: streaming vs bidirectional</title>
<style>{_STYLE}</style></head><body>
<h1>Streaming LSTM vs BiLSTM</h1>
<p class=note>Measured on {html.escape(measured_on(metrics))}; {len(metrics['class_names'])} classes.{_dead_letter_note(metrics)}</p>
{warning_box}
<h2>Conclusion</h2>{summary}
<h2>Metrics</h2>
{_metrics_table(metrics)}
<p class=note>Macro-F1: the unweighted mean of the per-class F1 (every class counts the same, whatever its
support). The metrics.json field <code>f1</code> is the {f1_note}. Intervals: Wilson score, {level:.0%}.
ECE: expected calibration error over 10 equal-width confidence bins.</p>
<h2>Per class</h2>
{_per_class_table(metrics)}
<p class=note>Support: documents of the class. Predicted: documents the model assigned to it (highlighted
when 0). Precision is undefined (–) for a class never predicted, recall for a class with no document.</p>
{_comparison_table(metrics)}
{_incremental_table(metrics)}
<h2>Plots</h2>{plots_small}
<h2>Confusion matrices</h2>{plots_wide}
<h2>Latency</h2>{latency}
</body></html>
"""


def write_report(output_dir: str, metrics: Mapping[str, Any]) -> dict[str, str]:
    """Write metrics.json, the PNG plots and report.html; log the warnings and the conclusion; return the paths."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    for warning in metrics.get("warnings", []):
        _LOG.warning("evaluate: %s", warning)
    for comparison in metrics.get("comparisons", []):
        _LOG.info("evaluate: %s", comparison_text(metrics, comparison))
    tf.io.gfile.makedirs(output_dir)
    paths = {"metrics": os.path.join(output_dir, METRICS_FILE), "report": os.path.join(output_dir, REPORT_FILE)}
    with tf.io.gfile.GFile(paths["metrics"], "w") as f:
        f.write(json.dumps(metrics, indent=2))
    plots = make_plots(metrics)
    for key, png in plots.items():
        path = os.path.join(output_dir, plot_file(key))
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
