"""The score and evaluate runs as library calls: checks before work, the pipeline, the files.

`pipelines/score.py` and `pipelines/evaluate.py` parse flags into a `Corpus` and a
config and call `run_score` / `run_evaluate`.  Every problem found before the
pipeline starts (a missing or damaged model, bad settings) is an `InputError`
subclass: one line, exit status 2, nothing written.
"""

import logging
import os
from collections.abc import Sequence
from typing import Any

from beam_rnn.core import constants as C
from beam_rnn.core import progress
from beam_rnn.core.artifacts import (
    ModelInfo,
    expand_model_dirs,
    read_model_card,
    resolve_models,
    verify_model_files,
)
from beam_rnn.core.errors import InputError, RunFailed, dead_letter_problem, reason_counts_text
from beam_rnn.preprocess.config import PreprocessConfig
from beam_rnn.serve.config import EvaluateConfig, ScoreConfig


def _pipeline(pipeline_args: Sequence[str], save_main_session: bool):
    import apache_beam as beam  # pylint: disable=import-outside-toplevel
    from apache_beam.options.pipeline_options import SetupOptions  # pylint: disable=import-outside-toplevel

    from beam_rnn.cli.runtime import pipeline_options  # pylint: disable=import-outside-toplevel

    options = pipeline_options(pipeline_args)
    options.view_as(SetupOptions).save_main_session = save_main_session
    return beam.Pipeline(options=options)


def check_models(models: Any, *, load: bool = True, streaming_files: bool = False) -> tuple[ModelInfo, ...]:
    """Resolves ``--model`` values (a training output counts as its exports) and verifies what will be read.

    Args:
      models: As `resolve_models` takes them; directories holding ``bilstm/`` and
        ``lstm/`` are expanded (`expand_model_dirs`).
      load: Load each SavedModel once on the launcher.
      streaming_files: Also verify the files the token-by-token pass of a streaming
        (``lstm`` kind) model reads (evaluation's early predictions).

    Raises:
      ModelDirError: A model is missing or damaged (named), does not load, or the
        models do not share classes.
    """
    from beam_rnn.serve.handler import check_model_loads  # pylint: disable=import-outside-toplevel

    if isinstance(models, str) or (isinstance(models, Sequence) and all(isinstance(m, str) for m in models)):
        models = expand_model_dirs(models)
    infos = resolve_models(models)
    for info in infos:
        if streaming_files and info.kind == C.MODEL_LSTM:
            from beam_rnn.train.export import VOCAB_TEXT_FILE  # pylint: disable=import-outside-toplevel

            verify_model_files(info.model_dir, [C.STEP_WEIGHTS_FILE, VOCAB_TEXT_FILE])
        if load:
            check_model_loads(info)
    return infos


def fit_corpus_to_models(corpus: Any, infos: Sequence[ModelInfo]) -> Any:
    """The corpus read with the labels of the models' card: label type, and declared labels checked.

    A corpus whose ``--label-type`` was not given takes the model's (string labels
    when the card names the classes); a model with named int classes reads a row's
    label by id or by name (``1`` or ``positive``); one that was given and differs, or declared
    ``--labels`` that are not classes of the model, is an `InputError` before any
    work.  Rows whose label is no class of the model are scored with a null
    ``true_label`` by `run_score`, and dead-lettered (``label_not_in_model``) by
    `run_evaluate`, where the dead-letter limit fails a run made mostly of them.
    """
    import dataclasses  # pylint: disable=import-outside-toplevel

    info = infos[0]
    if not corpus.config.labelled:
        return corpus
    want = info.label_type
    if info.label_names is None:
        classes = f"0..{info.num_classes - 1}"
    elif want == C.LABEL_TYPE_INT:
        classes = ", ".join(f"{i}={name}" for i, name in enumerate(info.label_names))
    else:
        classes = ", ".join(info.label_names)
    if corpus.config.label_type != want and not corpus.label_type_from_model:
        raise InputError(f"--label-type {corpus.config.label_type} does not fit the model {info.model_dir}: it was "
                         f"trained on {want} labels ({classes}); leave --label-type out to use the model's")
    # Named int classes: a row may give its class by id or by name ("positive" as 1).
    names = tuple(info.label_names) if want == C.LABEL_TYPE_INT and info.label_names is not None else None
    try:
        corpus = dataclasses.replace(corpus, config=dataclasses.replace(
            corpus.config, label_type=want, class_names=names, label_set=corpus.labels))
    except ValueError as e:
        raise InputError(f"--labels {','.join(corpus.labels or ())}: {e} (the model's classes: {classes})") from e
    if corpus.labels:
        strangers = [label for label in corpus.labels if info.class_index(label) is None]
        if strangers:
            raise InputError(f"--labels {','.join(strangers)}: not classes of the model {info.model_dir} "
                             f"(its classes: {classes})")
    return corpus


