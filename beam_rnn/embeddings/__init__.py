"""Word2Vec CBOW word vectors from the TFT-tokenised corpus, their evaluation and warm start.

CBOW (Mikolov et al. 2013, "Efficient Estimation of Word Representations in
Vector Space") predicts a word from the average of its neighbours' vectors; it is
trained here with negative sampling (Mikolov et al. 2013, "Distributed
Representations of Words and Phrases and their Compositionality") exactly as the
word2vec C tool and gensim do, so the vectors are comparable with theirs
(benchmarks/embeddings.py measures both on the same corpus).

Stages::

    DIR/transformed/train-*.tfrecord.gz      (pipelines.preprocess; token_ids per document)
      │  MakeCbowExamples (Beam): per-document DoFn, counts from a combiner over ids
      ▼
    OUT/examples/pass-NNN-*.tfrecord.gz      one tf.Example per (document, pass): a block of n examples
                                             {context: int64[n*2*window], target: int64[n]}
    OUT/cbow.json                            token counts per id, examples per pass, settings
      │  train_cbow (tf.data + a seeded SGD loop over a tf_keras CbowModel)
      ▼
    OUT/vectors.txt                          word2vec text format ("<n> <dim>" then "word v1 ... vdim")
    OUT/vectors.tsv + metadata.tsv           TensorBoard projector
    OUT/metrics.json                         WordSim-353 / SimLex-999 Spearman, analogy accuracy

Decisions (documented once, here):

* Token ids follow `beam_rnn.preprocess.tft_graph`: 0 = padding, 1..k = OOV buckets, words
  from k + 1 in vocabulary-file order.  Padding and OOV ids are REMOVED from a
  document before subsampling and windowing, as word2vec removes words below
  min_count: they are never targets nor contexts, and the words on either side of
  them become neighbours.  Words seen fewer than `min_count` times in the corpus
  are removed the same way.  Context slot 0 is therefore always "no word".
* Token counts for subsampling and for the noise distribution are computed IN the
  pipeline (a CombineFn over ids, `IdCountsCombineFn`) on exactly the documents the
  examples are made from: the TFT vocabulary file carries no frequencies (it is
  written without `store_frequency`) and may have been built on another split.
* Subsampling uses the word2vec C code's formula (also gensim's): a word with count
  f in a corpus of `total` counted words is kept with probability
  ``min(1, (sqrt(f / (s * total)) + 1) * (s * total) / f)``, s = `sample`.
  It is applied before windowing (discarded tokens leave the sentence).
* Windows: the context of a kept token is the `window` kept tokens on each side,
  in POSITIONAL slots (slot j < window holds offset j - window, slot window + j
  holds offset j + 1), 0 where there is no word.  With `dynamic_window` (default in
  the pipeline, as in word2vec) the effective window of each target is drawn
  uniformly from 1..window.  Targets without any context word are skipped.
* Records are BLOCKS: one record holds all examples of one document in one pass
  (row i's context is context[i*2w:(i+1)*2w]).  One record per example made the
  Beam stage ~6x slower than the training it feeds (17M Python elements through
  the runner for 5 passes over IMDB); blocks are ~200x fewer elements.
* Determinism: each document's random stream is seeded from sha256(seed, pass,
  document id), so a rerun (any runner, any sharding) makes the same set of
  examples.  Each "pass" is an independent subsampling/window draw; the trainer
  trains epoch e on pass e % passes, so with passes == epochs every epoch sees a
  fresh draw like word2vec's.
* Training is word2vec's: zero-initialised output vectors, input vectors uniform in
  ±1/dim (gensim 4's range; word2vec.c's ±0.5/dim gave a higher loss and ~0.004
  lower WordSim-353 over three seeds on IMDB), unigram^0.75 noise, per-example negatives (a negative equal to the
  target is ignored), plain SGD on the summed loss with the learning rate decayed
  linearly from 0.025 to 0.025e-4 over all epochs, and the context error applied
  undivided to every context word (word2vec's/gensim's cbow_mean update).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Sequence

import apache_beam as beam
import numpy as np

from beam_rnn.core import constants as C
from beam_rnn.core.metrics import pearson, spearman

logger = logging.getLogger(__name__)

# --- Feature keys and output layout ------------------------------------------
CONTEXT_KEY = "context"
TARGET_KEY = "target"
EXAMPLES_DIR = "examples"
PASS_PREFIX_TEMPLATE = "pass-{:03d}"
EXAMPLES_SUFFIX = ".tfrecord.gz"
META_FILE = "cbow.json"
VECTORS_TXT = "vectors.txt"
VECTORS_TSV = "vectors.tsv"
METADATA_TSV = "metadata.tsv"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "cbow_config.json"

# --- Evaluation files (../shared/data/embedding-eval) --------------------------
WORDSIM_FILE = "wordsim353.tsv"
SIMLEX_FILE = "simlex999.txt"
ANALOGY_FILE = "questions-words.txt"

EMBEDDING_LAYER = "embedding"  # same name as the classifiers' layer (beam_rnn.train.models)
OUTPUT_EMBEDDING_LAYER = "output_embedding"
METRICS_NAMESPACE = "beam_rnn.embeddings"


# =============================================================================
# Pure functions: subsampling and windows
# =============================================================================


def keep_probabilities(counts: Sequence[int] | np.ndarray, sample: float | None = 1e-3) -> np.ndarray:
    """Probability of keeping each id under frequent-word subsampling.

    The word2vec C code's formula (Mikolov et al. 2013; gensim uses the same):
    with t = sample * total, an id seen f > 0 times is kept with probability
    ``min(1, (sqrt(f / t) + 1) * t / f)``.  (The paper's ``1 - sqrt(t / f)``
    discard rule is a different, harsher curve; the tools use this one.)

    Args:
        counts: counts[i] = occurrences of id i in the corpus.  Ids that must never
            be kept (padding, OOV, below min_count) should be 0 here: they get
            probability 0 and do not count in `total`.
        sample: The threshold s (word2vec's -sample, default 1e-3); None or <= 0
            disables subsampling (every id with a count is kept).

    Returns:
        float64 array of len(counts) with values in [0, 1].
    """
    counts = np.asarray(counts, dtype=np.float64)
    keep = np.zeros(counts.shape, dtype=np.float64)
    present = counts > 0
    if not sample or sample <= 0:
        keep[present] = 1.0
        return keep
    threshold = float(sample) * counts.sum()
    f = counts[present]
    keep[present] = np.minimum(1.0, (np.sqrt(f / threshold) + 1.0) * threshold / f)
    return keep


def trainable_counts(counts: Sequence[int] | np.ndarray, *, min_count: int = 1, num_oov_buckets: int = 1) -> np.ndarray:
    """Counts with padding, OOV ids (1..num_oov_buckets) and rare ids zeroed.

    The result is what subsampling, the noise distribution and the export use:
    an id with a non-zero entry is a word that is trained.
    """
    out = np.array(counts, dtype=np.int64, copy=True)
    out[: num_oov_buckets + 1] = 0
    out[out < max(int(min_count), 1)] = 0
    return out


def cbow_windows(
    token_ids: Sequence[int] | np.ndarray,
    window: int,
    keep_prob: Sequence[float] | np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    num_oov_buckets: int = C.DEFAULT_NUM_OOV_BUCKETS,
    dynamic_window: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """CBOW (context, target) examples of one document.

    1. Ids 0 (padding) and 1..num_oov_buckets (OOV) are removed.
    2. Subsampling: with u = rng.random(len(token_ids)) (one draw per input token,
       in order), token i is kept iff keep_prob[id] >= 1 or u[i] < keep_prob[id].
    3. Each kept token is a target; its context is the kept tokens at offsets
       -window..-1, +1..+window in positional slots (0 where out of range).  With
       `dynamic_window`, b = rng.integers(1, window + 1, size=n_kept) (drawn after
       step 2) limits target t's context to offsets |o| <= b[t], like word2vec.
    4. Targets with no context word are dropped.

    Args:
        token_ids: The document's ids.
        window: Context words on each side (>= 1).
        keep_prob: Keep probability per id (`keep_probabilities`); ids with 0 are
            always removed.
        rng: Random generator; required unless every keep_prob is 0 or 1 and
            `dynamic_window` is False.
        num_oov_buckets: k in the id layout.
        dynamic_window: Draw each target's effective window from 1..window.

    Returns:
        (contexts int64 [n, 2*window], targets int64 [n]); row i is one example.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    keep_prob = np.asarray(keep_prob, dtype=np.float64)
    width = 2 * window
    if ids.size and (ids.min() < 0 or ids.max() >= keep_prob.size):
        raise ValueError(f"token ids must be in [0, {keep_prob.size}), got range [{ids.min()}, {ids.max()}]")
    p = np.where(ids > num_oov_buckets, keep_prob[ids] if ids.size else 0.0, 0.0)
    if rng is None:
        if np.any((p > 0) & (p < 1)) or dynamic_window:
            raise ValueError("cbow_windows needs an rng for subsampling or a dynamic window")
        kept = ids[p >= 1]
    else:
        u = rng.random(ids.size)
        kept = ids[(p >= 1) | (u < p)]
    n = kept.size
    if n < 2:
        return np.zeros((0, width), dtype=np.int64), np.zeros((0,), dtype=np.int64)
    offsets = np.concatenate([np.arange(-window, 0), np.arange(1, window + 1)])
    pos = np.arange(n)[:, None] + offsets[None, :]
    valid = (pos >= 0) & (pos < n)
    if dynamic_window:
        assert rng is not None
        b = rng.integers(1, window + 1, size=n)
        valid &= np.abs(offsets)[None, :] <= b[:, None]
    contexts = np.where(valid, kept[np.clip(pos, 0, n - 1)], 0)
    has_context = valid.any(axis=1)
    return contexts[has_context].astype(np.int64), kept[has_context].astype(np.int64)


def document_seed(seed: int, doc_id: str | bytes, pass_index: int = 0) -> int:
    """64-bit seed of one document's random stream (sha256, stable across machines/runs)."""
    if isinstance(doc_id, bytes):
        doc_id = doc_id.decode("utf-8", "replace")
    digest = hashlib.sha256(f"{int(seed)}\x00{int(pass_index)}\x00{doc_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


# =============================================================================
# Beam stage
# =============================================================================


def parse_transformed_example(serialized: bytes) -> tuple[str, np.ndarray]:
    """(document id, token ids) of one transformed tf.Example (`pipelines.preprocess` output)."""
    import tensorflow as tf

    ex = tf.train.Example.FromString(serialized)
    feats = ex.features.feature
    ids = np.asarray(feats[C.TOKEN_IDS_KEY].int64_list.value, dtype=np.int64)
    raw_id = feats[C.TRANSFORMED_ID_KEY].bytes_list.value if C.TRANSFORMED_ID_KEY in feats else []
    doc_id = raw_id[0].decode("utf-8", "replace") if raw_id else hashlib.sha256(serialized).hexdigest()
    return doc_id, ids


def _add_counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.size < b.size:
        a, b = b, a
    a = a.copy() if not a.flags.writeable else a
    a[: b.size] += b
    return a


class IdCountsCombineFn(beam.CombineFn):
    """Occurrences of every token id over documents (inputs: int arrays of ids).

    Output: an int64 array, out[i] = count of id i (length = max id + 1).
    Memory is one array of the id-space size per accumulator.
    """

    def create_accumulator(self) -> np.ndarray:
        return np.zeros((0,), dtype=np.int64)

    def add_input(self, acc: np.ndarray, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            return acc
        return _add_counts(acc, np.bincount(ids).astype(np.int64))

    def merge_accumulators(self, accumulators: Iterable[np.ndarray]) -> np.ndarray:
        out = np.zeros((0,), dtype=np.int64)
        for acc in accumulators:
            out = _add_counts(out, np.array(acc, dtype=np.int64))
        return out

    def extract_output(self, acc: np.ndarray) -> np.ndarray:
        return acc


def encode_cbow_block(contexts: np.ndarray, targets: np.ndarray) -> bytes:
    """One serialized tf.Example holding a block of n examples.

    Features: ``context`` int64[n * 2w] (row-major contexts), ``target`` int64[n].
    Encoded by tfx_bsl's C++ encoder (no Python protos).
    """
    import pyarrow as pa
    from tfx_bsl.coders import example_coder

    contexts = np.asarray(contexts, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    if contexts.ndim != 2 or contexts.shape[0] != targets.size:
        raise ValueError(f"contexts must be [n, 2w] with n = len(targets), got {contexts.shape} and {targets.shape}")
    ctx = pa.LargeListArray.from_arrays(
        pa.array(np.array([0, contexts.size], np.int64)), pa.array(contexts.reshape(-1), pa.int64())
    )
    tgt = pa.LargeListArray.from_arrays(pa.array(np.array([0, targets.size], np.int64)), pa.array(targets, pa.int64()))
    rb = pa.RecordBatch.from_arrays([ctx, tgt], names=[CONTEXT_KEY, TARGET_KEY])
    return example_coder.RecordBatchToExamplesEncoder().encode(rb)[0]


def decode_cbow_block(serialized: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(contexts int64 [n, 2w], targets int64 [n]) of one block record (tests, debugging)."""
    import tensorflow as tf

    feats = tf.train.Example.FromString(serialized).features.feature
    targets = np.array(feats[TARGET_KEY].int64_list.value, dtype=np.int64)
    flat = np.array(feats[CONTEXT_KEY].int64_list.value, dtype=np.int64)
    if targets.size == 0 or flat.size % targets.size:
        raise ValueError(f"not a CBOW block: {flat.size} context ids for {targets.size} targets")
    return flat.reshape(targets.size, -1), targets


def decode_cbow_examples(serialized: bytes) -> list[tuple[tuple[int, ...], int]]:
    """The (context tuple, target) examples of one block record (tests, debugging)."""
    contexts, targets = decode_cbow_block(serialized)
    return [(tuple(int(x) for x in c), int(t)) for c, t in zip(contexts, targets)]


def _pass_tag(p: int) -> str:
    return f"pass{p}"


class _CbowExamplesDoFn(beam.DoFn):
    """One document → (n, block record) of its n CBOW examples for every pass (tags pass0, pass1, ...)."""

    def __init__(self, *, window, sample, seed, passes, min_count, num_oov_buckets, dynamic_window):
        self._window = window
        self._sample = sample
        self._seed = seed
        self._passes = passes
        self._min_count = min_count
        self._num_oov_buckets = num_oov_buckets
        self._dynamic_window = dynamic_window
        self._cache_key = None
        self._keep = None
        self._docs = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "documents")
        self._examples = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "examples")

    def _keep_prob(self, counts: np.ndarray) -> np.ndarray:
        # The side input is the same object for every element of a bundle/window.
        if self._cache_key is not counts:
            self._keep = keep_probabilities(
                trainable_counts(counts, min_count=self._min_count, num_oov_buckets=self._num_oov_buckets),
                self._sample,
            )
            self._cache_key = counts
        return self._keep

    def process(self, doc: tuple[str, np.ndarray], counts: np.ndarray):
        doc_id, ids = doc
        keep = self._keep_prob(counts)
        self._docs.inc()
        for p in range(self._passes):
            rng = np.random.default_rng(document_seed(self._seed, doc_id, p))
            contexts, targets = cbow_windows(
                ids, self._window, keep, rng, num_oov_buckets=self._num_oov_buckets, dynamic_window=self._dynamic_window
            )
            if targets.size == 0:
                continue
            self._examples.inc(int(targets.size))
            yield beam.pvalue.TaggedOutput(_pass_tag(p), (int(targets.size), encode_cbow_block(contexts, targets)))


class CbowExamples(NamedTuple):
    """Outputs of `MakeCbowExamples`."""

    examples: tuple  # one PCollection of serialized CBOW blocks (`encode_cbow_block`) per pass
    counts: beam.PCollection  # one int64 array: raw occurrences of every id
    meta_written: beam.PCollection | None  # the written cbow.json path (when output_dir is set)


def pass_pattern(examples_dir: str, pass_index: int) -> str:
    """Glob of one pass's example shards."""
    return os.path.join(examples_dir, PASS_PREFIX_TEMPLATE.format(pass_index) + "-*" + EXAMPLES_SUFFIX)


class MakeCbowExamples(beam.PTransform):
    """Transformed documents → CBOW training examples, written as gzipped TFRecords.

    Input: serialized transformed tf.Examples (`token_ids`, `id`), e.g.
    ``beam.io.ReadFromTFRecord("DIR/transformed/train-*")`` or the `train` output
    of `AnalyzeAndTransform`.  Token counts come from `IdCountsCombineFn` over the
    same documents (side input to a per-document DoFn), so the stage scales like
    the preprocessing stage.  See the module docstring for the example semantics.

    With `output_dir`, writes ``output_dir/examples/pass-NNN-*.tfrecord.gz`` and
    ``output_dir/cbow.json`` ({"counts", "examples_per_pass", settings}).
    """

    def __init__(
        self,
        *,
        window: int = 5,
        sample: float | None = 1e-3,
        seed: int = 1,
        passes: int = 1,
        min_count: int = 1,
        num_oov_buckets: int = C.DEFAULT_NUM_OOV_BUCKETS,
        dynamic_window: bool = True,
        output_dir: str | None = None,
    ) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if passes < 1:
            raise ValueError(f"passes must be >= 1, got {passes}")
        if num_oov_buckets < 0:
            raise ValueError(f"num_oov_buckets must be >= 0, got {num_oov_buckets}")
        self._settings = dict(
            window=int(window),
            sample=float(sample) if sample else 0.0,
            seed=int(seed),
            passes=int(passes),
            min_count=int(min_count),
            num_oov_buckets=int(num_oov_buckets),
            dynamic_window=bool(dynamic_window),
        )
        self._output_dir = output_dir

    def expand(self, serialized: beam.PCollection) -> CbowExamples:
        s = self._settings
        docs = serialized | "ParseDocuments" >> beam.Map(parse_transformed_example)
        counts = (
            docs
            | "TokenIds" >> beam.Map(lambda d: d[1])
            | "CountIds" >> beam.CombineGlobally(IdCountsCombineFn())
        )
        tags = [_pass_tag(p) for p in range(s["passes"])]
        outputs = docs | "MakeExamples" >> beam.ParDo(
            _CbowExamplesDoFn(**s), beam.pvalue.AsSingleton(counts)
        ).with_outputs(*tags)
        examples = tuple(
            outputs[tag] | f"Records{p}" >> beam.Map(lambda sized: sized[1]) for p, tag in enumerate(tags)
        )
        meta_written = None
        if self._output_dir:
            examples_dir = os.path.join(self._output_dir, EXAMPLES_DIR)
            sizes = {}
            for p, pcoll in enumerate(examples):
                _ = pcoll | f"WritePass{p}" >> beam.io.WriteToTFRecord(
                    os.path.join(examples_dir, PASS_PREFIX_TEMPLATE.format(p)),
                    file_name_suffix=EXAMPLES_SUFFIX,
                    compression_type=beam.io.filesystem.CompressionTypes.GZIP,
                )
                sizes[f"n{p}"] = beam.pvalue.AsSingleton(
                    outputs[tags[p]]
                    | f"BlockSizes{p}" >> beam.Map(lambda sized: sized[0])
                    | f"CountPass{p}" >> beam.CombineGlobally(sum)
                )

            def to_json(ids_counts: np.ndarray, **n: int) -> str:
                per_pass = [int(n[f"n{p}"]) for p in range(s["passes"])]
                return json.dumps({**s, "examples_per_pass": per_pass, "counts": [int(x) for x in ids_counts]})

            meta_written = (
                counts
                | "MetaJson" >> beam.Map(to_json, **sizes)
                | "WriteMeta"
                >> beam.io.WriteToText(
                    os.path.join(self._output_dir, META_FILE), num_shards=1, shard_name_template=""
                )
            )
        return CbowExamples(examples, counts, meta_written)


def read_meta(output_dir: str) -> dict[str, Any]:
    """The cbow.json written by `MakeCbowExamples(output_dir=...)` (counts as an int64 array)."""
    import tensorflow as tf

    with tf.io.gfile.GFile(os.path.join(output_dir, META_FILE)) as f:
        meta = json.loads(f.read())
    meta["counts"] = np.asarray(meta["counts"], dtype=np.int64)
    return meta


# =============================================================================
# Model and training
# =============================================================================


@dataclasses.dataclass(frozen=True)
class CbowConfig:
    """CBOW hyper-parameters (defaults: word2vec's / gensim's CBOW defaults).

    Attributes:
        dim: Vector width.
        window: Context words on each side.
        negatives: Negative samples per example.
        sample: Subsampling threshold (0 disables).
        min_count: Words seen fewer times are removed (like OOV).
        epochs: Training epochs.
        passes: Independent example draws materialised by the Beam stage (None: = epochs).
        dynamic_window: Draw each target's window from 1..window (word2vec).
        batch_size: Examples per SGD step.
        learning_rate: Initial SGD rate (word2vec's/gensim's alpha, 0.025).
        min_learning_rate: Final rate (word2vec: alpha * 1e-4).
        noise_power: Exponent of the unigram noise distribution.
        max_examples_in_memory: A pass larger than this is trained in consecutive
            chunks of about this many examples, each shuffled in memory (44 bytes an
            example with window 5: the default 20 M is ~0.9 GB); smaller passes are
            shuffled whole.
        seed: Seed of the example draws, the initialisation, shuffling and negatives.
    """

    dim: int = 100
    window: int = 5
    negatives: int = 5
    sample: float = 1e-3
    min_count: int = 5
    epochs: int = 5
    passes: int | None = None
    dynamic_window: bool = True
    batch_size: int = 256
    learning_rate: float = 0.025
    min_learning_rate: float = 0.025 * 1e-4
    noise_power: float = 0.75
    max_examples_in_memory: int = 20_000_000
    seed: int = 1

    def __post_init__(self) -> None:
        for name in ("dim", "window", "negatives", "min_count", "epochs", "batch_size", "max_examples_in_memory"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.passes is not None and self.passes < 1:
            raise ValueError(f"passes must be >= 1 or None, got {self.passes}")
        if self.sample < 0:
            raise ValueError(f"sample must be >= 0, got {self.sample}")
        if not self.learning_rate > 0 or self.min_learning_rate < 0:
            raise ValueError("learning_rate must be > 0 and min_learning_rate >= 0")

    @property
    def effective_passes(self) -> int:
        return self.epochs if self.passes is None else int(self.passes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _tf():
    import tensorflow as tf

    return tf


def _keras():
    import tf_keras as keras

    return keras


def build_cbow_model(vocab_size: int, dim: int, *, window: int = 5, seed: int = 1):
    """A built `CbowModel` (input vectors uniform ±1/dim, output vectors zero)."""
    model = _cbow_model_class()(vocab_size, dim, seed=seed)
    tf = _tf()
    model(tf.zeros([1, 2 * window], tf.int64))
    return model


_CBOW_CLASS = None


def _cbow_model_class():
    """Defines CbowModel lazily (tf_keras is imported only when a model is needed)."""
    global _CBOW_CLASS
    if _CBOW_CLASS is not None:
        return _CBOW_CLASS
    tf = _tf()
    keras = _keras()

    class CbowModel(keras.Model):
        """CBOW: Embedding(vocab, dim) → masked average of the context → scores
        against an output embedding matrix.

        `call(context)` returns the hidden vector h [batch, dim] (average of the
        non-zero context ids' vectors).  `sgd_step` is one word2vec negative-sampling
        update on a batch (closed-form gradients, sparse row updates).
        """

        def __init__(self, vocab_size: int, dim: int, *, seed: int = 1, **kwargs) -> None:
            super().__init__(**kwargs)
            self.vocab_size = int(vocab_size)
            self.dim = int(dim)
            self.embedding = keras.layers.Embedding(
                vocab_size,
                dim,
                embeddings_initializer=keras.initializers.RandomUniform(-1.0 / dim, 1.0 / dim, seed=seed),
                name=EMBEDDING_LAYER,
            )
            self.output_embedding = keras.layers.Embedding(
                vocab_size, dim, embeddings_initializer="zeros", name=OUTPUT_EMBEDDING_LAYER
            )

        def call(self, context):
            context = tf.cast(context, tf.int64)
            e = self.embedding(context)
            mask = tf.cast(tf.not_equal(context, 0), e.dtype)
            self.output_embedding(context[:, :1])  # builds the output matrix with the model
            count = tf.reduce_sum(mask, axis=1, keepdims=True)
            return tf.reduce_sum(e * mask[..., None], axis=1) / tf.maximum(count, 1.0)

        def scores(self, context, candidates):
            """Logits h·u_c of candidate ids [batch, m] given contexts [batch, 2w]."""
            h = self(context)
            u = tf.gather(self.output_embedding.embeddings, candidates)
            return tf.einsum("bd,bmd->bm", h, u)

        def sgd_step(self, context, target, negatives, learning_rate):
            """One negative-sampling SGD step; returns (summed loss, examples used)."""
            w_in = self.embedding.embeddings
            w_out = self.output_embedding.embeddings
            context = tf.cast(context, tf.int64)
            target = tf.cast(target, tf.int64)
            negatives = tf.cast(negatives, tf.int64)
            mask = tf.cast(tf.not_equal(context, 0), tf.float32)  # [B, C]
            cw = tf.reduce_sum(mask, axis=1)  # [B]
            h = tf.reduce_sum(tf.gather(w_in, context) * mask[..., None], axis=1) / tf.maximum(cw, 1.0)[:, None]
            samples = tf.concat([target[:, None], negatives], axis=1)  # [B, 1+K]
            batch = tf.shape(target)[0]
            k = tf.shape(negatives)[1]
            labels = tf.concat([tf.ones([batch, 1]), tf.zeros([batch, k])], axis=1)
            weights = tf.concat(
                [tf.ones([batch, 1]), tf.cast(tf.not_equal(negatives, target[:, None]), tf.float32)], axis=1
            ) * tf.cast(cw > 0, tf.float32)[:, None]
            u = tf.gather(w_out, samples)  # [B, 1+K, d]
            s = tf.einsum("bd,bkd->bk", h, u)
            loss = -tf.reduce_sum(
                weights * (labels * tf.math.log_sigmoid(s) + (1.0 - labels) * tf.math.log_sigmoid(-s))
            )
            g = (labels - tf.sigmoid(s)) * weights * learning_rate  # word2vec's g * alpha
            neu1e = tf.einsum("bk,bkd->bd", g, u)  # error for the context (computed before u moves)
            w_out.scatter_add(
                tf.IndexedSlices(tf.reshape(g[..., None] * h[:, None, :], [-1, self.dim]), tf.reshape(samples, [-1]))
            )
            w_in.scatter_add(
                tf.IndexedSlices(
                    tf.reshape(neu1e[:, None, :] * mask[..., None], [-1, self.dim]), tf.reshape(context, [-1])
                )
            )
            return loss, tf.reduce_sum(tf.cast(cw > 0, tf.int64))

        def get_config(self):
            return {"vocab_size": self.vocab_size, "dim": self.dim}

    _CBOW_CLASS = CbowModel
    return CbowModel


def noise_distribution(counts: Sequence[int] | np.ndarray, power: float = 0.75) -> np.ndarray:
    """Negative-sampling distribution ∝ count^power over ids with a non-zero count."""
    c = np.asarray(counts, dtype=np.float64)
    w = np.where(c > 0, np.power(np.maximum(c, 0.0), power), 0.0)
    total = w.sum()
    if total <= 0:
        raise ValueError("noise distribution needs at least one id with a positive count")
    return w / total


def _parse_spec():
    tf = _tf()
    return {CONTEXT_KEY: tf.io.RaggedFeature(tf.int64), TARGET_KEY: tf.io.RaggedFeature(tf.int64)}


def make_cbow_dataset(files: Sequence[str], *, window: int, blocks_per_batch: int = 512):
    """tf.data of (context int64 [n, 2w], target int64 [n]) from CBOW block TFRecords.

    Each element concatenates the examples of up to `blocks_per_batch` records
    (documents), in file order; n varies.
    """
    tf = _tf()
    files = sorted(files)
    if not files:
        raise ValueError("no CBOW example files")
    spec = _parse_spec()
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
    tf = _tf()
    spec = {TARGET_KEY: tf.io.RaggedFeature(tf.int64)}
    ds = tf.data.TFRecordDataset(sorted(files), compression_type="GZIP").batch(1024)
    ds = ds.map(lambda s: tf.size(tf.io.parse_example(s, spec)[TARGET_KEY].flat_values, out_type=tf.int64))
    return int(ds.reduce(np.int64(0), lambda n, b: n + b).numpy())


def train_cbow(
    model,
    epoch_files: Sequence[Sequence[str]],
    counts: Sequence[int] | np.ndarray,
    config: CbowConfig,
    *,
    examples_per_pass: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Train a `CbowModel` with word2vec's SGD schedule.

    Each epoch reads one pass (epoch e → pass e % len(epoch_files)) with tf.data,
    shuffles it in memory with a permutation seeded by (seed, epoch) — a tf.data
    shuffle buffer costs ~10 µs per record, 4x the SGD step — and runs the SGD
    steps inside one tf.function.  A pass larger than
    `config.max_examples_in_memory` is read and shuffled in consecutive chunks
    (chunk c > 0 seeded by (seed, epoch, c)); word2vec itself trains in corpus
    order, which cost only ~0.008 WordSim-353 here.  Negatives come from a seeded
    tf.random.Generator.  Runs are seeded; CPU scatter-adds of duplicate rows may
    still differ in float rounding between runs.

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
    tf = _tf()
    if not epoch_files or any(not f for f in epoch_files):
        raise ValueError("every pass needs at least one example file")
    counts = np.asarray(counts)
    if counts.size > model.vocab_size:
        counts = counts[: model.vocab_size]
    cdf = np.cumsum(noise_distribution(counts, config.noise_power))
    cdf[-1] = 1.0
    cdf_t = tf.constant(cdf[None, :], tf.float64)
    if examples_per_pass is None:
        examples_per_pass = [count_examples(f) for f in epoch_files]
    planned = float(sum(examples_per_pass[e % len(epoch_files)] for e in range(config.epochs)))
    planned = max(planned, 1.0)
    generator = tf.random.Generator.from_seed(config.seed)
    done = tf.Variable(0.0, dtype=tf.float64, trainable=False)
    lr0, lr_min = float(config.learning_rate), float(config.min_learning_rate)
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
    def run_epoch(contexts, targets, perm):
        loss_sum = tf.constant(0.0, tf.float64)
        used = tf.constant(0, tf.int64)
        n = tf.shape(perm)[0]
        for i in tf.range((n + bs - 1) // bs):
            idx = perm[i * bs : tf.minimum((i + 1) * bs, n)]
            context = tf.cast(tf.gather(contexts, idx), tf.int64)
            target = tf.cast(tf.gather(targets, idx), tf.int64)
            b = tf.shape(idx)[0]
            lr = tf.maximum(lr0 * (1.0 - done / planned), lr_min)
            u = generator.uniform([1, b * k], dtype=tf.float64)
            neg = tf.reshape(tf.minimum(tf.searchsorted(cdf_t, u, side="right"), vmax), [b, k])
            loss, m = model.sgd_step(context, target, tf.cast(neg, tf.int64), tf.cast(lr, tf.float32))
            done.assign_add(tf.cast(b, tf.float64))
            loss_sum += tf.cast(loss, tf.float64)
            used += m
        return loss_sum, used

    losses = []
    total_examples = 0
    read_seconds = 0.0
    cached_pass, cached = None, None  # a pass read as one chunk is kept for its next epoch
    start = time.time()
    for epoch in range(config.epochs):
        p = epoch % len(epoch_files)
        t0 = time.time()
        if cached_pass == p:
            chunks: Iterable[tuple[np.ndarray, np.ndarray]] = [cached]
        else:
            cached_pass, cached = None, None  # free the previous pass first
            chunks = iter_cbow_chunks(epoch_files[p], window=config.window, max_examples=config.max_examples_in_memory)
        loss_total, n, sgd_seconds, chunk_count, last = 0.0, 0, 0.0, 0, None
        for c, (contexts, targets) in enumerate(chunks):
            perm = np.random.default_rng([config.seed, epoch] + ([c] if c else [])).permutation(targets.size)
            t_sgd = time.time()
            loss_sum, used = run_epoch(contexts, targets, perm.astype(np.int32))
            loss_total += float(loss_sum.numpy())
            n += int(used.numpy())
            sgd_seconds += time.time() - t_sgd
            chunk_count, last = c + 1, (contexts, targets)
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
        "final_learning_rate": max(lr0 * (1.0 - float(done.numpy()) / planned), lr_min),
    }


# =============================================================================
# Vectors: export, load
# =============================================================================


def model_vectors(
    model, vocab: Sequence[str], counts: Sequence[int] | np.ndarray | None = None, *, num_oov_buckets: int = 1
) -> tuple[list[str], np.ndarray]:
    """(words, vectors) of the trained words, in vocabulary (frequency) order.

    A word is exported iff its `trainable_counts` entry is non-zero (all words when
    counts is None).  Word i of `vocab` has id i + num_oov_buckets + 1.
    """
    weights = np.asarray(model.get_layer(EMBEDDING_LAYER).get_weights()[0])
    ids = np.arange(len(vocab)) + num_oov_buckets + 1
    ids = ids[ids < weights.shape[0]]
    if counts is not None:
        c = np.asarray(counts)
        ids = ids[(ids < c.size) & (c[np.minimum(ids, c.size - 1)] > 0)]
    words = [vocab[i - num_oov_buckets - 1] for i in ids]
    return words, weights[ids]


def save_word2vec_text(path: str, words: Sequence[str], vectors: np.ndarray) -> None:
    """word2vec text format: "<n> <dim>" then "word v1 ... vdim" per line (float32 exact: %.9g)."""
    import tensorflow as tf

    vectors = np.asarray(vectors, dtype=np.float32)
    if len(words) != vectors.shape[0]:
        raise ValueError(f"{len(words)} words but {vectors.shape[0]} vectors")
    _check_words(words)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(f"{vectors.shape[0]} {vectors.shape[1]}\n")
        for word, vec in zip(words, vectors):
            f.write(word + " " + " ".join("%.9g" % x for x in vec) + "\n")


def save_projector_tsv(output_dir: str, words: Sequence[str], vectors: np.ndarray) -> tuple[str, str]:
    """vectors.tsv (tab-separated floats) + metadata.tsv (one word per line, no header: one column)."""
    import tensorflow as tf

    _check_words(words)
    vpath, mpath = os.path.join(output_dir, VECTORS_TSV), os.path.join(output_dir, METADATA_TSV)
    with tf.io.gfile.GFile(vpath, "w") as f:
        for vec in np.asarray(vectors, dtype=np.float32):
            f.write("\t".join("%.9g" % x for x in vec) + "\n")
    with tf.io.gfile.GFile(mpath, "w") as f:
        for word in words:
            f.write(word + "\n")
    return vpath, mpath


# The characters the text formats split on (the vocabulary never contains them:
# tokens are split on ASCII whitespace; other Unicode spaces such as U+0085 may occur in words).
_SEPARATORS = frozenset(" \t\n\r\x0b\x0c")


def _check_words(words: Sequence[str]) -> None:
    for w in words:
        if not w or any(ch in _SEPARATORS for ch in w):
            raise ValueError(f"word {w!r} is empty or contains a space, tab or newline; it cannot be written in text formats")


def load_word2vec_text(path: str) -> dict[str, np.ndarray]:
    """Read word2vec text vectors (also header-less GloVe text) → {word: float32 vector}, file order.

    The "<n> <dim>" header is optional; every vector must have the same width.
    The first occurrence of a duplicated word wins.
    """
    import tensorflow as tf

    out: dict[str, np.ndarray] = {}
    dim = None
    with tf.io.gfile.GFile(path, "rb") as f:
        for lineno, raw in enumerate(f):
            parts = raw.decode("utf-8", "replace").rstrip("\r\n").split(" ")
            parts = [p for p in parts if p != ""]
            if not parts:
                continue
            if lineno == 0 and len(parts) == 2 and all(p.isdigit() for p in parts):
                dim = int(parts[1])
                continue
            vec = np.asarray(parts[1:], dtype=np.float32)
            if dim is None:
                dim = vec.size
            if vec.size != dim:
                raise ValueError(f"{path}:{lineno + 1}: expected {dim} values, got {vec.size}")
            out.setdefault(parts[0], vec)
    return out


def read_word2vec_dim(path: str) -> int:
    """Vector width of a word2vec/GloVe text file from its first line (cheap check before training)."""
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "rb") as f:
        parts = [p for p in f.readline().decode("utf-8", "replace").rstrip("\r\n").split(" ") if p]
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return int(parts[1])
    if len(parts) < 2:
        raise ValueError(f"{path} is not a word2vec/GloVe text file")
    return len(parts) - 1


# =============================================================================
# Evaluation
# =============================================================================


class WordVectors:
    """Words + vectors in rank order (first = most frequent) with a lookup index."""

    def __init__(self, words: Sequence[str], vectors: np.ndarray, *, lowercase: bool = True) -> None:
        self.words = list(words)
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.index: dict[str, int] = {}
        for i, w in enumerate(self.words):
            self.index.setdefault(w.lower() if lowercase else w, i)
        self.lowercase = lowercase
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        self.unit = self.vectors / np.maximum(norms, 1e-12)

    @classmethod
    def of(cls, vectors: "WordVectors | Mapping[str, np.ndarray] | tuple") -> "WordVectors":
        if isinstance(vectors, WordVectors):
            return vectors
        if isinstance(vectors, tuple):
            return cls(vectors[0], vectors[1])
        words = list(vectors.keys())
        return cls(words, np.stack([np.asarray(vectors[w]) for w in words]) if words else np.zeros((0, 0)))

    def key(self, word: str) -> str:
        return word.lower() if self.lowercase else word

    def get(self, word: str) -> int | None:
        return self.index.get(self.key(word))


def read_word_pairs(path: str) -> list[tuple[str, str, float]]:
    """WordSim-353 / SimLex-999 files: "w1<TAB>w2<TAB>score", '#' lines are comments."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            pairs.append((parts[0], parts[1], float(parts[2])))
    return pairs


def evaluate_word_pairs(vectors, pairs: str | Sequence[tuple[str, str, float]]) -> dict[str, Any]:
    """Spearman (and Pearson) between human scores and cosine similarity.

    Pairs with a word missing from the vectors are left out (case-insensitive
    lookup, like gensim); `coverage` = pairs covered / total.
    """
    wv = WordVectors.of(vectors)
    if isinstance(pairs, str):
        pairs = read_word_pairs(pairs)
    human, model = [], []
    for a, b, score in pairs:
        ia, ib = wv.get(a), wv.get(b)
        if ia is None or ib is None:
            continue
        human.append(score)
        model.append(float(np.dot(wv.unit[ia], wv.unit[ib])))
    total = len(pairs)
    return {
        "spearman": spearman(human, model) if len(human) >= 2 else float("nan"),
        "pearson": pearson(human, model) if len(human) >= 2 else float("nan"),
        "pairs_covered": len(human),
        "pairs_total": total,
        "coverage": len(human) / total if total else 0.0,
    }


def read_analogies(path: str) -> list[tuple[str, str, str, str, str]]:
    """Google analogy file → (section, a, b, c, d) with ": section" headers."""
    out = []
    section = ""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if line.startswith(":"):
                section = line[1:].strip()
                continue
            a, b, c, d = line.split()[:4]
            out.append((section, a, b, c, d))
    return out


def evaluate_analogies(
    vectors,
    questions: str | Sequence[tuple[str, str, str, str, str]],
    *,
    restrict_vocab: int | None = None,
    chunk: int = 1024,
) -> dict[str, Any]:
    """3CosAdd accuracy on a:b :: c:d questions.

    The answer is argmax over the (top `restrict_vocab`) words of
    cos(x, b) - cos(x, a) + cos(x, c), excluding a, b and c themselves.  Only
    questions whose 4 words are all among the candidate words count
    ("covered"); accuracy = correct / covered, coverage = covered / total.
    Sections whose name starts with "gram" are syntactic, the others semantic
    (the Google set's convention).
    """
    wv = WordVectors.of(vectors)
    if isinstance(questions, str):
        questions = read_analogies(questions)
    limit = len(wv.words) if restrict_vocab is None else min(int(restrict_vocab), len(wv.words))
    unit = wv.unit[:limit]
    rows = []
    for q in questions:
        idx = [wv.get(w) for w in q[1:]]
        if all(i is not None and i < limit for i in idx):
            rows.append((q[0], idx))
    correct = np.zeros(len(rows), dtype=bool)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        ids = np.asarray([r[1] for r in part], dtype=np.int64)
        query = unit[ids[:, 1]] - unit[ids[:, 0]] + unit[ids[:, 2]]
        sims = query @ unit.T
        r = np.arange(len(part))
        for j in range(3):
            sims[r, ids[:, j]] = -np.inf
        correct[start : start + len(part)] = sims.argmax(axis=1) == ids[:, 3]
    sections: dict[str, dict[str, int]] = {}
    for q in questions:
        sections.setdefault(q[0], {"correct": 0, "covered": 0, "total": 0})["total"] += 1
    for (sec, _), ok in zip(rows, correct):
        sections[sec]["covered"] += 1
        sections[sec]["correct"] += int(ok)

    def summary(names: Iterable[str]) -> dict[str, Any]:
        c = sum(sections[n]["correct"] for n in names)
        cov = sum(sections[n]["covered"] for n in names)
        tot = sum(sections[n]["total"] for n in names)
        return {"accuracy": c / cov if cov else 0.0, "correct": c, "covered": cov, "total": tot,
                "coverage": cov / tot if tot else 0.0}

    result = summary(sections)
    result["semantic"] = summary([s for s in sections if not s.startswith("gram")])
    result["syntactic"] = summary([s for s in sections if s.startswith("gram")])
    result["restrict_vocab"] = limit
    result["sections"] = {s: {**v, "accuracy": v["correct"] / v["covered"] if v["covered"] else 0.0}
                          for s, v in sections.items()}
    return result


def evaluate_embeddings(vectors, eval_dir: str, *, restrict_vocab: int | None = None) -> dict[str, Any]:
    """WordSim-353, SimLex-999 and analogy results for the files present in `eval_dir`."""
    wv = WordVectors.of(vectors)
    out: dict[str, Any] = {}
    for name, fname in (("wordsim353", WORDSIM_FILE), ("simlex999", SIMLEX_FILE)):
        path = os.path.join(eval_dir, fname)
        if os.path.exists(path):
            out[name] = evaluate_word_pairs(wv, path)
    path = os.path.join(eval_dir, ANALOGY_FILE)
    if os.path.exists(path):
        res = evaluate_analogies(wv, path, restrict_vocab=restrict_vocab)
        res.pop("sections")
        out["analogy"] = res
    return out


# =============================================================================
# Warm start of the classifiers' Embedding layer
# =============================================================================


def pretrained_embedding_matrix(
    vectors: Mapping[str, np.ndarray] | str,
    vocab: Sequence[str],
    num_oov_buckets: int,
    embedding_dim: int,
    seed: int = 42,
    *,
    initial: np.ndarray | None = None,
    rescale: bool = False,
) -> tuple[np.ndarray, int]:
    """Embedding matrix [len(vocab) + num_oov_buckets + 1, dim] with pretrained rows.

    Row num_oov_buckets + 1 + i (word vocab[i]) is the pretrained vector of
    vocab[i] when it has one (exact match first, then a case-insensitive match);
    every other row (padding, OOV buckets, unmatched words) is the row of
    `initial` — pass the model's current embedding weights — or, when `initial`
    is None, a seeded uniform(-0.05, 0.05) draw (Keras' Embedding default).

    Args:
        vectors: {word: vector} or a word2vec/GloVe text file path.
        vocab: Vocabulary words in id order (`beam_rnn.preprocess.transform.read_vocabulary`).
        num_oov_buckets: k of the id layout.
        embedding_dim: Width; pretrained vectors must have it.
        seed: Seed of the default initial rows.
        initial: The matrix to start from (shape [vocab + k + 1, dim]).
        rescale: Multiply all matched vectors by ONE factor so their RMS equals the
            RMS of the initial matrix (word2vec vectors are ~50x larger than Keras'
            initial embeddings; one global factor keeps every cosine unchanged).

    Returns:
        (matrix float32, number of vocabulary words that got a pretrained vector).
    """
    if isinstance(vectors, (str, os.PathLike)):
        vectors = load_word2vec_text(os.fspath(vectors))
    rows = len(vocab) + num_oov_buckets + 1
    if initial is None:
        rng = np.random.default_rng(seed)
        matrix = rng.uniform(-0.05, 0.05, size=(rows, embedding_dim)).astype(np.float32)
    else:
        matrix = np.array(initial, dtype=np.float32, copy=True)
        if matrix.shape != (rows, embedding_dim):
            raise ValueError(f"initial matrix has shape {matrix.shape}, expected {(rows, embedding_dim)}")
    lowered: dict[str, np.ndarray] = {}
    for word, vec in vectors.items():
        lowered.setdefault(word.lower(), vec)
    rows_matched, found = [], []
    for i, word in enumerate(vocab):
        vec = vectors.get(word)
        if vec is None:
            vec = lowered.get(word.lower())
        if vec is None:
            continue
        vec = np.asarray(vec, dtype=np.float32)
        if vec.shape != (embedding_dim,):
            raise ValueError(f"pretrained vector of {word!r} has shape {vec.shape}, the model needs ({embedding_dim},)")
        rows_matched.append(num_oov_buckets + 1 + i)
        found.append(vec)
    if found:
        pretrained = np.stack(found)
        if rescale:
            rms = float(np.sqrt(np.mean(np.square(pretrained))))
            pretrained = pretrained * (float(np.sqrt(np.mean(np.square(matrix)))) / rms if rms > 0 else 1.0)
        matrix[np.asarray(rows_matched)] = pretrained
    return matrix, len(found)


def warm_start_embedding(model, matrix: np.ndarray, freeze: bool = False):
    """Set the weights of `model`'s layer named "embedding"; optionally freeze it.

    Call BEFORE `model.compile` (Keras reads `trainable` when it compiles /
    traces the train step).  Freezing does not change the order of
    `model.get_weights()`.

    Returns:
        The embedding layer.
    """
    layer = model.get_layer(EMBEDDING_LAYER)
    [current] = layer.get_weights()
    matrix = np.asarray(matrix, dtype=current.dtype)
    if matrix.shape != current.shape:
        raise ValueError(f"embedding matrix has shape {matrix.shape}, the layer needs {current.shape}")
    layer.set_weights([matrix])
    layer.trainable = not freeze
    return layer


def warm_start_from_file(
    model, vectors_path: str, transformed_dir: str, *, freeze: bool = False, rescale: bool = False
) -> dict[str, Any]:
    """Warm-start a classifier built for a preprocessing output from pretrained vectors.

    Reads the vocabulary and num_oov_buckets of `transformed_dir`, keeps the
    model's current rows for unmatched ids (see `pretrained_embedding_matrix` for
    `rescale`), and calls `warm_start_embedding`.

    Returns:
        {"matched": words with a pretrained vector, "vocabulary_words", "coverage", "frozen"}.
    """
    from beam_rnn.preprocess.transform import read_vocabulary

    vocab = read_vocabulary(transformed_dir)
    num_oov = _num_oov_buckets(transformed_dir)
    layer = model.get_layer(EMBEDDING_LAYER)
    [current] = layer.get_weights()
    matrix, matched = pretrained_embedding_matrix(
        vectors_path, vocab, num_oov, current.shape[1], initial=current, rescale=rescale
    )
    warm_start_embedding(model, matrix, freeze)
    info = {"matched": matched, "vocabulary_words": len(vocab),
            "coverage": matched / len(vocab) if vocab else 0.0, "frozen": bool(freeze), "rescaled": bool(rescale)}
    logger.info("Warm start from %s: %s", vectors_path, info)
    return info


def _num_oov_buckets(transformed_dir: str) -> int:
    import tensorflow as tf

    for name in (C.STATS_FILE, C.PREPROCESS_CONFIG_FILE):
        path = os.path.join(transformed_dir, name)
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path) as f:
                d = json.loads(f.read())
            if "num_oov_buckets" in d:
                return int(d["num_oov_buckets"])
    return C.DEFAULT_NUM_OOV_BUCKETS
