"""Scoring documents with the exported classifiers through Beam's RunInference.

`ScoreCorpus` turns documents (``{"id", "text", "label"?}``, e.g. from `ReadCorpus`)
into one score record per document, plus dead letters and a summary::

    scores, dead, summary = p | "Score" >> ScoreCorpus(
        models={"bilstm": "out/models/bilstm", "lstm": "out/models/lstm"},
        corpus=ReadCorpus("reviews/*.csv", format="csv"))

Score records, in the project's output vocabulary (`beam_rnn.core.outputs`):

* one model: ``{"id", "model", "predicted_label", "predicted_label_name",
  "probabilities", "true_label"?, "true_label_name"?}``
* several models, side by side in ONE pass over the corpus (one batch is fed to
  every model): ``{"id", "<name>_predicted_label", "<name>_predicted_label_name",
  "<name>_probabilities", ..., "agreement", "true_label"?, "true_label_name"?}``

``probabilities`` maps every class name to its probability (column formats: one
``probability_<class>`` column per class); ``true_label`` (the document's label as
a class id, None when it is not one of the model's classes) and its name are there
when the corpus is labelled; ``agreement`` is True when all models predict the
same label.

How it runs (`Infer` is shared with `beam_rnn.serve.evaluate.EvaluateModels`):

* `ClassifierModelHandler` (`beam_rnn.serve.handler`) makes ONE ``serving_default``
  call per model per batch of raw strings; RunInference loads and shares the models.
* Before batching, documents are sorted by text length within a bounded buffer
  (``sort_buffer`` documents of one bundle): batches then hold texts of similar
  length, so the recurrent layers waste far fewer steps on padding.
* RunInference runs ``with_exception_handling()``: every document of a batch that
  fails becomes an ``inference_failed`` dead letter carrying the error.  With
  ``retry_failed_batches=True`` the documents of a failed batch are re-scored one
  at a time first, so only the documents that really fail are dead-lettered.
* Scores come out of one DoFn and go straight to the writers and the summary
  combiner: no multi-input Flatten on the score path, because Beam's FnApiRunner
  (DirectRunner) materialises those in memory.  Dead letters are merged with a
  Flatten, so they are buffered there, in proportion to their number only.
* Every document that enters is either scored or dead-lettered, counted in the
  ``beam_rnn.score`` counters: ``documents_in == scored + dead_letter``; the
  summary (`beam_rnn.serve.summary`) carries the same counts, computed in the pipeline.
"""

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import (
    KeyedModelHandler,
    PredictionResult,
    RunInference,
)
from apache_beam.utils.windowed_value import WindowedValue

from beam_rnn.core import constants as C
from beam_rnn.core.artifacts import ModelInfo, ModelsArg
from beam_rnn.io import DEAD_LETTER_TAG, dead_letter
from beam_rnn.serve.config import ScoreConfig
from beam_rnn.serve.handler import ClassifierModelHandler
from beam_rnn.core.outputs import class_names, prediction_fields, truth_fields
from beam_rnn.serve.records import AGREEMENT, ID, MODEL, model_prefixes, record_model, score_columns
from beam_rnn.serve.summary import ScoreSummaryFn, summarize

SCORE_STAGE = "score"
REASON_INVALID_DOCUMENT = "invalid_document"
REASON_INFERENCE_FAILED = "inference_failed"

METRICS_NAMESPACE = "beam_rnn.score"
COUNTER_DOCUMENTS_IN = "documents_in"
COUNTER_SCORED = "scored"
COUNTER_DEAD_LETTER = "dead_letter"
COUNTER_FAILED_BATCHES = "failed_batches"
COUNTER_RETRIED = "retried_singly"

_MAX_REASON_CHARS = 1000
_DEFAULTS = ScoreConfig()


