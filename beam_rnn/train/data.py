"""The tf.data input of training: parsing transformed tf.Examples, length buckets, per-epoch shuffles.

Reads the shards a preprocessing output holds under ``transformed/`` (gzipped
tf.Example: ``token_ids`` int64 list, ``label`` int64).  Epoch ``e`` is shuffled with
a seed that depends on (seed, e) only, which is what makes a resumed run exact.
"""

import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from beam_rnn.core import constants as C
from beam_rnn.train.errors import TrainerInputError

TAIL_BUCKET_GROWTH = 1.5
PREFETCH_BATCHES = 2
_PARSE_BATCH = 512


def train_pattern(transformed_dir: str) -> str:
    return os.path.join(transformed_dir, C.TRANSFORMED_DIR, f"{C.TRAIN_PREFIX}-*")


def eval_pattern(transformed_dir: str) -> str:
    return os.path.join(transformed_dir, C.TRANSFORMED_DIR, f"{C.EVAL_PREFIX}-*")


def shard_files(file_pattern: str | Sequence[str]) -> list[str]:
    """The files of a glob, or of several (the train and eval splits of `beam_rnn.train.refit`), in order."""
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files = []
    for pattern in patterns:
        matched = sorted(tf.io.gfile.glob(pattern))
        if not matched:
            raise TrainerInputError(f"no files match {pattern!r}")
        files += matched
    return files



# Kept by hand rather than TFTransformOutput.transformed_feature_spec(): that gives token_ids as a
# VarLenFeature (sparse, then converted), this parses straight to ragged, and it needs no TFT import;
# tests/test_trainer.py checks the two specs name the same features and dtypes.
FEATURE_SPEC = {
    C.TOKEN_IDS_KEY: tf.io.RaggedFeature(tf.int64),
    C.TRANSFORMED_LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
}


class Fold(NamedTuple):
    """Fold `index` (0-based) of `count` folds of a split; `holdout` keeps only that fold, else every other one.

    An example's fold is the FarmHash fingerprint of its ``group`` (the split key the
    preprocessing kept with ``--group-column``), else of its ``id``, modulo `count`:
    deterministic, independent of the train/eval split (sha256), and a group never
    spans two folds.
    """

    index: int
    count: int
    holdout: bool


_FOLD_KEY_SPEC = {
    C.TRANSFORMED_ID_KEY: tf.io.FixedLenFeature([], tf.string),
    C.GROUP_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
}


def fold_of_keys(serialized: tf.Tensor, count: int) -> tf.Tensor:
    """The fold (int64, 0..count-1) of each serialized example of a batch."""
    keys = tf.io.parse_example(serialized, _FOLD_KEY_SPEC)
    key = tf.where(keys[C.GROUP_KEY] != "", keys[C.GROUP_KEY], keys[C.TRANSFORMED_ID_KEY])
    return tf.strings.to_hash_bucket_fast(key, count)


def fold_sizes(file_pattern: str, count: int) -> np.ndarray:
    """How many examples of the files fall in each of `count` folds."""
    ds = tf.data.TFRecordDataset(shard_files(file_pattern), compression_type="GZIP").batch(4096)
    sizes = np.zeros([count], np.int64)
    for batch in ds:
        sizes += np.bincount(fold_of_keys(batch, count).numpy(), minlength=count)
    return sizes


def _parse_fn(num_classes: int, max_length: int | None):
    spec = FEATURE_SPEC

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


def _parsed(files: Sequence[str], num_classes: int, max_length: int | None,
            fold: Fold | None = None) -> tf.data.Dataset:
    ds = tf.data.TFRecordDataset(list(files), compression_type="GZIP").batch(_PARSE_BATCH)
    if fold is not None:
        def keep(serialized: tf.Tensor) -> tf.Tensor:
            in_fold = tf.equal(fold_of_keys(serialized, fold.count), fold.index)
            return tf.boolean_mask(serialized, in_fold if fold.holdout else tf.logical_not(in_fold))

        ds = ds.map(keep)
    ds = ds.map(_parse_fn(num_classes, max_length)).unbatch()
    return ds.map(_at_least_one)


def sequence_lengths(file_pattern: str | Sequence[str], max_length: int | None = None, fold: Fold | None = None) -> np.ndarray:
    """Token counts (after truncation, at least 1) of every document in the files (of `fold`)."""
    ds = _parsed(shard_files(file_pattern), 2, max_length, fold).map(lambda ids, _: tf.size(ids)).batch(4096)
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


