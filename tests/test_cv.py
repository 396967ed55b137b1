"""`train --folds K`: folds that partition the train split, one model per fold, mean ± sd."""

import json
import os
import random
import statistics
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from beam_rnn.core import constants as C
from beam_rnn.preprocess.config import PreprocessConfig
from beam_rnn.train import cv, data, trainer
from beam_rnn.train.config import ModelSettings, TrainConfig
from beam_rnn.train.errors import TrainerInputError
from tests.conftest import ROOT
from tests.helpers import preprocess_docs

TINY = dict(model=ModelSettings(embedding_dim=8, units=8, dense_units=8), batch_size=16, learning_rate=1e-2,
            num_buckets=2, verbose=0)


def _docs(n: int, groups: int | None = None) -> list[dict]:
    rng = random.Random(3)
    docs = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(["w1", "w2", "w3", "w4"]) for _ in range(rng.randint(2, 8))]
        words.insert(0, rng.choice([("bad", "awful"), ("good", "great")][label]))
        doc = {"id": f"d{i}", "text": " ".join(words), "label": label}
        if groups:
            doc["group"] = f"g{i % groups}"
        docs.append(doc)
    return docs


@pytest.fixture(scope="module")
def grouped_dir(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("grouped"))
    preprocess_docs(out, _docs(240, groups=30), PreprocessConfig(vocab_size=50, min_frequency=1, eval_fraction=0.2,
                                                                  group_column="movie"))
    return out


@pytest.fixture(scope="module")
def all_train_dir(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("all_train"))
    preprocess_docs(out, _docs(160), PreprocessConfig(vocab_size=50, min_frequency=1, eval_fraction=0.0))
    return out


def _ids_and_groups(pattern: str, fold: data.Fold | None = None) -> list[tuple[str, str]]:
    """(id, group) of the examples of a fold, read with the same filter training uses."""
    files = data.shard_files(pattern)
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(64)
    out = []
    for batch in ds:
        if fold is not None:
            in_fold = data.fold_of_keys(batch, fold.count).numpy() == fold.index
            batch = batch.numpy()[in_fold if fold.holdout else ~in_fold]
        else:
            batch = batch.numpy()
        for record in batch:
            feature = tf.train.Example.FromString(record).features.feature
            group = feature["group"].bytes_list.value[0].decode() if "group" in feature else ""
            out.append((feature["id"].bytes_list.value[0].decode(), group))
    return out


def test_folds_partition_the_train_split_and_keep_groups_together(grouped_dir):
    pattern = data.train_pattern(grouped_dir)
    everything = sorted(_ids_and_groups(pattern))
    held = [_ids_and_groups(pattern, data.Fold(i, 4, True)) for i in range(4)]
    assert sorted(sum(held, [])) == everything  # every document in exactly one held-out fold
    for i, fold in enumerate(held):
        rest = _ids_and_groups(pattern, data.Fold(i, 4, False))
        assert sorted(fold + rest) == everything and not set(fold) & set(rest)
        assert not {g for _, g in fold} & {g for _, g in rest}, "a group spans two folds"
    assert list(data.fold_sizes(pattern, 4)) == [len(f) for f in held]
    # The lengths training buckets by come from the same filter.
    assert len(data.sequence_lengths(pattern, None, data.Fold(1, 4, True))) == len(held[1])


def test_summary_is_mean_and_sample_sd():
    folds = [{"fold": i + 1, "accuracy": a, "loss": 0.5, "auc": None, "best_epoch": i} for i, a in
             enumerate([0.7, 0.8, 0.9])]
    summary = cv.summarize_folds(folds)
    assert summary["accuracy"]["mean"] == pytest.approx(0.8)
    assert summary["accuracy"]["sd"] == pytest.approx(statistics.stdev([0.7, 0.8, 0.9]))
    assert (summary["accuracy"]["min"], summary["accuracy"]["max"]) == (0.7, 0.9)
    assert "auc" not in summary and summary["best_epochs"] == [0, 1, 2]