def _truncate(text: str, limit: int = _MAX_REASON_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _exception_detail(error: Any) -> str:
    """``"Type: message"`` from the (type, repr, traceback lines) that Beam's DLQ carries."""
    try:
        exc_type, exc_repr, lines = error
    except (TypeError, ValueError):
        return _truncate(str(error))
    last = lines[-1].strip() if lines else ""
    if last:
        return _truncate(last.splitlines()[-1] if "\n" in last else last)
    name = getattr(exc_type, "__name__", str(exc_type))
    return _truncate(f"{name}: {exc_repr}")


class _ValidateFn(beam.DoFn):
    """Document dict -> ``((id, label), text)`` for KeyedModelHandler; bad documents -> dead letters."""

    def __init__(self, stage: str = SCORE_STAGE):
        super().__init__()
        self._stage = stage
        namespace = f"beam_rnn.{stage}"
        self._documents_in = Metrics.counter(namespace, COUNTER_DOCUMENTS_IN)
        self._dead = Metrics.counter(namespace, COUNTER_DEAD_LETTER)

    def process(self, doc: Any) -> Iterator[Any]:
        self._documents_in.inc()
        doc_id = doc.get(C.ID_KEY) if isinstance(doc, Mapping) else None
        text = doc.get(C.TEXT_KEY) if isinstance(doc, Mapping) else None
        if isinstance(doc_id, str) and doc_id and isinstance(text, str):
            yield (doc_id, doc.get(C.LABEL_KEY)), text
            return
        if not isinstance(doc, Mapping):
            detail = f"expected a dict with id and text, got {type(doc).__name__}"
        elif not (isinstance(doc_id, str) and doc_id):
            detail = f"id must be a non-empty string, got {doc_id!r}"
        else:
            detail = f"text must be a string, got {type(text).__name__}"
        self._dead.inc()
        row = json.dumps(doc, ensure_ascii=False, default=repr) if isinstance(doc, Mapping) else repr(doc)
        source = doc_id if isinstance(doc_id, str) and doc_id else "<document>"
        reason = f"{REASON_INVALID_DOCUMENT}: {detail}"
        yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(source, row, reason, stage=self._stage))


class _SortByLengthFn(beam.DoFn):
    """Re-orders ``(key, text)`` elements by text length within buffers of `size` (per bundle).

    BatchElements then forms batches of similar-length texts, so the model pads
    less.  Windows and timestamps are kept; memory is bounded by the buffer.
    """

    def __init__(self, size: int):
        super().__init__()
        self._size = size
        self._buffer: list = []

    def start_bundle(self) -> None:
        self._buffer = []

    def _flush(self) -> Iterator[WindowedValue]:
        self._buffer.sort(key=lambda item: item[0])
        buffer, self._buffer = self._buffer, []
        for _, element, timestamp, window in buffer:
            yield WindowedValue(element, timestamp, (window,))

    def process(
        self, element: Any, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam
    ) -> Iterator[WindowedValue]:
        self._buffer.append((len(element[1]), element, timestamp, window))
        if len(self._buffer) >= self._size:
            yield from self._flush()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        yield from self._flush()


class _FailedBatchFn(beam.DoFn):
    """RunInference DLQ ``(batch, error)``: documents -> dead letters (or, bigger batches, -> retry singly).

    Also emits, on the `STATS` output, one ``(failed batches, documents retried)``
    pair per failed batch, for the summary's counts.
    """

    RETRY = "retry"
    STATS = "stats"

    def __init__(self, retry: bool, stage: str = SCORE_STAGE):
        super().__init__()
        self._retry = retry
        self._stage = stage
        namespace = f"beam_rnn.{stage}"
        self._failed_batches = Metrics.counter(namespace, COUNTER_FAILED_BATCHES)
        self._retried = Metrics.counter(namespace, COUNTER_RETRIED)
        self._dead = Metrics.counter(namespace, COUNTER_DEAD_LETTER)

    def process(self, failed: tuple[Sequence[Any], Any]) -> Iterator[Any]:
        batch, error = failed
        batch = list(batch)
        self._failed_batches.inc()
        if self._retry and len(batch) > 1:
            self._retried.inc(len(batch))
            yield beam.pvalue.TaggedOutput(self.STATS, (1, len(batch)))
            for element in batch:
                yield beam.pvalue.TaggedOutput(self.RETRY, element)
            return
        yield beam.pvalue.TaggedOutput(self.STATS, (1, 0))
        reason = f"{REASON_INFERENCE_FAILED}: {_exception_detail(error)}"
        if len(batch) > 1:
            reason += f" (in a batch of {len(batch)} documents that failed together)"
        for (doc_id, _), text in batch:
            self._dead.inc()
            yield dead_letter(doc_id, text, reason, stage=self._stage)


