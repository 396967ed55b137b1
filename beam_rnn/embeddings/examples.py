"""The Beam stage: transformed documents → CBOW example blocks (gzipped TFRecords) and cbow.json.

`MakeCbowExamples` reads its settings from a `CbowConfig`; token counts come from
`IdCountsCombineFn` over the same documents (a side input to the per-document DoFn).
The module docstring of `beam_rnn.embeddings` states what the examples are.
"""

import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np

from beam_rnn.core import constants as C
from beam_rnn.embeddings.config import CbowConfig
from beam_rnn.embeddings.layout import (
    CONTEXT_KEY,
    EXAMPLES_DIR,
    EXAMPLES_SUFFIX,
    META_FILE,
    METRICS_NAMESPACE,
    PASS_PREFIX_TEMPLATE,
    TARGET_KEY,
)
from beam_rnn.embeddings.sampling import (
    cbow_windows,
    document_seed,
    keep_probabilities,
    trainable_counts,
)


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
    the preprocessing stage.  `beam_rnn.embeddings` states the example semantics.

    With `output_dir`, writes ``output_dir/examples/pass-NNN-*.tfrecord.gz`` and
    ``output_dir/cbow.json`` ({"counts", "examples_per_pass", settings}).

    Args:
        config: The settings used here: window, sample, seed, min_count,
            dynamic_window and `effective_passes` (default: `CbowConfig()`).
        num_oov_buckets: k of the corpus' id layout (its stats.json).
        output_dir: Where to write the examples and cbow.json (None: not written).
    """

    def __init__(
        self,
        *,
        config: CbowConfig | None = None,
        num_oov_buckets: int = C.DEFAULT_NUM_OOV_BUCKETS,
        output_dir: str | None = None,
    ) -> None:
        super().__init__()
        config = CbowConfig() if config is None else config
        if num_oov_buckets < 0:
            raise ValueError(f"num_oov_buckets must be >= 0, got {num_oov_buckets}")
        # Key order is cbow.json's.
        self._settings = {
            "window": int(config.window),
            "sample": float(config.sample) if config.sample else 0.0,
            "seed": int(config.seed),
            "passes": int(config.effective_passes),
            "min_count": int(config.min_count),
            "num_oov_buckets": int(num_oov_buckets),
            "dynamic_window": bool(config.dynamic_window),
        }
        self._output_dir = output_dir

    def expand(self, serialized: beam.PCollection):  # returns a NamedTuple of PCollections (Beam only checks PCollection hints)
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
