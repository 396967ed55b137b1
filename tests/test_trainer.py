"""Tests for beam_rnn.trainer and the pipelines.train driver.

Fixtures run the real preprocessing stage (AnalyzeAndTransform + stats) on a small
synthetic, learnable corpus: the label is given by one keyword ("good"-ish words
for 1, "bad"-ish words for 0; a third group for the K=3 variant) hidden among
random filler words, with varied lengths and a few empty documents.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from beam_rnn import constants as C
from beam_rnn import trainer
from beam_rnn.trainer import TrainConfig, TrainerInputError
from tests.helpers import preprocess_docs

REPO_ROOT = Path(__file__).resolve().parents[1]

KEYWORDS = (("bad", "awful", "poor", "boring"), ("good", "great", "superb", "lovely"), ("meh", "okay", "average", "so-so"))
FILLER = tuple(f"w{i}" for i in range(30))

# Small and fast, with a learning rate high enough to learn the task in a few epochs.
SMALL = dict(embedding_dim=16, units=16, dense_units=16, batch_size=16, learning_rate=1e-2, num_buckets=4, verbose=0)


def _documents(n: int, num_classes: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        label = i % num_classes
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 30))]
        words.insert(rng.randint(0, len(words)), rng.choice(KEYWORDS[label]))
        docs.append({"id": f"doc{i}", "text": " ".join(words), "label": label})
    # Documents that tokenise to nothing must not break training.
    docs += [{"id": f"empty{i}", "text": "!!! ...", "label": 0} for i in range(8)]
    return docs


def _preprocess(out: str, docs: list[dict]) -> str:
    from beam_rnn.preprocessing import PreprocessConfig

    preprocess_docs(out, docs, PreprocessConfig(vocab_size=50, min_frequency=1, eval_fraction=0.25))
    return out


@pytest.fixture(scope="module")
def binary_dir(tmp_path_factory) -> str:
    return _preprocess(str(tmp_path_factory.mktemp("binary")), _documents(320, 2, seed=0))


@pytest.fixture(scope="module")
def multi_dir(tmp_path_factory) -> str:
    return _preprocess(str(tmp_path_factory.mktemp("multi")), _documents(360, 3, seed=1))


def _history(model_dir: str) -> list[dict]:
    with open(os.path.join(model_dir, trainer.HISTORY_FILE)) as f:
        return [json.loads(line) for line in f if line.strip()]


def _lengths(batch: np.ndarray) -> np.ndarray:
    return (batch != 0).sum(axis=1)


# --- Training -----------------------------------------------------------------


@pytest.mark.parametrize("kind", [C.MODEL_BILSTM, C.MODEL_LSTM])
def test_training_lowers_loss_and_beats_chance(binary_dir, tmp_path, kind):
    config = TrainConfig(kinds=(kind,), epochs=6, early_stopping_patience=2, **SMALL)
    result = trainer.train(binary_dir, str(tmp_path), config)
    metrics = result["metrics"]
    model_dir = tmp_path / kind
    assert result["kind"] == kind and result["model_dir"] == str(model_dir)
    assert result["model_config"].kind == kind and result["model_config"].num_classes == 2

    history = _history(str(model_dir))
    assert [h["epoch"] for h in history] == list(range(1, metrics["epochs_run"] + 1))
    assert history[-1]["loss"] < history[0]["loss"]
    assert metrics["accuracy"] >= 0.75, metrics
    assert metrics["auc"] >= 0.8, metrics
    assert np.isfinite(metrics["loss"])
    assert metrics["start_epoch"] == 0 and not metrics["resumed"]
    assert metrics["train_examples"] > 200 and metrics["eval_examples"] > 40
    assert metrics["examples_per_second"] > 0 and metrics["train_seconds"] > 0
    # Reported metrics are those of the kept (best by val_loss) epoch.
    best = min(history, key=lambda h: h["val_loss"])
    assert metrics["best_epoch"] == best["epoch"]
    assert metrics["loss"] == pytest.approx(best["val_loss"], rel=1e-4)
    assert metrics["accuracy"] == pytest.approx(best["val_accuracy"], rel=1e-4)

    # Layout under OUTPUT/<kind>/.
    assert json.loads((model_dir / trainer.METRICS_FILE).read_text()) == metrics
    assert (model_dir / trainer.WEIGHTS_DIR / f"{trainer.WEIGHTS_PREFIX}.index").exists()
    assert (model_dir / trainer.CHECKPOINTS_DIR / "epoch_001.index").exists()
    assert list((model_dir / trainer.LOGS_DIR / "train").glob("events.out.tfevents.*"))
    assert list((model_dir / trainer.LOGS_DIR / "validation").glob("events.out.tfevents.*"))
    assert not (model_dir / trainer.BACKUP_DIR).exists()  # finished: nothing to resume
    assert TrainConfig.from_dict(json.loads((model_dir / trainer.TRAIN_CONFIG_FILE).read_text())) == config

    # The saved weights rebuild the returned model exactly.
    reloaded, model_config = trainer.load_trained_model(str(model_dir))
    assert model_config == result["model_config"]
    ids = np.array([[5, 6, 7, 0], [8, 0, 0, 0]], np.int64)
    np.testing.assert_array_equal(reloaded(ids).numpy(), result["model"](ids).numpy())


def test_seeded_runs_are_bit_identical(binary_dir, tmp_path):
    config = TrainConfig(kinds=(C.MODEL_LSTM,), epochs=2, **SMALL)
    first = trainer.train(binary_dir, str(tmp_path / "a"), config)["model"].get_weights()
    second = trainer.train(binary_dir, str(tmp_path / "b"), config)["model"].get_weights()
    assert len(first) == len(second)
    for w1, w2 in zip(first, second):
        np.testing.assert_array_equal(w1, w2)
    a = _history(str(tmp_path / "a" / C.MODEL_LSTM))
    b = _history(str(tmp_path / "b" / C.MODEL_LSTM))
    assert [h["loss"] for h in a] == [h["loss"] for h in b]
    # And the seed matters (otherwise the check above would prove nothing).
    other = trainer.train(binary_dir, str(tmp_path / "c"), TrainConfig(**{**config.to_dict(), "seed": 7,
                                                                          "kinds": (C.MODEL_LSTM,)}))
    assert any(not np.array_equal(w1, w2) for w1, w2 in zip(first, other["model"].get_weights()))


def test_multiclass_trains(multi_dir, tmp_path):
    config = TrainConfig(kinds=(C.MODEL_LSTM,), epochs=6, early_stopping_patience=2, **SMALL)
    result = trainer.train(multi_dir, str(tmp_path), config)
    metrics = result["metrics"]
    assert metrics["num_classes"] == 3 and result["model_config"].num_classes == 3
    assert result["model"].output_shape == (None, 3)
    assert metrics["auc"] is None
    history = _history(result["model_dir"])
    assert history[-1]["loss"] < history[0]["loss"]
    assert metrics["accuracy"] > 0.5, metrics  # chance is 1/3


@pytest.mark.parametrize("kind,cell", [(C.MODEL_LSTM, "lstm"), (C.MODEL_BILSTM, "gru"), (C.MODEL_LSTM, "simple_rnn")])
def test_each_cell_builds_and_trains(binary_dir, tmp_path, kind, cell):
    config = TrainConfig(kinds=(kind,), epochs=1, cell=cell, **SMALL)
    result = trainer.train(binary_dir, str(tmp_path), config)
    assert result["model_config"].cell == cell
    assert result["metrics"]["epochs_run"] == 1 and np.isfinite(result["metrics"]["loss"])
    rnn = result["model"].get_layer("rnn_0")
    cell_layer = rnn.forward_layer if kind == C.MODEL_BILSTM else rnn
    assert cell_layer.__class__.__name__ == {"lstm": "LSTM", "gru": "GRU", "simple_rnn": "SimpleRNN"}[cell]


# --- Input pipeline -------------------------------------------------------------


def test_batches_are_padded_per_batch(binary_dir):
    pattern = trainer.train_pattern(binary_dir)
    for boundaries in ((8, 16, 24), None):
        ds = trainer.make_dataset(pattern, batch_size=16, shuffle=True, seed=3, bucket_boundaries=boundaries)
        widths = []
        for ids, label in ds:
            ids = ids.numpy()
            assert ids.dtype == np.int64 and label.shape == (ids.shape[0], 1) and label.dtype == tf.float32
            lengths = _lengths(ids)
            # Padded to this batch's longest document (an empty document is one pad id).
            assert ids.shape[1] == max(lengths.max(), 1)
            # Right padding: tokens first, then zeros.
            for row, n in zip(ids, lengths):
                assert (row[:n] != 0).all() and (row[n:] == 0).all()
            widths.append(ids.shape[1])
        assert len(set(widths)) > 1
    # With buckets, a batch only mixes lengths of one bucket.
    ds = trainer.make_dataset(pattern, batch_size=16, shuffle=False, bucket_boundaries=(8, 16, 24))
    for ids, _ in ds:
        buckets = np.digitize(np.maximum(_lengths(ids.numpy()), 1), [8, 16, 24])
        assert len(set(buckets)) == 1


def test_truncation_and_empty_documents(binary_dir):
    stats = json.loads(Path(binary_dir, C.STATS_FILE).read_text())
    assert stats["splits"]["train"]["empty_documents"] + stats["splits"]["eval"]["empty_documents"] == 8
    lengths = []
    for split in (trainer.train_pattern(binary_dir), trainer.eval_pattern(binary_dir)):
        for ids, _ in trainer.make_dataset(split, batch_size=64, max_length=5):
            assert 1 <= ids.shape[1] <= 5
            lengths.extend(_lengths(ids.numpy()))
    assert lengths.count(0) == 8
    assert len(lengths) == stats["documents_out"]
    full = trainer.sequence_lengths(trainer.train_pattern(binary_dir))
    assert full.min() == 1 and full.max() > 5
    assert (trainer.sequence_lengths(trainer.train_pattern(binary_dir), 5) == np.minimum(full, 5)).all()


def _write_sorted_examples(path: str, n_per_label: int) -> None:
    """A GZIP TFRecord file sorted by label (all 0 first), like IMDB's train.csv."""
    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for label in (0, 1):
            for i in range(n_per_label):
                ids = rng.integers(2, 40, size=int(rng.integers(0, 12))).tolist()
                ex = tf.train.Example(features=tf.train.Features(feature={
                    C.TOKEN_IDS_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=ids)),
                    C.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                    C.ID_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"{label}-{i}".encode()])),
                }))
                w.write(ex.SerializeToString())


