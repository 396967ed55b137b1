"""The `AnalyzeAndTransform` stage: vocabulary + tokenisation with TFT, at scale.

Documents from `ReadCorpus` are split deterministically (hash of the id, or of the group) into
train and eval, batched into Arrow record batches (TFT's native input; faster
than instance dicts, see benchmarks/preprocess.py), analysed on train only,
transformed, and written as gzipped TFRecords of tf.Example next to a hermetic
`transform_fn/` and a partial statistics file that `finalize_stats` completes.
"""

import collections
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa

from beam_rnn.core import constants as C
from beam_rnn.core.errors import dead_letter_problem
from beam_rnn.io.records import REASON_INVALID_LABEL
from beam_rnn.preprocess.config import PreprocessConfig, PreprocessJob
from beam_rnn.preprocess.tft_graph import label_names, make_preprocessing_fn, raw_feature_spec

SPLIT_TRAIN = 0
SPLIT_EVAL = 1
SPLIT_NAMES = (C.TRAIN_PREFIX, C.EVAL_PREFIX)
TFRECORD_SUFFIX = ".tfrecord.gz"
PARTIAL_STATS_PREFIX = "stats_partial"
PERCENTILES = (50, 90, 95, 99, 100)


def split_for_id(doc_id: str, eval_fraction: float) -> int:
    """Deterministic train/eval assignment from the document id.

    sha256 (not Python's salted `hash`) so that every worker, every run and every
    machine puts a document in the same split.

    Returns:
        SPLIT_TRAIN or SPLIT_EVAL.
    """
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2.0**64
    return SPLIT_EVAL if bucket < eval_fraction else SPLIT_TRAIN


def split_key(doc: Mapping[str, Any]) -> str:
    """What a document's split is drawn from: its group (see `PreprocessConfig.group_column`), else its id."""
    return doc.get(C.GROUP_KEY) or doc[C.ID_KEY]


def split_of(doc: Mapping[str, Any], eval_fraction: float) -> int:
    """SPLIT_TRAIN or SPLIT_EVAL for a document (`split_for_id` of its `split_key`)."""
    return split_for_id(split_key(doc), eval_fraction)


