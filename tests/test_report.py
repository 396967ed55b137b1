"""The evaluate pipeline and report, checked against direct computations on its own outputs."""

from __future__ import annotations

import base64
import json
import random

import numpy as np
import pytest

from beam_rnn.core import metrics
from beam_rnn.serve import evaluate as evaluation
from beam_rnn.serve import report

GOOD = ["great", "wonderful", "superb", "loved", "fine"]
BAD = ["awful", "boring", "terrible", "hated", "weak"]
FILLER = [f"w{i}" for i in range(30)]


def _corpus(path, n=240, seed=0):
    rng = random.Random(seed)
    lines = ["id,label,text"]
    for i in range(n):
        label = i % 2
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 120))]
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(GOOD if label else BAD))
        lines.append(f"d{i},{label},{' '.join(words)}")
    lines.append("bad1,1,")  # dead letter: empty text
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from pipelines import evaluate, preprocess, train

    root = tmp_path_factory.mktemp("report")
    corpus = root / "corpus.csv"
    _corpus(corpus)
    corpus_args = ["--input", str(corpus), "--format", "csv", "--id-column", "id"]
    preprocess.run(corpus_args + ["--output", str(root / "prep"), "--min-frequency", "1", "--runner", "DirectRunner"])
    train.run(["--transformed", str(root / "prep"), "--output", str(root / "models"), "--model", "both",
               "--epochs", "4", "--learning-rate", "0.01", "--patience", "4", "--units", "16", "--embedding-dim", "16", "--dense-units", "16"])
    metrics = evaluate.run(corpus_args + ["--models", str(root / "models"), "--output", str(root / "report"),
                                          "--length-boundaries", "40,100", "--runner", "DirectRunner"])
    records = list(report.read_records(str(root / "report" / "records-*")))
    return root / "report", metrics, records


def _auc_pairwise(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_every_metric_equals_a_direct_computation(evaluated):
    out, metrics, records = evaluated
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["documents"] == len(records) == 240
    assert saved["dead_lettered"] == 1 and saved["rows_in"] == 241
    labels = np.array([r["label"] for r in records])
    lengths = np.array([r["length"] for r in records])
    for name in ("bilstm", "lstm"):
        m = saved["models"][name]
        p = np.array([r["probability"][name] for r in records], dtype=np.float64)
        pred = (p > 0.5).astype(int)
        acc = float(np.mean(pred == labels))
        assert m["accuracy"] == pytest.approx(acc, abs=1e-12)
        assert m["auc"] == pytest.approx(_auc_pairwise(p, labels), abs=1e-9)
        tp = int(np.sum((pred == 1) & (labels == 1)))
        fp = int(np.sum((pred == 1) & (labels == 0)))
        fn = int(np.sum((pred == 0) & (labels == 1)))
        assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-12)
        true_p = np.where(labels == 1, p, 1 - p)
        assert m["log_loss"] == pytest.approx(-np.mean(np.log(np.clip(true_p, 1e-7, 1))), rel=1e-6)
        conf = np.maximum(p, 1 - p)
        bins = np.minimum((conf * 10).astype(int), 9)
        ece = sum(np.sum(bins == b) / len(p) * abs(np.mean(pred[bins == b] == labels[bins == b])
                                                     - np.mean(conf[bins == b]))
                  for b in range(10) if np.any(bins == b))
        assert m["ece"] == pytest.approx(ece, abs=1e-9)
        assert m["confusion_matrix"] == [[int(np.sum((labels == t) & (pred == q))) for q in (0, 1)] for t in (0, 1)]
        for bucket, mask in (("short", lengths < 40), ("medium", (lengths >= 40) & (lengths < 100)),
                             ("long", lengths >= 100)):
            expected = float(np.mean(pred[mask] == labels[mask])) if mask.any() else None
            assert m["accuracy_by_length"][bucket] == pytest.approx(expected, abs=1e-12)
        early = np.array([r["early"][name] for r in records])
        for j, key in enumerate(m["early_accuracy"]):
            assert m["early_accuracy"][key] == pytest.approx(np.mean((early[:, j] > 0.5) == labels), abs=1e-12)
        # The 100% point is the full pass.
        assert m["early_accuracy"]["100%"] == pytest.approx(acc, abs=1e-12)
        np.testing.assert_allclose(early[:, -1], p, atol=1e-5)
    agree = np.mean([(r["probability"]["bilstm"] > 0.5) == (r["probability"]["lstm"] > 0.5) for r in records])
    assert saved["agreement"] == pytest.approx(agree, abs=1e-12)
    assert metrics["models"]["lstm"]["accuracy"] > 0.6  # the models learned something real