class InferResult(NamedTuple):
    """The outputs of `Infer`."""

    results: tuple[beam.PCollection, ...]  # ((id, label), PredictionResult); two when failed batches are retried
    dead_letter: tuple[beam.PCollection, ...]  # inference_failed dead letters
    failures: beam.PCollection  # one (failed batches, documents retried) pair per failed batch


class Infer(beam.PTransform):
    """``((id, label), text)`` -> RunInference through `handler`, failures as dead letters.

    Args:
      handler: The model handler (batch sizes and model sharing are its settings).
      retry_failed_batches: Re-run the documents of a failed batch one at a time
        (a second RunInference with the same `model_identifier`).
      stage: The dead letters' stage.
      model_metadata: Model refresh: a PCollection of Beam ``ModelMetadata``
        (RunInference's ``model_metadata_pcoll``, a singleton side input per
        window); each new ``model_id`` goes to `ClassifierModelHandler.update_model_path`.
    """

    def __init__(self, handler: ClassifierModelHandler, *, retry_failed_batches: bool = False,
                 stage: str = SCORE_STAGE, model_metadata: beam.PCollection | None = None):
        super().__init__()
        self._handler = handler
        self._retry = retry_failed_batches
        self._stage = stage
        self._model_metadata = model_metadata

    def _run_inference(self, keyed: beam.PCollection, handler: ClassifierModelHandler, name: str):
        return keyed | name >> RunInference(
            KeyedModelHandler(handler), model_identifier=self._handler.model_identifier(),
            model_metadata_pcoll=self._model_metadata,
        ).with_exception_handling()

    def expand(self, keyed: beam.PCollection):  # returns a NamedTuple of PCollections (Beam only checks PCollection hints)
        results, dlq = self._run_inference(keyed, self._handler, "RunInference")
        failed = dlq.failed_inferences | "FailedBatches" >> beam.ParDo(
            _FailedBatchFn(self._retry, self._stage)
        ).with_outputs(_FailedBatchFn.RETRY, _FailedBatchFn.STATS, main="dead")
        if not self._retry:
            return InferResult((results,), (failed.dead,), failed[_FailedBatchFn.STATS])
        single = self._handler.with_batch_size(1, 1)
        retried, retry_dlq = self._run_inference(failed[_FailedBatchFn.RETRY], single, "RetrySingly")
        retry_failed = retry_dlq.failed_inferences | "RetryFailures" >> beam.ParDo(
            _FailedBatchFn(retry=False, stage=self._stage)
        ).with_outputs(_FailedBatchFn.STATS, main="dead")
        stats = (failed[_FailedBatchFn.STATS], retry_failed[_FailedBatchFn.STATS]) | "FailureStats" >> beam.Flatten()
        return InferResult((results, retried), (failed.dead, retry_failed.dead), stats)


class _ToRecordFn(beam.DoFn):
    """``((id, label), PredictionResult)`` -> one flat score record."""

    def __init__(self, infos: Sequence[ModelInfo], labelled: bool):
        super().__init__()
        self._infos = tuple(infos)
        self._labelled = labelled
        self._scored = Metrics.counter(METRICS_NAMESPACE, COUNTER_SCORED)

    def setup(self) -> None:
        self._first = self._infos[0]
        self._names = class_names(self._first.label_names, self._first.num_classes)
        self._prefixes = model_prefixes(self._infos)

    def process(self, element: tuple[tuple[str, Any], PredictionResult]) -> Iterator[dict[str, Any]]:
        (doc_id, label), result = element
        scores = result.inference
        record: dict[str, Any] = {ID: doc_id}
        if len(scores) == 1:
            record[MODEL] = record_model(self._first, result.model_id)
        for prefix, (probability, predicted) in zip(self._prefixes, scores):
            record.update(prediction_fields(probability, predicted, self._names, prefix))
        if len(scores) > 1:
            record[AGREEMENT] = all(predicted == scores[0][1] for _, predicted in scores)
        if self._labelled:
            record.update(truth_fields(self._first.class_index(label), self._names))
        self._scored.inc()
        yield record


