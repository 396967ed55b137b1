"""The whole preprocessing job: `PreprocessCorpus` (one composite transform) and `run_preprocess`.

`PreprocessCorpus`, applied to a pipeline root:

* ``ReadCorpus`` → ``SampleDocuments``: the documents to transform, and the dead letters
  (→ ``dead_letter/dead_letter-*.jsonl``);
* ``ReadCorpusToAnalyze`` → ``SampleDocumentsToAnalyze``: a second read, for the vocabulary only;
  both reads pass a `beam_rnn.io.progress.Progress` step (the console's live line);
* ``AnalyzeAndTransform`` → ``transform_fn/``, ``transformed_metadata/``,
  ``transformed/{train,eval}-*.tfrecord.gz`` and the split statistics, written with the
  dead-letter counts to ``tmp/stats_partial-*.json``.

`run_preprocess` runs it and then completes ``stats.json``, writes
``preprocess_config.json`` and, last, ``manifest.json``; `pipelines.preprocess` and
`pipelines.run_all` call it.
"""

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam

from beam_rnn.core import constants as C
from beam_rnn.core import progress
from beam_rnn.core.errors import RunFailed
from beam_rnn.preprocess.config import Corpus, PreprocessConfig, PreprocessJob
from beam_rnn.preprocess.transform import (
    AnalyzeAndTransform,
    KeepSample,
    dead_letter_reason_counts,
    write_partial_stats,
)

# Step names of the second read of the corpus (vocabulary only); its counters repeat
# the first read's and are left out of the statistics (`first_read_counters`).
READ_STEP = "ReadCorpus"
SAMPLE_STEP = "SampleDocuments"
ANALYZE_READ_STEPS = (READ_STEP + "ToAnalyze", SAMPLE_STEP + "ToAnalyze")
COUNTER_NAMESPACES = ("beam_rnn.io", "beam_rnn.preprocess.transform")


class PreprocessError(RunFailed):
    """The run finished but its output is not usable (one line); no manifest.json is written."""


class SampleDocuments(beam.PTransform):
    """Keeps a deterministic `fraction` of documents (by hash of the id); the rest are counted.

    At 1.0 the documents pass through untouched (no step is added).
    """

    def __init__(self, fraction: float) -> None:
        super().__init__()
        self._fraction = fraction

    def expand(self, docs: beam.PCollection) -> beam.PCollection:
        if self._fraction >= 1.0:
            return docs
        return docs | "KeepSample" >> beam.ParDo(KeepSample(self._fraction))


def maybe_sample(docs: beam.PCollection, fraction: float, label: str = SAMPLE_STEP) -> beam.PCollection:
    """`SampleDocuments` applied as `label` (no step at all at 1.0)."""
    if fraction >= 1.0:
        return docs
    return docs | label >> SampleDocuments(fraction)


class PreprocessResult(NamedTuple):
    """Outputs of `PreprocessCorpus` (PCollections); the first four are `AnalyzeAndTransform`'s."""

    train: beam.PCollection  # serialized tf.Example
    eval: beam.PCollection  # serialized tf.Example
    stats: beam.PCollection  # one dict {"train": {...}, "eval": {...}}
    transform_fn_written: beam.PCollection
    dead_letter: beam.PCollection
    partial_stats: beam.PCollection  # the name of tmp/stats_partial-*.json, once written


class PreprocessCorpus(beam.PTransform):
    """Read → sample → analyse and transform (TFT) → dead letters and split statistics written.

    Applied to a pipeline root.  Writes under `output_dir`: ``transform_fn/``,
    ``transformed_metadata/``, ``transformed/{train,eval}-*.tfrecord.gz``,
    ``dead_letter/dead_letter-*.jsonl`` and ``tmp/stats_partial-*.json`` (which
    `finalize_stats` turns into ``stats.json`` after the run).  TFT's temporary
    files go to ``output_dir/tmp``.

    Memory: the vocabulary is built from a second read of the corpus, so that the
    documents to transform stream through instead of being held until it is ready
    (see `AnalyzeAndTransform`); its counters repeat the first read's
    (`first_read_counters` leaves them out).
    """

    def __init__(self, corpus: Corpus, config: PreprocessConfig, output_dir: str, *,
                 batch_size: int = PreprocessJob.batch_size) -> None:
        super().__init__()
        self._corpus = corpus
        self._config = config
        self._output_dir = output_dir
        self._batch_size = batch_size

    def expand(self, root: beam.pvalue.PBegin):  # -> PreprocessResult
        import tensorflow_transform.beam as tft_beam

        from beam_rnn.io import WriteJsonLines
        from beam_rnn.io.progress import Progress

        corpus, output = self._corpus, self._output_dir
        tmp_dir = os.path.join(output, C.TMP_DIR)
        with tft_beam.Context(temp_dir=tmp_dir):
            group = self._config.group_column
            docs, dead = root | READ_STEP >> corpus.read(group_column=group)
            docs = maybe_sample(docs, corpus.sample_fraction) | "ProgressTokenised" >> Progress("tokenised")
            to_analyze, _ = root | ANALYZE_READ_STEPS[0] >> corpus.read(group_column=group)
            to_analyze = (maybe_sample(to_analyze, corpus.sample_fraction, label=ANALYZE_READ_STEPS[1])
                          | "ProgressVocabulary" >> Progress("vocabulary pass"))
            result = (to_analyze, docs) | "AnalyzeAndTransform" >> AnalyzeAndTransform(
                config=self._config, output_dir=output, batch_size=self._batch_size
            )
        _ = dead | "WriteDeadLetter" >> WriteJsonLines(os.path.join(output, C.DEAD_LETTER_DIR, "dead_letter"))
        partial = write_partial_stats(result.stats, dead_letter_reason_counts(dead), tmp_dir)
        return PreprocessResult(*result, dead, partial)


