"""Tests for beam_rnn.train (config, data, checks, trainer) and the pipelines.train driver.

Fixtures run the real preprocessing stage (AnalyzeAndTransform + stats) on a small
synthetic, learnable corpus: the label is given by one keyword ("good"-ish words
for 1, "bad"-ish words for 0; a third group for the K=3 variant) hidden among
random filler words, with varied lengths and a few empty documents.
"""

import dataclasses
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
import tf_keras as keras

from beam_rnn.core import constants as C
from beam_rnn.core.errors import InputError
from beam_rnn.train import auto, callbacks, checks, data, trainer
from beam_rnn.train.config import ModelConfig, ModelSettings, TrainConfig
from beam_rnn.train.errors import TrainerInputError
from tests.helpers import preprocess_docs

REPO_ROOT = Path(__file__).resolve().parents[1]

KEYWORDS = (("bad", "awful", "poor", "boring"), ("good", "great", "superb", "lovely"), ("meh", "okay", "average", "so-so"))
FILLER = tuple(f"w{i}" for i in range(30))

# Small and fast, with a learning rate high enough to learn the task in a few epochs.
SMALL_MODEL = ModelSettings(embedding_dim=16, units=16, dense_units=16)
SMALL = dict(model=SMALL_MODEL, batch_size=16, learning_rate=1e-2, num_buckets=4, verbose=0)


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
    from beam_rnn.preprocess.tft_graph import PreprocessConfig

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
    # Reported metrics are those of the kept epoch: the best by val_accuracy (the default monitor), earliest of ties.
    best = max(history, key=lambda h: (h["val_accuracy"], -h["epoch"]))
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
    # train_config.json records the settings used: the auto ones resolved (a small corpus: Dropout 0.5).
    used = dataclasses.replace(config, model=dataclasses.replace(config.model, dropout=auto.DROPOUT_SMALL))
    assert TrainConfig.from_dict(json.loads((model_dir / trainer.TRAIN_CONFIG_FILE).read_text())) == used
    assert result["model_config"].dropout == auto.DROPOUT_SMALL
    chosen = metrics["hyperparameters"]
    assert chosen["epochs"] == {"value": 6, "source": auto.GIVEN, "reason": "set explicitly"}
    assert chosen["dropout"]["value"] == auto.DROPOUT_SMALL and chosen["dropout"]["source"] == auto.AUTO
    assert f"{metrics['train_examples']:,} training documents" in chosen["dropout"]["reason"]

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
    other = trainer.train(binary_dir, str(tmp_path / "c"),
                          dataclasses.replace(config, model=dataclasses.replace(config.model, seed=7)))
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
    config = TrainConfig(kinds=(kind,), epochs=1, **{**SMALL, "model": dataclasses.replace(SMALL_MODEL, cell=cell)})
    result = trainer.train(binary_dir, str(tmp_path), config)
    assert result["model_config"].cell == cell
    assert result["metrics"]["epochs_run"] == 1 and np.isfinite(result["metrics"]["loss"])
    rnn = result["model"].get_layer("rnn_0")
    cell_layer = rnn.forward_layer if kind == C.MODEL_BILSTM else rnn
    assert cell_layer.__class__.__name__ == {"lstm": "LSTM", "gru": "GRU", "simple_rnn": "SimpleRNN"}[cell]


# --- Exact resume ---------------------------------------------------------------

# Dropout (random generator state), Adam state from epoch 2 on, and early stopping on
# val_accuracy with patience 1: this run stops after epoch 2 because epoch 2's accuracy
# is below epoch 1's, which a restart only knows by replaying the committed history.
RESUME = dict(SMALL, kinds=(C.MODEL_LSTM,), epochs=3, model=dataclasses.replace(SMALL_MODEL, dropout=0.3),
              monitor="val_accuracy",
              early_stopping_patience=1, learning_rate=3e-3)


class _Killed(Exception):
    """Raised by _KillAt: the training process 'dies' (nothing after it runs)."""


