"""Train the bidirectional and streaming classifiers on TFT-transformed TFRecords.

Input is a preprocessing output directory (`pipelines.preprocess`)::

    DIR/transform_fn/                          the TFT graph (used by the export, checked here)
    DIR/transformed/train-*.tfrecord.gz        tf.Example: token_ids int64 list, label int64, id bytes
    DIR/transformed/eval-*.tfrecord.gz
    DIR/stats.json                             vocab_size_with_reserved, num_classes, splits, ...

Output, per model kind, under ``OUTPUT/<kind>/``::

    model_config.json     the ModelConfig (models.ModelConfig.to_dict)
    train_config.json     the TrainConfig
    history.jsonl         one JSON line per completed epoch (appended across resumes)
    metrics.json          final eval metrics of the kept (best) weights, timings
    weights/model.*       final weights (TF checkpoint format, model variables only)
    checkpoints/epoch_NNN.*  weights after every epoch
    backup/               BackupAndRestore state; present only while training is unfinished
    logs/                 TensorBoard (train/ and validation/)

Fault tolerance: `keras.callbacks.BackupAndRestore` backs up model, optimizer and
epoch after every epoch, so rerunning the same command after the process was
killed resumes at the next epoch and finishes.  The kept weights are those of the
best epoch by the early-stopping monitor over *all* epochs, including the ones run
before a restart (read from history.jsonl, loaded from checkpoints/).

Determinism: `keras.utils.set_random_seed` and `tf.config.experimental.
enable_op_determinism()` (process-wide) are set, the models seed their own
initialisers, and the shuffle is seeded, so two runs with the same config are
bit-identical on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tensorflow.core.framework import summary_pb2

from beam_rnn import constants as C
from beam_rnn import models

# --- Output layout under OUTPUT/<kind>/ ---------------------------------------
WEIGHTS_DIR = "weights"
WEIGHTS_PREFIX = "model"  # weights/model.index, weights/model.data-*
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_TEMPLATE = "epoch_{epoch:03d}"
BACKUP_DIR = "backup"
LOGS_DIR = "logs"
HISTORY_FILE = "history.jsonl"
METRICS_FILE = "metrics.json"
MODEL_CONFIG_FILE = "model_config.json"
TRAIN_CONFIG_FILE = "train_config.json"

# Fault injection for resume tests: after epoch N (1-based) has been backed up,
# the process exits immediately with KILL_EXIT_CODE, as if it had been killed.
KILL_AFTER_EPOCH_ENV = "BEAM_RNN_KILL_AFTER_EPOCH"
KILL_EXIT_CODE = 75

TAIL_BUCKET_GROWTH = 1.5
# Measured on IMDB (20% eval split by hash of the derived id, seed 42, 2 CPU cores):
# BiLSTM 0.892 at 5e-4 (best epoch 2) vs 0.877 at 1e-3 (it overfits after epoch 1);
# the unidirectional LSTM 0.881 at 5e-4 (0.869-0.880 at 1e-3 depending on batch
# composition).  An earlier split (by the CSV's repeating id column) gave the BiLSTM
# 0.886 at 1e-3 and 0.880 at 5e-4: differences of ~0.01 are split/seed noise.
DEFAULT_LEARNING_RATES = {C.MODEL_BILSTM: 5e-4, C.MODEL_LSTM: 5e-4}
MONITORS = ("val_loss", "val_accuracy", "val_auc")
_PARSE_BATCH = 512

logger = logging.getLogger(__name__)


class TrainerInputError(ValueError):
    """The transformed input directory is missing, incomplete or unusable for training."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (defaults chosen for IMDB on 2 CPU cores).

    Attributes:
        kinds: Model kinds to train ("bilstm", "lstm"); `train` trains one of them.
        epochs: Maximum number of epochs (early stopping usually ends sooner).
        batch_size: Documents per batch (every length bucket uses this size).
        learning_rate: Adam learning rate (None: the per-kind default of
            DEFAULT_LEARNING_RATES, 5e-4 for both kinds).
        clipnorm: Adam gradient-norm clipping (None: no clipping).
        max_length: Keep the first `max_length` token ids of each document (None: all).
        bucket_boundaries: Fixed length-bucket boundaries (bucket i holds lengths
            < boundary i); None derives `num_buckets` buckets from quantiles of
            the training lengths.
        num_buckets: Number of quantile buckets when `bucket_boundaries` is None
            (1 = no bucketing; batches are still padded only to their own longest).
        shuffle_seed: Seed of the full shuffle (None: use `seed`).
        early_stopping_patience: Epochs without improvement of `monitor` before stopping.
        monitor: "val_loss", "val_accuracy" or "val_auc" (binary only); also picks
            the kept epoch.
        seed: Global seed and the models' initialiser seed.
        embedding_dim, units, layers, cell, dense_units, dropout, stacked_tutorial:
            The `models.ModelConfig` fields (stacked_tutorial applies to "bilstm" only).
        pretrained_embeddings: word2vec/GloVe text vectors that initialise the
            Embedding rows of the words they cover (see beam_rnn.embeddings).
        freeze_embeddings: Keep the warm-started Embedding fixed.
        rescale_pretrained: Scale the pretrained vectors to the size of Keras'
            initial embeddings (similarities unchanged).  On by default: raw CBOW
            vectors are ~12x larger (RMS) than Keras' initial rows and warm-starting
            with them lowered SST-2 dev accuracy (0.778 vs 0.791 cold, 3 seeds);
            rescaled they raised it (0.801).
        verbose: Keras `fit` verbosity (2 = one line per epoch).
    """

    kinds: tuple[str, ...] = (C.MODEL_BILSTM, C.MODEL_LSTM)
    epochs: int = 5
    batch_size: int = 64
    learning_rate: float | None = None
    clipnorm: float | None = 1.0
    max_length: int | None = None
    bucket_boundaries: tuple[int, ...] | None = None
    num_buckets: int = 10
    shuffle_seed: int | None = None
    # 2, not 1: one worse epoch of val_loss on IMDB is often noise before a better one.
    early_stopping_patience: int = 2
    monitor: str = "val_loss"
    seed: int = 42
    embedding_dim: int = 64
    units: int = 64
    layers: int = 1
    cell: str = "lstm"
    dense_units: int = 64
    dropout: float = 0.0
    stacked_tutorial: bool = False
    pretrained_embeddings: str | None = None
    freeze_embeddings: bool = False
    rescale_pretrained: bool = True
    verbose: int = 2

    def __post_init__(self) -> None:
        kinds = (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds)
        object.__setattr__(self, "kinds", kinds)
        if not kinds or any(k not in models.KINDS for k in kinds):
            raise ValueError(f"kinds must be a non-empty subset of {models.KINDS}, got {kinds!r}")
        for name in ("epochs", "batch_size", "num_buckets"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.early_stopping_patience < 0:
            raise ValueError(f"early_stopping_patience must be >= 0, got {self.early_stopping_patience}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.clipnorm is not None and not self.clipnorm > 0:
            raise ValueError(f"clipnorm must be > 0 or None, got {self.clipnorm}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be >= 1 or None, got {self.max_length}")
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {MONITORS}, got {self.monitor!r}")
        if self.bucket_boundaries is not None:
            b = tuple(int(x) for x in self.bucket_boundaries)
            if any(x < 1 for x in b) or list(b) != sorted(set(b)):
                raise ValueError(f"bucket_boundaries must be strictly increasing positive ints, got {b}")
            object.__setattr__(self, "bucket_boundaries", b)
        if self.cell not in models.CELLS:
            raise ValueError(f"cell must be one of {models.CELLS}, got {self.cell!r}")

    def learning_rate_for(self, kind: str) -> float:
        """The Adam learning rate used for `kind`."""
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATES[kind]

    @property
    def effective_shuffle_seed(self) -> int:
        return self.seed if self.shuffle_seed is None else self.shuffle_seed

    def model_config(self, kind: str, *, vocab_size: int, num_classes: int) -> models.ModelConfig:
        """The `models.ModelConfig` of `kind` for a dataset (stacked_tutorial: bilstm only)."""
        return models.ModelConfig(
            kind=kind,
            vocab_size=int(vocab_size),
            num_classes=int(num_classes),
            embedding_dim=self.embedding_dim,
            units=self.units,
            layers=self.layers,
            cell=self.cell,
            dense_units=self.dense_units,
            dropout=self.dropout,
            stacked_tutorial=self.stacked_tutorial and kind == models.KIND_BILSTM,
            seed=self.seed,
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["kinds"] = list(self.kinds)
        d["bucket_boundaries"] = list(self.bucket_boundaries) if self.bucket_boundaries is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        for key in ("kinds", "bucket_boundaries"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


# --- Input validation -----------------------------------------------------------


def train_pattern(transformed_dir: str) -> str:
    return os.path.join(transformed_dir, C.TRANSFORMED_DIR, f"{C.TRAIN_PREFIX}-*")


def eval_pattern(transformed_dir: str) -> str:
    return os.path.join(transformed_dir, C.TRANSFORMED_DIR, f"{C.EVAL_PREFIX}-*")


def validate_transformed_dir(transformed_dir: str) -> dict[str, Any]:
    """Check a preprocessing output is complete and trainable; return its stats.json.

    Raises:
        TrainerInputError: With one message naming everything that is missing or unusable.
    """
    if not transformed_dir or not tf.io.gfile.isdir(transformed_dir):
        raise TrainerInputError(
            f"transformed dir {transformed_dir!r} does not exist (run pipelines.preprocess first)"
        )
    missing = []
    if not tf.io.gfile.exists(os.path.join(transformed_dir, C.TRANSFORM_FN_DIR, "saved_model.pb")):
        missing.append(f"{C.TRANSFORM_FN_DIR}/ (the TFT transform graph)")
    for split, pattern in (("train", train_pattern(transformed_dir)), ("eval", eval_pattern(transformed_dir))):
        if not tf.io.gfile.glob(pattern):
            missing.append(f"{split} shards {os.path.relpath(pattern, transformed_dir)}")
    stats_path = os.path.join(transformed_dir, C.STATS_FILE)
    stats: dict[str, Any] | None = None
    if not tf.io.gfile.exists(stats_path):
        missing.append(C.STATS_FILE)
    else:
        try:
            with tf.io.gfile.GFile(stats_path) as f:
                stats = json.loads(f.read())
        except (ValueError, OSError) as e:
            missing.append(f"a readable {C.STATS_FILE} ({e})")
        else:
            absent = [k for k in ("vocab_size_with_reserved", "num_classes", "splits") if k not in stats]
            if absent:
                missing.append(f"{C.STATS_FILE} keys {absent}")
    if missing:
        raise TrainerInputError(
            f"transformed dir {transformed_dir!r} is incomplete (run pipelines.preprocess to completion); "
            f"missing: {'; '.join(missing)}"
        )
    assert stats is not None
    problems = []
    if int(stats["num_classes"]) < 2:
        problems.append(f"num_classes is {stats['num_classes']} (training needs labelled data with >= 2 classes)")
    if int(stats["vocab_size_with_reserved"]) < 3:
        problems.append(f"vocab_size_with_reserved is {stats['vocab_size_with_reserved']} (the vocabulary is empty)")
    for split in (C.TRAIN_PREFIX, C.EVAL_PREFIX):
        if int(stats["splits"].get(split, {}).get("documents", 0)) < 1:
            problems.append(f"the {split} split has no documents")
    if problems:
        raise TrainerInputError(f"transformed dir {transformed_dir!r} is not trainable: {'; '.join(problems)}")
    return stats


# --- Input pipeline -------------------------------------------------------------


def _parse_fn(num_classes: int, max_length: int | None):
    spec = {
        C.TOKEN_IDS_KEY: tf.io.RaggedFeature(tf.int64),
        C.TRANSFORMED_LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
    }

    def parse(serialized: tf.Tensor):
        parsed = tf.io.parse_example(serialized, spec)
        ids = parsed[C.TOKEN_IDS_KEY]
        if max_length is not None:
            ids = ids[:, :max_length]
        label = parsed[C.TRANSFORMED_LABEL_KEY]
        if num_classes == 2:
            label = tf.cast(tf.expand_dims(label, -1), tf.float32)  # [batch, 1] like the logits
        return ids, label

    return parse


def _at_least_one(ids: tf.Tensor, label: tf.Tensor):
    # A document with no tokens becomes one padding id: fully masked, the RNN
    # keeps its zero state; a batch of only such documents still has width 1.
    pad = tf.zeros(tf.maximum(0, 1 - tf.size(ids))[None], dtype=ids.dtype)
    return tf.concat([ids, pad], 0), label


def _parsed(files: Sequence[str], num_classes: int, max_length: int | None) -> tf.data.Dataset:
    ds = tf.data.TFRecordDataset(list(files), compression_type="GZIP")
    ds = ds.batch(_PARSE_BATCH).map(_parse_fn(num_classes, max_length)).unbatch()
    return ds.map(_at_least_one)


def _files(file_pattern: str) -> list[str]:
    files = sorted(tf.io.gfile.glob(file_pattern))
    if not files:
        raise TrainerInputError(f"no files match {file_pattern!r}")
    return files


def sequence_lengths(file_pattern: str, max_length: int | None = None) -> np.ndarray:
    """Token counts (after truncation, at least 1) of every document in the files."""
    ds = _parsed(_files(file_pattern), 2, max_length).map(lambda ids, _: tf.size(ids)).batch(4096)
    parts = [b.numpy() for b in ds]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros([0], np.int64)


def quantile_boundaries(lengths: np.ndarray, num_buckets: int) -> tuple[int, ...]:
    """Bucket boundaries splitting `lengths` into ~equal-count buckets.

    Bucket i of `bucket_by_sequence_length` holds lengths in [b[i-1], b[i]).
    """
    if num_buckets <= 1 or len(lengths) == 0:
        return ()
    qs = np.quantile(np.asarray(lengths), np.linspace(0.0, 1.0, num_buckets + 1)[1:-1])
    bounds = sorted({int(q) + 1 for q in qs})
    top = int(np.max(lengths))
    bounds = [b for b in bounds if 1 < b <= top]
    # Long tails (IMDB: p90 454, max 2459) would pad the last bucket's batches to
    # the longest document; split the tail geometrically (x1.5) instead.
    while bounds and int(bounds[-1] * TAIL_BUCKET_GROWTH) < top:
        bounds.append(int(bounds[-1] * TAIL_BUCKET_GROWTH))
    return tuple(bounds)


def make_dataset(
    file_pattern: str,
    *,
    batch_size: int,
    max_length: int | None = None,
    shuffle: bool = False,
    seed: int | None = None,
    bucket_boundaries: Sequence[int] | None = None,
    num_classes: int = 2,
    shuffle_buffer_size: int | None = None,
) -> tf.data.Dataset:
    """`(token_ids, label)` batches from gzipped TFRecords of transformed tf.Examples.

    Args:
        file_pattern: Glob of `*.tfrecord.gz` shards (read in sorted order).
        batch_size: Documents per batch.
        max_length: Keep the first `max_length` token ids of each document (None: all).
        shuffle: Shuffle every epoch over the WHOLE split (the input may be sorted,
            e.g. by label): the parsed data is cached and shuffled with a buffer
            covering every document, reshuffled each iteration.
        seed: Shuffle seed (deterministic order for a given seed and iteration).
        bucket_boundaries: Length boundaries for `bucket_by_sequence_length`
            (None/empty: one bucket). Either way each batch is padded to its own
            longest document only.
        num_classes: 2 gives float32 labels `[batch, 1]` (matching the single
            logit); K > 2 gives int64 labels `[batch]`.
        shuffle_buffer_size: Override the buffer (default: the number of documents).

    Returns:
        A dataset of `(token_ids int64 [batch, time] right-padded with 0, label)`.
        Documents with no tokens appear as a single padding id.
    """
    ds = _parsed(_files(file_pattern), num_classes, max_length).cache()
    if shuffle:
        buffer = shuffle_buffer_size
        if buffer is None:
            buffer = int(ds.reduce(np.int64(0), lambda n, _: n + 1).numpy())
        ds = ds.shuffle(max(1, int(buffer)), seed=seed, reshuffle_each_iteration=True)
    label_shape = [1] if num_classes == 2 else []
    boundaries = [int(b) for b in (bucket_boundaries or ())]
    if boundaries:
        ds = ds.bucket_by_sequence_length(
            lambda ids, _: tf.shape(ids, out_type=tf.int32)[0],
            bucket_boundaries=boundaries,
            bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
            padded_shapes=([None], label_shape),
            pad_to_bucket_boundary=False,
            drop_remainder=False,
        )
    else:
        ds = ds.padded_batch(batch_size, padded_shapes=([None], label_shape))
    return ds.prefetch(tf.data.AUTOTUNE)


# --- Training -------------------------------------------------------------------


def _read_json(path: str) -> Any:
    with tf.io.gfile.GFile(path) as f:
        return json.loads(f.read())


def _write_json(path: str, value: Any) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


def write_metrics(model_dir: str, metrics: Mapping[str, Any]) -> str:
    """Write `model_dir/metrics.json`; returns its path."""
    path = os.path.join(model_dir, METRICS_FILE)
    _write_json(path, dict(metrics))
    return path


def _read_history(path: str) -> list[dict[str, Any]]:
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        return [json.loads(line) for line in f.read().splitlines() if line.strip()]


def weights_path(model_dir: str) -> str:
    """Prefix of the final weights (`model.save_weights` / `load_weights` path)."""
    return os.path.join(model_dir, WEIGHTS_DIR, WEIGHTS_PREFIX)


def checkpoint_path(model_dir: str, epoch: int) -> str:
    """Prefix of the weights saved after `epoch` (1-based)."""
    return os.path.join(model_dir, CHECKPOINTS_DIR, CHECKPOINT_TEMPLATE.format(epoch=epoch))


def load_trained_model(model_dir: str) -> tuple[keras.Model, models.ModelConfig]:
    """Rebuild a trained model from `model_config.json` and `weights/`."""
    model_config = models.ModelConfig.from_dict(_read_json(os.path.join(model_dir, MODEL_CONFIG_FILE)))
    model = models.build_classifier(model_config)
    model.load_weights(weights_path(model_dir)).expect_partial()
    return model, model_config


class _EpochLog(keras.callbacks.Callback):
    """Appends one JSON line per completed epoch; remembers where this run started."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.first_epoch: int | None = None
        self.last_epoch: int | None = None
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        if self.first_epoch is None:
            self.first_epoch = epoch
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        self.last_epoch = epoch
        record = {"epoch": epoch + 1, "seconds": round(time.time() - self._start, 3), "pid": os.getpid()}
        record.update({k: float(v) for k, v in (logs or {}).items()})
        with tf.io.gfile.GFile(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


class _ScalarLogs(keras.callbacks.Callback):
    """Per-epoch TensorBoard scalars under `log_dir/train` and `log_dir/validation`.

    Same layout and tags ("epoch_loss", "epoch_accuracy", ...) as
    `keras.callbacks.TensorBoard`, written with core `tf.summary.write`, so it works
    without the `tensorboard` package installed (TF 2.21 no longer depends on it);
    view with `tensorboard --logdir OUTPUT/<kind>/logs`.
    """

    def __init__(self, log_dir: str) -> None:
        super().__init__()
        self.log_dir = log_dir
        self._writers: dict[str, Any] = {}
        self._metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        )

    def _writer(self, name: str):
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(os.path.join(self.log_dir, name))
        return self._writers[name]

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            name, tag = ("validation", key[len("val_"):]) if key.startswith("val_") else ("train", key)
            with self._writer(name).as_default():
                tf.summary.write(f"epoch_{tag}", tf.constant(float(value), tf.float32), step=epoch,
                                 metadata=self._metadata)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