def random_prefixes(ids: tf.Tensor, fraction: float, seed: tf.Tensor) -> tf.Tensor:
    """Cuts a `fraction` of the rows of right-padded `ids` [batch, time] to a uniform random prefix of
    1..n tokens (stateless: the same `seed` [2] gives the same cuts); the rest stay whole."""
    n = tf.math.count_nonzero(ids, axis=1, dtype=tf.int64)
    draws = tf.random.stateless_uniform([2, tf.shape(ids)[0]], seed=seed, dtype=tf.float32)
    cut = 1 + tf.cast(tf.floor(draws[1] * tf.cast(n, tf.float32)), tf.int64)
    keep = tf.where(draws[0] < fraction, tf.minimum(cut, n), n)
    positions = tf.range(tf.shape(ids, out_type=tf.int64)[1])
    return tf.where(positions[None, :] < keep[:, None], ids, tf.zeros_like(ids))


def batches_per_epoch(lengths: np.ndarray, batch_size: int, bucket_boundaries: Sequence[int] | None = None) -> int:
    """How many batches one epoch of `make_dataset` yields for documents of these lengths.

    Each length bucket flushes its own last, partial batch, so the count does not
    depend on the shuffle: the sum over buckets of ceil(documents / batch_size).
    """
    boundaries = [int(b) for b in (bucket_boundaries or ())]
    counts = np.bincount(np.digitize(np.asarray(lengths), boundaries), minlength=len(boundaries) + 1)
    return int(sum(-(-int(c) // batch_size) for c in counts))


def make_dataset(
    file_pattern: str | Sequence[str],
    *,
    batch_size: int,
    max_length: int | None = None,
    shuffle: bool = False,
    seed: int | None = None,
    bucket_boundaries: Sequence[int] | None = None,
    num_classes: int = 2,
    shuffle_buffer_size: int | None = None,
    epochs: Sequence[int] = (0,),
    fold: Fold | None = None,
    prefix_fraction: float = 0.0,
    teacher: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
) -> tf.data.Dataset:
    """`(token_ids, label)` batches from gzipped TFRecords of transformed tf.Examples.

    Args:
        file_pattern: Glob of `*.tfrecord.gz` shards (read in sorted order), or a list of globs.
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
        fold: Only the examples of this `Fold` (cross-validation); None: all.
        prefix_fraction: Prefix ("truncated") training: this share of each epoch's
            documents is cut to a random prefix of 1..n tokens (uniform), drawn anew
            every epoch.  The cut happens after batching (tokens past the prefix become
            padding), so batches and their count per epoch do not change; the draws
            are stateless, seeded by (seed, epoch, batch), so resume stays exact.
        teacher: Distillation (`beam_rnn.train.distill.Teacher.pack`): ``(ids, labels)`` of a
            batch -> the packed target ``[label, teacher probabilities]``, computed on the
            whole documents, before any prefix cut.

    Returns:
        A dataset of `(token_ids int64 [batch, time] right-padded with 0, label)`.
        Documents with no tokens appear as a single padding id.
    """
    ds = _parsed(shard_files(file_pattern), num_classes, max_length, fold).cache()
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
            batched = epoch_ds.bucket_by_sequence_length(
                lambda ids, _: tf.shape(ids, out_type=tf.int32)[0],
                bucket_boundaries=boundaries,
                bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
                padded_shapes=([None], label_shape),
                pad_to_bucket_boundary=False,
                drop_remainder=False,
            )
        else:
            batched = epoch_ds.padded_batch(batch_size, padded_shapes=([None], label_shape))
        if teacher is not None:
            batched = batched.map(lambda ids, labels: (ids, teacher(ids, labels)))
        if prefix_fraction <= 0.0:
            return batched
        epoch_seed = epoch_shuffle_seed(base_seed, epoch)
        return batched.enumerate().map(
            lambda i, batch: (random_prefixes(batch[0], prefix_fraction, tf.stack([epoch_seed, i])), batch[1]))

    epochs = [int(e) for e in epochs]
    if len(epochs) == 1:
        out = one_epoch(epochs[0])
    else:
        out = tf.data.Dataset.from_tensor_slices(tf.constant(epochs, tf.int64)).flat_map(one_epoch)
    # No tf.data autotuning: at the end of fit its optimisation thread held the training iterator's deletion for
    # ~25 s (idle) in 7 of 8 IMDB benchmark runs (TF 2.21; benchmarks/RESULTS.md); two prefetched batches are as fast.
    options = tf.data.Options()
    options.autotune.enabled = False
    return out.prefetch(PREFETCH_BATCHES).with_options(options)