def _epoch_labels(ds) -> list[np.ndarray]:
    return [label.numpy().ravel() for _, label in ds]


def test_full_shuffle_mixes_label_sorted_input(tmp_path):
    path = str(tmp_path / "sorted-00000-of-00001.tfrecord.gz")
    _write_sorted_examples(path, 150)
    ds = trainer.make_dataset(path, batch_size=20, shuffle=True, seed=11)
    epoch1, epoch2 = _epoch_labels(ds), _epoch_labels(ds)
    for batches in (epoch1, epoch2):
        labels = np.concatenate(batches)
        assert len(labels) == 300 and labels.sum() == 150  # every document exactly once
        mixed = [b for b in batches if 0 < b.mean() < 1]
        assert len(mixed) >= len(batches) - 1
        assert 0 < batches[0].mean() < 1 and 0 < batches[-1].mean() < 1
    # Reshuffled every epoch, and reproducible from the seed.
    assert not np.array_equal(np.concatenate(epoch1), np.concatenate(epoch2))
    again = trainer.make_dataset(path, batch_size=20, shuffle=True, seed=11)
    np.testing.assert_array_equal(np.concatenate(_epoch_labels(again)), np.concatenate(epoch1))
    # Contrast: a small buffer leaves the first batches single-label.
    small = trainer.make_dataset(path, batch_size=20, shuffle=True, seed=11, shuffle_buffer_size=10)
    assert _epoch_labels(small)[0].max() == 0