def test_cross_validation_then_the_final_model(grouped_dir, tmp_path):
    config = TrainConfig(kinds=(C.MODEL_LSTM,), epochs=2, folds=3, **TINY)
    results = trainer.run_training(grouped_dir, str(tmp_path), config, export=False)
    metrics = results[C.MODEL_LSTM]
    summary = metrics["cross_validation"]
    per_fold = summary["per_fold"]
    assert [f["fold"] for f in per_fold] == [1, 2, 3]
    sizes = data.fold_sizes(data.train_pattern(grouped_dir), 3)
    assert [f["eval_examples"] for f in per_fold] == [int(n) for n in sizes]
    assert [f["train_examples"] for f in per_fold] == [int(sizes.sum() - n) for n in sizes]
    assert summary["accuracy"]["mean"] == pytest.approx(np.mean([f["accuracy"] for f in per_fold]))
    on_disk = json.loads((tmp_path / "cv" / "lstm.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for i in range(3):
        fold_model = tmp_path / "cv" / f"fold_{i + 1:02d}" / "lstm"
        assert (fold_model / "metrics.json").exists() and not (fold_model / "checkpoints").exists()
    # The final model is validated on the eval split, as without --folds.
    assert metrics["eval_examples"] == json.loads((open(os.path.join(grouped_dir, C.STATS_FILE)).read()))[
        "splits"]["eval"]["documents"]
    written = json.loads((tmp_path / "lstm" / "metrics.json").read_text())
    assert written["cross_validation"]["accuracy"] == json.loads(json.dumps(summary["accuracy"]))

    # A rerun finds the folds finished with the same settings and trains none of them again.
    before = [(tmp_path / "cv" / f"fold_{i + 1:02d}" / "lstm" / "metrics.json").stat().st_mtime_ns for i in range(3)]
    again = trainer.run_training(grouped_dir, str(tmp_path / "again"), config, export=False)
    assert again[C.MODEL_LSTM]["cross_validation"]["folds"] == 3
    cv.cross_validate(grouped_dir, str(tmp_path), config, kind=C.MODEL_LSTM,
                      inputs=trainer.check_training_inputs(grouped_dir, config))
    after = [(tmp_path / "cv" / f"fold_{i + 1:02d}" / "lstm" / "metrics.json").stat().st_mtime_ns for i in range(3)]
    assert before == after

    # Other training data with the same settings: the folds are trained again, not reused.
    other = str(tmp_path / "other_prep")
    preprocess_docs(other, _docs(200, groups=30), PreprocessConfig(vocab_size=50, min_frequency=1,
                                                                    eval_fraction=0.2, group_column="movie"))
    redone = cv.cross_validate(other, str(tmp_path), config, kind=C.MODEL_LSTM,
                               inputs=trainer.check_training_inputs(other, config))
    assert sum(f["train_examples"] + f["eval_examples"] for f in redone["per_fold"]) == 3 * int(
        data.fold_sizes(data.train_pattern(other), 3).sum())
    retrained = [(tmp_path / "cv" / f"fold_{i + 1:02d}" / "lstm" / "metrics.json").stat().st_mtime_ns
                 for i in range(3)]
    assert all(b != r for b, r in zip(before, retrained))


def test_cross_validation_only_when_the_eval_split_is_empty(all_train_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "beam_rnn.cli", "train", "--transformed", all_train_dir,
                           "--output", str(tmp_path / "m"), "--kind", "lstm", "--folds", "2", "--epochs", "1",
                           "--units", "8", "--embedding-dim", "8", "--dense-units", "8"],
                          capture_output=True, text=True, cwd=str(ROOT), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])["lstm"]
    assert printed["cv_folds"] == 2 and 0.0 <= printed["cv_accuracy_mean"] <= 1.0
    assert "validation_accuracy" not in printed
    assert "2-fold cross-validation: accuracy" in proc.stderr
    assert (tmp_path / "m" / "cv" / "lstm.json").exists() and not (tmp_path / "m" / "lstm").exists()


def test_without_folds_an_empty_eval_split_is_still_refused(all_train_dir, tmp_path):
    with pytest.raises(TrainerInputError, match="the eval split has no documents"):
        trainer.run_training(all_train_dir, str(tmp_path), TrainConfig(kinds=(C.MODEL_LSTM,), epochs=1, **TINY))


def test_more_folds_than_documents_is_refused_before_training(tmp_path):
    out = str(tmp_path / "prep")
    preprocess_docs(out, _docs(6), PreprocessConfig(vocab_size=50, min_frequency=1, eval_fraction=0.0))
    with pytest.raises(TrainerInputError, match="--folds 20: the train split"):
        trainer.run_training(out, str(tmp_path / "m"), TrainConfig(kinds=(C.MODEL_LSTM,), folds=20, **TINY))
    assert not (tmp_path / "m").exists()
