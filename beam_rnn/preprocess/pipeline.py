"""The whole preprocessing job: `PreprocessCorpus` (one composite transform) and `run_preprocess`.

`PreprocessCorpus`, applied to a pipeline root:

* ``ReadCorpus`` → ``SampleDocuments``: the documents to transform, and the dead letters
  (→ ``dead_letter/dead_letter-*.jsonl``), with the reader's counts and the sampled-out
  count as data;
* ``ReadCorpusToAnalyze`` → ``SampleDocumentsToAnalyze``: a second read, for the vocabulary only;
  both reads pass a `beam_rnn.io.progress.Progress` step (the console's live line);
* ``AnalyzeAndTransform`` → ``transform_fn/``, ``transformed_metadata/``,
  ``transformed/{train,eval}-*.tfrecord.gz`` and the split statistics, written with the
  dead-letter counts to ``tmp/stats_partial-*.json``;
* ``Finish``, the last stage, once every file above is written (`finish_output`): ``stats.json``,
  ``preprocess_config.json``, ``OUTPUT/tmp`` removed, the output checked (`output_problem`) and,
  when it is usable, ``manifest.json`` last.  So the output is complete whoever runs the job,
  also when no driver waits for it (a Dataflow Flex Template launch).

`run_preprocess` builds and runs it; `pipelines.preprocess` and `pipelines.run_all` call it.
"""

import json
import logging
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import apache_beam as beam

from beam_rnn.core import constants as C
from beam_rnn.core import progress
from beam_rnn.core.errors import RunFailed
from beam_rnn.preprocess.config import Corpus, PreprocessConfig, PreprocessJob
from beam_rnn.preprocess.transform import (
    SAMPLED_OUT_TAG,
    AnalyzeAndTransform,
    KeepSample,
    dead_letter_reason_counts,
    partial_stats,
    write_partial,
)

# Step names of the second read of the corpus (vocabulary only); its counters repeat
# the first read's, and its counts are not part of the statistics.
READ_STEP = "ReadCorpus"
SAMPLE_STEP = "SampleDocuments"
ANALYZE_READ_STEPS = (READ_STEP + "ToAnalyze", SAMPLE_STEP + "ToAnalyze")


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


def sample_and_count(docs: beam.PCollection, fraction: float,
                     label: str = SAMPLE_STEP) -> tuple[beam.PCollection, beam.PCollection]:
    """`maybe_sample`, plus the number of documents left out: a PCollection of one int (0 at 1.0)."""
    if fraction >= 1.0:
        return docs, docs.pipeline | f"{label}None" >> beam.Create([0])
    kept = docs | label >> beam.ParDo(KeepSample(fraction, tag_sampled_out=True)).with_outputs(
        SAMPLED_OUT_TAG, main="kept")
    return kept.kept, kept[SAMPLED_OUT_TAG] | f"Count{label}Out" >> beam.combiners.Count.Globally()


class PreprocessResult(NamedTuple):
    """Outputs of `PreprocessCorpus` (PCollections); the first five are `AnalyzeAndTransform`'s."""

    train: beam.PCollection  # serialized tf.Example
    eval: beam.PCollection  # serialized tf.Example
    stats: beam.PCollection  # one dict {"train": {...}, "eval": {...}}
    transform_fn_written: beam.PCollection
    examples_written: beam.PCollection  # the transformed/*.tfrecord.gz file names, once written
    dead_letter: beam.PCollection
    partial_stats: beam.PCollection  # the name of tmp/stats_partial-*.json, once written
    finished: beam.PCollection  # stats.json's contents once the last stage is done (empty with finish=False)