def test_quantile_boundaries():
    lengths = np.array([1] * 10 + [5] * 10 + [20] * 10 + [100] * 10)
    b = trainer.quantile_boundaries(lengths, 4)
    assert list(b) == sorted(set(b)) and all(1 < x <= 100 for x in b)
    counts = np.bincount(np.digitize(lengths, b))
    assert [c for c in counts if c] == [10, 10, 10, 10]
    # The long tail is split geometrically up to the longest length.
    assert b[-1] * trainer.TAIL_BUCKET_GROWTH >= 100 and len(b) > 3
    tail = trainer.quantile_boundaries(np.array([10] * 95 + [1000] * 5), 2)
    assert tail[0] == 11 and all(y == int(x * 1.5) for x, y in zip(tail, tail[1:])) and tail[-1] < 1000
    assert trainer.quantile_boundaries(lengths, 1) == ()
    assert trainer.quantile_boundaries(np.array([3, 3, 3]), 8) == ()


def test_train_config_validation_and_round_trip():
    config = TrainConfig(kinds=("lstm",), bucket_boundaries=[10, 20], max_length=300)
    assert config.bucket_boundaries == (10, 20)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert TrainConfig(kinds="bilstm").kinds == ("bilstm",)
    for bad in (dict(kinds=("cnn",)), dict(epochs=0), dict(bucket_boundaries=(20, 10)), dict(cell="tcn"),
                dict(monitor="loss"), dict(max_length=0), dict(learning_rate=0)):
        with pytest.raises(ValueError):
            TrainConfig(**bad)
    assert TrainConfig().learning_rate_for("bilstm") == 5e-4 and TrainConfig().learning_rate_for("lstm") == 5e-4
    assert TrainConfig(learning_rate=0.01).learning_rate_for("lstm") == 0.01
    # stacked_tutorial only reaches the bilstm model config.
    stacked = TrainConfig(stacked_tutorial=True)
    assert stacked.model_config("bilstm", vocab_size=10, num_classes=2).stacked_tutorial
    assert not stacked.model_config("lstm", vocab_size=10, num_classes=2).stacked_tutorial