class _KillAt(keras.callbacks.Callback):
    """Fault injection: die at the end of `epoch` (0-based), or after its batch `batch`."""

    def __init__(self, epoch: int, batch: int | None = None) -> None:
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.batch is not None and self.current == self.epoch and batch == self.batch:
            raise _Killed(f"epoch {self.epoch + 1}, batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        if self.batch is None and epoch == self.epoch:
            raise _Killed(f"after epoch {epoch + 1}")


def _checkpoint_arrays(prefix: str) -> dict[str, np.ndarray]:
    """Every tensor of a TF checkpoint (model weights and optimizer slots) by name."""
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def _assert_same_training(reference_dir: Path, resumed_dir: Path) -> None:
    """Bit-identical final weights, per-epoch checkpoints (incl. Adam slots) and history."""
    ref_model, _ = trainer.load_trained_model(str(reference_dir))
    res_model, _ = trainer.load_trained_model(str(resumed_dir))
    ref_weights, res_weights = ref_model.get_weights(), res_model.get_weights()
    assert len(ref_weights) == len(res_weights) > 0
    for a, b in zip(ref_weights, res_weights):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    ref_ckpts = sorted(p.name for p in (reference_dir / trainer.CHECKPOINTS_DIR).glob("epoch_*.index"))
    assert ref_ckpts == sorted(p.name for p in (resumed_dir / trainer.CHECKPOINTS_DIR).glob("epoch_*.index"))
    for name in ref_ckpts:
        prefix = name[: -len(".index")]
        a = _checkpoint_arrays(str(reference_dir / trainer.CHECKPOINTS_DIR / prefix))
        b = _checkpoint_arrays(str(resumed_dir / trainer.CHECKPOINTS_DIR / prefix))
        assert sorted(a) == sorted(b) and any("optimizer" in k for k in a)
        for key in a:
            assert np.array_equal(a[key], b[key]), (name, key)
    def stable(history: list[dict]) -> list[dict]:  # all but wall time and process id
        return [{k: v for k, v in r.items() if k not in ("seconds", "pid")} for r in history]

    assert stable(_history(str(reference_dir))) == stable(_history(str(resumed_dir)))


@pytest.fixture(scope="module")
def resume_reference(binary_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("resume_reference")
    metrics = trainer.train(binary_dir, str(out), TrainConfig(**RESUME))["metrics"]
    # The scenario is what the docstring of RESUME says it is.
    assert metrics["epochs_run"] == 2 and metrics["stopped_early"] and metrics["best_epoch"] == 1, metrics
    return {"dir": out / C.MODEL_LSTM, "metrics": metrics}


@pytest.mark.parametrize(
    "kill,start_epoch",
    [
        # Subsumed by mid-epoch-2 (which also resumes from the committed epoch 1); run with -m slow.
        pytest.param(_KillAt(0), 1, id="after-epoch-1", marks=pytest.mark.slow),
        pytest.param(_KillAt(1, batch=3), 1, id="mid-epoch-2"),
        pytest.param(_KillAt(0, batch=3), 0, id="mid-epoch-1"),
    ],
)
def test_resume_after_kill_is_bit_identical(binary_dir, tmp_path, resume_reference, kill, start_epoch):
    config = TrainConfig(**RESUME)
    model_dir = tmp_path / C.MODEL_LSTM
    with pytest.raises(_Killed):
        trainer.train(binary_dir, str(tmp_path), config, callbacks=[kill])
    assert not (model_dir / trainer.METRICS_FILE).exists()
    assert len(_history(str(model_dir))) == (1 if kill.batch is None else kill.epoch)

    metrics = trainer.train(binary_dir, str(tmp_path), config)["metrics"]
    assert metrics["start_epoch"] == start_epoch and metrics["resumed"] == (start_epoch > 0)
    assert metrics["epochs_this_run"] == 2 - start_epoch
    _assert_same_training(resume_reference["dir"], model_dir)
    for key in ("best_epoch", "stopped_early", "epochs_run", "accuracy", "loss", "auc"):
        assert metrics[key] == resume_reference["metrics"][key], key
    assert not (model_dir / trainer.BACKUP_DIR).exists()


def test_recurrent_dropout_resumes_bit_identically(binary_dir, tmp_path):
    # The masks come from the cells' seeded generators, whose state the backup saves: a resumed run
    # draws epoch 2's masks, not epoch 1's again.
    config = TrainConfig(**dict(RESUME, model=dataclasses.replace(RESUME["model"], recurrent_dropout=0.3)))
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    trainer.train(binary_dir, str(reference), config)
    with pytest.raises(_Killed):
        trainer.train(binary_dir, str(resumed), config, callbacks=[_KillAt(1, batch=3)])
    metrics = trainer.train(binary_dir, str(resumed), config)["metrics"]
    assert metrics["resumed"] and metrics["start_epoch"] == 1
    _assert_same_training(reference / C.MODEL_LSTM, resumed / C.MODEL_LSTM)


def test_resume_drops_epochs_that_were_not_committed(binary_dir, tmp_path, resume_reference):
    """Killed between writing epoch 2's history line (torn) and committing its state: epoch 2 runs again."""
    config = TrainConfig(**RESUME)
    model_dir = tmp_path / C.MODEL_LSTM
    with pytest.raises(_Killed):
        trainer.train(binary_dir, str(tmp_path), config, callbacks=[_KillAt(0)])
    history_path = model_dir / trainer.HISTORY_FILE
    first = history_path.read_text()
    history_path.write_text(first + json.dumps({"epoch": 2, "loss": 0.1, "val_accuracy": 0.99}) + '\n{"epoch": 3, "lo')
    metrics = trainer.train(binary_dir, str(tmp_path), config)["metrics"]
    assert metrics["start_epoch"] == 1
    _assert_same_training(resume_reference["dir"], model_dir)


def test_resume_continues_after_an_early_stop_was_committed(binary_dir, tmp_path, resume_reference):
    """Killed after the stop was decided and committed: the rerun trains no epoch and keeps the result."""
    config = TrainConfig(**RESUME)
    with pytest.raises(_Killed):
        trainer.train(binary_dir, str(tmp_path), config, callbacks=[_KillAt(1)])
    metrics = trainer.train(binary_dir, str(tmp_path), config)["metrics"]
    assert metrics["epochs_this_run"] == 0 and metrics["train_seconds"] == 0 and metrics["stopped_early"]
    _assert_same_training(resume_reference["dir"], tmp_path / C.MODEL_LSTM)


def test_backup_of_another_config_is_not_resumed(binary_dir, tmp_path):
    small = dict(SMALL, kinds=(C.MODEL_LSTM,), epochs=2, model=ModelSettings(units=8, embedding_dim=8, dense_units=8))
    with pytest.raises(_Killed):
        trainer.train(binary_dir, str(tmp_path), TrainConfig(**small), callbacks=[_KillAt(0)])
    assert (tmp_path / C.MODEL_LSTM / trainer.BACKUP_DIR / trainer.RUN_FILE).exists()
    metrics = trainer.train(binary_dir, str(tmp_path), TrainConfig(**{**small, "batch_size": 24}))["metrics"]
    assert metrics["start_epoch"] == 0 and not metrics["resumed"] and metrics["epochs_this_run"] == 2
    assert [h["epoch"] for h in _history(str(tmp_path / C.MODEL_LSTM))] == [1, 2]


def test_legacy_random_layers_are_refused():
    """A layer whose random state lives inside a TF1 kernel could not be resumed exactly: refused."""
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dropout(0.5, seed=1, name="legacy")(inputs))
    with pytest.raises(ValueError, match="legacy"):
        callbacks.random_generators(model)
    idle = keras.Model(inputs, keras.layers.Dropout(0.0, seed=1)(inputs))
    assert callbacks.random_generators(idle) == {}
    stateful = keras.Model(inputs, keras.layers.Dropout(0.5, seed=1, rng_type="stateful")(inputs))
    assert next(iter(callbacks.random_generators(stateful).values())).state.shape[0] > 0


# --- Input pipeline -------------------------------------------------------------


def test_batches_are_padded_per_batch(binary_dir):
    pattern = data.train_pattern(binary_dir)
    for boundaries in ((8, 16, 24), None):
        ds = data.make_dataset(pattern, batch_size=16, shuffle=True, seed=3, bucket_boundaries=boundaries)
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
    ds = data.make_dataset(pattern, batch_size=16, shuffle=False, bucket_boundaries=(8, 16, 24))
    for ids, _ in ds:
        buckets = np.digitize(np.maximum(_lengths(ids.numpy()), 1), [8, 16, 24])
        assert len(set(buckets)) == 1


def test_training_input_runs_without_tf_data_autotuning(binary_dir):
    # Its optimisation thread held the end of fit ~25 s idle (benchmarks/RESULTS.md, "Training speed").
    pattern = data.train_pattern(binary_dir)
    for kwargs in ({"shuffle": True, "seed": 1, "epochs": range(2)}, {"shuffle": False}):
        ds = data.make_dataset(pattern, batch_size=16, **kwargs)
        assert ds.options().autotune.enabled is False
        assert sum(1 for _ in ds) > 0


def test_truncation_and_empty_documents(binary_dir):
    stats = json.loads(Path(binary_dir, C.STATS_FILE).read_text())
    assert stats["splits"]["train"]["empty_documents"] + stats["splits"]["eval"]["empty_documents"] == 8
    lengths = []
    for split in (data.train_pattern(binary_dir), data.eval_pattern(binary_dir)):
        for ids, _ in data.make_dataset(split, batch_size=64, max_length=5):
            assert 1 <= ids.shape[1] <= 5
            lengths.extend(_lengths(ids.numpy()))
    assert lengths.count(0) == 8
    assert len(lengths) == stats["documents_out"]
    full = data.sequence_lengths(data.train_pattern(binary_dir))
    assert full.min() == 1 and full.max() > 5
    assert (data.sequence_lengths(data.train_pattern(binary_dir), 5) == np.minimum(full, 5)).all()


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


@pytest.mark.parametrize("boundaries", [(8, 16, 24), None])
def test_prefix_training_cuts_a_share_of_documents_to_prefixes_and_keeps_the_batches(binary_dir, boundaries):
    pattern = data.train_pattern(binary_dir)
    common = dict(batch_size=16, shuffle=True, seed=3, bucket_boundaries=boundaries, epochs=[0, 1])
    whole = [(ids.numpy(), y.numpy()) for ids, y in data.make_dataset(pattern, **common)]
    cut = [(ids.numpy(), y.numpy()) for ids, y in data.make_dataset(pattern, prefix_fraction=0.5, **common)]
    again = [(ids.numpy(), y.numpy()) for ids, y in data.make_dataset(pattern, prefix_fraction=0.5, **common)]
    # Same batches (count, labels, widths), each row a prefix of the whole row, at least one token.
    assert len(cut) == len(whole) == len(again)
    rows = shortened = 0
    for (a, ya), (b, yb), (c, _) in zip(whole, cut, again):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(b, c)  # deterministic (stateless draws): resume stays exact
        assert a.shape == b.shape
        for full, prefix in zip(a, b):
            n, m = int((full != 0).sum()), int((prefix != 0).sum())
            assert (prefix[:m] == full[:m]).all() and (prefix[m:] == 0).all()
            assert (m >= 1) == (n >= 1) and m <= n
            rows += 1
            shortened += m < n
    # About half the documents are cut (a cut to the whole length counts as not shortened).
    assert 0.25 * rows < shortened < 0.6 * rows, (shortened, rows)
    # Each epoch draws other cuts; epoch 1 alone equals epoch 1 after epoch 0 (what resume relies on).
    alone = [ids.numpy() for ids, _ in data.make_dataset(pattern, prefix_fraction=0.5,
                                                         **dict(common, epochs=[1]))]
    np.testing.assert_array_equal(np.concatenate([x.ravel() for x in alone]),
                                  np.concatenate([b.ravel() for b, _ in cut[-len(alone):]]))
    off = [ids.numpy() for ids, _ in data.make_dataset(pattern, prefix_fraction=0.0, **common)]
    assert all((x == a).all() for x, (a, _) in zip(off, whole))


def test_prefix_training_reaches_the_streaming_model_only():
    config = TrainConfig(prefix_training=0.5)
    assert trainer.prefix_fraction(config, "lstm") == 0.5 and trainer.prefix_fraction(config, "bilstm") == 0.0
    assert TrainConfig().prefix_training == 0.0
    with pytest.raises(InputError):
        TrainConfig(prefix_training=1.5)


def test_full_shuffle_mixes_label_sorted_input(tmp_path):
    path = str(tmp_path / "sorted-00000-of-00001.tfrecord.gz")
    _write_sorted_examples(path, 150)
    epoch1 = _epoch_labels(data.make_dataset(path, batch_size=20, shuffle=True, seed=11, epochs=[0]))
    epoch2 = _epoch_labels(data.make_dataset(path, batch_size=20, shuffle=True, seed=11, epochs=[1]))
    for batches in (epoch1, epoch2):
        labels = np.concatenate(batches)
        assert len(labels) == 300 and labels.sum() == 150  # every document exactly once
        mixed = [b for b in batches if 0 < b.mean() < 1]
        assert len(mixed) >= len(batches) - 1
        assert 0 < batches[0].mean() < 1 and 0 < batches[-1].mean() < 1
    # Reshuffled every epoch, and reproducible from the seed.
    assert not np.array_equal(np.concatenate(epoch1), np.concatenate(epoch2))
    again = data.make_dataset(path, batch_size=20, shuffle=True, seed=11)
    np.testing.assert_array_equal(np.concatenate(_epoch_labels(again)), np.concatenate(epoch1))
    # Contrast: a small buffer leaves the first batches single-label.
    small = data.make_dataset(path, batch_size=20, shuffle=True, seed=11, shuffle_buffer_size=10)
    assert _epoch_labels(small)[0].max() == 0


def _epoch_ids(ds) -> list[np.ndarray]:
    return [ids.numpy() for ids, _ in ds]


def test_epoch_order_is_a_function_of_seed_and_epoch(binary_dir):
    """Epoch e's batches are the same whether the dataset starts at epoch 0 or at e (what resume relies on)."""
    pattern = data.train_pattern(binary_dir)
    lengths = data.sequence_lengths(pattern)
    kwargs = dict(batch_size=16, shuffle=True, seed=5, bucket_boundaries=(8, 16, 24))
    steps = data.batches_per_epoch(lengths, 16, (8, 16, 24))
    whole = _epoch_ids(data.make_dataset(pattern, epochs=range(3), **kwargs))
    assert len(whole) == 3 * steps
    epochs = [whole[i * steps:(i + 1) * steps] for i in range(3)]
    for e in range(3):
        alone = _epoch_ids(data.make_dataset(pattern, epochs=[e], **kwargs))
        assert len(alone) == steps
        assert all(np.array_equal(a, b) for a, b in zip(alone, epochs[e]))
        # Each epoch holds every document once.
        assert sum(b.shape[0] for b in alone) == len(lengths)
    tail = _epoch_ids(data.make_dataset(pattern, epochs=range(1, 3), **kwargs))
    assert len(tail) == 2 * steps and all(np.array_equal(a, b) for a, b in zip(tail, whole[steps:]))
    # Different epochs and different seeds give different orders.
    assert not all(np.array_equal(a, b) for a, b in zip(epochs[0], epochs[1]) if a.shape == b.shape)
    other = _epoch_ids(data.make_dataset(pattern, epochs=[0], **{**kwargs, "seed": 6}))
    assert not all(np.array_equal(a, b) for a, b in zip(other, epochs[0]) if a.shape == b.shape)


@pytest.mark.parametrize("boundaries", [(8, 16, 24), (3,), None])
def test_batches_per_epoch_counts_the_batches(binary_dir, boundaries):
    pattern = data.train_pattern(binary_dir)
    for max_length, batch_size in ((None, 16), (5, 7)):
        lengths = data.sequence_lengths(pattern, max_length)
        ds = data.make_dataset(pattern, batch_size=batch_size, max_length=max_length, shuffle=True, seed=1,
                                  bucket_boundaries=boundaries)
        assert data.batches_per_epoch(lengths, batch_size, boundaries) == sum(1 for _ in ds)


def test_quantile_boundaries():
    lengths = np.array([1] * 10 + [5] * 10 + [20] * 10 + [100] * 10)
    b = data.quantile_boundaries(lengths, 4)
    assert list(b) == sorted(set(b)) and all(1 < x <= 100 for x in b)
    counts = np.bincount(np.digitize(lengths, b))
    assert [c for c in counts if c] == [10, 10, 10, 10]
    # The long tail is split geometrically up to the longest length.
    assert b[-1] * data.TAIL_BUCKET_GROWTH >= 100 and len(b) > 3
    tail = data.quantile_boundaries(np.array([10] * 95 + [1000] * 5), 2)
    assert tail[0] == 11 and all(y == int(x * 1.5) for x, y in zip(tail, tail[1:])) and tail[-1] < 1000
    assert data.quantile_boundaries(lengths, 1) == ()
    assert data.quantile_boundaries(np.array([3, 3, 3]), 8) == ()


def test_train_config_validation_and_round_trip():
    config = TrainConfig(kinds=("lstm",), bucket_boundaries=[10, 20], max_length=300)
    assert config.bucket_boundaries == (10, 20)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert TrainConfig(kinds="bilstm").kinds == ("bilstm",)
    for bad in (dict(kinds=("cnn",)), dict(epochs=0), dict(bucket_boundaries=(20, 10)), dict(monitor="loss"),
                dict(max_length=0), dict(learning_rate=0), dict(model={"units": 8})):
        with pytest.raises(ValueError):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="cell"):
        ModelSettings(cell="tcn")
    assert TrainConfig().learning_rate_for("bilstm") == 5e-4 and TrainConfig().learning_rate_for("lstm") == 5e-4
    assert TrainConfig(learning_rate=0.01).learning_rate_for("lstm") == 0.01
    # stacked_tutorial only reaches the bilstm model config.
    stacked = TrainConfig(model=ModelSettings(stacked_tutorial=True))
    assert stacked.model_config("bilstm", vocab_size=10, num_classes=2).stacked_tutorial
    assert not stacked.model_config("lstm", vocab_size=10, num_classes=2).stacked_tutorial


