"""Tests for beam_rnn.serve (scoring) and pipelines.score (DirectRunner, small synthetic exports).

One module-scoped fixture preprocesses two tiny corpora (binary int labels; three
string labels), exports a streaming LSTM and a BiLSTM on the binary data and a
3-class model with label names, and writes a labelled CSV corpus with malformed
rows.  Every score is checked against an in-process call of the same SavedModel.
"""

from __future__ import annotations

import csv
import functools
import glob
import json
import os
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from beam_rnn.core.manifest import write_manifest
from beam_rnn.core import constants as C
from beam_rnn.core.outputs import flat_record
from beam_rnn.train import export
from beam_rnn import serve as inference
from beam_rnn.serve import score as score_lib
from beam_rnn.train import models
from beam_rnn.preprocess import tft_graph as preprocessing
from tests.helpers import preprocess_docs as _preprocess
from tests.helpers import randomize_weights as _randomize
from tests.helpers import synthetic_docs as _docs

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
from tests.helpers import WORDS  # noqa: E402
TOL = 1e-6
POISON = "POISONPILL"
SMALL_BATCHES = ["--min-batch-size", "3", "--max-batch-size", "5", "--sort-buffer", "16"]


# --- Fixture helpers -------------------------------------------------------------------


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words)).capitalize() + ".<br />"


def _corpus_rows(seed: int) -> tuple[list[dict], list[list[str]]]:
    """Valid labelled documents of very different lengths, plus malformed CSV rows."""
    rng = random.Random(seed)
    docs = []
    for i in range(70):
        n = rng.choice([1, 2, 5, 9, 20, 40]) if i % 10 else 400  # a few long reviews
        docs.append({"id": f"r{i:03d}", "text": _text(rng, n), "label": str(i % 2)})
    docs.append({"id": "unknown_class", "text": "good film", "label": "7"})  # a document, but not a model class
    bad = [["bad1", "some text", "x"], ["bad2", "", "1"], ["bad3", "more text", ""]]
    return docs, bad