class PreprocessCorpus(beam.PTransform):
    """Read → sample → analyse and transform (TFT) → dead letters and statistics → finished output.

    Applied to a pipeline root.  Writes under `output_dir`: ``transform_fn/``,
    ``transformed_metadata/``, ``transformed/{train,eval}-*.tfrecord.gz``,
    ``dead_letter/dead_letter-*.jsonl`` and ``tmp/stats_partial-*.json``; then, as
    its last stage, after all of them (`finish_output`): ``stats.json``,
    ``preprocess_config.json``, ``OUTPUT/tmp`` removed (unless `keep_tmp`) and
    ``manifest.json`` when the output is usable.  TFT's temporary files go to
    ``output_dir/tmp``.  Every number of the statistics is computed in the
    pipeline (rows in are counted where the rows are read), not taken from the
    runner's counters, so the output is the same whether or not a driver waits.

    One check, two reporters: an unusable output (`output_problem`) gets no
    manifest.json, and with `fail_on_problem` the last stage then raises
    `PreprocessError` after writing stats.json, so that the job fails; a driver
    that waits turns it off and raises the same error itself (`check_finished`).

    Memory: the vocabulary is built from a second read of the corpus, so that the
    documents to transform stream through instead of being held until it is ready
    (see `AnalyzeAndTransform`); its counts are not used.
    """

    def __init__(self, corpus: Corpus, config: PreprocessConfig, output_dir: str, *,
                 batch_size: int = PreprocessJob.batch_size, keep_tmp: bool = PreprocessJob.keep_tmp,
                 finish: bool = True, fail_on_problem: bool = True) -> None:
        super().__init__()
        if config.class_names is not None:
            corpus = corpus.naming(config.class_names)  # rows may be labelled "positive" as well as 1
            if corpus.labels is None:
                corpus = corpus.declaring(config.label_set)  # K class names declare the ids 0..K-1
        self._corpus = corpus
        self._config = config
        self._output_dir = output_dir
        self._batch_size = batch_size
        self._keep_tmp = keep_tmp
        self._finish = finish
        self._fail_on_problem = fail_on_problem

    def expand(self, root: beam.pvalue.PBegin):  # -> PreprocessResult
        import tensorflow_transform.beam as tft_beam

        from beam_rnn.io import WriteJsonLines
        from beam_rnn.io.progress import Progress

        corpus, output = self._corpus, self._output_dir
        tmp_dir = os.path.join(output, C.TMP_DIR)
        with tft_beam.Context(temp_dir=tmp_dir):
            group = self._config.group_column
            docs, dead, read_counts = root | READ_STEP >> corpus.read(group_column=group, with_counts=True)
            docs, sampled_out = sample_and_count(docs, corpus.sample_fraction)
            docs = docs | "ProgressTokenised" >> Progress("tokenised")
            to_analyze, _ = root | ANALYZE_READ_STEPS[0] >> corpus.read(group_column=group)
            to_analyze = (maybe_sample(to_analyze, corpus.sample_fraction, label=ANALYZE_READ_STEPS[1])
                          | "ProgressVocabulary" >> Progress("vocabulary pass"))
            result = (to_analyze, docs) | "AnalyzeAndTransform" >> AnalyzeAndTransform(
                config=self._config, output_dir=output, batch_size=self._batch_size
            )
        dead_written = dead | "WriteDeadLetter" >> WriteJsonLines(os.path.join(output, C.DEAD_LETTER_DIR,
                                                                                "dead_letter"))
        partial = partial_stats(result.stats, dead_letter_reason_counts(dead))
        partial_written = write_partial(partial, tmp_dir)
        if not self._finish:
            return PreprocessResult(*result, dead, partial_written, root | "NotFinished" >> beam.Create([]))
        # The last stage.  A side input is complete before its consumer runs, so every write is done by then.
        written = [result.transform_fn_written, result.examples_written, dead_written, partial_written]
        finished = root | "Finish" >> beam.Create([None]) | "FinishOutput" >> beam.Map(
            _finish_stage, *map(beam.pvalue.AsList, written),
            partial=beam.pvalue.AsSingleton(partial), read_counts=beam.pvalue.AsSingleton(read_counts),
            sampled_out=beam.pvalue.AsSingleton(sampled_out), output=output, config=self._config,
            keep_tmp=self._keep_tmp, max_dead_letter_fraction=corpus.max_dead_letter_fraction,
            fail_on_problem=self._fail_on_problem)
        return PreprocessResult(*result, dead, partial_written, finished)