def test_train_config_nests_the_model_settings_and_reads_flat_files():
    settings = ModelSettings(units=8, cell="gru", seed=5, dropout=0.25)
    config = TrainConfig(kinds=("lstm",), model=settings, epochs=3)
    assert config.seed == 5 and config.effective_shuffle_seed == 5
    made = config.model_config("lstm", vocab_size=50, num_classes=3)
    assert isinstance(made, ModelConfig) and made.settings() == settings
    assert (made.kind, made.vocab_size, made.num_classes) == ("lstm", 50, 3)
    # A ModelConfig given as the settings keeps only its settings (kind and sizes come from the data).
    assert TrainConfig(model=made).model == settings and type(TrainConfig(model=made).model) is ModelSettings
    # train_config.json stays flat (files and resume backups written before nesting still read and match).
    flat = config.to_dict()
    assert "model" not in flat and flat["units"] == 8 and flat["cell"] == "gru" and flat["seed"] == 5
    assert TrainConfig.from_dict(flat) == config
    assert TrainConfig.from_dict({**flat, "seed": 7}).model == dataclasses.replace(settings, seed=7)
    nested = {k: v for k, v in flat.items() if k not in {f.name for f in dataclasses.fields(ModelSettings)}}
    assert TrainConfig.from_dict({**nested, "model": dataclasses.asdict(settings)}) == config
    # Defaults are written once: the model card's ModelConfig takes TrainConfig's model defaults.
    default = TrainConfig().model_config("bilstm", vocab_size=10, num_classes=2)
    assert ModelSettings() == TrainConfig().model
    # ... except the auto Dropout, which a model built without a corpus to choose from leaves out.
    assert default.settings() == dataclasses.replace(ModelSettings(), dropout=0.0)