def first_read_counters(result: Any, namespaces: Sequence[str] = COUNTER_NAMESPACES) -> dict[str, int]:
    """Counters of a preprocess run, without those of the steps in `ANALYZE_READ_STEPS`."""
    from apache_beam.metrics.metric import MetricsFilter

    out: dict[str, int] = {}
    for namespace in namespaces:
        try:
            query = result.metrics().query(MetricsFilter().with_namespace(namespace))
        except Exception:  # Some runners do not support metrics queries; stats then omit them.
            return out
        for counter in query.get("counters", []):
            if any(part in ANALYZE_READ_STEPS for part in (counter.key.step or "").split("/")):
                continue
            value = counter.committed if counter.committed is not None else counter.attempted
            out[counter.key.metric.name] = out.get(counter.key.metric.name, 0) + int(value or 0)
    return out


def _clear_stale_outputs(output: str) -> None:
    import tensorflow as tf

    from beam_rnn.core.manifest import MANIFEST_FILE

    # Stale shards from an earlier run would be mixed into this run's data; the manifest
    # is rewritten when this run succeeds.
    for stale in (C.TRANSFORMED_DIR, MANIFEST_FILE, C.DEAD_LETTER_DIR, C.TMP_DIR):
        path = os.path.join(output, stale)
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        elif tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    tf.io.gfile.makedirs(os.path.join(output, C.TMP_DIR))


def run_preprocess(
    corpus: Corpus,
    config: PreprocessConfig,
    output: str,
    *,
    job: PreprocessJob = PreprocessJob(),
    pipeline_options: Any = None,
    save_main_session: bool = True,
) -> dict[str, Any]:
    """Runs the preprocessing job and writes everything under `output`; returns stats.json's contents.

    Args:
        corpus: What to read (and sample).
        config: The text → token id settings (`corpus.preprocess_config(...)` builds
            one with the corpus's label settings).
        output: Output directory (local or gs://); earlier outputs there are replaced.
        job: Batch size and whether to keep OUTPUT/tmp.
        pipeline_options: A `PipelineOptions`, or Beam's command-line flags (default:
            none, i.e. the local runner).
        save_main_session: Pickle the main session for remote workers.

    Raises:
        PreprocessError: The corpus gave no documents, or int labels that are not
            0..K-1 (without declared labels); stats.json and the dead letters are
            kept and no manifest.json is written.
    """
    from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

    from beam_rnn.cli.runtime import pipeline_options as options_from_flags

    corpus.check_group_column(config.group_column)
    options = pipeline_options
    if not isinstance(options, PipelineOptions):
        options = options_from_flags(list(options or ()))
    options.view_as(SetupOptions).save_main_session = save_main_session
    _clear_stale_outputs(output)
    with progress.task("preprocess"), beam.Pipeline(options=options) as p:
        _ = p | "PreprocessCorpus" >> PreprocessCorpus(corpus, config, output, batch_size=job.batch_size)
    return finish_preprocess(output, config, first_read_counters(p.result), keep_tmp=job.keep_tmp,
                             max_dead_letter_fraction=corpus.max_dead_letter_fraction)


def finish_preprocess(output: str, config: PreprocessConfig, counters: Mapping[str, int], *,
                      keep_tmp: bool = False, max_dead_letter_fraction: float = 1.0) -> dict[str, Any]:
    """After the pipeline: stats.json, preprocess_config.json, OUTPUT/tmp removed, then the manifest.

    Args:
        output: The preprocessing output directory (the pipeline wrote its
            ``tmp/stats_partial-*.json``).
        config: The configuration the pipeline used.
        counters: The run's counters (`first_read_counters`).
        keep_tmp: Keep OUTPUT/tmp.
        max_dead_letter_fraction: Fail when a larger share of the rows was dead-lettered.

    Returns:
        stats.json's contents.

    Raises:
        PreprocessError: See `run_preprocess`; no manifest.json is written.
    """
    import tensorflow as tf

    from beam_rnn.core.manifest import MANIFEST_FILE, write_manifest
    from beam_rnn.preprocess.transform import finalize_stats, output_problem

    stats = finalize_stats(output, config=config, counters=counters)
    without = stats.get("documents_without_group", 0)
    if 0 < without < stats["documents_out"]:
        logging.getLogger(__name__).warning(
            "%s of %s documents had no value in the group column %r: each of them is split by its id",
            f"{without:,}", f"{stats['documents_out']:,}", config.group_column)
    with tf.io.gfile.GFile(os.path.join(output, C.PREPROCESS_CONFIG_FILE), "w") as f:
        f.write(config.to_json())
    if not keep_tmp:
        tf.io.gfile.rmtree(os.path.join(output, C.TMP_DIR))
    problem = output_problem(stats, config, max_dead_letter_fraction)
    if problem:  # stats.json and the dead letters stay for diagnosis; without a manifest nothing trains on it
        raise PreprocessError(f"{problem} (see {os.path.join(output, C.STATS_FILE)}; no {MANIFEST_FILE} written)")
    # Last: readers (train, embeddings) verify the output against it before work.
    write_manifest(output, exclude=(C.TMP_DIR + "/",))
    return stats


def summary_line(stats: Mapping[str, Any]) -> dict[str, Any]:
    """The counts `pipelines.preprocess` prints (one JSON line)."""
    keys = ("rows_in", "documents_out", "dead_lettered", "reconciled", "vocabulary_words", "split_by",
            "documents_without_group")
    return {k: stats[k] for k in keys if k in stats}