class ScoreResult(NamedTuple):
    """The outputs of `ScoreCorpus`."""

    scores: beam.PCollection
    dead_letter: beam.PCollection
    summary: beam.PCollection  # one dict (accuracy etc. only for labelled corpora)


class ScoreCorpus(beam.PTransform):
    """Documents (or a `ReadCorpus`) -> score records, dead letters and a summary.

    Apply it to a PCollection of ``{"id", "text", "label"?}`` dicts, or to the
    pipeline (``p | ScoreCorpus(models=..., corpus=ReadCorpus(...))``), in which
    case the reader's dead letters are part of the result too, and with
    ``ReadCorpus(..., with_counts=True)`` the reader's counts are checked against
    the summary's in the pipeline (`with_reader_counts`).
    """

    def __init__(
        self,
        *,
        models: ModelsArg,
        corpus: beam.PTransform | None = None,
        labelled: bool | None = None,
        min_batch_size: int | None = _DEFAULTS.min_batch_size,
        max_batch_size: int | None = _DEFAULTS.max_batch_size,
        max_batch_duration_secs: int | None = _DEFAULTS.max_batch_duration_secs,
        sort_buffer: int = _DEFAULTS.sort_buffer,
        share_model_across_processes: bool = _DEFAULTS.share_model_across_processes,
        model_copies: int | None = _DEFAULTS.model_copies,
        retry_failed_batches: bool = _DEFAULTS.retry_failed_batches,
        auc_max_bins: int = _DEFAULTS.auc_max_bins,
        handler_class: type[ClassifierModelHandler] = ClassifierModelHandler,
    ):
        """Validates the settings and reads the model cards.

        Args:
          models: One export dir, ``NAME=DIR`` entries, a list, or ``{name: dir}``;
            several models are scored side by side in one pass.
          corpus: A `beam_rnn.io.ReadCorpus` to read from when applied to the pipeline.
          labelled: Whether documents carry labels (adds ``true_label`` and the
            summary's metrics).  Default: the corpus's setting, else True.
          min_batch_size: Smallest RunInference batch.
          max_batch_size: Largest RunInference batch.
          max_batch_duration_secs: Streaming pipelines: longest time a batch waits
            (Beam's stateful BatchElements; required by Beam for streaming).
          sort_buffer: Documents buffered (per bundle) and sorted by length before
            batching; 0 or 1 disables.
          share_model_across_processes: One model copy per machine (Beam's large_model).
          model_copies: Exact copies per machine (implies sharing).
          retry_failed_batches: Retry the documents of a failed batch one by one
            (a second RunInference), so only the failing documents are
            dead-lettered.  Off by default: merging the retried scores needs a
            multi-input Flatten, which Beam's FnApiRunner (DirectRunner, the
            embedded portable job service) always materialises in memory, i.e.
            the whole score collection would be buffered there (Dataflow fuses
            Flattens, so it is safe there).  Without it every document of a
            failed batch is dead-lettered with the batch's error.
          auc_max_bins: Distinct scores kept exactly for the AUC (see `ScoreSummaryFn`).
          handler_class: A `ClassifierModelHandler` subclass (tests, custom loading).

        Raises:
          ModelDirError: A model dir is not a complete export.
          ValueError: Invalid settings.
        """
        super().__init__()
        if sort_buffer < 0:
            raise ValueError(f"sort_buffer must be >= 0, got {sort_buffer}.")
        self._handler = handler_class(
            models,
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            max_batch_duration_secs=max_batch_duration_secs,
            share_model_across_processes=share_model_across_processes,
            model_copies=model_copies,
        )
        self._corpus = corpus
        corpus_config = getattr(corpus, "config", None)
        if labelled is None:
            labelled = getattr(corpus_config, "labelled", True)
        self._labelled = bool(labelled)
        self._sort_buffer = sort_buffer
        self._retry = retry_failed_batches
        self._summary_fn = ScoreSummaryFn(self._handler.infos, auc_max_bins=auc_max_bins)

    @classmethod
    def from_config(cls, models: ModelsArg, config: ScoreConfig, **kwargs: Any) -> "ScoreCorpus":
        """A `ScoreCorpus` with the settings of `config` (kwargs: corpus, labelled, handler_class)."""
        return cls(
            models=models,
            min_batch_size=config.min_batch_size,
            max_batch_size=config.max_batch_size,
            max_batch_duration_secs=config.max_batch_duration_secs,
            sort_buffer=config.sort_buffer,
            share_model_across_processes=config.share_model_across_processes,
            model_copies=config.model_copies,
            retry_failed_batches=config.retry_failed_batches,
            auc_max_bins=config.auc_max_bins,
            **kwargs,
        )

    @property
    def infos(self) -> tuple[ModelInfo, ...]:
        return self._handler.infos

    @property
    def labelled(self) -> bool:
        return self._labelled

    @property
    def columns(self) -> list[tuple[str, str]]:
        """The score records' ``(column, kind)`` schema (for `WriteScores`)."""
        return score_columns(self.infos, labelled=self._labelled)

    def expand(self, pvalue: Any):  # returns a NamedTuple of PCollections (Beam only checks PCollection hints)
        read_dead = read_counts = None
        if isinstance(pvalue, beam.pvalue.PBegin):
            if self._corpus is None:
                raise ValueError("ScoreCorpus applied to a pipeline needs corpus=ReadCorpus(...).")
            read = pvalue | "ReadCorpus" >> self._corpus
            documents, read_dead = read[0], read[1]
            read_counts = getattr(read, "counts", None)  # ReadCorpus(with_counts=True)
        else:
            documents = pvalue
        checked = documents | "Validate" >> beam.ParDo(_ValidateFn()).with_outputs(DEAD_LETTER_TAG, main="keyed")
        keyed = checked.keyed
        if self._sort_buffer > 1:
            keyed = keyed | "SortByLength" >> beam.ParDo(_SortByLengthFn(self._sort_buffer))
        inferred = keyed | "Infer" >> Infer(self._handler, retry_failed_batches=self._retry)
        score_parts = [
            results | f"{prefix}ToRecords" >> beam.ParDo(_ToRecordFn(self.infos, self._labelled))
            for prefix, results in zip(("", "Retried"), inferred.results)
        ]
        scores = tuple(score_parts) | "Scores" >> beam.Flatten()
        dead_parts = ([read_dead] if read_dead is not None else []) + [checked[DEAD_LETTER_TAG], *inferred.dead_letter]
        dead = tuple(dead_parts) | "DeadLetters" >> beam.Flatten()
        summary = summarize(
            self._summary_fn,
            scores=scores,
            dead=dead,
            documents=documents,
            ids=checked.keyed | "DocumentIds" >> beam.Map(lambda keyed_text: keyed_text[0][0]),
            failures=inferred.failures,
        )
        if read_counts is not None:
            summary = summary | "CheckReader" >> beam.Map(with_reader_counts, beam.pvalue.AsSingleton(read_counts))
        return ScoreResult(scores, dead, summary)


def with_reader_counts(summary: Mapping[str, Any], read: Mapping[str, int]) -> dict[str, Any]:
    """The summary with the reader's own counts (``counters.read``) and ``reconciled`` also requiring that
    they agree: rows read = documents out + dead letters, rows read = the summary's rows in, documents out =
    the documents that entered scoring."""
    counters = dict(summary["counters"])
    counters["read"] = dict(read)
    counters["reconciled"] = bool(
        counters["reconciled"]
        and read["rows_in"] == read["documents_out"] + read["dead_letter"]
        and read["rows_in"] == counters["rows_in"]
        and read["documents_out"] == counters["documents_in"])
    return dict(summary, counters=counters)