def test_cli_flags_are_generated_from_the_config():
    """Every flag's default is the config's; the old flag names parse into the nested config."""
    from pipelines import train as driver

    parser = driver.build_parser()
    known = parser.parse_args(["--transformed", "t", "--output", "o"])
    assert driver.config_from_args(known) == TrainConfig()
    args = ["--transformed", "t", "--output", "o", "--kind", "lstm", "--epochs", "3", "--batch-size", "8",
            "--learning-rate", "0.01", "--max-length", "50", "--units", "8", "--embedding-dim", "4",
            "--dense-units", "6", "--layers", "2", "--cell", "gru", "--dropout", "0.25", "--seed", "3",
            "--stacked", "--patience", "4", "--monitor", "val_loss", "--num-buckets", "3",
            "--bucket-boundaries", "5,9", "--pretrained-embeddings", "v.txt", "--freeze-embeddings",
            "--no-rescale-pretrained"]
    config = driver.config_from_args(parser.parse_args(args))
    assert config == TrainConfig(
        kinds=("lstm",), epochs=3, batch_size=8, learning_rate=0.01, max_length=50, early_stopping_patience=4,
        monitor="val_loss", num_buckets=3, bucket_boundaries=(5, 9), pretrained_embeddings="v.txt",
        freeze_embeddings=True, rescale_pretrained=False,
        model=ModelSettings(units=8, embedding_dim=4, dense_units=6, layers=2, cell="gru", dropout=0.25, seed=3,
                            stacked_tutorial=True))
    underscored = driver.config_from_args(driver.parse_flags(parser, ["--transformed", "t", "--output", "o",
                                                                            "--embedding_dim", "4"]))
    assert underscored.model.embedding_dim == 4
    helptext = " ".join(parser.format_help().split())
    assert "bilstm 0.0005, lstm 0.0005" in helptext and "(default val_accuracy)" in helptext