def run_score(models: Any, corpus: Any, config: ScoreConfig, output: str,
              pipeline_args: Sequence[str] = (), *, save_main_session: bool = False) -> dict[str, Any] | None:
    """Scores `corpus` with `models` into files under the prefix `output` (see `beam_rnn.serve.write`).

    The pipeline's last stage runs once every file is written and applies the
    dead-letter limit (`score_problem`).  One check, two reporters: it raises
    (the job fails) only when no driver waits; a waiting driver raises the same
    `RunFailed` line itself from the summary.

    Args:
      models: Model dirs or ``NAME=DIR`` entries (`beam_rnn.core.artifacts.resolve_models`).
      corpus: A `beam_rnn.preprocess.config.Corpus` (sampling is not allowed: score scores every document).
      config: The scoring settings.
      output: Output prefix (local or any Beam filesystem).
      pipeline_args: Beam pipeline flags.
      save_main_session: Pickle the main session for remote workers (not needed).

    Returns:
      The summary's counters (rows in, scored, dead-lettered, reconciled, ...), the
      models, the output patterns, the summary itself and ``duplicate_ids``; None
      when the driver does not wait for the job (`beam_rnn.cli.runtime.driver_waits`,
      e.g. ``--template_location``).

    Raises:
      InputError: Before any work: a model is unusable, the settings are, or the
        corpus's labels do not fit the model (`fit_corpus_to_models`).
      RunFailed: More than the corpus's ``max_dead_letter_fraction`` of the rows
        were dead letters (the outputs are written).
    """
    import apache_beam as beam  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from beam_rnn.cli.runtime import driver_waits  # pylint: disable=import-outside-toplevel
    from beam_rnn.io import WriteJsonLines  # pylint: disable=import-outside-toplevel
    from beam_rnn.io.progress import Progress  # pylint: disable=import-outside-toplevel
    from beam_rnn.serve.score import ScoreCorpus  # pylint: disable=import-outside-toplevel
    from beam_rnn.serve.write import (  # pylint: disable=import-outside-toplevel
        WriteScores,
        delete_stale_outputs,
        output_patterns,
        read_summary,
        write_summary,
    )

    infos = check_models(models, load=not config.skip_model_load_check)
    corpus = fit_corpus_to_models(corpus, infos)
    if corpus.sample_fraction != 1.0:
        raise InputError("--sample-fraction is a preprocessing option; score scores every document "
                         "(sample the corpus files instead)")
    try:
        score = ScoreCorpus.from_config(infos, config, corpus=corpus.read(with_counts=True))
    except ValueError as e:
        raise InputError(str(e)) from e
    parent = output.rsplit("/", 1)[0] if "/" in output else ""
    if parent and "://" not in parent:
        tf.io.gfile.makedirs(parent)
    delete_stale_outputs(output, config.output_format)
    outputs = output_patterns(output, config.output_format)
    p = _pipeline(pipeline_args, save_main_session)
    waits = driver_waits(p.options)
    result = p | "ScoreCorpus" >> score
    _ = result.scores | "ProgressScored" >> Progress("scored")
    written = [
        result.scores | "WriteScores" >> WriteScores(
            output, output_format=config.output_format, columns=score.columns, num_shards=config.num_shards),
        result.dead_letter | "WriteDeadLetter" >> WriteJsonLines(output + "-dead_letter"),
        write_summary(result.summary, output),
    ]
    # The last stage: its side inputs are complete before it runs, so every file is written by then.
    _ = (p | "Finish" >> beam.Create([None])
         | "CheckRun" >> beam.Map(_finish_stage, *map(beam.pvalue.AsList, written),
                                  summary=beam.pvalue.AsSingleton(result.summary),
                                  max_dead_letter_fraction=corpus.max_dead_letter_fraction,
                                  dead_letters=outputs["dead_letter"], fail_on_problem=not waits))
    with progress.task("score"):
        run = p.run()
        if not waits:
            return None
        run.wait_until_finish()
    summary = read_summary(outputs["summary"])
    report = dict(summary["counters"], models={i.name: i.model_dir for i in infos}, outputs=outputs, summary=summary)
    report["reconciled"] = bool(summary["counters"]["reconciled"])
    report["duplicate_ids"] = summary.get("duplicate_ids")
    _warn_duplicate_ids(summary)
    problem = score_problem(summary, corpus.max_dead_letter_fraction, outputs["dead_letter"])
    if problem:
        raise RunFailed(problem)
    return report


