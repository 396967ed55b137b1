"""Train the bidirectional and streaming classifiers on TFT-transformed TFRecords.

Input is a preprocessing output directory (`pipelines.preprocess`)::

    DIR/transform_fn/                          the TFT graph (used by the export, checked here)
    DIR/transformed/train-*.tfrecord.gz        tf.Example: token_ids int64 list, label int64, id bytes
    DIR/transformed/eval-*.tfrecord.gz
    DIR/stats.json                             vocab_size_with_reserved, num_classes, splits, ...

Output, per model kind, under ``OUTPUT/<kind>/``::

    model_config.json     the ModelConfig (models.ModelConfig.to_dict)
    train_config.json     the TrainConfig
    history.jsonl         one JSON line per committed epoch (kept across resumes)
    metrics.json          final eval metrics of the kept (best) weights, timings
    weights/model.*       final weights (TF checkpoint format, model variables only)
    checkpoints/epoch_NNN.*  weights (and optimizer slots) after every epoch
    backup/               the training state while training is unfinished (see below)
    logs/                 TensorBoard (train/ and validation/)

Exact resume: after every epoch the whole training state is committed to
``backup/`` with one `tf.train.Checkpoint` — model weights, the Adam slots and
iteration counter (which also drives any learning-rate schedule), the state of
the Dropout layer's random generator and the number of finished epochs.
Everything else is a pure function of what is saved: epoch ``e`` shuffles the
cached training split with the seed ``(shuffle seed, e)`` instead of a stateful
reshuffling iterator, and early stopping replays the committed epochs of
history.jsonl.  Rerunning the same command after the process died — between
epochs or in the middle of one — restarts at the beginning of the first
unfinished epoch and ends with weights bit-identical to an uninterrupted run
(work done in the unfinished epoch is redone).  A backup made with another
model or training config, or for other data, is discarded with a warning.
``backup/`` is removed when training finishes.  The kept weights are those of the
best epoch by the early-stopping monitor over *all* epochs, including the ones
run before a restart (read from history.jsonl, loaded from checkpoints/).

Determinism: `keras.utils.set_random_seed` and `tf.config.experimental.
enable_op_determinism()` (process-wide) are set, the models seed their own
initialisers and Dropout, and the shuffle is seeded per epoch, so two runs with
the same config are bit-identical on CPU.
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

from beam_rnn.core import constants as C
from beam_rnn.train import models

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

RUN_FILE = "run.json"  # backup/run.json: what the backup was made for (configs, data)
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


# What training reads from a preprocess output, checked against its manifest.json.
_INPUT_PREFIXES = (f"{C.TRANSFORM_FN_DIR}/", f"{C.TRANSFORMED_METADATA_DIR}/", f"{C.TRANSFORMED_DIR}/",
                   C.STATS_FILE, C.PREPROCESS_CONFIG_FILE)


def _first_line(error: BaseException, limit: int = 200) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def check_transformed_dir(transformed_dir: str) -> dict[str, Any]:
    """`validate_transformed_dir`, then integrity, before any model is built; returns stats.json.

    The files training reads (transform_fn/, transformed_metadata/, the shards,
    stats.json, preprocess_config.json) must match the directory's manifest.json
    (sizes and sha256; `pipelines.preprocess` writes it last, so a directory
    without one did not finish), no shard may be missing from it, and the TFT
    metadata and graph must load (the export needs them after training).

    Raises:
        TrainerInputError or beam_rnn.core.manifest.ArtifactError (both ValueErrors):
            one line naming the damaged or missing file.
    """
    from beam_rnn.core.manifest import verify_manifest

    stats = validate_transformed_dir(transformed_dir)
    what = "preprocess output"
    manifest = verify_manifest(
        transformed_dir, prefixes=_INPUT_PREFIXES, what=what,
        required=(C.STATS_FILE, C.PREPROCESS_CONFIG_FILE, f"{C.TRANSFORM_FN_DIR}/saved_model.pb"),
    )
    for pattern in (train_pattern(transformed_dir), eval_pattern(transformed_dir)):
        for path in _files(pattern):
            rel = f"{C.TRANSFORMED_DIR}/{os.path.basename(path)}"
            if rel not in manifest["files"]:
                raise TrainerInputError(f"{what} {transformed_dir}: {rel} is not in its manifest.json "
                                        "(left over from another run?)")
    import tensorflow_transform as tft

    try:
        output = tft.TFTransformOutput(transformed_dir)
        output.transformed_feature_spec()
    except Exception as e:  # any failure to read is the same error for the user
        raise TrainerInputError(f"{what} {transformed_dir}: {C.TRANSFORMED_METADATA_DIR}/ does not load "
                                f"({_first_line(e)})") from e
    try:
        output.transform_features_layer()
    except Exception as e:
        raise TrainerInputError(f"{what} {transformed_dir}: {C.TRANSFORM_FN_DIR}/saved_model.pb does not load "
                                f"as a SavedModel ({_first_line(e)})") from e
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


def epoch_shuffle_seed(seed: int, epoch) -> Any:
    """The shuffle seed of `epoch` (0-based; an int or an int64 tensor): a pure function of both."""
    return tf.constant(int(seed), tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64)


def batches_per_epoch(lengths: np.ndarray, batch_size: int, bucket_boundaries: Sequence[int] | None = None) -> int:
    """How many batches one epoch of `make_dataset` yields for documents of these lengths.

    Each length bucket flushes its own last, partial batch, so the count does not
    depend on the shuffle: the sum over buckets of ceil(documents / batch_size).
    """
    boundaries = [int(b) for b in (bucket_boundaries or ())]
    counts = np.bincount(np.digitize(np.asarray(lengths), boundaries), minlength=len(boundaries) + 1)
    return int(sum(-(-int(c) // batch_size) for c in counts))


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
    epochs: Sequence[int] = (0,),
) -> tf.data.Dataset:
    """`(token_ids, label)` batches from gzipped TFRecords of transformed tf.Examples.

    Args:
        file_pattern: Glob of `*.tfrecord.gz` shards (read in sorted order).
        batch_size: Documents per batch.
        max_length: Keep the first `max_length` token ids of each document (None: all).
        shuffle: Shuffle every epoch over the WHOLE split (the input may be sorted,
            e.g. by label): the parsed data is cached once and each epoch shuffled
            with a buffer covering every document.
        seed: Shuffle seed (None: 0).  Epoch `e` is shuffled with
            `epoch_shuffle_seed(seed, e)`, so its order depends on (seed, e) only,
            not on how many epochs were iterated before (what makes resume exact).
        bucket_boundaries: Length boundaries for `bucket_by_sequence_length`
            (None/empty: one bucket). Either way each batch is padded to its own
            longest document only.
        num_classes: 2 gives float32 labels `[batch, 1]` (matching the single
            logit); K > 2 gives int64 labels `[batch]`.
        shuffle_buffer_size: Override the buffer (default: the number of documents).
        epochs: The epochs (0-based) whose batches the dataset yields, one after
            the other (each `batches_per_epoch` long); the default is one pass,
            epoch 0, which iterates the same way every time.

    Returns:
        A dataset of `(token_ids int64 [batch, time] right-padded with 0, label)`.
        Documents with no tokens appear as a single padding id.
    """
    ds = _parsed(_files(file_pattern), num_classes, max_length).cache()
    buffer = 0
    if shuffle:
        buffer = shuffle_buffer_size
        if buffer is None:
            buffer = int(ds.reduce(np.int64(0), lambda n, _: n + 1).numpy())
    label_shape = [1] if num_classes == 2 else []
    boundaries = [int(b) for b in (bucket_boundaries or ())]
    base_seed = 0 if seed is None else int(seed)

    def one_epoch(epoch) -> tf.data.Dataset:
        # Bucketing inside the epoch: each epoch flushes its own partial batches.
        epoch_ds = ds
        if shuffle:
            epoch_ds = epoch_ds.shuffle(max(1, int(buffer)), seed=epoch_shuffle_seed(base_seed, epoch),
                                        reshuffle_each_iteration=False)
        if boundaries:
            return epoch_ds.bucket_by_sequence_length(
                lambda ids, _: tf.shape(ids, out_type=tf.int32)[0],
                bucket_boundaries=boundaries,
                bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
                padded_shapes=([None], label_shape),
                pad_to_bucket_boundary=False,
                drop_remainder=False,
            )
        return epoch_ds.padded_batch(batch_size, padded_shapes=([None], label_shape))

    epochs = [int(e) for e in epochs]
    if len(epochs) == 1:
        out = one_epoch(epochs[0])
    else:
        out = tf.data.Dataset.from_tensor_slices(tf.constant(epochs, tf.int64)).flat_map(one_epoch)
    return out.prefetch(tf.data.AUTOTUNE)


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
    records = []
    with tf.io.gfile.GFile(path) as f:
        for line in f.read().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:  # a line torn by a kill (its epoch was never committed)
                continue
    return records


def _write_history(path: str, records: Sequence[Mapping[str, Any]]) -> None:
    """Replace history.jsonl (written aside, then renamed over it)."""
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write("".join(json.dumps(dict(r)) + "\n" for r in records))
    tf.io.gfile.rename(tmp, path, overwrite=True)


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


def _run_signature(model_config: models.ModelConfig, config: TrainConfig, train_files: Sequence[str]) -> dict[str, Any]:
    """What a backup was made for: a restart may continue it only when all of this is unchanged.

    Not included: `epochs` (a rerun may train longer: epoch e's shuffle does not
    depend on the number of epochs), `verbose` and `kinds` (a rerun may train
    fewer kinds).
    """
    train_config = {k: v for k, v in config.to_dict().items() if k not in ("epochs", "verbose", "kinds")}
    shards = {os.path.basename(f): int(tf.io.gfile.stat(f).length) for f in train_files}
    return json.loads(json.dumps({"model_config": model_config.to_dict(), "train_config": train_config,
                                  "train_shards": shards}))


def _prepare_model_dir(model_dir: str, model_config: models.ModelConfig, config: TrainConfig,
                       signature: Mapping[str, Any]) -> bool:
    """Decide between resuming and a fresh start; return True when resuming."""
    backup_dir = os.path.join(model_dir, BACKUP_DIR)
    resume = tf.io.gfile.isdir(backup_dir) and tf.train.latest_checkpoint(backup_dir) is not None
    if resume:
        run_path = os.path.join(backup_dir, RUN_FILE)
        previous = _read_json(run_path) if tf.io.gfile.exists(run_path) else None
        if previous != signature:
            logger.warning("Backup in %s was made for a different model config, training config or data; "
                           "starting fresh.", backup_dir)
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
        tf.io.gfile.makedirs(backup_dir)
        _write_json(os.path.join(backup_dir, RUN_FILE), dict(signature))
    for name in (CHECKPOINTS_DIR, WEIGHTS_DIR):
        tf.io.gfile.makedirs(os.path.join(model_dir, name))
    _write_json(os.path.join(model_dir, MODEL_CONFIG_FILE), model_config.to_dict())
    _write_json(os.path.join(model_dir, TRAIN_CONFIG_FILE), config.to_dict())
    return resume


def _random_generators(model: keras.Model) -> dict[str, tf.random.Generator]:
    """The random generators of the layers that draw random numbers in training (Dropout).

    Keras keeps a layer's generator out of its weights and checkpoints on purpose
    (backwards compatibility), so the training state saves it explicitly.  A
    layer on a legacy stateful RNG (TF1 random ops, state inside the kernel)
    could not be resumed exactly: refuse it.
    """
    generators = {}
    for index, layer in enumerate(model.submodules):
        rng = getattr(layer, "_random_generator", None)
        if rng is None or not isinstance(layer, keras.layers.Layer):
            continue
        rates = [getattr(layer, name, None) for name in ("rate", "dropout", "recurrent_dropout")]
        rates = [r for r in rates if isinstance(r, (int, float))]
        if rates and not any(r > 0 for r in rates):
            continue  # draws nothing
        if rng._rng_type != rng.RNG_STATEFUL:  # pylint: disable=protected-access
            raise ValueError(f"layer {layer.name!r} uses a {rng._rng_type!r} random generator whose state cannot be "
                             "saved; build it with rng_type='stateful' (see models.build_classifier)")
        rng._maybe_init()  # pylint: disable=protected-access  (creates the generator's state variable now)
        generators[f"{index}_{layer.name}"] = rng._generator  # pylint: disable=protected-access
    return generators


class _TrainingState:
    """Everything a restart needs to continue bit-identically, in one `tf.train.Checkpoint`.

    Model weights, optimizer (Adam slots, iteration counter), Dropout generator
    states and the number of finished epochs; `tf.train.CheckpointManager`
    rewrites its pointer file atomically after the new files are complete, so a
    process killed while saving leaves the previous epoch's state in place.
    """

    def __init__(self, backup_dir: str, model: keras.Model) -> None:
        self.epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")
        model.optimizer.build(model.trainable_variables)  # slots exist before a restore
        parts: dict[str, Any] = {"model": model, "optimizer": model.optimizer, "epochs_done": self.epochs_done}
        generators = _random_generators(model)
        if generators:
            parts["rng"] = generators
        self.checkpoint = tf.train.Checkpoint(**parts)
        self.manager = tf.train.CheckpointManager(self.checkpoint, backup_dir, max_to_keep=1, checkpoint_name="state")

    def restore(self) -> int:
        """Load the last committed state; returns the number of finished epochs."""
        self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
        return int(self.epochs_done.numpy())

    def commit(self, epochs_done: int) -> None:
        self.epochs_done.assign(epochs_done)
        self.manager.save(checkpoint_number=epochs_done)


class _CommitState(keras.callbacks.Callback):
    """Commits the training state after every epoch (after history, checkpoint and early stopping)."""

    def __init__(self, state: _TrainingState) -> None:
        super().__init__()
        self.state = state

    def on_epoch_end(self, epoch, logs=None):
        self.state.commit(epoch + 1)


class _EarlyStopping(keras.callbacks.EarlyStopping):
    """`keras.callbacks.EarlyStopping` whose state continues across a restart.

    `on_train_begin` resets the state, then replays the epochs finished before
    the restart (their logs from history.jsonl) through Keras' own `on_epoch_end`,
    so the best value, the epochs without improvement and a stop already decided
    carry over.  No weights are held in memory: `train` loads the best epoch's
    checkpoint at the end.
    """

    def __init__(self, past: Sequence[Mapping[str, Any]], **kwargs) -> None:
        super().__init__(restore_best_weights=False, **kwargs)
        self.past = [dict(record) for record in past]

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for record in self.past:
            super().on_epoch_end(int(record["epoch"]) - 1, record)


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
    """Train one model kind on a preprocessing output, resuming an interrupted run exactly.

    Args:
        transformed_dir: The preprocessing output (see the module docstring).
        output_dir: The model goes to `output_dir/<kind>/`.
        config: Training configuration.
        kind: Which model to train (default: `config.kinds[0]`).
        callbacks: Extra Keras callbacks, run after the built-in ones (so after
            the epoch's state is committed); also how tests inject faults.

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
    eval_ds = make_dataset(
        eval_files,
        batch_size=config.batch_size,
        max_length=config.max_length,
        shuffle=False,
        bucket_boundaries=boundaries,
        num_classes=num_classes,
    )

    signature = _run_signature(model_config, config, _files(train_files))
    resumed = _prepare_model_dir(model_dir, model_config, config, signature)
    model = models.build_classifier(model_config)
    warm_start = None
    if config.pretrained_embeddings:
        from beam_rnn.embeddings import warm_start_from_file

        # Before compile (freezing changes the trainable set); on resume, the
        # restored training state replaces this initialisation.
        warm_start = warm_start_from_file(model, config.pretrained_embeddings, transformed_dir,
                                          freeze=config.freeze_embeddings, rescale=config.rescale_pretrained)
    _compile(model, config, kind, num_classes)

    backup_dir = os.path.join(model_dir, BACKUP_DIR)
    state = _TrainingState(backup_dir, model)
    history_path = os.path.join(model_dir, HISTORY_FILE)
    start_epoch = state.restore() if resumed else 0
    # Epochs after the last commit were cut short by the kill: they run again.
    committed = [h for h in _read_history(history_path) if int(h["epoch"]) <= start_epoch]
    _write_history(history_path, committed)

    mode = "min" if config.monitor.endswith("loss") else "max"
    early_stopping = _EarlyStopping(
        committed, monitor=config.monitor, mode=mode, patience=config.early_stopping_patience
    )
    early_stopping.set_model(model)
    early_stopping.on_train_begin()  # replays the committed epochs: a stop may already be decided
    epoch_log = _EpochLog(history_path)
    all_callbacks: list[keras.callbacks.Callback] = [
        epoch_log,
        keras.callbacks.ModelCheckpoint(
            os.path.join(model_dir, CHECKPOINTS_DIR, CHECKPOINT_TEMPLATE), save_weights_only=True, save_freq="epoch"
        ),
        _ScalarLogs(os.path.join(model_dir, LOGS_DIR)),
        early_stopping,
        _CommitState(state),  # last built-in: the epoch is finished once this has run
        *callbacks,
    ]

    logger.info(
        "Training %s (%s) on %d documents, bucket boundaries %s%s",
        kind,
        model_config,
        len(lengths),
        list(boundaries),
        f" (resuming at epoch {start_epoch + 1})" if resumed else "",
    )
    train_seconds = 0.0
    if start_epoch < config.epochs and not early_stopping.stopped_epoch:
        train_ds = make_dataset(
            train_files,
            batch_size=config.batch_size,
            max_length=config.max_length,
            shuffle=True,
            seed=config.effective_shuffle_seed,
            bucket_boundaries=boundaries,
            num_classes=num_classes,
            shuffle_buffer_size=len(lengths),
            epochs=range(start_epoch, config.epochs),
        )
        start = time.time()
        model.fit(train_ds, validation_data=eval_ds, epochs=config.epochs, initial_epoch=start_epoch,
                  steps_per_epoch=batches_per_epoch(lengths, config.batch_size, boundaries),
                  callbacks=all_callbacks, verbose=config.verbose)
        train_seconds = time.time() - start

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
    # No epoch ran in this process only when the backup already covered them all.
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
    # Finished: nothing left to resume (a kill before this line resumes with no epoch to run).
    tf.io.gfile.rmtree(backup_dir)
    logger.info("Trained %s: %s", kind, metrics)
    return {"kind": kind, "model": model, "model_config": model_config, "model_dir": model_dir, "metrics": metrics}