def test_config_and_help_import_no_tensorflow():
    code = ("import sys; from pipelines import train; train.build_parser().format_help(); "
            "print('tensorflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr[-2000:]


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
        checks.validate_transformed_dir(str(tmp_path / "nope"))
    unlabelled = _incomplete_copy(binary_dir, tmp_path / "unlabelled", [])
    stats_path = Path(unlabelled, C.STATS_FILE)
    stats = json.loads(stats_path.read_text())
    stats_path.write_text(json.dumps({**stats, "num_classes": 0}))
    with pytest.raises(TrainerInputError, match="num_classes"):
        checks.validate_transformed_dir(unlabelled)
    stats_path.write_text("{not json")
    with pytest.raises(TrainerInputError, match="readable stats.json"):
        checks.validate_transformed_dir(unlabelled)


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
    proc = _run_cli(["--transformed", broken, "--output", str(tmp_path / "out"), "--kind", "lstm"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "stats.json" in errors[0] and "transform_fn" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


# Run by the tests below in a child process: train through the library and die for
# real (os._exit, nothing flushed or cleaned up, as with `kill -9`) after batch
# KILL_BATCH of epoch KILL_EPOCH (0-based).  The config is either a TrainConfig as
# JSON ("json TRANSFORMED OUTPUT CONFIG") or the driver's own flags ("cli FLAGS...").
_DIE_SCRIPT = """
import json, os, sys
import tf_keras as keras
from beam_rnn.train import trainer
from beam_rnn.train.config import TrainConfig
from pipelines import train as driver

kill_epoch, kill_batch, marker, mode, args = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5:]
if mode == "json":
    transformed, output, config = args[0], args[1], TrainConfig.from_dict(json.loads(args[2]))
else:
    known = driver.build_parser().parse_args(args)
    transformed, output, config = known.transformed, known.output, driver.config_from_args(known)


class Die(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == kill_epoch and batch == kill_batch:
            open(marker, "w").close()
            os._exit(9)


trainer.train(transformed, output, config, callbacks=[Die()])
sys.exit(1)  # never reached: the process died in epoch kill_epoch + 1
"""


def _die(tmp_path: Path, kill_epoch: int, kill_batch: int, mode: str, args: list[str]) -> None:
    script, marker = tmp_path / "die.py", tmp_path / "died"
    script.write_text(_DIE_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(kill_epoch), str(kill_batch), str(marker), mode, *args],
                          check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 9 and marker.exists(), proc.stderr[-3000:]


def test_resume_after_the_process_really_died(binary_dir, tmp_path, resume_reference):
    """A real death (os._exit) in the middle of epoch 2, then the same training again: bit-identical."""
    config = TrainConfig(**RESUME)
    _die(tmp_path, 1, 2, "json", [binary_dir, str(tmp_path), json.dumps(config.to_dict())])
    model_dir = tmp_path / C.MODEL_LSTM
    assert [h["epoch"] for h in _history(str(model_dir))] == [1]
    assert not (model_dir / trainer.METRICS_FILE).exists()
    metrics = trainer.train(binary_dir, str(tmp_path), config)["metrics"]
    assert metrics["start_epoch"] == 1 and metrics["resumed"]
    _assert_same_training(resume_reference["dir"], model_dir)


@pytest.mark.slow  # three trainings, two of them in fresh processes (~40 s on 2 busy cores)
def test_cli_resumes_after_real_kill_bit_identical(binary_dir, tmp_path):
    """The process dies in the middle of epoch 2; rerunning the CLI command ends with the uninterrupted weights."""
    from pipelines import train as driver

    out = tmp_path / "out"
    args = ["--transformed", binary_dir, "--output", str(out), "--model", C.MODEL_BILSTM, "--epochs", "2",
            "--units", "8", "--embedding-dim", "8", "--dense-units", "8", "--batch-size", "32",
            "--learning-rate", "0.01", "--dropout", "0.3", "--patience", "5", "--skip-export"]
    model_dir = out / C.MODEL_BILSTM
    _die(tmp_path, 1, 2, "cli", args)
    assert [h["epoch"] for h in _history(str(model_dir))] == [1]
    assert not (model_dir / trainer.METRICS_FILE).exists()

    resumed = _run_cli(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((model_dir / trainer.METRICS_FILE).read_text())
    assert metrics["start_epoch"] == 1 and metrics["resumed"], metrics
    assert metrics["epochs_this_run"] == 1 and metrics["epochs_run"] == 2
    history = _history(str(model_dir))
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0]["pid"] != history[1]["pid"]
    assert not (model_dir / trainer.BACKUP_DIR).exists()
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary[C.MODEL_BILSTM]["epochs_run"] == 2

    # The same command, never interrupted (in this process).
    reference_args = [a if a != str(out) else str(tmp_path / "reference") for a in args]
    known = driver.build_parser().parse_args(reference_args)
    trainer.train(binary_dir, known.output, driver.config_from_args(known), kind=C.MODEL_BILSTM)
    _assert_same_training(tmp_path / "reference" / C.MODEL_BILSTM, model_dir)


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_cli_truncated_transform_graph_exits_2_before_training(binary_dir, tmp_path):
    broken = Path(_incomplete_copy(binary_dir, tmp_path / "broken", []))
    _truncate(broken / C.TRANSFORM_FN_DIR / "saved_model.pb")
    proc = _run_cli(["--transformed", str(broken), "--output", str(tmp_path / "out"), "--kind", "lstm"],
                    timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"{C.TRANSFORM_FN_DIR}/saved_model.pb" in errors[0], proc.stderr[-3000:]
    assert "damaged" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # no model dir, no epoch


def test_cli_without_manifest_exits_2(binary_dir, tmp_path):
    unfinished = Path(_incomplete_copy(binary_dir, tmp_path / "unfinished", ["manifest.json"]))
    proc = _run_cli(["--transformed", str(unfinished), "--output", str(tmp_path / "out")], timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "manifest.json" in errors[0] and str(unfinished) in errors[0]
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def _driver_error(args: list[str], capsys) -> str:
    """Run `beam-rnn train` in this process; it must stop with exit 2 and one error line, which is returned."""
    from beam_rnn.cli import run_command

    assert run_command("train", args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1, errors
    return errors[0]


@pytest.mark.parametrize(
    "damage,named",
    [
        # Intact per the manifest but does not load: the graph is checked, not only the bytes.
        ("rewrite_graph", f"{C.TRANSFORM_FN_DIR}/saved_model.pb"),
        ("truncate_shard", f"{C.TRANSFORMED_DIR}/train-"),
        ("alter_stats", C.STATS_FILE),
        ("stale_shard", f"{C.TRANSFORMED_DIR}/train-99999"),
        ("drop_metadata", f"{C.TRANSFORMED_METADATA_DIR}/schema.pbtxt"),
    ],
)
def test_damaged_preprocess_output_is_refused_before_training(binary_dir, tmp_path, capsys, damage, named):
    from beam_rnn.core.manifest import write_manifest

    broken = Path(_incomplete_copy(binary_dir, tmp_path / "broken", []))
    if damage == "rewrite_graph":
        (broken / C.TRANSFORM_FN_DIR / "saved_model.pb").write_bytes(b"not a SavedModel")
        write_manifest(str(broken), exclude=(C.TMP_DIR + "/",))
    elif damage == "truncate_shard":
        _truncate(next((broken / C.TRANSFORMED_DIR).glob("train-*")))
    elif damage == "alter_stats":
        stats = json.loads((broken / C.STATS_FILE).read_text())
        (broken / C.STATS_FILE).write_text(json.dumps({**stats, "num_classes": 2, "note": "edited"}))
    elif damage == "stale_shard":
        shutil.copy(next((broken / C.TRANSFORMED_DIR).glob("train-*")),
                    broken / C.TRANSFORMED_DIR / "train-99999-of-99999.tfrecord.gz")
    else:
        (broken / C.TRANSFORMED_METADATA_DIR / "schema.pbtxt").unlink()
    error = _driver_error(["--transformed", str(broken), "--output", str(tmp_path / "out")], capsys)
    assert named in error and str(broken) in error
    assert not (tmp_path / "out").exists()


def _vectors_file(path: Path, words: list[str], dim: int = 8) -> Path:
    rng = np.random.default_rng(0)
    path.write_text(f"{len(words)} {dim}\n" + "".join(
        f"{w} {' '.join(f'{x:.6f}' for x in rng.normal(size=dim))}\n" for w in words))
    return path


@pytest.mark.parametrize("damage", ["cut_mid_vector", "cut_on_line_boundary", "not_text", "directory"])
def test_damaged_pretrained_vectors_are_refused_before_training(binary_dir, tmp_path, capsys, damage):
    path = _vectors_file(tmp_path / "vectors.txt", [f"word{i}" for i in range(20)])
    lines = path.read_text().splitlines(keepends=True)
    if damage == "cut_mid_vector":
        path.write_text("".join(lines[:11]) + lines[11][: len(lines[11]) // 2])
    elif damage == "cut_on_line_boundary":
        path.write_text("".join(lines[:11]))
    elif damage == "not_text":
        path.write_bytes(b"20 8\n" + bytes(range(256)) * 4)
    else:
        path = tmp_path
    error = _driver_error(["--transformed", binary_dir, "--output", str(tmp_path / "out"), "--embedding-dim", "8",
                           "--pretrained-embeddings", str(path)], capsys)
    assert "--pretrained-embeddings" in error and str(path) in error
    assert not (tmp_path / "out").exists()


def test_warm_start_from_pretrained_vectors_frozen(binary_dir, tmp_path):
    """--pretrained-embeddings sets the rows of covered words; frozen, they survive training."""
    from beam_rnn.preprocess.transform import read_vocabulary
    from pipelines import train as driver

    vocab = read_vocabulary(binary_dir)
    rng = np.random.default_rng(3)
    covered = vocab[:5]
    vectors = {w: rng.normal(size=8).astype(np.float32) for w in covered + ["notinvocab"]}
    path = tmp_path / "vectors.txt"
    path.write_text(f"{len(vectors)} 8\n" + "".join(
        f"{w} {' '.join(repr(float(x)) for x in v)}\n" for w, v in vectors.items()))
    results = driver.run(["--transformed", binary_dir, "--output", str(tmp_path / "out"), "--kind", "lstm",
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
    from beam_rnn.preprocess.transform import read_vocabulary
    from pipelines import train as driver

    vocab = read_vocabulary(binary_dir)
    rng = np.random.default_rng(4)
    covered = vocab[:6]
    vectors = {w: rng.normal(scale=0.4, size=8).astype(np.float32) for w in covered}  # word2vec-sized
    path = tmp_path / "vectors.txt"
    path.write_text(f"{len(vectors)} 8\n" + "".join(
        f"{w} {' '.join(repr(float(x)) for x in v)}\n" for w, v in vectors.items()))
    results = driver.run(["--transformed", binary_dir, "--output", str(tmp_path / "out"), "--kind", "lstm",
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


def test_the_parse_spec_matches_the_transform_output(binary_dir):
    """The trainer's hand-kept spec reads exactly the features (and dtypes) the TFT output declares."""
    import tensorflow_transform as tft

    from beam_rnn.train.data import FEATURE_SPEC

    declared = tft.TFTransformOutput(binary_dir).transformed_feature_spec()
    for key, feature in FEATURE_SPEC.items():
        assert key in declared and declared[key].dtype == feature.dtype, (key, declared)
    assert isinstance(declared[C.TOKEN_IDS_KEY], tf.io.VarLenFeature)  # a ragged list in the examples
    assert list(declared[C.TRANSFORMED_LABEL_KEY].shape) == list(FEATURE_SPEC[C.TRANSFORMED_LABEL_KEY].shape) == []


def test_run_training_checks_the_inputs_once_for_every_kind(binary_dir, tmp_path, monkeypatch):
    """Both kinds get the one check's result (stats and vectors); `train` itself then checks nothing again."""
    checked, trained = [], []
    real = trainer.check_training_inputs

    def counting(*args, **kwargs):
        checked.append(real(*args, **kwargs))
        return checked[-1]

    def fake_train(transformed_dir, output_dir, config, *, kind, position, inputs, keep_backup=False):
        trained.append((kind, inputs))
        os.makedirs(os.path.join(output_dir, kind), exist_ok=True)
        return {"metrics": {"kind": kind}, "model_dir": os.path.join(output_dir, kind)}

    monkeypatch.setattr(trainer, "check_training_inputs", counting)
    monkeypatch.setattr(trainer, "train", fake_train)
    results = trainer.run_training(binary_dir, str(tmp_path / "out"), TrainConfig(**SMALL), export=False)
    assert sorted(results) == ["bilstm", "lstm"] and len(checked) == 1
    assert [kind for kind, _ in trained] == ["bilstm", "lstm"] and all(i is checked[0] for _, i in trained)
    assert checked[0].stats["num_classes"] == 2 and checked[0].vectors is None