def score_problem(summary: dict[str, Any], max_dead_letter_fraction: float, dead_letters: str) -> str | None:
    """Why a finished score run failed (more than `max_dead_letter_fraction` of its rows dead-lettered), or None."""
    counters = summary["counters"]
    reasons: dict[str, int] = {}
    for by_reason in summary.get("dead_letter_by_stage_and_reason", {}).values():
        for reason, n in by_reason.items():
            reasons[reason] = reasons.get(reason, 0) + n
    problem = dead_letter_problem(counters["dead_lettered"], counters["rows_in"], max_dead_letter_fraction, reasons)
    return f"{problem}; the dead letters are in {dead_letters}" if problem else None


def _warn_duplicate_ids(summary: dict[str, Any]) -> None:
    if summary.get("duplicate_ids"):
        logging.getLogger("beam_rnn").warning(
            "%d of %d scored documents repeat an earlier document id (%d distinct ids)",
            summary["duplicate_ids"], summary["ids"], summary["distinct_ids"])


def _finish_stage(_: None, *written: list, summary: dict[str, Any], max_dead_letter_fraction: float,
                  dead_letters: str, fail_on_problem: bool) -> None:
    """`run_score`'s last stage (`written`: the file names of every write, only waited for)."""
    if fail_on_problem:  # no driver reports it: the job fails here (the line is in the worker's log)
        _warn_duplicate_ids(summary)
        problem = score_problem(summary, max_dead_letter_fraction, dead_letters)
        if problem:
            raise RunFailed(problem)