def test_early_prefixes_use_the_first_tokens():
    assert evaluation.prefix_lengths(10) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert evaluation.prefix_lengths(3) == [1, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    assert evaluation.prefix_lengths(0) == [0] * 10


def test_latency_is_measured(evaluated):
    _, metrics, _ = evaluated
    lat = metrics["latency"]
    assert lat["lstm_step_us_per_token"] > 0
    assert lat["bilstm_full_pass_ms_per_document"] > 0 and lat["lstm_full_pass_ms_per_document"] > 0


def test_plots_and_self_contained_html(evaluated):
    out, _, _ = evaluated
    html = (out / "report.html").read_text()
    for name in report.PLOT_FILES.values():
        png = (out / name).read_bytes()
        assert png.startswith(b"\x89PNG")
        assert base64.b64encode(png).decode() in html
    assert "streaming LSTM" in html and "BiLSTM" in html
    assert "<img" in html and "http" not in html.split("<body>")[1]


def test_auc_handles_ties_and_single_class():
    assert metrics.roc_auc(np.array([0.5, 0.5, 0.5, 0.5]), np.array([0, 1, 0, 1])) == 0.5
    assert metrics.roc_auc(np.array([0.1, 0.9]), np.array([1, 1])) is None
    assert metrics.roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75


def test_missing_models_dir_exits_2(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    corpus = tmp_path / "c.csv"
    corpus.write_text("label,text\n1,a\n")
    proc = subprocess.run([sys.executable, "-m", "pipelines.evaluate", "--models", str(tmp_path / "none"),
                           "--input", str(corpus), "--output", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=str(ROOT), timeout=120)
    assert proc.returncode == 2 and "holds no exported model" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("damage", ["truncate_saved_model", "truncate_step_weights"])
def test_damaged_model_exits_2_before_the_pipeline(evaluated, tmp_path, damage):
    """A truncated saved_model.pb (or step_weights.npz) under --models: one line naming it, exit 2, no run."""
    import shutil
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    out, _, _ = evaluated
    models = tmp_path / "models"
    shutil.copytree(out.parent / "models", models)
    kind, relpath = {
        "truncate_saved_model": ("bilstm", "saved_model/saved_model.pb"),
        "truncate_step_weights": ("lstm", "step_weights.npz"),
    }[damage]
    victim = models / kind / relpath
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    corpus = tmp_path / "c.csv"
    corpus.write_text("label,text\n1,a fine film\n0,an awful film\n")
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "pipelines.evaluate", "--models", str(models),
                           "--input", str(corpus), "--output", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=str(ROOT), timeout=300)
    errors = [line for line in proc.stderr.splitlines() if "evaluate: error:" in line]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1 and f"models/{kind}: {relpath} is damaged" in errors[0], errors
    assert "damaged" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists(), "the pipeline must not have started"
    assert time.time() - started < 120


def _combine(fn, records, parts=3):
    """Runs a CombineFn the way a runner does: partial accumulators, merged."""
    accs = []
    for i in range(parts):
        acc = fn.create_accumulator()
        for r in records[i::parts]:
            acc = fn.add_input(acc, r)
        accs.append(acc)
    return fn.extract_output(fn.merge_accumulators(accs))


def test_report_combiner_state_is_bounded_and_its_auc_within_the_stated_error():
    # The AUC state must not grow with the corpus: a histogram of at most auc_max_bins keys,
    # exact while the distinct scores fit, else with a guaranteed error bound.
    rng = np.random.default_rng(3)
    n = 4000
    labels = rng.integers(0, 2, n)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1).astype(np.float32)
    lengths = rng.integers(1, 400, n)
    records = [{"id": str(i), "label": int(y), "length": int(t), "probability": {"m": float(s), "m2": 1.0 - float(s)},
                "early": {"m": [float(s)] * len(evaluation.PREFIX_FRACTIONS), "m2": [0.5] * len(evaluation.PREFIX_FRACTIONS)}}
               for i, (s, y, t) in enumerate(zip(scores, labels, lengths))]
    exact_auc = metrics.roc_auc(scores.astype(np.float64), labels)

    exact_all = _combine(evaluation.ReportCombineFn(["m", "m2"], 2), records)
    exact = exact_all["models"]["m"]
    assert exact["auc"] == pytest.approx(exact_auc, abs=1e-12)
    assert exact_all["models"]["m2"]["auc"] == pytest.approx(1 - exact_auc, abs=1e-12)
    assert (exact["auc_method"], exact["auc_max_error"]) == ("exact", 0.0)
    for name, p in (("m", scores), ("m2", 1.0 - scores.astype(np.float64))):  # per-length accuracy, every model
        correct = (p > 0.5).astype(int) == labels
        for bucket, mask in (("short", lengths < 100), ("medium", (lengths >= 100) & (lengths < 300)),
                             ("long", lengths >= 300)):
            assert exact_all["models"][name]["accuracy_by_length"][bucket] == pytest.approx(np.mean(correct[mask]))

    fn = evaluation.ReportCombineFn(["m", "m2"], 2, auc_max_bins=64)
    acc = fn.create_accumulator()
    for r in records:
        acc = fn.add_input(acc, r)
        assert len(acc["models"]["m"]["auc_hist"]) <= 64
    binned_all = _combine(fn, records)
    binned = binned_all["models"]["m"]
    assert binned["auc_method"] == "histogram" and 0 < binned["auc_max_error"] < 0.05
    assert abs(binned["auc"] - exact_auc) <= binned["auc_max_error"]
    # Everything else is exact either way.
    for name in ("m", "m2"):
        for key in ("accuracy", "confusion_matrix", "accuracy_by_length", "early_accuracy", "ece", "log_loss"):
            assert binned_all["models"][name][key] == exact_all["models"][name][key], (name, key)


def test_inference_failures_are_dead_letters_not_a_failed_run(evaluated, tmp_path, monkeypatch):
    # Evaluation scores through the scoring path (RunInference with its failure output).
    import glob
    from pathlib import Path

    import apache_beam as beam

    from beam_rnn.io import WriteJsonLines
    from beam_rnn.serve.config import EvaluateConfig

    out, _, _ = evaluated
    models = {name: str(out.parent / "models" / name) for name in ("bilstm", "lstm")}
    original = evaluation.EvaluationModels.predict

    def predict(self, texts):
        if any("POISON" in t for t in texts):
            raise ValueError("poisoned text")
        return original(self, texts)

    monkeypatch.setattr(evaluation.EvaluationModels, "predict", predict)
    docs = [{"id": f"e{i}", "label": i % 2, "text": f"great w{i} film"} for i in range(6)]
    docs.append({"id": "poisoned", "label": 1, "text": "a POISON text"})
    with beam.Pipeline(argv=["--runner=DirectRunner"]) as p:
        result = p | beam.Create(docs) | evaluation.EvaluateModels(models=models, config=EvaluateConfig(batch_size=1))
        _ = result.records | "R" >> WriteJsonLines(str(tmp_path / "records"))
        _ = result.dead_letter | "D" >> WriteJsonLines(str(tmp_path / "dead"))
        _ = result.metrics | beam.Map(json.dumps) | beam.io.WriteToText(str(tmp_path / "metrics"))
    records = list(report.read_records(str(tmp_path / "records-*")))
    dead = list(report.read_records(str(tmp_path / "dead-*")))
    [metrics_file] = glob.glob(str(tmp_path / "metrics*"))
    assert sorted(r["id"] for r in records) == [f"e{i}" for i in range(6)]
    assert [(d["source"], d["stage"]) for d in dead] == [("poisoned", "evaluate")]
    assert dead[0]["reason"].startswith("inference_failed: ValueError: poisoned text")
    assert json.loads(Path(metrics_file).read_text())["documents"] == 6