def _write_csv(path: Path, docs: list[dict], bad: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label"])
        for i, d in enumerate(docs):
            w.writerow([d["id"], d["text"], d["label"]])
            if i % 25 == 3 and bad:
                w.writerow(bad.pop())


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    prep = str(root / "prep")
    cfg = preprocessing.PreprocessConfig(vocab_size=50, min_frequency=1, eval_fraction=0.25)
    vocab_size = _preprocess(prep, _docs(40, [0, 1], seed=1), cfg)["vocab_size_with_reserved"]
    small = dict(vocab_size=vocab_size, embedding_dim=8, units=6, dense_units=5)
    configs = {
        "lstm": models.ModelConfig(kind="lstm", seed=1, **small),
        "bilstm": models.ModelConfig(kind="bilstm", seed=2, **small),
        # A 3-class model on the same ids (export accepts data with fewer classes).
        "multi": models.ModelConfig(kind="lstm", num_classes=3, seed=3, **small),
    }
    dirs = {}
    for i, (name, model_config) in enumerate(configs.items()):
        model = models.build_classifier(model_config)
        _randomize(model, seed=10 + i)
        dirs[name] = str(root / "models" / name)
        export.export_model(model, model_config, prep, dirs[name], {}, verify=False)
    # Class names come from the preprocessing's string-label vocabulary in real runs;
    # here the card is given names so that the label_name path is exercised without
    # a second preprocessing run.
    card_path = Path(dirs["multi"]) / C.MODEL_CARD_FILE
    card = json.loads(card_path.read_text())
    card["label_names"] = ["neg", "neu", "pos"]
    card["preprocess_config"]["label_type"] = "string"  # as a string-labelled preprocessing writes it
    card_path.write_text(json.dumps(card))
    write_manifest(dirs["multi"])  # the card was edited after the export
    docs, bad = _corpus_rows(seed=3)
    corpus = root / "corpus.csv"
    _write_csv(corpus, docs, list(bad))
    return {"root": root, "dirs": dirs, "docs": docs, "bad": bad, "corpus": str(corpus)}


@functools.lru_cache(maxsize=None)
def _reference_model(model_dir: str):
    return tf.saved_model.load(os.path.join(model_dir, C.SAVED_MODEL_DIR))


def in_process(model_dir: str, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The reference: one direct call of the SavedModel's serving signature (loaded with plain TF)."""
    out = _reference_model(model_dir).signatures["serving_default"](text=tf.constant(texts))
    return out["probabilities"].numpy(), out["label"].numpy()


# --- Reading outputs back ----------------------------------------------------------------


def _shards(prefix: str, ext: str) -> list[str]:
    files = sorted(glob.glob(f"{prefix}-[0-9][0-9][0-9][0-9][0-9]-of-*.{ext}"))
    assert files, f"no {ext} shards for {prefix}"
    return files


def read_jsonl(prefix: str) -> list[dict]:
    return [json.loads(line) for path in _shards(prefix, "jsonl") for line in open(path, encoding="utf-8")]


def read_csv(prefix: str, columns: list[tuple[str, str]]) -> list[dict]:
    kinds = dict(columns)
    convert = {
        "str": str,
        "int": int,
        "float": float,
        "floats": json.loads,
        "bool": lambda v: {"true": True, "false": False}[v],
    }
    rows = []
    for path in _shards(prefix, "csv"):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            assert reader.fieldnames == [name for name, _ in columns]
            for row in reader:
                rows.append({k: (None if v == "" else convert[kinds[k]](v)) for k, v in row.items()})
    return rows


def read_parquet(prefix: str) -> list[dict]:
    import pyarrow.parquet as pq

    return [row for path in _shards(prefix, "parquet") for row in pq.read_table(path).to_pylist()]


def read_tfrecord(prefix: str, columns: list[tuple[str, str]]) -> list[dict]:
    rows = []
    for raw in tf.data.TFRecordDataset(_shards(prefix, "tfrecord")):
        features = tf.train.Example.FromString(raw.numpy()).features.feature
        row = {}
        for name, kind in columns:
            if name not in features:
                row[name] = None
                continue
            f = features[name]
            if kind == "str":
                row[name] = f.bytes_list.value[0].decode("utf-8")
            elif kind == "int":
                row[name] = int(f.int64_list.value[0])
            elif kind == "bool":
                row[name] = bool(f.int64_list.value[0])
            elif kind == "float":
                row[name] = float(f.float_list.value[0])
            else:
                row[name] = [float(v) for v in f.float_list.value]
        rows.append(row)
    return rows


def read_dead(prefix: str) -> list[dict]:
    files = sorted(glob.glob(f"{prefix}-dead_letter-*.jsonl"))
    return [json.loads(line) for path in files for line in open(path, encoding="utf-8")]


def run_score(env, name: str, *extra: str, models_=("lstm",)) -> tuple[str, dict]:
    from pipelines import score

    prefix = str(env["root"] / "out" / name / "scores")
    argv = ["--model", *[env["dirs"][m] for m in models_], "--input", env["corpus"], "--format", "csv", "--id-column", "id",
            "--output", prefix, *SMALL_BATCHES, *extra, "--runner=DirectRunner"]
    return prefix, score.run(argv)


def _by_id(records: list[dict]) -> dict[str, dict]:
    out = {r["id"]: r for r in records}
    assert len(out) == len(records), "duplicate ids in the output"
    return out


# --- Tests ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lstm_run(env):
    return run_score(env, "lstm_jsonl")


def test_scores_equal_in_process_savedmodel_and_ids_are_kept(env, lstm_run):
    prefix, report = lstm_run
    records = _by_id(read_jsonl(prefix))
    docs = env["docs"]
    assert sorted(records) == sorted(d["id"] for d in docs)
    ids = [d["id"] for d in docs]
    probs, labels = in_process(env["dirs"]["lstm"], [d["text"] for d in docs])
    got = np.array([_p(records[i]) for i in ids])
    assert np.max(np.abs(got - probs)) <= TOL
    assert [records[i]["predicted_label"] for i in ids] == labels.tolist()
    assert [records[i]["predicted_label_name"] for i in ids] == [str(x) for x in labels.tolist()]
    assert {r["model"] for r in records.values()} == {"lstm"}
    assert records["r001"]["true_label"] == 1 and records["r001"]["true_label_name"] == "1"
    assert records["unknown_class"]["true_label"] is None and records["unknown_class"]["true_label_name"] is None
    assert set(records["r001"]) == {"id", "model", "probabilities", "predicted_label", "predicted_label_name",
                                    "true_label", "true_label_name"}
    assert list(records["r001"]["probabilities"]) == ["0", "1"]
    assert sum(records["r001"]["probabilities"].values()) == pytest.approx(1.0)
    assert report["reconciled"] is True


def test_dead_letters_and_counts_reconcile_for_malformed_rows(env, lstm_run):
    prefix, report = lstm_run
    dead = read_dead(prefix)
    assert len(dead) == len(env["bad"]) == 3
    assert {d["stage"] for d in dead} == {"read"}
    assert sorted(d["reason"].split(":")[0] for d in dead) == ["empty_text", "invalid_label", "missing_label"]
    n = len(env["docs"])
    assert report["rows_in"] == n + 3 == report["scored"] + report["dead_lettered"]
    assert report["documents_in"] == report["scored"] == n
    summary = json.loads(Path(prefix + "-summary.json").read_text())
    assert summary["rows_in"] == n + 3 and summary["documents"] == n and summary["dead_lettered"] == 3
    assert summary["dead_letter_by_stage_and_reason"] == {
        "read": {"empty_text": 1, "invalid_label": 1, "missing_label": 1}
    }
    assert summary["counters"]["reconciled"] is True
    # The reader's own counts, computed in the pipeline where the rows are read.
    read = summary["counters"]["read"]
    assert (read["rows_in"], read["documents_out"], read["dead_letter"]) == (n + 3, n, 3)


def test_reconciled_needs_the_readers_counts_to_agree():
    summary = {"counters": {"rows_in": 10, "documents_in": 8, "reconciled": True}}
    agree = {"rows_in": 10, "documents_out": 8, "dead_letter": 2}
    assert score_lib.with_reader_counts(summary, agree)["counters"]["reconciled"] is True
    for wrong in ({"rows_in": 11, "documents_out": 8, "dead_letter": 3},   # a row the summary lost
                  {"rows_in": 10, "documents_out": 8, "dead_letter": 1},   # the reader's own sum
                  {"rows_in": 10, "documents_out": 9, "dead_letter": 1}):  # a document that never reached scoring
        assert score_lib.with_reader_counts(summary, wrong)["counters"]["reconciled"] is False, wrong
    unreconciled = {"counters": dict(summary["counters"], reconciled=False)}
    assert score_lib.with_reader_counts(unreconciled, agree)["counters"]["reconciled"] is False


def _p(record: dict, prefix: str = ""):
    """P(class 1) of a binary model's record, the list of class probabilities otherwise."""
    values = list(record[prefix + "probabilities"].values())
    return values[1] if len(values) == 2 else values


def _numpy_metrics(records: list[dict], prefix: str, k: int) -> dict:
    known = [r for r in records if r["true_label"] is not None]
    true = np.array([r["true_label"] for r in known])
    pred = np.array([r[prefix + "predicted_label"] for r in known])
    confusion = np.zeros((k, k), int)
    np.add.at(confusion, (true, pred), 1)
    out = {"accuracy": float(np.mean(true == pred)), "confusion": confusion.tolist(), "labelled": len(known)}
    if k == 2:
        scores = np.array([_p(r, prefix) for r in known], np.float64)
        pos, neg = np.sort(scores[true == 1]), np.sort(scores[true == 0])
        lower = np.searchsorted(neg, pos, side="left")
        upper = np.searchsorted(neg, pos, side="right")
        out["auc"] = float(np.sum(lower + 0.5 * (upper - lower)) / (len(pos) * len(neg)))
    return out


def test_summary_metrics_equal_numpy(env, lstm_run):
    prefix, _ = lstm_run
    records = read_jsonl(prefix)
    summary = json.loads(Path(prefix + "-summary.json").read_text())
    expected = _numpy_metrics(records, "", 2)
    got = summary["models"]["lstm"]
    assert summary["labelled"] == expected["labelled"] == len(records) - 1
    assert summary["unknown_label"] == 1
    assert got["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert got["confusion"] == expected["confusion"]
    assert got["auc"] == pytest.approx(expected["auc"], abs=1e-12)
    assert got["auc_method"] == "exact" and got["auc_max_error"] == 0.0
    assert got["true_label_counts"] == dict(zip(["0", "1"], np.sum(expected["confusion"], axis=1).tolist()))
    assert sum(got["predicted_label_counts"].values()) == len(records)
    assert summary["class_names"] == ["0", "1"]


@pytest.mark.parametrize("fmt", ["csv", "parquet", "tfrecord"])
def test_every_output_format_reads_back(env, lstm_run, fmt):
    reference = _by_id(read_jsonl(lstm_run[0]))
    prefix, _ = run_score(env, f"lstm_{fmt}", "--output-format", fmt)
    columns = inference.score_columns(inference.resolve_models(env["dirs"]["lstm"]), labelled=True)
    rows = {"csv": lambda: read_csv(prefix, columns), "parquet": lambda: read_parquet(prefix),
            "tfrecord": lambda: read_tfrecord(prefix, columns)}[fmt]()
    got = _by_id(rows)
    assert sorted(got) == sorted(reference)
    for doc_id, ref in reference.items():
        row = got[doc_id]
        flat = flat_record(ref)
        assert set(row) == set(flat) == {"id", "model", "predicted_label", "predicted_label_name", "probability_0",
                                         "probability_1", "true_label", "true_label_name"}
        for key in ("predicted_label", "predicted_label_name", "model", "true_label", "true_label_name"):
            assert row[key] == ref[key] or (ref[key] is None and row[key] in (None, "")), (key, row, ref)
        assert abs(row["probability_1"] - _p(ref)) <= TOL and abs(row["probability_0"] - (1 - _p(ref))) <= TOL


def test_both_models_side_by_side_with_agreement(env):
    prefix, report = run_score(env, "both", models_=("bilstm", "lstm"))
    records = _by_id(read_jsonl(prefix))
    docs = env["docs"]
    ids, texts = [d["id"] for d in docs], [d["text"] for d in docs]
    assert sorted(records) == sorted(ids)
    for name in ("bilstm", "lstm"):
        probs, labels = in_process(env["dirs"][name], texts)
        got = np.array([_p(records[i], f"{name}_") for i in ids])
        assert np.max(np.abs(got - probs)) <= TOL
        assert [records[i][f"{name}_predicted_label"] for i in ids] == labels.tolist()
    agree = [records[i]["bilstm_predicted_label"] == records[i]["lstm_predicted_label"] for i in ids]
    assert [records[i]["agreement"] for i in ids] == agree
    assert 0 < sum(agree) < len(agree), "random models should disagree somewhere"
    summary = report["summary"]
    assert summary["agreements"] == sum(agree)
    assert summary["agreement"] == pytest.approx(sum(agree) / len(agree))
    for name in ("bilstm", "lstm"):
        expected = _numpy_metrics(list(records.values()), f"{name}_", 2)
        assert summary["models"][name]["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
        assert summary["models"][name]["auc"] == pytest.approx(expected["auc"], abs=1e-12)
        assert summary["models"][name]["confusion"] == expected["confusion"]


# A test-only handler whose model raises on a poison text (RunInference's DLQ path).
class _PoisonModels:
    def __init__(self, inner):
        self._inner = inner

    def predict(self, texts):
        if any(POISON in t for t in texts):
            raise ValueError("poisoned text")
        return self._inner.predict(texts)


class PoisonHandler(inference.ClassifierModelHandler):
    def load_model(self):
        return _PoisonModels(super().load_model())


def _score_in_pipeline(out_dir: Path, docs_or_corpus, model_dirs, **kwargs):
    """Runs ScoreCorpus in a DirectRunner pipeline; returns (records, dead letters, summary, counters)."""
    import apache_beam as beam

    from beam_rnn.io import WriteJsonLines
    from beam_rnn.cli.runtime import counters

    if not isinstance(docs_or_corpus, list):
        kwargs["corpus"] = docs_or_corpus
    transform = inference.ScoreCorpus(models=model_dirs, **kwargs)
    prefix = str(out_dir / "s")
    with beam.Pipeline(argv=["--runner=DirectRunner"]) as p:
        if isinstance(docs_or_corpus, list):
            result = p | beam.Create(docs_or_corpus) | transform
        else:
            result = p | transform
        _ = result.scores | "W" >> inference.WriteScores(prefix, output_format="jsonl", columns=transform.columns)
        _ = result.dead_letter | "D" >> WriteJsonLines(prefix + "-dead_letter")
        if result.summary is not None:
            _ = inference.write_summary(result.summary, prefix)
    summary_path = Path(prefix + "-summary.json")
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return read_jsonl(prefix), read_dead(prefix), summary, counters(p.result, score_lib.METRICS_NAMESPACE)


@pytest.mark.parametrize("retry", [True, False])
def test_inference_failure_is_dead_lettered_and_counts_reconcile(env, tmp_path, retry):
    from beam_rnn.io import ReadCorpus

    poisoned = list(env["docs"])
    poisoned[10] = dict(poisoned[10], text=f"good {POISON} movie")
    path = env["root"] / f"poison_{retry}.csv"
    _write_csv(path, poisoned, list(env["bad"]))
    records, dead, summary, counts = _score_in_pipeline(
        tmp_path, ReadCorpus(str(path), format="csv", id_column="id"), env["dirs"]["lstm"],
        handler_class=PoisonHandler, min_batch_size=4, max_batch_size=4, sort_buffer=0,
        retry_failed_batches=retry,
    )
    failed = [d for d in dead if d["stage"] == "score"]
    assert all(d["reason"].startswith("inference_failed: ValueError: poisoned text") for d in failed)
    assert poisoned[10]["id"] in {d["source"] for d in failed}
    if retry:  # the rest of the poisoned batch was scored one by one
        assert [d["source"] for d in failed] == [poisoned[10]["id"]]
        assert counts["retried_singly"] == 4 and counts["failed_batches"] == 2
    else:  # the whole batch (4 documents) is dead-lettered, saying so
        assert len(failed) == 4 and counts["failed_batches"] == 1
        assert all(d["reason"].endswith("(in a batch of 4 documents that failed together)") for d in failed)
        assert all(d["row"] == next(p["text"] for p in poisoned if p["id"] == d["source"]) for d in failed)
    scored_ids = {r["id"] for r in records}
    assert scored_ids | {d["source"] for d in failed} == {d["id"] for d in poisoned}
    assert not scored_ids & {d["source"] for d in failed}
    n = len(poisoned)
    assert counts["documents_in"] == n == counts["scored"] + counts["dead_letter"]
    assert counts["scored"] == len(records) and counts["dead_letter"] == len(failed)
    assert summary["rows_in"] == n + 3 == summary["documents"] + summary["dead_lettered"]
    assert summary["dead_letter_by_stage_and_reason"]["score"] == {"inference_failed": len(failed)}
    # The summary's counts are computed in the pipeline; they agree with Beam's counters.
    for key in ("failed_batches", "retried_singly", "documents_in", "scored"):
        assert summary["counters"][key] == counts.get(key, 0), key
    assert summary["counters"]["score_dead_lettered"] == counts["dead_letter"]
    assert summary["counters"]["reconciled"] is True
    # Scores of the documents that were retried alone equal the in-process model.
    by_id = _by_id(records)
    texts = [d["text"] for d in poisoned if d["id"] in by_id]
    probs, _ = in_process(env["dirs"]["lstm"], texts)
    got = np.array([_p(by_id[d["id"]]) for d in poisoned if d["id"] in by_id])
    assert np.max(np.abs(got - probs)) <= TOL


def test_multiclass_probabilities_label_names_and_invalid_documents(env, tmp_path):
    rng = random.Random(5)
    names = ["neg", "neu", "pos"]
    docs = [{"id": f"m{i}", "text": _text(rng, rng.randint(0, 30)), "label": names[i % 3]} for i in range(30)]
    docs.append({"id": "other", "text": "good", "label": "meh"})  # not a class: true_label None
    invalid = [{"id": "", "text": "no id"}, {"id": "no_text", "text": None}, {"id": 5, "text": "int id"}]
    records, dead, summary, counts = _score_in_pipeline(
        tmp_path, docs + invalid, env["dirs"]["multi"], min_batch_size=2, max_batch_size=7, sort_buffer=5
    )
    by_id = _by_id(records)
    probs, labels = in_process(env["dirs"]["multi"], [d["text"] for d in docs])
    got = np.array([_p(by_id[d["id"]]) for d in docs])
    assert got.shape == (len(docs), 3)
    assert np.max(np.abs(got - probs)) <= TOL
    for d, label in zip(docs, labels.tolist()):
        r = by_id[d["id"]]
        assert r["predicted_label"] == label and r["predicted_label_name"] == names[label]
        assert list(r["probabilities"]) == names
        assert r["true_label"] == (names.index(d["label"]) if d["label"] in names else None)
        assert r["true_label_name"] == (d["label"] if d["label"] in names else None)
    assert sorted(d["reason"].split(":")[0] for d in dead) == ["invalid_document"] * 3
    assert counts["documents_in"] == len(docs) + 3 == counts["scored"] + counts["dead_letter"]
    expected = _numpy_metrics(records, "", 3)
    assert summary["class_names"] == names
    assert summary["models"]["lstm"]["confusion"] == expected["confusion"]
    assert summary["models"]["lstm"]["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert "auc" not in summary["models"]["lstm"]


def test_handler_makes_one_serving_call_per_batch(env):
    handler = inference.ClassifierModelHandler(env["dirs"]["lstm"], min_batch_size=3, max_batch_size=9)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 3, "max_batch_size": 9}
    assert handler.share_model_across_processes() is False and handler.model_copies() == 1
    shared = inference.ClassifierModelHandler(env["dirs"]["lstm"], share_model_across_processes=True)
    assert shared.share_model_across_processes() is True
    copies = inference.ClassifierModelHandler(env["dirs"]["lstm"], model_copies=2)
    assert copies.share_model_across_processes() is True and copies.model_copies() == 2
    model = handler.load_model()
    loaded = model.loaded[0]
    calls = []
    serve = loaded.serve

    def counting(**kwargs):
        calls.append(kwargs["text"].shape[0])
        return serve(**kwargs)

    texts = [d["text"] for d in env["docs"][:7]]
    loaded.serve = counting
    try:
        results = list(handler.run_inference(texts, model))
    finally:
        loaded.serve = serve
    assert calls == [7]
    probs, labels = in_process(env["dirs"]["lstm"], texts)
    assert [r.example for r in results] == texts
    assert np.max(np.abs(np.array([r.inference[0][0] for r in results]) - probs)) <= TOL
    assert [r.inference[0][1] for r in results] == labels.tolist()
    assert all(type(r.inference[0][0]) is float and type(r.inference[0][1]) is int for r in results)


def test_int_labels_with_class_names_accept_ids_and_names():
    named_ints = inference.ModelInfo(name="m", model_dir="d", kind="lstm", num_classes=2,
                                     label_names=("negative", "positive"), label_type="int")
    assert [named_ints.class_index(v) for v in (0, "1", " 1 ", "positive", "2", "pos", True)] == [
        0, 1, 1, 1, None, None, None]
    # String labels are their names: "1" is the class named "1" (id 0), not the id 1.
    strings = inference.ModelInfo(name="m", model_dir="d", kind="lstm", num_classes=2, label_names=("1", "2"))
    assert strings.label_type == "string" and [strings.class_index(v) for v in ("1", "2", "0")] == [0, 1, None]


def test_the_corpus_takes_int_labels_from_a_card_that_names_them(tmp_path):
    import dataclasses

    from beam_rnn.core.errors import InputError
    from beam_rnn.io import CorpusConfig
    from beam_rnn.preprocess.config import Corpus
    from beam_rnn.serve.run import fit_corpus_to_models

    info = inference.ModelInfo(name="m", model_dir="d", kind="lstm", num_classes=2,
                               label_names=("negative", "positive"), label_type="int")
    corpus = Corpus(("x.csv",), CorpusConfig(format="csv", label_type="string"), label_type_from_model=True)
    fitted = fit_corpus_to_models(corpus, [info]).config
    assert (fitted.label_type, fitted.class_names) == ("int", ("negative", "positive"))  # rows by id or by name
    declared = dataclasses.replace(corpus, labels=("positive", "negative"))
    assert fit_corpus_to_models(declared, [info]).config.label_set == frozenset({0, 1})
    with pytest.raises(InputError, match=r"--labels positive: .*not 0\.\.0: .*\(the model's classes: 0=negative"):
        fit_corpus_to_models(dataclasses.replace(corpus, labels=("positive",)), [info])
    with pytest.raises(InputError, match=r"trained on int labels \(0=negative, 1=positive\)"):
        fit_corpus_to_models(dataclasses.replace(corpus, label_type_from_model=False), [info])


def test_auc_histogram_mode_is_bounded_and_within_its_error_bound():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 5000)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1).astype(np.float32)
    scores[:50] = 0.5  # ties
    info = inference.ModelInfo(name="m", model_dir="unused", kind="lstm", num_classes=2)
    records = [{"probabilities": {"0": 1 - float(s), "1": float(s)}, "predicted_label": int(s > 0.5),
                "true_label": int(t)} for s, t in zip(scores, labels)]
    pos, neg = np.sort(scores[labels == 1]).astype(np.float64), np.sort(scores[labels == 0]).astype(np.float64)
    lo, hi = np.searchsorted(neg, pos, "left"), np.searchsorted(neg, pos, "right")
    exact = float(np.sum(lo + 0.5 * (hi - lo)) / (len(pos) * len(neg)))

    def combine(fn):
        accs = []
        for part in (records[:1000], records[1000:3500], records[3500:]):
            acc = fn.create_accumulator()
            for r in part:
                acc = fn.add_input(acc, r)
            accs.append(acc)
        return fn.extract_output(fn.merge_accumulators(accs))["models"]["m"]

    full = combine(inference.ScoreSummaryFn([info]))
    assert full["auc_method"] == "exact" and full["auc"] == pytest.approx(exact, abs=1e-12)
    coarse = combine(inference.ScoreSummaryFn([info], auc_max_bins=64))
    assert coarse["auc_method"] == "histogram" and coarse["auc_bins"] <= 64
    assert 0 < coarse["auc_max_error"] < 0.05
    assert abs(coarse["auc"] - exact) <= coarse["auc_max_error"]
    assert coarse["positives"] + coarse["negatives"] == len(records)


def test_resolve_models_names_and_errors(env, tmp_path):
    infos = inference.resolve_models([env["dirs"]["lstm"], env["dirs"]["bilstm"], env["dirs"]["lstm"]])
    assert [i.name for i in infos] == ["lstm", "bilstm", "lstm_2"]
    named = inference.resolve_models([f"fast={env['dirs']['lstm']}", env["dirs"]["lstm"]])
    assert [i.name for i in named] == ["fast", "lstm"]
    with pytest.raises(inference.ModelDirError, match="do not share classes"):
        inference.resolve_models([env["dirs"]["lstm"], env["dirs"]["multi"]])
    broken = tmp_path / "broken"
    shutil.copytree(env["dirs"]["lstm"], broken)
    (broken / C.MODEL_CARD_FILE).write_text("{not json")
    with pytest.raises(inference.ModelDirError, match="Corrupt model card"):
        inference.resolve_models(str(broken))


def test_missing_or_corrupt_model_dir_exits_2_before_the_pipeline(env, tmp_path, capsys):
    from beam_rnn.cli import run_command

    # A missing directory, in-process: exit 2 with one message, nothing written.
    out = tmp_path / "out_missing" / "scores"
    assert run_command("score", ["--model", str(tmp_path / "no_such_model"), "--input", env["corpus"],
                                 "--format", "csv", "--output", str(out), "--runner=DirectRunner"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "no_such_model does not exist" in errors[0]
    assert not out.parent.exists()

    # A corrupt SavedModel (valid card), as a user runs it: a subprocess.
    corrupt = tmp_path / "corrupt"
    shutil.copytree(env["dirs"]["lstm"], corrupt)
    (corrupt / C.SAVED_MODEL_DIR / "saved_model.pb").write_bytes(b"\x00garbage, not a SavedModel")
    envv = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    envv.update(PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    out = tmp_path / "out_corrupt" / "scores"
    proc = subprocess.run(
        [PYTHON, "-m", "pipelines.score", "--model", str(corrupt), "--input", env["corpus"], "--format", "csv",
         "--id-column", "id", "--output", str(out), "--runner=DirectRunner"],
        cwd=REPO_ROOT, env=envv, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, f"rc={proc.returncode}\n{proc.stderr[-3000:]}"
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "saved_model/saved_model.pb is damaged" in errors[0] and str(corrupt) in errors[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not out.parent.exists(), "the pipeline must not have started"


def test_distinct_ids_combiner_counts_duplicates_exactly(monkeypatch):
    monkeypatch.setattr(inference.DistinctIdsFn, "_PENDING", 7)  # exercise compaction and merging
    fn = inference.DistinctIdsFn()
    rng = random.Random(5)
    ids = [f"doc{rng.randrange(400)}" for _ in range(1000)]
    parts = [ids[i::3] for i in range(3)]
    accs = []
    for part in parts:
        acc = fn.create_accumulator()
        for doc_id in part:
            acc = fn.add_input(acc, doc_id)
        accs.append(acc)
    out = fn.extract_output(fn.merge_accumulators(accs))
    assert out == {"ids": 1000, "distinct_ids": len(set(ids)), "duplicate_ids": 1000 - len(set(ids))}
    assert fn.extract_output(fn.create_accumulator()) == {"ids": 0, "distinct_ids": 0, "duplicate_ids": 0}


@pytest.mark.parametrize("labelled", [True, False])
def test_duplicate_ids_are_counted_in_the_summary(env, tmp_path, labelled):
    docs = [dict(d) for d in env["docs"][:20]]
    docs += [dict(docs[3], text="a different text, same id"), dict(docs[3]), dict(docs[7])]
    if not labelled:
        docs = [{k: v for k, v in d.items() if k != "label"} for d in docs]
    else:
        docs = [dict(d, label=int(d["label"])) for d in docs]
    records, dead, summary, _ = _score_in_pipeline(tmp_path, docs, env["dirs"]["lstm"], labelled=labelled)
    assert len(records) == 23 and not dead  # duplicates are scored, and counted
    assert summary["ids"] == 23 and summary["distinct_ids"] == 20 and summary["duplicate_ids"] == 3
    assert summary["labelled"] == (20 + 3 if labelled else 0)


def test_distinct_ids_state_is_a_few_sorted_runs(monkeypatch):
    # The ids live in O(log n) sorted runs, each more than twice the next (memory: an id is re-sorted
    # O(log n) times, not at every compaction); counts stay exact with duplicates inside and across runs.
    monkeypatch.setattr(inference.DistinctIdsFn, "_PENDING", 16)
    fn = inference.DistinctIdsFn()
    rng = random.Random(7)
    ids = [f"d{rng.randrange(3000)}" for _ in range(5000)]
    acc = fn.create_accumulator()
    for i, doc_id in enumerate(ids, 1):
        acc = fn.add_input(acc, doc_id)
        runs = acc[0]
        assert all(a.size > 2 * b.size for a, b in zip(runs, runs[1:]))
        assert len(runs) <= math.log2(i) + 2
    for run in acc[0]:
        assert run.dtype == np.uint64 and np.all(run[1:] > run[:-1])  # sorted, distinct
    out = fn.extract_output(fn.merge_accumulators([acc, fn.create_accumulator()]))
    assert out == {"ids": 5000, "distinct_ids": len(set(ids)), "duplicate_ids": 5000 - len(set(ids))}


class CountingHandler(inference.ClassifierModelHandler):
    """Counts model loads (class attribute: the DirectRunner runs the workers in this process)."""

    loads = 0

    def load_model(self):
        type(self).loads += 1
        return super().load_model()


def test_runinference_loads_the_models_once_for_every_batch(env, tmp_path):
    # No model cache of our own: RunInference's shared handle keeps one copy per step and process.
    CountingHandler.loads = 0
    records, dead, _, counts = _score_in_pipeline(
        tmp_path, [dict(d) for d in env["docs"]], env["dirs"]["lstm"], handler_class=CountingHandler,
        min_batch_size=2, max_batch_size=3, sort_buffer=0,
    )
    assert len(records) == len(env["docs"]) and not dead
    assert counts["scored"] > 3 * 2  # many batches
    assert CountingHandler.loads == 1


# --------------------------------------------------------------------------
# Issue 13: labels from the model card; a run that mostly failed does not exit 0
# --------------------------------------------------------------------------
def _cli_in_process(command: str, argv: list[str], capsys) -> tuple[int, list[str], str]:
    from beam_rnn.cli import run_command

    code = run_command(command, argv)
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if "error:" in line], captured.out


def test_string_labels_come_from_the_model_card(env, tmp_path, capsys):
    names = ["neg", "neu", "pos"]
    rng = random.Random(11)
    corpus = tmp_path / "named.csv"
    docs = [{"id": f"n{i}", "text": _text(rng, 5 + i), "label": names[i % 3]} for i in range(9)]
    _write_csv(corpus, docs, [])
    base = ["--model", env["dirs"]["multi"], "--input", str(corpus), "--format", "csv", "--id-column", "id",
            *SMALL_BATCHES, "--runner=DirectRunner"]

    # No --label-type: the card's string labels are used, nothing is dead-lettered.
    out = str(tmp_path / "ok" / "s")
    code, errors, stdout = _cli_in_process("score", base + ["--output", out], capsys)
    assert code == 0 and errors == []
    records = read_jsonl(out)
    assert sorted(r["true_label_name"] for r in records) == sorted(d["label"] for d in docs)
    assert all(r["true_label"] == names.index(r["true_label_name"]) for r in records)
    assert json.loads(stdout.splitlines()[-1])["dead_lettered"] == 0

    # A label type that contradicts the card, or declared labels that are no class: one line, exit 2, no output.
    for extra, message in ((["--label-type", "int"], "--label-type int does not fit the model"),
                           (["--labels", "neg,zzz"], "--labels zzz: not classes of the model")):
        out = tmp_path / "bad" / extra[0].strip("-") / "s"
        code, errors, _ = _cli_in_process("score", base + ["--output", str(out), *extra], capsys)
        assert code == 2 and len(errors) == 1 and message in errors[0], errors
        assert "(its classes: neg, neu, pos)" in errors[0] or "string labels (neg, neu, pos)" in errors[0]
        assert not out.parent.exists()


def test_a_run_that_is_mostly_dead_letters_fails(env, tmp_path, capsys):
    corpus = tmp_path / "mostly_bad.csv"  # 2 documents, 3 rows with empty texts (dead letters)
    corpus.write_text("id,text,label\ng1,a good film,1\nb0,,1\nb1,,0\ng2,a bad film,0\nb2,,1\n")
    inputs = ["--model", env["dirs"]["lstm"], "--input", str(corpus), "--format", "csv", "--id-column", "id",
              "--runner=DirectRunner"]
    base = [*inputs, *SMALL_BATCHES]
    code, errors, _ = _cli_in_process("score", base + ["--output", str(tmp_path / "a" / "s")], capsys)
    assert code == 1 and len(errors) == 1, errors
    assert "3 of 5 rows (60%) were dead-lettered (most: empty_text 3), more than --max-dead-letter-fraction 0.5" \
        in errors[0]
    assert read_jsonl(str(tmp_path / "a" / "s")), "the scores are still written"
    code, errors, _ = _cli_in_process(
        "score", base + ["--output", str(tmp_path / "b" / "s"), "--max-dead-letter-fraction", "0.6"], capsys)
    assert code == 0 and errors == []
    # evaluate names the commonest reasons the same way, and keeps them in metrics.json
    code, errors, _ = _cli_in_process("evaluate", [*inputs, "--output", str(tmp_path / "report")], capsys)
    assert code == 1 and len(errors) == 1, errors
    assert "3 of 5 rows (60%) were dead-lettered (most: empty_text 3), more than" in errors[0]
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["dead_letter_by_reason"] == {"empty_text": 3}


def test_score_without_a_waiting_driver_finishes_or_fails_the_job_itself(env, tmp_path, capsys):
    # --no_wait_until_finish: run_score returns at submission, as under a Flex Template launcher
    # (--template_location, Dataflow only); the DirectRunner still runs the whole job inside run().
    from pipelines import score

    good = tmp_path / "good.csv"
    good.write_text("id,text,label\ng1,a good film,1\ng2,a bad film,0\nb0,,1\n")
    base = ["--model", env["dirs"]["lstm"], "--format", "csv", "--id-column", "id", *SMALL_BATCHES,
            "--runner=DirectRunner", "--no_wait_until_finish"]
    prefix = str(tmp_path / "a" / "s")
    assert score.main(base + ["--input", str(good), "--output", prefix]) == 0
    [line] = capsys.readouterr().out.strip().splitlines()
    assert line.startswith(f"Job submitted, not waited for; when it has run: {prefix}-summary.json, the scores ")
    assert len(read_jsonl(prefix)) == 2 and len(read_dead(prefix)) == 1
    # Too many dead letters: the job's last stage fails it, after the outputs and the summary are written.
    bad = tmp_path / "mostly_bad.csv"
    bad.write_text("id,text,label\ng1,a good film,1\nb0,,1\nb1,,0\ng2,a bad film,0\nb2,,1\n")
    prefix = str(tmp_path / "b" / "s")
    with pytest.raises(Exception, match=r"3 of 5 rows \(60%\) were dead-lettered \(most: empty_text 3\)"):
        score.run(base + ["--input", str(bad), "--output", prefix])
    assert json.loads(Path(prefix + "-summary.json").read_text())["dead_lettered"] == 3
    assert len(read_jsonl(prefix)) == 2


def test_evaluate_on_zero_documents_is_an_error(env, tmp_path, capsys):
    corpus = tmp_path / "strangers.csv"
    _write_csv(corpus, [{"id": f"s{i}", "text": "good film", "label": "7"} for i in range(3)], [])
    code, errors, _ = _cli_in_process("evaluate", [
        "--model", env["dirs"]["lstm"], "--input", str(corpus), "--format", "csv", "--id-column", "id",
        "--output", str(tmp_path / "report"), "--max-dead-letter-fraction", "1", "--runner=DirectRunner"], capsys)
    assert code == 1 and len(errors) == 1, errors
    assert "no document was evaluated (3 rows read, 3 dead-lettered (label_not_in_model 3))" in errors[0]