# --- Input validation -----------------------------------------------------------


def _incomplete_copy(src: str, dst: Path, remove: list[str]) -> str:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("tmp"))
    for pattern in remove:
        for path in dst.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return str(dst)


@pytest.mark.parametrize(
    "remove,expected",
    [
        ([C.TRANSFORM_FN_DIR], ["transform_fn"]),
        ([f"{C.TRANSFORMED_DIR}/train-*"], ["train shards"]),
        ([f"{C.TRANSFORMED_DIR}/eval-*"], ["eval shards"]),
        ([C.STATS_FILE], ["stats.json"]),
        ([C.TRANSFORMED_DIR, C.STATS_FILE], ["train shards", "eval shards", "stats.json"]),
    ],
)
def test_incomplete_transformed_dir_raises(binary_dir, tmp_path, remove, expected):
    broken = _incomplete_copy(binary_dir, tmp_path / "broken", remove)
    with pytest.raises(TrainerInputError) as e:
        trainer.train(broken, str(tmp_path / "out"), TrainConfig(**SMALL))
    message = str(e.value)
    assert "\n" not in message and broken in message
    for word in expected:
        assert word in message
    assert not (tmp_path / "out").exists()


def test_missing_or_untrainable_transformed_dir_raises(binary_dir, tmp_path):
    with pytest.raises(TrainerInputError, match="does not exist"):
        trainer.validate_transformed_dir(str(tmp_path / "nope"))
    unlabelled = _incomplete_copy(binary_dir, tmp_path / "unlabelled", [])
    stats_path = Path(unlabelled, C.STATS_FILE)
    stats = json.loads(stats_path.read_text())
    stats_path.write_text(json.dumps({**stats, "num_classes": 0}))
    with pytest.raises(TrainerInputError, match="num_classes"):
        trainer.validate_transformed_dir(unlabelled)
    stats_path.write_text("{not json")
    with pytest.raises(TrainerInputError, match="readable stats.json"):
        trainer.validate_transformed_dir(unlabelled)


# --- Driver (subprocesses) ------------------------------------------------------