def _finish_stage(_: None, *written: list, partial: Mapping[str, Any], read_counts: Mapping[str, int],
                  sampled_out: int, output: str, config: PreprocessConfig, keep_tmp: bool,
                  max_dead_letter_fraction: float, fail_on_problem: bool) -> dict[str, Any]:
    """`PreprocessCorpus`'s last stage (`written`: the file names of every write, only waited for)."""
    counts = dict(read_counts, sampled_out=sampled_out)
    stats, problem = finish_output(output, config, counts, partial=partial, keep_tmp=keep_tmp,
                                   max_dead_letter_fraction=max_dead_letter_fraction)
    if fail_on_problem:  # no driver reports it: the job fails here (the line is in the worker's log)
        report_finished(output, stats, config, problem)
    return stats


def _clear_stale_outputs(output: str) -> None:
    import tensorflow as tf

    from beam_rnn.core.manifest import MANIFEST_FILE

    # Stale shards from an earlier run would be mixed into this run's data; the manifest
    # and the statistics are rewritten by this run's last stage.
    for stale in (C.TRANSFORMED_DIR, MANIFEST_FILE, C.STATS_FILE, C.DEAD_LETTER_DIR, C.TMP_DIR):
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
) -> dict[str, Any] | None:
    """Runs the preprocessing job, which writes everything under `output`; returns stats.json's contents.

    Args:
        corpus: What to read (and sample).
        config: The text → token id settings (`corpus.preprocess_config(...)` builds
            one with the corpus's label settings).
        output: Output directory (local or gs://); earlier outputs there are replaced.
        job: Batch size and whether to keep OUTPUT/tmp.
        pipeline_options: A `PipelineOptions`, or Beam's command-line flags (default:
            none, i.e. the local runner).
        save_main_session: Pickle the main session for remote workers.

    Returns:
        stats.json's contents; None when the driver does not wait for the job
        (`beam_rnn.cli.runtime.driver_waits`, e.g. ``--template_location``): the job
        then finishes its output itself, and fails when the output is unusable.

    Raises:
        PreprocessError: The corpus gave no documents, int labels that are not
            0..K-1 (without declared labels), too many dead letters (`output_problem`);
            stats.json and the dead letters are kept and no manifest.json is written.
    """
    import tensorflow as tf
    from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

    from beam_rnn.cli.runtime import driver_waits
    from beam_rnn.cli.runtime import pipeline_options as options_from_flags

    corpus.check_group_column(config.group_column)
    options = pipeline_options
    if not isinstance(options, PipelineOptions):
        options = options_from_flags(list(options or ()))
    options.view_as(SetupOptions).save_main_session = save_main_session
    waits = driver_waits(options)
    _clear_stale_outputs(output)
    p = beam.Pipeline(options=options)
    _ = p | "PreprocessCorpus" >> PreprocessCorpus(corpus, config, output, batch_size=job.batch_size,
                                                   keep_tmp=job.keep_tmp, fail_on_problem=not waits)
    with progress.task("preprocess"):
        result = p.run()
        if not waits:
            return None
        result.wait_until_finish()
    with tf.io.gfile.GFile(os.path.join(output, C.STATS_FILE)) as f:
        stats = json.loads(f.read())
    return check_finished(output, stats, config, corpus.max_dead_letter_fraction)


