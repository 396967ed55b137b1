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
    metrics = evaluate.run(corpus_args + ["--model", str(root / "models"), "--output", str(root / "report"),
                                          "--length-boundaries", "40,100", "--incremental-sample", "25",
                                          "--runner", "DirectRunner"])
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
    assert saved["dead_letter_by_reason"] == {"empty_text": 1}
    page = (out / "report.html").read_text()
    assert "Of the 241 rows read, 1 was a dead letter (empty_text 1), not in these figures" in page
    labels = np.array([r["true_label"] for r in records])
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
        assert m["f1_definition"] == "F1 of class '1' (id 1)"
        tn = int(np.sum((pred == 0) & (labels == 0)))
        assert m["per_class"]["0"] == {"precision": tn / (tn + fn), "recall": tn / (tn + fp),
                                       "f1": 2 * tn / (2 * tn + fn + fp), "support": tn + fp, "predicted": tn + fn}
        assert m["per_class"]["1"]["f1"] == m["f1"]
        assert m["macro_f1"] == pytest.approx((m["per_class"]["0"]["f1"] + m["f1"]) / 2, abs=1e-12)
        assert [r["predicted_label"][name] for r in records] == pred.tolist()
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


def test_incremental_sample_reads_every_token_of_the_same_documents(evaluated):
    from beam_rnn.serve.incremental import sample_key

    _, metrics, records = evaluated
    got = metrics["incremental"]
    by_id = {r["id"]: r for r in records}
    sampled = sorted(by_id, key=sample_key)[:25]  # the 25 smallest keys among the valid documents
    assert got["sample_documents"] == 25 and got["documents_without_tokens"] == 0
    assert got["tokens"] == sum(by_id[i]["length"] for i in sampled)
    for name in ("bilstm", "lstm"):
        m = got["models"][name]
        # After the last token the incremental label is the full pass's: accuracy equals the records'.
        final = [by_id[i]["predicted_label"][name] == by_id[i]["true_label"] for i in sampled]
        assert m["accuracy_at_fraction"]["1.0"] == pytest.approx(sum(final) / 25)
        assert m["documents"] == 25 and m["correct_documents"] == sum(final)
        assert 0.0 <= m["mean"]["edit_overhead"] < 1.0 and 0.0 < m["mean"]["relative_correctness"] <= 1.0
        assert m["mode"] == ("incremental" if name == "lstm" else "restart-incremental")
    # The streaming step is cheaper per token than re-running the BiLSTM on every prefix.
    assert got["models"]["lstm"]["microseconds_per_token"] < got["models"]["bilstm"]["microseconds_per_token"]
    assert got["documents_read"] == 25
    # The report shows them: a table and a figure.
    out_dir = evaluated[0]
    page = (out_dir / "report.html").read_text()
    assert "<h2>Incremental reading (25 documents, every token)</h2>" in page
    assert "restart-incremental" in page and 'alt="incremental.png"' in page
    assert (out_dir / "incremental.png").stat().st_size > 10_000


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
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["accuracy_by_length.png", "calibration.png", "confusion_matrix_bilstm.png",
                    "confusion_matrix_lstm.png", "early_prediction.png", "incremental.png"]
    for name in pngs:
        png = (out / name).read_bytes()
        assert png.startswith(b"\x89PNG")
        assert base64.b64encode(png).decode() in html
    assert "streaming LSTM" in html and "BiLSTM" in html and "macro-F1" in html
    assert "McNemar" in html and "statistically significant" in html
    assert "all 240 documents of the corpus" in html
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
    proc = subprocess.run([sys.executable, "-m", "pipelines.evaluate", "--model", str(tmp_path / "none"),
                           "--input", str(corpus), "--output", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=str(ROOT), timeout=120)
    assert proc.returncode == 2 and "none does not exist" in proc.stderr
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
    proc = subprocess.run([sys.executable, "-m", "pipelines.evaluate", "--model", str(models),
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
    records = [{"id": str(i), "true_label": int(y), "length": int(t), "probability": {"m": float(s), "m2": 1.0 - float(s)},
                "early": {"m": [float(s)] * len(evaluation.PREFIX_FRACTIONS), "m2": [0.5] * len(evaluation.PREFIX_FRACTIONS)}}
               for i, (s, y, t) in enumerate(zip(scores, labels, lengths))]
    exact_auc = metrics.roc_auc(scores.astype(np.float64), labels)

    exact_all = _combine(evaluation.ReportCombineFn(["m", "m2"], 2, length_boundaries=(100, 300)), records)
    exact = exact_all["models"]["m"]
    assert exact["auc"] == pytest.approx(exact_auc, abs=1e-12)
    assert exact_all["models"]["m2"]["auc"] == pytest.approx(1 - exact_auc, abs=1e-12)
    assert (exact["auc_method"], exact["auc_max_error"]) == ("exact", 0.0)
    for name, p in (("m", scores), ("m2", 1.0 - scores.astype(np.float64))):  # per-length accuracy, every model
        correct = (p > 0.5).astype(int) == labels
        for bucket, mask in (("short", lengths < 100), ("medium", (lengths >= 100) & (lengths < 300)),
                             ("long", lengths >= 300)):
            assert exact_all["models"][name]["accuracy_by_length"][bucket] == pytest.approx(np.mean(correct[mask]))

    fn = evaluation.ReportCombineFn(["m", "m2"], 2, auc_max_bins=64, length_boundaries=(100, 300))
    acc = fn.create_accumulator()
    for r in records:
        acc = fn.add_input(acc, r)
        assert len(acc["models"]["m"]["auc_hist"]) <= 64
        assert len(acc["length_docs"]) <= 399 and len(acc["models"]["m"]["length_correct"]) <= 399
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


# --- The combiner and the report on hand-made records (no model, no pipeline) ----------------

NAMES = ["ABBR", "HUM", "LOC"]


def _multiclass_records(n=300, seed=5):
    """3 named classes; model "a" is fair, model "b" never predicts ABBR; lengths 1..60 tokens."""
    rng = np.random.default_rng(seed)
    fractions = len(evaluation.PREFIX_FRACTIONS)
    records = []
    for i in range(n):
        y = int(rng.integers(0, 3))
        pa = rng.dirichlet(np.ones(3))
        pa[y] += rng.uniform(0, 1.2)
        pb = rng.dirichlet(np.ones(3))
        pb[y] += rng.uniform(0, 0.8)
        pb[0] = 0.0
        pa, pb = pa / pa.sum(), pb / pb.sum()
        records.append({"id": f"d{i}", "true_label": y, "true_label_name": NAMES[y], "length": int(rng.integers(1, 61)),
                        "probability": {"a": pa.tolist(), "b": pb.tolist()},
                        "early": {"a": [pa.tolist()] * fractions, "b": [pb.tolist()] * fractions}})
    return records


def test_combiner_names_classes_and_gives_per_class_metrics_warnings_and_tertiles():
    records = _multiclass_records()
    out = _combine(evaluation.ReportCombineFn(["a", "b"], 3, label_names=NAMES), records)
    labels = np.array([r["true_label"] for r in records])
    lengths = np.array([r["length"] for r in records])
    assert out["class_names"] == NAMES
    for name in ("a", "b"):
        pred = np.array([np.argmax(r["probability"][name]) for r in records])
        m = out["models"][name]
        f1s = []
        for k, cls in enumerate(NAMES):
            tp = np.sum((pred == k) & (labels == k))
            stats = m["per_class"][cls]
            assert stats["support"] == np.sum(labels == k) and stats["predicted"] == np.sum(pred == k)
            assert stats["recall"] == pytest.approx(tp / np.sum(labels == k))
            if np.sum(pred == k):
                assert stats["precision"] == pytest.approx(tp / np.sum(pred == k))
            else:
                assert stats["precision"] is None
            f1s.append(2 * tp / (np.sum(pred == k) + np.sum(labels == k)))
            assert stats["f1"] == pytest.approx(f1s[-1])
        assert m["macro_f1"] == m["f1"] == pytest.approx(np.mean(f1s))
        assert m["f1_definition"].startswith("macro-F1")
        acc = np.mean(pred == labels)
        low, high = m["accuracy_interval"]
        assert low < acc < high and high - low < 0.12
    # Tertiles of the data's own lengths, not fixed token counts.
    b1, b2 = out["length_boundaries"]
    assert out["length_boundaries_from"].startswith("tertiles")
    for share in (np.mean(lengths < b1), np.mean(lengths < b2) - np.mean(lengths < b1), np.mean(lengths >= b2)):
        assert abs(share - 1 / 3) < 0.05
    assert [b["name"] for b in out["length_buckets"]] == ["short", "medium", "long"]
    assert out["length_buckets"][0]["min_tokens"] == lengths.min()
    assert out["length_buckets"][-1]["max_tokens"] == lengths.max()
    assert out["length_buckets"][1] == {"name": "medium", "min_tokens": b1, "max_tokens": b2 - 1,
                                        "documents": int(np.sum((lengths >= b1) & (lengths < b2)))}
    pred_a = np.array([np.argmax(r["probability"]["a"]) for r in records])
    short = lengths < b1
    assert out["models"]["a"]["accuracy_by_length"]["short"] == pytest.approx(np.mean(pred_a[short] == labels[short]))
    # Model b never predicts ABBR: said in the warnings, with the class's support.
    assert out["warnings"] == [f"Model b never predicts 1 of 3 classes: 'ABBR' ({np.sum(labels == 0)} documents)."]


def test_combiner_mcnemar_counts_equal_a_direct_count():
    records = _multiclass_records()
    out = _combine(evaluation.ReportCombineFn(["a", "b"], 3, label_names=NAMES), records)
    labels = np.array([r["true_label"] for r in records])
    right = {n: np.array([np.argmax(r["probability"][n]) for r in records]) == labels for n in ("a", "b")}
    [c] = out["comparisons"]
    b, cc = int(np.sum(right["a"] & ~right["b"])), int(np.sum(~right["a"] & right["b"]))
    assert c["models"] == ["a", "b"] and (c["only_first_right"], c["only_second_right"]) == (b, cc)
    assert c["both_right"] == np.sum(right["a"] & right["b"]) and c["both_wrong"] == np.sum(~right["a"] & ~right["b"])
    expected = metrics.mcnemar(b, cc, exact_below=25)
    assert (c["method"], c["p_value"]) == (expected["method"], pytest.approx(expected["p_value"]))
    assert c["significant"] == (expected["p_value"] < 0.05)
    assert c["accuracy_difference"] == pytest.approx(np.mean(right["a"]) - np.mean(right["b"]))


def test_combiner_explicit_boundaries_single_class_warning_and_int_names():
    records = [{"id": str(i), "true_label": i % 2, "length": 5 + i, "probability": {"m": 0.9},
                "early": {"m": [0.9] * len(evaluation.PREFIX_FRACTIONS)}} for i in range(20)]
    out = _combine(evaluation.ReportCombineFn(["m"], 2, length_boundaries=(10, 100)), records)
    assert out["class_names"] == ["0", "1"]
    assert out["length_boundaries"] == [10, 100] and out["length_boundaries_from"].startswith("given")
    assert out["documents_by_length"] == {"short": 5, "medium": 15, "long": 0}
    assert out["models"]["m"]["accuracy_by_length"]["long"] is None
    assert out["warnings"] == ["Model m predicts only one class, '1', for all 20 documents."]
    assert out["comparisons"] == [] and out["agreement"] is None
    same = [dict(r, length=7) for r in records]  # one length: one bucket, not two empty ones
    assert _combine(evaluation.ReportCombineFn(["m"], 2), same)["documents_by_length"] == {"all": 20}


def test_records_use_the_output_vocabulary():
    from apache_beam.ml.inference.base import PredictionResult

    result = PredictionResult("text", {"length": 4, "probability": {"bilstm": [0.1, 0.7, 0.2], "lstm": [0.5, 0.2, 0.3]},
                                       "early": {"bilstm": [], "lstm": []}})
    named = evaluation._to_record((("d1", 2), result), NAMES)
    assert named["true_label"] == 2 and named["true_label_name"] == "LOC" and "label" not in named
    assert named["predicted_label"] == {"bilstm": 1, "lstm": 0}
    assert named["predicted_label_name"] == {"bilstm": "HUM", "lstm": "ABBR"}
    plain = evaluation._to_record((("d1", 0), result))
    assert plain["true_label"] == 0 and "true_label_name" not in plain and "predicted_label_name" not in plain


def test_report_names_classes_warns_and_says_whether_the_difference_is_significant(tmp_path, caplog):
    import logging

    records = _multiclass_records()
    out = _combine(evaluation.ReportCombineFn(["bilstm", "lstm"], 3, label_names=NAMES),
                   [dict(r, probability={"bilstm": r["probability"]["a"], "lstm": r["probability"]["b"]},
                         early={"bilstm": r["early"]["a"], "lstm": r["early"]["b"]}) for r in records])
    out.update(split="eval", latency={})
    with caplog.at_level(logging.INFO, logger="beam_rnn"):
        paths = report.write_report(str(tmp_path), out)
    html = (tmp_path / "report.html").read_text()
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["warnings"] == out["warnings"] and "never predicts" in saved["warnings"][0]
    assert any(r.levelno == logging.WARNING and "never predicts" in r.getMessage() for r in caplog.records)
    [comparison] = saved["comparisons"]
    verdict = "a statistically significant difference" if comparison["significant"] else "not statistically significant"
    assert verdict in html and "McNemar" in html
    assert any(verdict in r.getMessage() for r in caplog.records)
    assert "0.3 points" not in html
    assert "the held-out eval split, 300 documents" in html
    for cls in NAMES:
        assert f"<td class=name>{cls}</td>" in html
    assert "macro-F1" in html and "Warnings" in html and "never predicts 1 of 3 classes" in html
    assert "[[" not in html  # the confusion matrix is a heatmap, not a nested list
    for key in ("confusion_bilstm", "confusion_lstm", "early", "length", "calibration"):
        assert open(paths[key], "rb").read().startswith(b"\x89PNG")


def test_length_boundaries_default_to_the_data_and_an_override_is_checked():
    from beam_rnn.core.errors import InputError
    from beam_rnn.serve.config import EvaluateConfig

    assert EvaluateConfig().length_boundaries is None
    assert EvaluateConfig(length_boundaries=(40,)).length_boundaries == (40,)
    for bad in ((100, 50), (0, 10), ()):
        with pytest.raises(InputError, match="--length-boundaries"):
            EvaluateConfig(length_boundaries=bad)
    with pytest.raises(InputError, match="confidence_level"):
        EvaluateConfig(confidence_level=1.0)


@pytest.mark.parametrize("k", [2, 50])
def test_confusion_heatmap_gives_each_class_room(k):
    import struct

    from beam_rnn.serve import plots

    names = [f"class_{i}" for i in range(k)]
    confusion = (np.eye(k, dtype=int) * 20 + 1).tolist()
    png = plots.confusion_plot({"documents": k * (k + 19), "split": "eval", "class_names": names,
                                "models": {"lstm": {"confusion_matrix": confusion}}}, "lstm")
    width, height = struct.unpack(">II", png[16:24])  # the PNG header's IHDR
    assert width / k >= 20 and height / k >= 20  # at least 20 pixels a class at 100 dpi
    assert k > 2 or width < 800  # and a binary matrix stays small