def run_evaluate(models: Any, corpus: Any, config: EvaluateConfig, output: str,
                 pipeline_args: Sequence[str] = (), *, save_main_session: bool = True) -> dict[str, Any]:
    """Evaluates `models` (see `check_models`) on a labelled `corpus`; writes the report into `output`.

    Writes OUTPUT/metrics.json, OUTPUT/*.png, OUTPUT/report.html, per-document
    records (OUTPUT/records-*.jsonl) and dead letters (OUTPUT/dead_letter-*.jsonl).

    Returns:
      metrics.json's contents, plus the report's path (``report``).

    Raises:
      InputError: Before any work: no usable model, an unlabelled corpus, labels
        that do not fit the model (`fit_corpus_to_models`).
      RunFailed: No document was evaluated, or more than the corpus's
        ``max_dead_letter_fraction`` of the rows were dead letters (the report is written).
    """
    import apache_beam as beam  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from beam_rnn.io import WriteJsonLines  # pylint: disable=import-outside-toplevel
    from beam_rnn.io.progress import Progress  # pylint: disable=import-outside-toplevel
    from beam_rnn.preprocess.pipeline import maybe_sample  # pylint: disable=import-outside-toplevel
    from beam_rnn.preprocess.transform import dead_letter_reason_counts  # pylint: disable=import-outside-toplevel
    from beam_rnn.serve.evaluate import EvaluateModels  # pylint: disable=import-outside-toplevel
    from beam_rnn.serve.report import (  # pylint: disable=C0415
        REPORT_FILE,
        latency_texts,
        measure_latency,
        read_metrics,
    )

    if not corpus.config.labelled:
        raise InputError("evaluate needs a labelled corpus")
    infos = check_models(models, streaming_files=True)
    corpus = fit_corpus_to_models(corpus, infos)
    cards = [read_model_card(info.model_dir) for info in infos]
    card = cards[0]
    if config.split == "eval":
        refit = [info.name for info, c in zip(infos, cards) if (c.get("metrics") or {}).get("refit")]
        if refit:
            raise InputError(f"--split eval is not held out for {', '.join(refit)}: refit on the train and eval "
                             "splits together (train --refit); evaluate it on other data")
    keep, group_column = model_split(card, config.split)
    if group_column is not None:
        try:
            corpus.check_group_column(group_column)
        except InputError as e:
            raise InputError(f"--split {config.split} draws the model's split again, by group: {e}") from e
    evaluate = EvaluateModels(models=infos, config=config)
    # Measured on the launcher before the run, so that the report is written once, by the pipeline.
    extra = {"split": config.split, "model_dirs": {info.name: info.model_dir for info in infos},
             "latency": measure_latency(infos, latency_texts(infos[0].model_dir))}
    for stale in tf.io.gfile.glob(os.path.join(output, "records-*")) + tf.io.gfile.glob(
            os.path.join(output, "dead_letter-*")):
        tf.io.gfile.remove(stale)
    with progress.task("evaluate"), _pipeline(pipeline_args, save_main_session) as p:
        read, read_dead = p | "ReadCorpus" >> corpus.read(group_column=group_column)
        docs = read
        if keep is not None:
            docs = docs | "KeepSplit" >> beam.Filter(keep)
        docs = maybe_sample(docs, corpus.sample_fraction)
        result = docs | "EvaluateModels" >> evaluate
        _ = result.records | "ProgressEvaluated" >> Progress("evaluated")
        _ = result.records | "WriteRecords" >> WriteJsonLines(os.path.join(output, "records"))
        dead = (read_dead, result.dead_letter) | "AllDeadLetters" >> beam.Flatten()
        _ = dead | "WriteDeadLetters" >> WriteJsonLines(os.path.join(output, "dead_letter"))
        counts = [pc | f"Count{name}" >> beam.combiners.Count.Globally()
                  for name, pc in (("Read", read), ("ReadDeadLetters", read_dead), ("DeadLetters", dead))]
        counts.append(dead_letter_reason_counts(dead))
        _ = (result.metrics
             | "CompleteMetrics" >> beam.Map(_complete_metrics, *map(beam.pvalue.AsSingleton, counts), extra=extra)
             | "WriteReport" >> beam.Map(_write_report, output))
    metrics = read_metrics(output)
    metrics["report"] = os.path.join(output, REPORT_FILE)
    where = f"see {os.path.join(output, 'dead_letter-*.jsonl')}"
    reasons = metrics.get("dead_letter_by_reason") or {}
    if not metrics["documents"]:
        why = f" ({reason_counts_text(reasons)})" if reasons else ""
        raise RunFailed(f"no document was evaluated ({metrics['rows_in']:,} rows read, {metrics['dead_lettered']:,} "
                        f"dead-lettered{why}{'' if config.split == 'all' else f', --split {config.split}'}); {where}")
    problem = dead_letter_problem(metrics["dead_lettered"], metrics["rows_in"], corpus.max_dead_letter_fraction,
                                  reasons)
    if problem:
        raise RunFailed(f"{problem}; {where}")
    return metrics


def model_split(card: dict[str, Any], split: str) -> tuple[Any, str | None]:
    """The documents of `split` ("train", "eval", "all") of a model's preprocessing, drawn again.

    Returns:
        (predicate on documents or None for "all", the group column the documents must be read with or None):
        the card's ``preprocess_config`` fraction, of ids or, with its ``group_column``, of groups.
    """
    from beam_rnn.preprocess.transform import SPLIT_EVAL, SPLIT_TRAIN, split_of  # pylint: disable=C0415

    wanted = {"eval": SPLIT_EVAL, "train": SPLIT_TRAIN}.get(split)
    if wanted is None:
        return None, None
    preprocess_config = card.get("preprocess_config") or {}
    eval_fraction = float(preprocess_config.get("eval_fraction", PreprocessConfig.eval_fraction))
    return (lambda doc: split_of(doc, eval_fraction) == wanted), preprocess_config.get("group_column")


def _complete_metrics(metrics: dict[str, Any], rows_read: int, read_dead: int, dead: int, reasons: dict[str, int], *,
                      extra: dict[str, Any]) -> dict[str, Any]:
    """`ReportCombineFn`'s output plus the run's counts (every row read, every dead letter, by reason) and `extra`."""
    return dict(metrics, rows_in=rows_read + read_dead, dead_lettered=dead,
                dead_letter_by_reason=dict(sorted(reasons.items())), **extra)


def _write_report(metrics: dict[str, Any], output: str) -> None:
    from beam_rnn.serve.report import write_report  # pylint: disable=import-outside-toplevel

    write_report(output, metrics)
