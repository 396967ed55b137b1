"""Training a `CbowModel` on the Beam stage's example blocks: tf.data reading and word2vec's SGD.

Each epoch reads one pass (epoch e → pass e % passes), shuffles it in memory with a
permutation seeded by (seed, epoch) — a tf.data shuffle buffer costs ~10 µs per
record, 4x the SGD step — and runs the SGD steps inside one tf.function.  A pass
larger than `CbowConfig.max_examples_in_memory` is read and shuffled in consecutive
chunks (chunk c > 0 seeded by (seed, epoch, c)); word2vec itself trains in corpus
order, which cost only ~0.008 WordSim-353 here.
"""

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from beam_rnn.core import progress
from beam_rnn.embeddings.config import CbowConfig
from beam_rnn.embeddings.layout import CONTEXT_KEY, TARGET_KEY
from beam_rnn.embeddings.sampling import noise_distribution

logger = logging.getLogger(__name__)


def make_cbow_dataset(files: Sequence[str], *, window: int, blocks_per_batch: int = 512) -> tf.data.Dataset:
    """tf.data of (context int64 [n, 2w], target int64 [n]) from CBOW block TFRecords.

    Each element concatenates the examples of up to `blocks_per_batch` records
    (documents), in file order; n varies.
    """
    files = sorted(files)
    if not files:
        raise ValueError("no CBOW example files")
    spec = {CONTEXT_KEY: tf.io.RaggedFeature(tf.int64), TARGET_KEY: tf.io.RaggedFeature(tf.int64)}
    width = 2 * int(window)

    def parse(serialized):
        p = tf.io.parse_example(serialized, spec)
        return tf.reshape(p[CONTEXT_KEY].flat_values, [-1, width]), p[TARGET_KEY].flat_values

    ds = tf.data.TFRecordDataset(files, compression_type="GZIP", buffer_size=8 << 20)
    ds = ds.batch(blocks_per_batch).map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def iter_cbow_chunks(
    files: Sequence[str], *, window: int, max_examples: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Consecutive chunks (contexts int32 [n, 2w], targets int32 [n]) of CBOW TFRecord files.

    A chunk closes once it holds >= `max_examples` examples (None: one chunk with
    everything); it may exceed the limit by one read batch of blocks.  Nothing is
    yielded for files without examples.
    """
    blocks = 512 if max_examples is None or max_examples >= 1_000_000 else 16
    contexts, targets, held = [], [], 0
    for ctx, tgt in make_cbow_dataset(files, window=window, blocks_per_batch=blocks):
        contexts.append(ctx.numpy().astype(np.int32))
        targets.append(tgt.numpy().astype(np.int32))
        held += targets[-1].size
        if max_examples is not None and held >= max_examples:
            yield np.concatenate(contexts), np.concatenate(targets)
            contexts, targets, held = [], [], 0
    if held:
        yield np.concatenate(contexts), np.concatenate(targets)


def load_cbow_examples(files: Sequence[str], *, window: int) -> tuple[np.ndarray, np.ndarray]:
    """All examples of some CBOW TFRecord files as (contexts int32 [n, 2w], targets int32 [n])."""
    for chunk in iter_cbow_chunks(files, window=window):
        return chunk
    return np.zeros((0, 2 * window), np.int32), np.zeros((0,), np.int32)


def count_examples(files: Sequence[str]) -> int:
    """Number of CBOW examples in block TFRecord files (used when cbow.json is absent)."""
    spec = {TARGET_KEY: tf.io.RaggedFeature(tf.int64)}
    ds = tf.data.TFRecordDataset(sorted(files), compression_type="GZIP").batch(1024)
    ds = ds.map(lambda s: tf.size(tf.io.parse_example(s, spec)[TARGET_KEY].flat_values, out_type=tf.int64))
    return int(ds.reduce(np.int64(0), lambda n, b: n + b).numpy())


class _Schedule:
    """word2vec's learning rate, decayed linearly from learning_rate to min_learning_rate over all epochs."""

    def __init__(self, config: CbowConfig, planned_examples: float) -> None:
        self.lr0, self.lr_min = float(config.learning_rate), float(config.min_learning_rate)
        self.planned = max(float(planned_examples), 1.0)
        self.done = tf.Variable(0.0, dtype=tf.float64, trainable=False)  # examples stepped so far

    def rate(self):
        return tf.maximum(self.lr0 * (1.0 - self.done / self.planned), self.lr_min)

    def final_rate(self) -> float:
        return max(self.lr0 * (1.0 - float(self.done.numpy()) / self.planned), self.lr_min)


def _sgd_function(model, config: CbowConfig, counts: np.ndarray, schedule: _Schedule):
    """A tf.function (contexts, targets, permutation) -> (summed loss, examples used) over one chunk."""
    cdf = np.cumsum(noise_distribution(counts, config.noise_power))
    cdf[-1] = 1.0
    cdf_t = tf.constant(cdf[None, :], tf.float64)
    generator = tf.random.Generator.from_seed(config.seed)  # the negatives
    k = int(config.negatives)
    bs = int(config.batch_size)
    vmax = model.vocab_size - 1

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 2 * config.window], tf.int32),
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None], tf.int32),
        ]
    )
    def run_chunk(contexts, targets, perm):
        loss_sum = tf.constant(0.0, tf.float64)
        used = tf.constant(0, tf.int64)
        n = tf.shape(perm)[0]
        for i in tf.range((n + bs - 1) // bs):
            idx = perm[i * bs : tf.minimum((i + 1) * bs, n)]
            context = tf.cast(tf.gather(contexts, idx), tf.int64)
            target = tf.cast(tf.gather(targets, idx), tf.int64)
            b = tf.shape(idx)[0]
            lr = schedule.rate()
            u = generator.uniform([1, b * k], dtype=tf.float64)
            neg = tf.reshape(tf.minimum(tf.searchsorted(cdf_t, u, side="right"), vmax), [b, k])
            loss, m = model.sgd_step(context, target, tf.cast(neg, tf.int64), tf.cast(lr, tf.float32))
            schedule.done.assign_add(tf.cast(b, tf.float64))
            loss_sum += tf.cast(loss, tf.float64)
            used += m
        return loss_sum, used

    return run_chunk


def train_cbow(
    model,
    epoch_files: Sequence[Sequence[str]],
    counts: Sequence[int] | np.ndarray,
    config: CbowConfig,
    *,
    examples_per_pass: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Train a `CbowModel` with word2vec's SGD schedule (see the module docstring).

    Negatives come from a seeded tf.random.Generator.  Runs are seeded; CPU
    scatter-adds of duplicate rows may still differ in float rounding between runs.

    Args:
        model: From `build_cbow_model` (vocab_size > every id in the examples).
        epoch_files: Example files of each pass.
        counts: `trainable_counts` per id (noise distribution; zero = never sampled).
        config: Hyper-parameters (epochs, batch_size, rates, negatives, seed, ...).
        examples_per_pass: Records per pass (for the linear learning-rate decay);
            counted from the files when None.

    Returns:
        {"epoch_losses": mean loss per example of each epoch, "examples": trained
        examples, "train_seconds" (reading included), "read_seconds",
        "examples_per_second", "final_learning_rate"}.
    """
    if not epoch_files or any(not f for f in epoch_files):
        raise ValueError("every pass needs at least one example file")
    counts = np.asarray(counts)
    if counts.size > model.vocab_size:
        counts = counts[: model.vocab_size]
    if examples_per_pass is None:
        examples_per_pass = [count_examples(f) for f in epoch_files]
    schedule = _Schedule(config, sum(examples_per_pass[e % len(epoch_files)] for e in range(config.epochs)))
    run_chunk = _sgd_function(model, config, counts, schedule)
    losses = []
    total_examples = 0
    read_seconds = 0.0
    cached_pass, cached = None, None  # a pass read as one chunk is kept for its next epoch
    start = time.time()
    planned = round(schedule.planned)
    with progress.task("CBOW training"):
        for epoch in range(config.epochs):
            p = epoch % len(epoch_files)
            t0 = time.time()
            if cached_pass == p:
                chunks: Iterable[tuple[np.ndarray, np.ndarray]] = [cached]
            else:
                cached_pass, cached = None, None  # free the previous pass first
                chunks = iter_cbow_chunks(epoch_files[p], window=config.window,
                                          max_examples=config.max_examples_in_memory)
            loss_total, n, sgd_seconds, chunk_count, last = 0.0, 0, 0.0, 0, None
            for c, (contexts, targets) in enumerate(chunks):
                perm = np.random.default_rng([config.seed, epoch] + ([c] if c else [])).permutation(targets.size)
                t_sgd = time.time()
                loss_sum, used = run_chunk(contexts, targets, perm.astype(np.int32))
                loss_total += float(loss_sum.numpy())
                n += int(used.numpy())
                sgd_seconds += time.time() - t_sgd
                chunk_count, last = c + 1, (contexts, targets)
                progress.count("trained", int(targets.size), unit="examples", total=planned)
            if chunk_count == 1:
                cached_pass, cached = p, last
            read_seconds += time.time() - t0 - sgd_seconds
            losses.append(loss_total / max(n, 1))
            total_examples += n
            logger.info("CBOW epoch %d/%d: loss %.4f over %d examples (%.1fs)", epoch + 1, config.epochs,
                        losses[-1], n, time.time() - t0)
    seconds = time.time() - start
    return {
        "epoch_losses": losses,
        "examples": total_examples,
        "train_seconds": round(seconds, 3),
        "read_seconds": round(read_seconds, 3),
        "examples_per_second": round(total_examples / seconds, 1) if seconds > 0 else None,
        "final_learning_rate": schedule.final_rate(),
    }