def in_sample(doc_id: str, fraction: float) -> bool:
    """Deterministic document sample, independent of the train/eval split (salted hash)."""
    digest = hashlib.sha256(b"sample:" + doc_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


SAMPLED_OUT_TAG = "sampled_out"


class KeepSample(beam.DoFn):
    """Keeps documents `in_sample`; counts the others (counter beam_rnn.preprocess.transform/sampled_out).

    With `tag_sampled_out`, each document left out is also a 1 on the `SAMPLED_OUT_TAG` output
    (declare it with ``with_outputs``), for a count inside the pipeline.
    """

    def __init__(self, fraction: float, *, tag_sampled_out: bool = False):
        self._fraction = fraction
        self._tag = tag_sampled_out
        self._sampled_out = beam.metrics.Metrics.counter("beam_rnn.preprocess.transform", "sampled_out")

    def process(self, doc):
        if in_sample(doc[C.ID_KEY], self._fraction):
            yield doc
        else:
            self._sampled_out.inc()
            if self._tag:
                yield beam.pvalue.TaggedOutput(SAMPLED_OUT_TAG, 1)


def raw_arrow_schema(config: PreprocessConfig) -> pa.Schema:
    """Arrow schema of raw record batches (one-element lists, as tfxio expects)."""
    fields = [
        pa.field(C.ID_KEY, pa.large_list(pa.large_binary())),
        pa.field(C.TEXT_KEY, pa.large_list(pa.large_binary())),
    ]
    if config.group_column is not None:  # the split key, kept in the examples for `train --folds`
        fields.append(pa.field(C.GROUP_KEY, pa.large_list(pa.large_binary())))
    if config.labelled:
        value_type = pa.int64() if config.label_type == C.LABEL_TYPE_INT else pa.large_binary()
        fields.append(pa.field(C.LABEL_KEY, pa.large_list(value_type)))
    return pa.schema(fields)


def documents_to_record_batch(docs: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.RecordBatch:
    """Columnar form of a batch of `{id, text[, label]}` documents."""
    arrays = []
    for field in schema:
        if field.name == C.GROUP_KEY:
            values = [split_key(d) for d in docs]
        else:
            values = [d[field.name] for d in docs]
        if pa.types.is_large_binary(field.type.value_type):
            values = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
        # Build the flat values once and wrap them as one-element lists (cheaper than
        # letting pyarrow infer a nested list per row).
        flat = pa.array(values, type=field.type.value_type)
        offsets = pa.array(np.arange(len(values) + 1, dtype=np.int64))
        arrays.append(pa.LargeListArray.from_arrays(offsets, flat))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def tensor_adapter_config(config: PreprocessConfig):
    """The tfxio TensorAdapterConfig describing raw record batches to TFT."""
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.tfxio import tensor_adapter, tensor_representation_util

    schema = schema_utils.schema_from_feature_spec(raw_feature_spec(config))
    reps = tensor_representation_util.InferTensorRepresentationsFromSchema(schema)
    return tensor_adapter.TensorAdapterConfig(raw_arrow_schema(config), reps)


def record_batch_stats(record_batch: pa.RecordBatch, num_oov_buckets: int) -> dict[str, Any]:
    """Per-batch statistics of transformed documents (merged by `StatsCombineFn`)."""
    ids_col = record_batch.column(record_batch.schema.get_field_index(C.TOKEN_IDS_KEY))
    offsets = np.asarray(ids_col.offsets)
    lengths = np.diff(offsets)
    values = np.asarray(ids_col.flatten())
    oov = int(np.count_nonzero((values >= 1) & (values <= num_oov_buckets)))
    labels: collections.Counter = collections.Counter()
    label_idx = record_batch.schema.get_field_index(C.TRANSFORMED_LABEL_KEY)
    if label_idx >= 0:
        labels.update(int(x) for x in np.asarray(record_batch.column(label_idx).flatten()))
    return {
        "documents": int(record_batch.num_rows),
        "tokens": int(values.size),
        "oov_tokens": oov,
        "empty_documents": int(np.count_nonzero(lengths == 0)),
        "length_histogram": collections.Counter(int(n) for n in lengths),
        "label_counts": labels,
    }


class StatsCombineFn(beam.CombineFn):
    """Merges `record_batch_stats` dicts; memory is bounded by distinct lengths and labels."""

    def create_accumulator(self) -> dict[str, Any]:
        return {
            "documents": 0,
            "tokens": 0,
            "oov_tokens": 0,
            "empty_documents": 0,
            "length_histogram": collections.Counter(),
            "label_counts": collections.Counter(),
        }

    def add_input(self, acc: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
        for key, value in stats.items():
            if isinstance(value, collections.Counter):
                acc[key].update(value)
            else:
                acc[key] += value
        return acc

    def merge_accumulators(self, accumulators: Iterable[dict[str, Any]]) -> dict[str, Any]:
        merged = self.create_accumulator()
        for acc in accumulators:
            self.add_input(merged, acc)
        return merged

    def extract_output(self, acc: dict[str, Any]) -> dict[str, Any]:
        return summarize_stats(acc)


def summarize_stats(acc: Mapping[str, Any]) -> dict[str, Any]:
    """Turn merged counters into the JSON-able split statistics."""
    hist: Mapping[int, int] = acc["length_histogram"]
    return {
        "documents": acc["documents"],
        "tokens": acc["tokens"],
        "oov_tokens": acc["oov_tokens"],
        "oov_rate": acc["oov_tokens"] / acc["tokens"] if acc["tokens"] else 0.0,
        "empty_documents": acc["empty_documents"],
        "token_length_percentiles": histogram_percentiles(hist, PERCENTILES),
        "mean_token_length": (sum(k * v for k, v in hist.items()) / acc["documents"]) if acc["documents"] else 0.0,
        "label_counts": {str(k): v for k, v in sorted(acc["label_counts"].items())},
    }


def histogram_percentiles(hist: Mapping[int, int], percentiles: Sequence[int]) -> dict[str, int]:
    """Exact nearest-rank percentiles of a value histogram ({value: count})."""
    total = sum(hist.values())
    if total == 0:
        return {f"p{p}": 0 for p in percentiles}
    items = sorted(hist.items())
    out = {}
    for p in percentiles:
        rank = max(1, int(np.ceil(p / 100.0 * total)))
        seen = 0
        for value, count in items:
            seen += count
            if seen >= rank:
                out[f"p{p}"] = int(value)
                break
    return out


def _split_fn(doc: Mapping[str, Any], num_partitions: int, eval_fraction: float) -> int:
    return split_of(doc, eval_fraction)


class TransformResult(NamedTuple):
    """Outputs of `AnalyzeAndTransform` (all PCollections)."""

    train: beam.PCollection  # serialized tf.Example
    eval: beam.PCollection  # serialized tf.Example
    stats: beam.PCollection  # one dict {"train": {...}, "eval": {...}}
    transform_fn_written: beam.PCollection
    examples_written: beam.PCollection  # the names of the transformed/*.tfrecord.gz files, once written


class AnalyzeAndTransform(beam.PTransform):
    """Split, analyse (train split only) and transform documents with TFT.

    Input: a PCollection of `{id, text[, label]}` dicts (ReadCorpus output), or
    a pair ``(to_analyze, to_transform)`` of two reads of the same corpus.  With
    one PCollection, TFT's transform step can only start once the vocabulary is
    built, so a runner must keep every document until then: local runners hold
    them in memory (peak RSS grows with the corpus).  With the pair, the second
    read streams through the transform instead (`PreprocessCorpus` does this).
    Writes `transform_fn/` and `transformed_metadata/` under `output_dir` and
    `transformed/{train,eval}-*.tfrecord.gz`; returns a `TransformResult`.

    Must be applied inside `tft_beam.Context(temp_dir=...)`; `PreprocessCorpus`
    does that for you.
    """

    def __init__(
        self,
        *,
        config: PreprocessConfig,
        output_dir: str,
        batch_size: int = PreprocessJob.batch_size,
        write: bool = True,
    ) -> None:
        super().__init__()
        self._config = config
        self._output_dir = output_dir
        self._batch_size = batch_size
        self._write = write

    def expand(self, documents):  # a PCollection or a pair of them (see the class doc) -> TransformResult
        import tensorflow_transform.beam as tft_beam

        config = self._config
        arrow_schema = raw_arrow_schema(config)
        adapter_config = tensor_adapter_config(config)
        to_analyze, documents = documents if isinstance(documents, tuple) else (None, documents)
        split_step = "SplitByIdHash" if config.group_column is None else "SplitByGroupHash"
        train_docs, eval_docs = documents | split_step >> beam.Partition(_split_fn, 2, config.eval_fraction)

        def to_batches(pcoll: beam.PCollection, name: str) -> beam.PCollection:
            return (
                pcoll
                | f"Batch{name}" >> beam.BatchElements(min_batch_size=self._batch_size, max_batch_size=self._batch_size)
                | f"ToRecordBatch{name}" >> beam.Map(documents_to_record_batch, arrow_schema)
            )

        train_rb = to_batches(train_docs, "Train")
        eval_rb = to_batches(eval_docs, "Eval")
        analyze_rb = train_rb
        if to_analyze is not None:
            analyze_rb = to_batches(
                to_analyze | "KeepTrainToAnalyze" >> beam.Filter(
                    lambda d: _split_fn(d, 2, config.eval_fraction) == SPLIT_TRAIN), "Analyze")
        preprocessing_fn = make_preprocessing_fn(config)
        transform_fn = (analyze_rb, adapter_config) | "AnalyzeTrain" >> tft_beam.AnalyzeDataset(preprocessing_fn)

        outputs = {}
        stats = {}
        for name, rbs in (("Train", train_rb), ("Eval", eval_rb)):
            transformed = ((rbs, adapter_config), transform_fn) | f"Transform{name}" >> tft_beam.TransformDataset(
                output_record_batches=True
            )
            # TFT's encoder: the C++ RecordBatchToExamplesEncoder on whole Arrow batches, given the
            # transformed schema (the same tf.Examples as the schema-less encoder used before).
            outputs[name] = transformed | f"EncodeExamples{name}" >> tft_beam.EncodeTransformedDataset()
            batches = transformed[0] | f"DropPassthrough{name}" >> beam.Map(lambda t: t[0])
            stats[name.lower()] = (
                batches
                | f"BatchStats{name}" >> beam.Map(record_batch_stats, config.num_oov_buckets)
                | f"CombineStats{name}" >> beam.CombineGlobally(StatsCombineFn())
            )

        merged_stats = (
            stats["train"]
            | "MergeSplitStats"
            >> beam.Map(lambda train, ev: {"train": train, "eval": ev}, beam.pvalue.AsSingleton(stats["eval"]))
        )
        written = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(self._output_dir)
        examples_written = []
        if self._write:
            for name, examples in outputs.items():
                prefix = os.path.join(self._output_dir, C.TRANSFORMED_DIR, name.lower())
                examples_written.append(examples | f"Write{name}Examples" >> beam.io.WriteToTFRecord(
                    prefix,
                    file_name_suffix=TFRECORD_SUFFIX,
                    compression_type=beam.io.filesystem.CompressionTypes.GZIP,
                ))
        files = (tuple(examples_written) | "ExamplesWritten" >> beam.Flatten(pipeline=written.pipeline))
        return TransformResult(outputs["Train"], outputs["Eval"], merged_stats, written, files)


def dead_letter_reason_counts(dead_letter: beam.PCollection) -> beam.PCollection:
    """One dict {reason_code: count} over a dead-letter PCollection (empty dict if none)."""
    from beam_rnn.io import reason_code

    return (
        dead_letter
        | "DeadLetterReason" >> beam.Map(lambda d: reason_code(d[C.DEAD_REASON_KEY]))
        | "CountReasons" >> beam.combiners.Count.PerElement()
        | "ReasonsToDict" >> beam.combiners.ToDict()
    )


def _partial_stats(split_stats: dict, reason_counts: dict) -> dict[str, Any]:
    return {"splits": split_stats, "dead_letter_by_reason": dict(sorted(reason_counts.items()))}


def partial_stats(stats: beam.PCollection, reasons: beam.PCollection) -> beam.PCollection:
    """One dict: the split statistics and the dead-letter counts by reason (what `finalize_stats` completes)."""
    return stats | "AttachReasons" >> beam.Map(_partial_stats, beam.pvalue.AsSingleton(reasons, default_value={}))


def write_partial(partial: beam.PCollection, tmp_dir: str) -> beam.PCollection:
    """Writes the `partial_stats` dict to ``tmp_dir/stats_partial-*.json``; returns the file's name once written."""
    return (
        partial
        | "PartialStatsJson" >> beam.Map(json.dumps)
        | "WritePartialStats"
        >> beam.io.WriteToText(os.path.join(tmp_dir, PARTIAL_STATS_PREFIX), file_name_suffix=".json", num_shards=1)
    )


def finalize_stats(
    output_dir: str,
    *,
    config: PreprocessConfig,
    counters: Mapping[str, int],
    partial: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Complete stats.json once the outputs are written: vocabulary, labels, reconciliation.

    Args:
        output_dir: The preprocessing output directory.
        config: The preprocessing configuration used.
        counters: The reader's counts (`rows_in`, `replaced_chars`,
            `files_truncated`, `files_unreadable`, `documents_without_group`,
            see `beam_rnn.io.sum_read_counts`) and `sampled_out`, computed in the
            pipeline (`beam_rnn.preprocess.pipeline.PreprocessCorpus`); without
            `rows_in`, rows in are taken as documents + dead letters + sampled out.
        partial: The `partial_stats` dict; default: read from
            ``tmp/stats_partial-*.json``.

    Returns:
        The statistics written to `output_dir/stats.json`.
    """
    import tensorflow as tf

    if partial is None:
        tmp_dir = os.path.join(output_dir, C.TMP_DIR)
        [partial_path] = tf.io.gfile.glob(os.path.join(tmp_dir, PARTIAL_STATS_PREFIX + "*.json"))
        with tf.io.gfile.GFile(partial_path) as f:
            partial = json.loads(f.read())
    vocab = read_vocabulary(output_dir)
    label_vocab = read_label_vocabulary(output_dir)
    splits = partial["splits"]
    documents = sum(s["documents"] for s in splits.values())
    dead = sum(partial["dead_letter_by_reason"].values())
    sampled_out = int(counters.get("sampled_out", 0))
    rows_in = int(counters.get("rows_in", documents + dead + sampled_out))
    label_counts: collections.Counter = collections.Counter()
    for s in splits.values():
        label_counts.update(s["label_counts"])
    names = label_names(config, label_vocab)
    stats = {
        "rows_in": rows_in,
        "documents_out": documents,
        "dead_lettered": dead,
        "sampled_out": sampled_out,
        "reconciled": rows_in == documents + dead + sampled_out,
        "dead_letter_by_reason": partial["dead_letter_by_reason"],
        "replaced_undecodable_chars": int(counters.get("replaced_chars", 0)),
        # Files cut short / not decodable (each is also one dead letter, see beam_rnn.io).
        "files_truncated": int(counters.get("files_truncated", 0)),
        "files_unreadable": int(counters.get("files_unreadable", 0)),
        "vocabulary_words": len(vocab),
        "num_oov_buckets": config.num_oov_buckets,
        # Size of the id space a model's Embedding needs: padding + OOV + words.
        "vocab_size_with_reserved": len(vocab) + config.num_oov_buckets + 1,
        "splits": splits,
        "label_counts": dict(sorted(label_counts.items(), key=lambda kv: int(kv[0]))),
        "num_classes": _num_classes(config, label_counts),
        "label_names": names,
        # What the train/eval split was drawn from (see PreprocessConfig.group_column).
        "split_by": config.group_column or C.ID_KEY,
        "config": config.to_dict(),
    }
    if config.group_column is not None:
        stats["documents_without_group"] = int(counters.get("documents_without_group", 0))
    with tf.io.gfile.GFile(os.path.join(output_dir, C.STATS_FILE), "w") as f:
        f.write(json.dumps(stats, indent=2))
    return stats


def _num_classes(config: PreprocessConfig, label_counts: Mapping[str, int]) -> int:
    """K: the named classes (--class-names), else the highest label id seen + 1."""
    if config.class_names is not None:
        return len(config.class_names)
    return (max(int(k) for k in label_counts) + 1) if label_counts else 0


def output_problem(stats: Mapping[str, Any], config: PreprocessConfig,
                   max_dead_letter_fraction: float = 1.0) -> str | None:
    """Why a finished preprocessing run is not a usable training input (None when it is).

    * No documents at all (every row dead-lettered, sampled out, or an empty
      corpus): TFT would still write a one-word placeholder vocabulary.
    * Int labels that are not exactly 0..K-1 without a declared label set: a
      stray ``7`` in a 0/1 corpus would make an 8-class model.  (With a declared
      set the reader already dead-letters other labels.)
    * More than `max_dead_letter_fraction` of the rows dead-lettered.
    * A group column in which no document had a value (a misspelt column).

    Args:
        stats: The statistics `finalize_stats` wrote.
        config: The preprocessing configuration used.
        max_dead_letter_fraction: See `beam_rnn.preprocess.config.Corpus`.

    Returns:
        One line saying what is wrong and what to do, or None.
    """
    if stats["documents_out"] == 0:
        reasons = ", ".join(f"{k}: {v}" for k, v in stats["dead_letter_by_reason"].items()) or "none"
        return (f"no documents: {stats['rows_in']} rows read, {stats['dead_lettered']} dead-lettered "
                f"({reasons}), {stats['sampled_out']} sampled out; nothing to train on{_label_hint(stats, config)}")
    if config.group_column is not None and stats.get("documents_without_group") == stats["documents_out"]:
        return (f"no document had a value in the group column {config.group_column!r}: check --group-column "
                "(documents of one group must share a value there)")
    too_many = dead_letter_problem(stats["dead_lettered"], stats["rows_in"], max_dead_letter_fraction,
                                   stats.get("dead_letter_by_reason"))
    if too_many:
        return too_many + _label_hint(stats, config)
    if config.labelled and config.label_type == C.LABEL_TYPE_INT and not config.label_set:
        seen = sorted(int(k) for k in stats["label_counts"])
        if seen != list(range(len(seen))):
            prefix = 0  # the class ids 0..prefix-1 that are all present
            while prefix < len(seen) and seen[prefix] == prefix:
                prefix += 1
            declare = (f"pass --labels {','.join(map(str, range(prefix)))} to dead-letter the others, or "
                       if prefix >= 2 else "")
            return (f"int labels must be class ids 0..K-1, but the labels seen are {seen}: {declare}"
                    f"pass --label-type string to treat them as names")
    return None


def _label_hint(stats: Mapping[str, Any], config: PreprocessConfig) -> str:
    """What to do when most dead letters are int labels that did not parse (e.g. a corpus labelled "positive")."""
    reasons = stats.get("dead_letter_by_reason") or {}
    if config.label_type != C.LABEL_TYPE_INT or 2 * reasons.get(REASON_INVALID_LABEL, 0) <= stats["dead_lettered"]:
        return ""
    if config.class_names is not None:
        return f"; labels must be class ids 0..{len(config.class_names) - 1} or one of --class-names {','.join(config.class_names)}"
    return ("; int labels are class ids 0..K-1: for labels that are names (e.g. negative/positive) pass "
            "--class-names with them in id order (negative,positive), or --label-type string")


def vocabulary_path(output_dir: str, name: str = C.VOCAB_FILENAME) -> str:
    """Path of a TFT vocabulary asset under a preprocessing output dir."""
    return os.path.join(output_dir, C.TRANSFORM_FN_DIR, "assets", name)


def read_vocabulary(output_dir: str, name: str = C.VOCAB_FILENAME) -> list[str]:
    """Words of the vocabulary, most frequent first (word i has id i + num_oov + 1)."""
    import tensorflow as tf

    path = vocabulary_path(output_dir, name)
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path, "rb") as f:
        return [line.rstrip(b"\n").decode("utf-8") for line in f]


def read_label_vocabulary(output_dir: str) -> list[str] | None:
    """The built label vocabulary (string labels without a declared set), if any."""
    words = read_vocabulary(output_dir, C.LABEL_VOCAB_FILENAME)
    return words or None