def check_finished(output: str, stats: dict[str, Any], config: PreprocessConfig,
                   max_dead_letter_fraction: float) -> dict[str, Any]:
    """A waiting driver's report on a finished output (`report_finished`).

    The check is the `output_problem` the last stage applied before it wrote (or did not write) the manifest.
    """
    from beam_rnn.preprocess.transform import output_problem

    return report_finished(output, stats, config, output_problem(stats, config, max_dead_letter_fraction))


def report_finished(output: str, stats: dict[str, Any], config: PreprocessConfig, problem: str | None) -> dict[str, Any]:
    """Logs how many documents had no group value (when some, not all, had none); raises `PreprocessError` for a
    `problem`; else returns `stats`."""
    from beam_rnn.core.manifest import MANIFEST_FILE

    without = stats.get("documents_without_group", 0)
    if 0 < without < stats["documents_out"]:
        logging.getLogger(__name__).warning(
            "%s of %s documents had no value in the group column %r: each of them is split by its id",
            f"{without:,}", f"{stats['documents_out']:,}", config.group_column)
    if problem:
        raise PreprocessError(f"{problem} (see {os.path.join(output, C.STATS_FILE)}; no {MANIFEST_FILE} written)")
    return stats


def finish_output(output: str, config: PreprocessConfig, counts: Mapping[str, int], *,
                  partial: Mapping[str, Any] | None = None, keep_tmp: bool = False,
                  max_dead_letter_fraction: float = 1.0) -> tuple[dict[str, Any], str | None]:
    """Once every file is written: stats.json, preprocess_config.json, OUTPUT/tmp removed, then the manifest.

    Safe to repeat (a runner may retry the last stage): it reads nothing under OUTPUT/tmp
    when `partial` is given.

    Args:
        output: The preprocessing output directory.
        config: The configuration the pipeline used.
        counts: The reader's counts and ``sampled_out`` (see `finalize_stats`).
        partial: The split statistics and dead-letter counts (default: read
            from ``tmp/stats_partial-*.json``).
        keep_tmp: Keep OUTPUT/tmp.
        max_dead_letter_fraction: A larger share of dead-lettered rows is a problem.

    Returns:
        (stats.json's contents, `output_problem`: None when manifest.json was written).
    """
    import tensorflow as tf

    from beam_rnn.core.manifest import write_manifest
    from beam_rnn.preprocess.transform import finalize_stats, output_problem

    stats = finalize_stats(output, config=config, counters=counts, partial=partial)
    with tf.io.gfile.GFile(os.path.join(output, C.PREPROCESS_CONFIG_FILE), "w") as f:
        f.write(config.to_json())
    tmp = os.path.join(output, C.TMP_DIR)
    if not keep_tmp and tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    problem = output_problem(stats, config, max_dead_letter_fraction)
    if not problem:  # else stats.json and the dead letters stay for diagnosis; without a manifest nothing trains
        # Last: readers (train, embeddings) verify the output against it before work.
        write_manifest(output, exclude=(C.TMP_DIR + "/",))
    return stats, problem


def finish_preprocess(output: str, config: PreprocessConfig, counters: Mapping[str, int], *,
                      keep_tmp: bool = False, max_dead_letter_fraction: float = 1.0) -> dict[str, Any]:
    """`finish_output` from ``tmp/stats_partial-*.json``, after a pipeline built from `PreprocessCorpus`'s parts.

    Returns:
        stats.json's contents.

    Raises:
        PreprocessError: See `run_preprocess`; no manifest.json is written.
    """
    stats, problem = finish_output(output, config, counters, keep_tmp=keep_tmp,
                                   max_dead_letter_fraction=max_dead_letter_fraction)
    return report_finished(output, stats, config, problem)


def summary_line(stats: Mapping[str, Any]) -> dict[str, Any]:
    """The counts `pipelines.preprocess` prints (one JSON line)."""
    keys = ("rows_in", "documents_out", "dead_lettered", "reconciled", "vocabulary_words", "split_by",
            "documents_without_group")
    return {k: stats[k] for k in keys if k in stats}