def _run_cli(args: list[str], env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.train", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_incomplete_input_exits_2_with_one_message(binary_dir, tmp_path):
    broken = _incomplete_copy(binary_dir, tmp_path / "broken", [C.STATS_FILE, C.TRANSFORM_FN_DIR])
    proc = _run_cli(["--transformed", broken, "--output", str(tmp_path / "out"), "--model", "lstm"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "stats.json" in errors[0] and "transform_fn" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_cli_resumes_after_kill(binary_dir, tmp_path):
    """Kill the driver after epoch 1 (fault-injection env hook, os._exit), rerun, check it resumes at epoch 1."""
    out = tmp_path / "out"
    args = ["--transformed", binary_dir, "--output", str(out), "--model", "lstm", "--epochs", "3",
            "--units", "8", "--embedding-dim", "8", "--dense-units", "8", "--batch-size", "32",
            "--learning-rate", "0.01", "--patience", "5", "--skip-export"]
    model_dir = out / C.MODEL_LSTM

    killed = _run_cli(args, env={trainer.KILL_AFTER_EPOCH_ENV: "1"})
    assert killed.returncode == trainer.KILL_EXIT_CODE, killed.stderr[-3000:]
    assert [h["epoch"] for h in _history(str(model_dir))] == [1]
    assert list((model_dir / trainer.BACKUP_DIR).rglob("*"))  # a backup to resume from
    assert not (model_dir / trainer.METRICS_FILE).exists()

    env = {k: v for k, v in os.environ.items() if k != trainer.KILL_AFTER_EPOCH_ENV}
    resumed = subprocess.run([sys.executable, "-m", "pipelines.train", *args], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((model_dir / trainer.METRICS_FILE).read_text())
    assert metrics["start_epoch"] == 1 and metrics["resumed"], metrics
    assert metrics["epochs_this_run"] == 2 and metrics["epochs_run"] == 3
    history = _history(str(model_dir))
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[0]["pid"] != history[1]["pid"] == history[2]["pid"]
    assert not (model_dir / trainer.BACKUP_DIR).exists()
    assert (model_dir / trainer.WEIGHTS_DIR / f"{trainer.WEIGHTS_PREFIX}.index").exists()
    for epoch in (1, 2, 3):
        assert (model_dir / trainer.CHECKPOINTS_DIR / f"epoch_{epoch:03d}.index").exists()
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary[C.MODEL_LSTM]["epochs_run"] == 3


def test_warm_start_from_pretrained_vectors_frozen(binary_dir, tmp_path):
    """--pretrained-embeddings sets the rows of covered words; frozen, they survive training."""
    from beam_rnn.transform import read_vocabulary
    from pipelines import train as driver

    vocab = read_vocabulary(binary_dir)
    rng = np.random.default_rng(3)
    covered = vocab[:5]
    vectors = {w: rng.normal(size=8).astype(np.float32) for w in covered + ["notinvocab"]}
    path = tmp_path / "vectors.txt"
    path.write_text(f"{len(vectors)} 8\n" + "".join(
        f"{w} {' '.join(repr(float(x)) for x in v)}\n" for w, v in vectors.items()))
    results = driver.run(["--transformed", binary_dir, "--output", str(tmp_path / "out"), "--model", "lstm",
                          "--epochs", "1", "--embedding-dim", "8", "--units", "8", "--dense-units", "8",
                          "--pretrained-embeddings", str(path), "--freeze-embeddings", "--no-rescale-pretrained",
                          "--skip-export"])
    assert results["lstm"]["warm_start"]["matched"] == 5
    model, _ = trainer.load_trained_model(str(tmp_path / "out" / "lstm"))
    table = model.get_layer("embedding").get_weights()[0]
    num_oov = 1
    for i, word in enumerate(covered):
        np.testing.assert_array_equal(table[i + num_oov + 1], vectors[word])



def test_warm_start_rescales_by_default(binary_dir, tmp_path):
    """Default warm start: covered rows are the vectors times ONE factor, at Keras' initial RMS."""
    from beam_rnn.transform import read_vocabulary
    from pipelines import train as driver

    vocab = read_vocabulary(binary_dir)
    rng = np.random.default_rng(4)
    covered = vocab[:6]
    vectors = {w: rng.normal(scale=0.4, size=8).astype(np.float32) for w in covered}  # word2vec-sized
    path = tmp_path / "vectors.txt"
    path.write_text(f"{len(vectors)} 8\n" + "".join(
        f"{w} {' '.join(repr(float(x)) for x in v)}\n" for w, v in vectors.items()))
    results = driver.run(["--transformed", binary_dir, "--output", str(tmp_path / "out"), "--model", "lstm",
                          "--epochs", "1", "--embedding-dim", "8", "--units", "8", "--dense-units", "8",
                          "--pretrained-embeddings", str(path), "--freeze-embeddings", "--skip-export"])
    assert results["lstm"]["warm_start"]["rescaled"] is True
    model, _ = trainer.load_trained_model(str(tmp_path / "out" / "lstm"))
    table = model.get_layer("embedding").get_weights()[0]
    rows = np.stack([table[i + 2] for i in range(len(covered))])
    raw = np.stack([vectors[w] for w in covered])
    factors = rows / raw
    np.testing.assert_allclose(factors, factors.flat[0], rtol=1e-4)  # one factor: cosines unchanged
    assert factors.flat[0] < 0.5  # shrunk towards Keras' uniform(+-0.05) rows
    rest = np.delete(table, [0, 1] + [i + 2 for i in range(len(covered))], axis=0)
    np.testing.assert_allclose(np.sqrt(np.mean(rows ** 2)), np.sqrt(np.mean(rest ** 2)), rtol=0.35)


def test_cli_pretrained_dimension_mismatch_exits_2(binary_dir, tmp_path):
    path = tmp_path / "vectors.txt"
    path.write_text("1 3\nword 0.1 0.2 0.3\n")
    proc = _run_cli(["--transformed", binary_dir, "--output", str(tmp_path / "o"),
                     "--pretrained-embeddings", str(path)])
    assert proc.returncode == 2
    assert "--embedding-dim" in proc.stderr and "Traceback" not in proc.stderr