class _KillAfterEpoch(keras.callbacks.Callback):
    """Fault injection: exit abruptly once epoch `n` (1-based) is backed up."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.n:
            logger.warning("%s=%d: exiting abruptly after epoch %d", KILL_AFTER_EPOCH_ENV, self.n, epoch + 1)
            os._exit(KILL_EXIT_CODE)


def _compile(model: keras.Model, config: TrainConfig, kind: str, num_classes: int) -> None:
    kwargs = {"clipnorm": config.clipnorm} if config.clipnorm is not None else {}
    optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate_for(kind), **kwargs)
    if num_classes == 2:
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
        metrics = [
            keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0),  # logit 0 == probability 0.5
            keras.metrics.AUC(name="auc", from_logits=True),
        ]
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)


def _prepare_model_dir(model_dir: str, model_config: models.ModelConfig, config: TrainConfig) -> bool:
    """Decide between resuming and a fresh start; return True when resuming."""
    backup_dir = os.path.join(model_dir, BACKUP_DIR)
    resume = tf.io.gfile.isdir(backup_dir) and bool(tf.io.gfile.listdir(backup_dir))
    config_path = os.path.join(model_dir, MODEL_CONFIG_FILE)
    if resume:
        previous = _read_json(config_path) if tf.io.gfile.exists(config_path) else None
        if previous != model_config.to_dict():
            logger.warning("Backup in %s is for a different model config; starting fresh.", backup_dir)
            resume = False
    if not resume:
        for name in (BACKUP_DIR, CHECKPOINTS_DIR, LOGS_DIR, WEIGHTS_DIR):
            path = os.path.join(model_dir, name)
            if tf.io.gfile.exists(path):
                tf.io.gfile.rmtree(path)
        for name in (HISTORY_FILE, METRICS_FILE):
            path = os.path.join(model_dir, name)
            if tf.io.gfile.exists(path):
                tf.io.gfile.remove(path)
    for name in (CHECKPOINTS_DIR, WEIGHTS_DIR):
        tf.io.gfile.makedirs(os.path.join(model_dir, name))
    _write_json(config_path, model_config.to_dict())
    _write_json(os.path.join(model_dir, TRAIN_CONFIG_FILE), config.to_dict())
    return resume


def _best_epoch(history: list[dict[str, Any]], monitor: str) -> int | None:
    """1-based epoch with the best monitored value (earliest on ties)."""
    scored = [(h[monitor], h["epoch"]) for h in history if monitor in h]
    if not scored:
        return None
    if monitor.endswith("loss"):
        return min(scored, key=lambda s: (s[0], s[1]))[1]
    return min(scored, key=lambda s: (-s[0], s[1]))[1]


def train(
    transformed_dir: str,
    output_dir: str,
    config: TrainConfig,
    *,
    kind: str | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict[str, Any]:
    """Train one model kind on a preprocessing output, resuming an interrupted run.

    Args:
        transformed_dir: The preprocessing output (see the module docstring).
        output_dir: The model goes to `output_dir/<kind>/`.
        config: Training configuration.
        kind: Which model to train (default: `config.kinds[0]`).
        callbacks: Extra Keras callbacks (run after the built-in ones).

    Returns:
        A dict with:
            "kind": the model kind,
            "model": the trained tf_keras model (best epoch's weights),
            "model_config": its `models.ModelConfig`,
            "model_dir": `output_dir/<kind>`,
            "metrics": JSON-able metrics, also written to `metrics.json`: eval
                "accuracy", "auc" (None for K > 2), "loss"; "epochs_run" (total,
                across resumes), "epochs_this_run", "start_epoch" (0-based epoch this
                process started at; > 0 when resumed), "resumed", "best_epoch",
                "stopped_early", "train_seconds" (this process's fit, incl. per-epoch
                validation), "examples_per_second", "train_examples",
                "eval_examples", "num_classes", "vocab_size", "bucket_boundaries".

    Raises:
        TrainerInputError: If `transformed_dir` is missing or incomplete.
    """
    kind = kind or config.kinds[0]
    if kind not in models.KINDS:
        raise ValueError(f"Unknown model kind {kind!r}; expected one of {models.KINDS}")
    stats = validate_transformed_dir(transformed_dir)
    num_classes = int(stats["num_classes"])
    vocab_size = int(stats["vocab_size_with_reserved"])
    if config.monitor == "val_auc" and num_classes != 2:
        raise ValueError("monitor 'val_auc' needs a binary task")
    model_dir = os.path.join(output_dir, kind)
    model_config = config.model_config(kind, vocab_size=vocab_size, num_classes=num_classes)

    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()

    train_files, eval_files = train_pattern(transformed_dir), eval_pattern(transformed_dir)
    lengths = sequence_lengths(train_files, config.max_length)
    boundaries = (
        config.bucket_boundaries
        if config.bucket_boundaries is not None
        else quantile_boundaries(lengths, config.num_buckets)
    )
    train_ds = make_dataset(
        train_files,
        batch_size=config.batch_size,
        max_length=config.max_length,
        shuffle=True,
        seed=config.effective_shuffle_seed,
        bucket_boundaries=boundaries,
        num_classes=num_classes,
        shuffle_buffer_size=len(lengths),
    )
    eval_ds = make_dataset(
        eval_files,
        batch_size=config.batch_size,
        max_length=config.max_length,
        shuffle=False,
        bucket_boundaries=boundaries,
        num_classes=num_classes,
    )

    resumed = _prepare_model_dir(model_dir, model_config, config)
    model = models.build_classifier(model_config)
    warm_start = None
    if config.pretrained_embeddings:
        from beam_rnn.embeddings import warm_start_from_file

        # Before compile (freezing changes the trainable set); on resume, BackupAndRestore
        # later restores the trained weights over this initialisation.
        warm_start = warm_start_from_file(model, config.pretrained_embeddings, transformed_dir,
                                          freeze=config.freeze_embeddings, rescale=config.rescale_pretrained)
    _compile(model, config, kind, num_classes)

    history_path = os.path.join(model_dir, HISTORY_FILE)
    epoch_log = _EpochLog(history_path)
    mode = "min" if config.monitor.endswith("loss") else "max"
    early_stopping = keras.callbacks.EarlyStopping(
        monitor=config.monitor, mode=mode, patience=config.early_stopping_patience, restore_best_weights=True
    )
    all_callbacks: list[keras.callbacks.Callback] = [
        epoch_log,
        keras.callbacks.ModelCheckpoint(
            os.path.join(model_dir, CHECKPOINTS_DIR, CHECKPOINT_TEMPLATE), save_weights_only=True, save_freq="epoch"
        ),
        _ScalarLogs(os.path.join(model_dir, LOGS_DIR)),
        # After the checkpoint (a restored run must find every finished epoch) and
        # before EarlyStopping (which may swap in the best weights at the end).
        keras.callbacks.BackupAndRestore(backup_dir=os.path.join(model_dir, BACKUP_DIR)),
        early_stopping,
        *callbacks,
    ]
    kill_after = os.environ.get(KILL_AFTER_EPOCH_ENV)
    if kill_after:
        all_callbacks.append(_KillAfterEpoch(int(kill_after)))

    logger.info(
        "Training %s (%s) on %d documents, bucket boundaries %s%s",
        kind,
        model_config,
        len(lengths),
        list(boundaries),
        " (resuming)" if resumed else "",
    )
    start = time.time()
    model.fit(train_ds, validation_data=eval_ds, epochs=config.epochs, callbacks=all_callbacks, verbose=config.verbose)
    train_seconds = time.time() - start
    backup_dir = os.path.join(model_dir, BACKUP_DIR)
    if tf.io.gfile.exists(backup_dir):  # Finished: BackupAndRestore emptied it; drop the shell.
        tf.io.gfile.rmtree(backup_dir)

    history = _read_history(history_path)
    best = _best_epoch(history, config.monitor)
    if best is not None and tf.io.gfile.glob(checkpoint_path(model_dir, best) + ".index"):
        model.load_weights(checkpoint_path(model_dir, best)).expect_partial()
    results = model.evaluate(eval_ds, verbose=0, return_dict=True)

    # Save the model variables only (no optimizer state): a fresh copy of the model.
    final = models.build_classifier(model_config)
    final.set_weights(model.get_weights())
    final.save_weights(weights_path(model_dir))

    epochs_run = max([int(h["epoch"]) for h in history], default=0)
    # No epoch ran in this process only when a backup already covered them all.
    first = epoch_log.first_epoch if epoch_log.first_epoch is not None else epochs_run
    epochs_this_run = 0 if epoch_log.last_epoch is None else epoch_log.last_epoch + 1 - first
    train_examples = len(lengths)
    metrics = {
        "kind": kind,
        "accuracy": float(results["accuracy"]),
        "auc": float(results["auc"]) if "auc" in results else None,
        "loss": float(results["loss"]),
        "epochs_run": epochs_run,
        "epochs_this_run": epochs_this_run,
        "start_epoch": first,
        "resumed": bool(resumed and first > 0),
        "best_epoch": best,
        "monitor": config.monitor,
        "learning_rate": config.learning_rate_for(kind),
        "stopped_early": early_stopping.stopped_epoch > 0,
        "train_seconds": round(train_seconds, 3),
        "examples_per_second": round(train_examples * epochs_this_run / train_seconds, 2) if train_seconds > 0 else None,
        "train_examples": train_examples,
        "eval_examples": int(stats["splits"][C.EVAL_PREFIX]["documents"]),
        "num_classes": num_classes,
        "vocab_size": vocab_size,
        "bucket_boundaries": list(boundaries),
        "warm_start": warm_start,
    }
    write_metrics(model_dir, metrics)
    logger.info("Trained %s: %s", kind, metrics)
    return {"kind": kind, "model": model, "model_config": model_config, "model_dir": model_dir, "metrics": metrics}
