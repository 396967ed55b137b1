"""Scoring documents with the exported classifiers through Beam's RunInference.

`ScoreCorpus` turns documents (``{"id", "text", "label"?}``, e.g. from `ReadCorpus`)
into one score record per document, plus dead letters and, for labelled corpora,
a summary::

    scores, dead, summary = p | "Score" >> ScoreCorpus(
        models={"bilstm": "out/models/bilstm", "lstm": "out/models/lstm"},
        corpus=ReadCorpus("reviews/*.csv", format="csv"))

Score records (flat, so that every output format holds them; see `score_columns`):

* one model: ``{"id", "model", "probability", "label", "label_name"?, "true_label"?}``
* several models, side by side in ONE pass over the corpus (one batch is fed to
  every model): ``{"id", "<name>_probability", "<name>_label", "<name>_label_name"?,
  ..., "agreement", "true_label"?}``

``probability`` is P(label 1) for binary models and the list of per-class
probabilities for K classes; ``label`` the predicted class id; ``label_name`` is
present when the model card names the classes; ``true_label`` (the document's
label as a class id, None when it is not one of the model's classes) when the
corpus is labelled; ``agreement`` is True when all models predict the same label.

How it runs:

* `ClassifierModelHandler` is a Beam ``ModelHandler`` for our SavedModel
  (``saved_model/``, signature ``serving_default``: raw strings in).  The loaded
  models are cached per process (see `load_saved_model`), so every thread and
  every RunInference step of a worker process shares one copy;
  ``share_model_across_processes`` / ``model_copies`` are Beam's knobs for one
  copy per machine.  ``run_inference`` makes ONE ``serving_default`` call per model
  per batch of raw strings, converts the outputs to numpy once and builds the
  per-row results from plain lists (no per-row tensor slicing).  Texts of any
  length go in as they are: the model tokenises and pads each batch itself.
* Before batching, documents are sorted by text length within a bounded buffer
  (``sort_buffer`` documents of one bundle): batches then hold texts of similar
  length, so the recurrent layers waste far fewer steps on padding.  Memory stays
  bounded by the buffer; nothing collects the corpus.
* RunInference runs ``with_exception_handling()``: every document of a batch that
  fails becomes an ``inference_failed`` dead letter carrying the error.  With
  ``retry_failed_batches=True`` the documents of a failed batch are re-scored one
  at a time first (same model, same process cache), so only the documents that
  really fail are dead-lettered (see `ScoreCorpus` for its memory caveat).
* Scores come out of one DoFn and go straight to the writers and the summary
  combiner: no multi-input Flatten on the score path, because Beam's FnApiRunner
  (DirectRunner) materialises those in memory.  Dead letters are merged with a
  Flatten, so they are buffered there, in proportion to their number only.
* Every document that enters is either scored or dead-lettered, counted in the
  ``beam_rnn.score`` counters: ``documents_in == scored + dead_letter``.
* The summary (labelled corpora) is a Beam combiner: accuracy, confusion counts,
  label counts and, for binary models, ROC AUC.  The AUC is EXACT (Mann-Whitney
  rank statistic over the distinct float32 scores, ties counted 1/2, which is what
  ``sklearn.metrics.roc_auc_score`` computes) while a model has at most
  ``auc_max_bins`` distinct scores; beyond that the accumulator coarsens to a
  bounded histogram on the float32 bit pattern (monotone, finer than 2^-15
  relative) and the summary says ``"auc_method": "histogram"`` and reports
  ``auc_max_error``, a guaranteed bound computed from the histogram.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
from apache_beam.utils.windowed_value import WindowedValue
import numpy as np

from beam_rnn.core import constants as C
from beam_rnn.core.metrics import auc_from_histogram, coarsen_histogram, float32_bits
from beam_rnn.io import DEAD_LETTER_TAG, WriteJsonLines, dead_letter

# --- Names --------------------------------------------------------------------------
SERVING_SIGNATURE = "serving_default"  # = beam_rnn.train.export.SERVING_SIGNATURE (not imported: keeps TF lazy)
PROBABILITIES = "probabilities"
LABEL = "label"

SCORE_STAGE = "score"
REASON_INVALID_DOCUMENT = "invalid_document"
REASON_INFERENCE_FAILED = "inference_failed"

METRICS_NAMESPACE = "beam_rnn.score"
COUNTER_DOCUMENTS_IN = "documents_in"
COUNTER_SCORED = "scored"
COUNTER_DEAD_LETTER = "dead_letter"
COUNTER_FAILED_BATCHES = "failed_batches"
COUNTER_RETRIED = "retried_singly"
INFERENCE_METRICS_NAMESPACE = "BeamML_beam_rnn"

# Score record keys.
ID = C.ID_KEY
MODEL = "model"
PROBABILITY = "probability"
PREDICTED_LABEL = "label"
LABEL_NAME = "label_name"
TRUE_LABEL = "true_label"
AGREEMENT = "agreement"

OUTPUT_JSONL = "jsonl"
OUTPUT_CSV = "csv"
OUTPUT_PARQUET = "parquet"
OUTPUT_TFRECORD = "tfrecord"
OUTPUT_FORMATS = (OUTPUT_JSONL, OUTPUT_CSV, OUTPUT_PARQUET, OUTPUT_TFRECORD)

# Column kinds (see `score_columns`).
STR, INT, FLOAT, FLOATS, BOOL = "str", "int", "float", "floats", "bool"

DEFAULT_BATCH_SIZE = 128
DEFAULT_SORT_BUFFER = 4096
DEFAULT_AUC_MAX_BINS = 1 << 16

_MAX_REASON_CHARS = 1000


from beam_rnn.core.artifacts import (  # noqa: E402  (one definition, re-exported)
    ModelDirError, ModelInfo, read_model_info, resolve_models, saved_model_path, verify_model_files)

# --- Loading (once per process) -------------------------------------------------------


class LoadedSavedModel:
    """One loaded SavedModel and its ``serving_default`` function."""

    def __init__(self, model_dir: str):
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        self.model_dir = model_dir
        self.module = tf.saved_model.load(saved_model_path(model_dir))
        self.serve = self.module.signatures[SERVING_SIGNATURE]


_LOADED: "weakref.WeakValueDictionary[tuple, LoadedSavedModel]" = weakref.WeakValueDictionary()
_LOADED_LOCK = threading.Lock()


def _cache_key(model_dir: str) -> tuple:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    try:
        stat = tf.io.gfile.stat(os.path.join(saved_model_path(model_dir), "saved_model.pb"))
        return (model_dir, stat.length, stat.mtime_nsec)
    except Exception:  # pylint: disable=broad-except
        return (model_dir, None, None)


def load_saved_model(model_dir: str) -> LoadedSavedModel:
    """Loads ``model_dir/saved_model`` once per process while anything uses it.

    Every thread, DoFn instance and RunInference step of a worker process that
    asks for the same (unchanged) directory gets the same object; it is freed
    when the last user lets go (a weak cache, so a long-lived process does not
    accumulate models).
    """
    key = _cache_key(model_dir)
    with _LOADED_LOCK:
        loaded = _LOADED.get(key)
        if loaded is None:
            loaded = LoadedSavedModel(model_dir)
            _LOADED[key] = loaded
        return loaded


def check_model_loads(info: ModelInfo) -> LoadedSavedModel:
    """Loads the SavedModel and checks its serving signature (for drivers, before a run).

    Raises:
      ModelDirError: It cannot be loaded or lacks ``serving_default(text)``.
    """
    try:
        loaded = load_saved_model(info.model_dir)
    except Exception as e:  # pylint: disable=broad-except
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelDirError(
            f"The SavedModel in {info.model_dir} cannot be loaded: {type(e).__name__}: {first[:300]}"
        ) from e
    inputs = loaded.serve.structured_input_signature[1]
    outputs = loaded.serve.structured_outputs
    if C.TEXT_KEY not in inputs or PROBABILITIES not in outputs or LABEL not in outputs:
        raise ModelDirError(
            f"The SavedModel in {info.model_dir} has no {SERVING_SIGNATURE}(text) -> probabilities, label "
            "signature: was it exported by beam_rnn.train.export?"
        )
    return loaded


class ClassifierModels:
    """What `ClassifierModelHandler.load_model` returns: the loaded models, in order.

    `predict` is its only method that RunInference uses, so the object also works
    behind Beam's cross-process model proxy (``share_model_across_processes``).
    """

    def __init__(self, infos: Sequence[ModelInfo]):
        self.names = tuple(info.name for info in infos)
        self._models = [load_saved_model(info.model_dir) for info in infos]

    def predict(self, texts: Sequence[str]) -> list[tuple[Any, Any]]:
        """``[(probabilities, labels)]`` numpy arrays per model for a batch of raw texts."""
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        text = tf.constant(list(texts), dtype=tf.string)  # converted once, fed to every model
        outputs = []
        for model in self._models:
            out = model.serve(text=text)  # one serving_default call per model per batch
            outputs.append((out[PROBABILITIES].numpy(), out[LABEL].numpy()))
        return outputs


# --- The model handler --------------------------------------------------------------


class ClassifierModelHandler(ModelHandler[str, PredictionResult, ClassifierModels]):
    """Beam ModelHandler for beam_rnn exports: raw texts in, ``(probability, label)`` per model out.

    Each `PredictionResult` holds the text as ``example`` and, as ``inference``, a
    tuple with one ``(probability, label)`` pair per model (in `infos` order):
    probability is a float (binary: P(label 1)) or a list of K floats.  Wrap it
    in ``KeyedModelHandler`` to carry document ids through RunInference.
    """

    def __init__(
        self,
        models: str | Sequence[str | ModelInfo] | Mapping[str, str] | ModelInfo,
        *,
        min_batch_size: int | None = DEFAULT_BATCH_SIZE,
        max_batch_size: int | None = DEFAULT_BATCH_SIZE,
        max_batch_duration_secs: int | None = None,
        share_model_across_processes: bool = False,
        model_copies: int | None = None,
    ):
        """Reads the model cards (the SavedModels load on the workers).

        Args:
          models: One or several exports (see `resolve_models`).
          min_batch_size: Smallest batch BatchElements forms (None: Beam's default).
          max_batch_size: Largest batch (None: Beam's default).  Equal min and max
            give fixed-size batches.
          max_batch_duration_secs: Streaming: longest time a batch is buffered.
          share_model_across_processes: One copy of the models per machine, shared
            by all SDK worker processes (Beam's ``large_model``).
          model_copies: Exact number of copies per machine (implies sharing).

        Raises:
          ModelDirError: See `resolve_models`.
          ValueError: Inconsistent batch sizes.
        """
        for label, value in (("min_batch_size", min_batch_size), ("max_batch_size", max_batch_size)):
            if value is not None and value < 1:
                raise ValueError(f"{label} must be >= 1, got {value}.")
        if min_batch_size is not None and max_batch_size is not None and min_batch_size > max_batch_size:
            raise ValueError(f"min_batch_size {min_batch_size} > max_batch_size {max_batch_size}.")
        if model_copies is not None and model_copies < 1:
            raise ValueError(f"model_copies must be >= 1, got {model_copies}.")
        super().__init__(
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            max_batch_duration_secs=max_batch_duration_secs,
            large_model=share_model_across_processes,
            model_copies=model_copies,
        )
        self._infos = resolve_models(models)
        self._model_id = ",".join(info.model_dir for info in self._infos)

    @property
    def infos(self) -> tuple[ModelInfo, ...]:
        return self._infos

    def with_batch_size(self, min_batch_size: int, max_batch_size: int) -> "ClassifierModelHandler":
        """A copy with other batch sizes (same models, same class)."""
        clone = copy.copy(self)
        clone._batching_kwargs = dict(self._batching_kwargs, min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        return clone

    def load_model(self) -> ClassifierModels:
        return ClassifierModels(self._infos)

    def run_inference(
        self,
        batch: Sequence[str],
        model: ClassifierModels,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        texts = list(batch)
        outputs = model.predict(texts)
        # Whole-batch conversions to plain Python lists; rows are then zipped, never sliced.
        per_model = [zip(probabilities.tolist(), labels.tolist()) for probabilities, labels in outputs]
        model_id = self._model_id
        return [PredictionResult(text, scores, model_id) for text, scores in zip(texts, zip(*per_model))]

    def get_num_bytes(self, batch: Sequence[str]) -> int:
        return sum(len(text) for text in batch)

    def get_metrics_namespace(self) -> str:
        return INFERENCE_METRICS_NAMESPACE

    def __repr__(self) -> str:
        return f"ClassifierModelHandler({', '.join(f'{i.name}={i.model_dir}' for i in self._infos)})"


# --- Score records ---------------------------------------------------------------------


def score_columns(infos: Sequence[ModelInfo], *, labelled: bool) -> list[tuple[str, str]]:
    """The ``(column, kind)`` schema of score records; kind is str/int/float/floats/bool."""
    first = infos[0]
    prob_kind = FLOAT if first.binary else FLOATS
    if len(infos) == 1:
        columns = [(ID, STR), (MODEL, STR), (PROBABILITY, prob_kind), (PREDICTED_LABEL, INT)]
        if first.label_names is not None:
            columns.append((LABEL_NAME, STR))
    else:
        columns = [(ID, STR)]
        for info in infos:
            columns += [(f"{info.name}_{PROBABILITY}", prob_kind), (f"{info.name}_{PREDICTED_LABEL}", INT)]
            if info.label_names is not None:
                columns.append((f"{info.name}_{LABEL_NAME}", STR))
        columns.append((AGREEMENT, BOOL))
    if labelled:
        columns.append((TRUE_LABEL, INT))
    return columns


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

    def __init__(self):
        super().__init__()
        self._documents_in = Metrics.counter(METRICS_NAMESPACE, COUNTER_DOCUMENTS_IN)
        self._dead = Metrics.counter(METRICS_NAMESPACE, COUNTER_DEAD_LETTER)

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
        yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(source, row, reason, stage=SCORE_STAGE))


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


class _ToRecordFn(beam.DoFn):
    """``((id, label), PredictionResult)`` -> one flat score record."""

    def __init__(self, infos: Sequence[ModelInfo], labelled: bool):
        super().__init__()
        self._infos = tuple(infos)
        self._labelled = labelled
        self._scored = Metrics.counter(METRICS_NAMESPACE, COUNTER_SCORED)

    def setup(self) -> None:
        infos = self._infos
        self._single = len(infos) == 1
        self._first = infos[0]
        self._names = infos[0].label_names
        self._keys = [
            (f"{i.name}_{PROBABILITY}", f"{i.name}_{PREDICTED_LABEL}", f"{i.name}_{LABEL_NAME}") for i in infos
        ]

    def process(self, element: tuple[tuple[str, Any], PredictionResult]) -> Iterator[dict[str, Any]]:
        (doc_id, label), result = element
        scores = result.inference
        names = self._names
        if self._single:
            probability, predicted = scores[0]
            record = {ID: doc_id, MODEL: self._first.name, PROBABILITY: probability, PREDICTED_LABEL: predicted}
            if names is not None:
                record[LABEL_NAME] = names[predicted]
        else:
            record = {ID: doc_id}
            for (p_key, l_key, n_key), (probability, predicted) in zip(self._keys, scores):
                record[p_key] = probability
                record[l_key] = predicted
                if names is not None:
                    record[n_key] = names[predicted]
            first = scores[0][1]
            record[AGREEMENT] = all(predicted == first for _, predicted in scores)
        if self._labelled:
            record[TRUE_LABEL] = self._first.class_index(label)
        self._scored.inc()
        yield record


class _FailedBatchFn(beam.DoFn):
    """RunInference DLQ ``(batch, error)``: single documents -> dead letters, bigger batches -> retry singly."""

    RETRY = "retry"

    def __init__(self, retry: bool):
        super().__init__()
        self._retry = retry
        self._failed_batches = Metrics.counter(METRICS_NAMESPACE, COUNTER_FAILED_BATCHES)
        self._retried = Metrics.counter(METRICS_NAMESPACE, COUNTER_RETRIED)
        self._dead = Metrics.counter(METRICS_NAMESPACE, COUNTER_DEAD_LETTER)

    def process(self, failed: tuple[Sequence[Any], Any]) -> Iterator[Any]:
        batch, error = failed
        batch = list(batch)
        self._failed_batches.inc()
        if self._retry and len(batch) > 1:
            self._retried.inc(len(batch))
            for element in batch:
                yield beam.pvalue.TaggedOutput(self.RETRY, element)
            return
        reason = f"{REASON_INFERENCE_FAILED}: {_exception_detail(error)}"
        if len(batch) > 1:
            reason += f" (in a batch of {len(batch)} documents that failed together)"
        for (doc_id, _), text in batch:
            self._dead.inc()
            yield dead_letter(doc_id, text, reason, stage=SCORE_STAGE)


# --- Summary metrics -------------------------------------------------------------------


class ScoreSummaryFn(beam.CombineFn):
    """Score records -> summary metrics per model (accuracy, confusion, counts, AUC), with bounded state.

    The accumulator holds K x K confusion counts per model and, for binary
    models, an AUC histogram of at most `auc_max_bins` keys: exact float32 scores
    while they fit, else the float32 bit pattern with the lowest bits dropped.
    """

    def __init__(self, infos: Sequence[ModelInfo], *, auc_max_bins: int = DEFAULT_AUC_MAX_BINS):
        super().__init__()
        if auc_max_bins < 2:
            raise ValueError(f"auc_max_bins must be >= 2, got {auc_max_bins}.")
        self._infos = tuple(infos)
        self._max_bins = auc_max_bins
        single = len(infos) == 1
        self._keys = [
            (PROBABILITY, PREDICTED_LABEL) if single else (f"{i.name}_{PROBABILITY}", f"{i.name}_{PREDICTED_LABEL}")
            for i in infos
        ]
        self._k = infos[0].num_classes
        self._binary = infos[0].binary

    def create_accumulator(self) -> dict[str, Any]:
        k = self._k
        return {
            "documents": 0,
            "unknown_label": 0,
            "agreements": 0,
            "confusion": [[[0] * k for _ in range(k)] for _ in self._infos],
            "predicted_unlabelled": [[0] * k for _ in self._infos],
            "nan_scores": [0 for _ in self._infos],
            "shift": [0 for _ in self._infos],
            "hist": [{} for _ in self._infos],
        }

    def _shrink(self, acc: dict[str, Any], m: int) -> None:
        hist, shift = acc["hist"][m], acc["shift"][m]
        target = shift
        while len(hist) > self._max_bins:
            target += 1
            hist = coarsen_histogram(hist, shift, target)
            shift = target
        acc["hist"][m], acc["shift"][m] = hist, shift

    def add_input(self, acc: dict[str, Any], record: Mapping[str, Any]) -> dict[str, Any]:
        acc["documents"] += 1
        true = record.get(TRUE_LABEL)
        predictions = [record[l_key] for _, l_key in self._keys]
        if len(predictions) > 1 and all(p == predictions[0] for p in predictions):
            acc["agreements"] += 1
        if true is None:
            acc["unknown_label"] += 1
            for m, predicted in enumerate(predictions):
                acc["predicted_unlabelled"][m][predicted] += 1
            return acc
        for m, ((p_key, _), predicted) in enumerate(zip(self._keys, predictions)):
            acc["confusion"][m][true][predicted] += 1
            if self._binary:
                score = record[p_key]
                if score != score:  # NaN
                    acc["nan_scores"][m] += 1
                    continue
                bucket = acc["hist"][m].setdefault(float32_bits(score) >> acc["shift"][m], [0, 0])
                bucket[true] += 1
                if len(acc["hist"][m]) > self._max_bins:
                    self._shrink(acc, m)
        return acc

    def merge_accumulators(self, accumulators: Iterable[dict[str, Any]]) -> dict[str, Any]:
        accumulators = list(accumulators)
        out = self.create_accumulator()
        for acc in accumulators:
            out["documents"] += acc["documents"]
            out["unknown_label"] += acc["unknown_label"]
            out["agreements"] += acc["agreements"]
            for m in range(len(self._infos)):
                for t in range(self._k):
                    for p in range(self._k):
                        out["confusion"][m][t][p] += acc["confusion"][m][t][p]
                    out["predicted_unlabelled"][m][t] += acc["predicted_unlabelled"][m][t]
                out["nan_scores"][m] += acc["nan_scores"][m]
        for m in range(len(self._infos)):
            shift = max(acc["shift"][m] for acc in accumulators) if accumulators else 0
            merged: dict[int, list[int]] = {}
            for acc in accumulators:
                for key, (neg, pos) in coarsen_histogram(acc["hist"][m], acc["shift"][m], shift).items():
                    bucket = merged.setdefault(key, [0, 0])
                    bucket[0] += neg
                    bucket[1] += pos
            out["hist"][m], out["shift"][m] = merged, shift
            self._shrink(out, m)
        return out

    def extract_output(self, acc: dict[str, Any]) -> dict[str, Any]:
        names = self._infos[0].label_names
        documents, unknown = acc["documents"], acc["unknown_label"]
        labelled = documents - unknown
        per_model = {}
        for m, info in enumerate(self._infos):
            confusion = acc["confusion"][m]
            correct = sum(confusion[i][i] for i in range(self._k))
            true_counts = [sum(row) for row in confusion]
            predicted_counts = [
                sum(confusion[t][p] for t in range(self._k)) + acc["predicted_unlabelled"][m][p] for p in range(self._k)
            ]
            metrics: dict[str, Any] = {
                "accuracy": correct / labelled if labelled else None,
                "correct": correct,
                "true_label_counts": true_counts,
                "predicted_label_counts": predicted_counts,
                "confusion": confusion,
            }
            if self._binary:
                auc, positives, negatives, tied = auc_from_histogram(acc["hist"][m])
                exact = acc["shift"][m] == 0
                metrics.update(
                    {
                        "auc": auc,
                        "auc_method": "exact" if exact else "histogram",
                        "auc_max_error": 0.0 if exact or auc is None else 0.5 * tied,
                        "auc_bins": len(acc["hist"][m]),
                        "positives": positives,
                        "negatives": negatives,
                        "nan_scores": acc["nan_scores"][m],
                    }
                )
            per_model[info.name] = metrics
        summary: dict[str, Any] = {
            "documents": documents,
            "labelled": labelled,
            "unknown_label": unknown,
            "num_classes": self._k,
            "label_names": list(names) if names is not None else None,
            "confusion_layout": "confusion[true][predicted]",
            "models": per_model,
        }
        if len(self._infos) > 1:
            summary["agreement"] = acc["agreements"] / documents if documents else None
            summary["agreements"] = acc["agreements"]
        return summary


def id_fingerprint(doc_id: str) -> int:
    """64-bit fingerprint of a document id (for counting distinct ids in bounded space)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


class DistinctIdsFn(beam.CombineFn):
    """Document ids -> ``{"ids", "distinct_ids", "duplicate_ids"}``.

    Exact up to 64-bit fingerprint collisions (probability ~n^2 / 2^65: 3e-8 at
    a million ids).  The accumulator keeps 8 bytes per distinct id in sorted
    NumPy arrays (8 MB for a million documents) rather than the ids themselves;
    counting duplicates with a GroupByKey would hold every id in memory on the
    local runners.
    """

    _PENDING = 1 << 16

    # Memory: sorted runs, each merged only with a run of similar size (log-structured), so an id
    # is re-sorted O(log n) times; merging every 65,536 new ids into one array of all ids cost
    # quadratic time and left ~70 bytes of heap per id in RSS at a million (benchmarks/memory.py).
    def create_accumulator(self) -> list[Any]:
        return [[], [], 0]  # sorted distinct runs (each at least twice the next), pending, count

    @staticmethod
    def _sorted_unique(values: Any) -> Any:
        """Sorted distinct values of a fresh uint64 array (sorted in place; no np.unique, whose
        working memory was ~7x the input's: +55 MB RSS for a million ids)."""
        values.sort()
        if values.size < 2:
            return values
        keep = np.empty(values.size, dtype=bool)
        keep[0] = True
        np.not_equal(values[1:], values[:-1], out=keep[1:])
        return values[keep]

    @classmethod
    def _add_run(cls, runs: list[Any], run: Any) -> None:
        runs.append(run)
        while len(runs) > 1 and runs[-2].size <= 2 * runs[-1].size:
            last = runs.pop()
            runs[-1] = cls._sorted_unique(np.concatenate([runs[-1], last]))

    @classmethod
    def _compact(cls, acc: list[Any]) -> list[Any]:
        if acc[1]:
            cls._add_run(acc[0], cls._sorted_unique(np.array(acc[1], dtype=np.uint64)))
            acc[1] = []
        return acc

    def add_input(self, acc: list[Any], doc_id: str) -> list[Any]:
        acc[1].append(id_fingerprint(doc_id))
        acc[2] += 1
        return self._compact(acc) if len(acc[1]) >= self._PENDING else acc

    def merge_accumulators(self, accumulators: Iterable[list[Any]]) -> list[Any]:
        accumulators = [self._compact(acc) for acc in accumulators]
        merged = self.create_accumulator()
        for run in sorted((run for acc in accumulators for run in acc[0]), key=len, reverse=True):
            self._add_run(merged[0], run)
        merged[2] = sum(acc[2] for acc in accumulators)
        return merged

    def compact(self, acc: list[Any]) -> list[Any]:
        return self._compact(acc)

    def extract_output(self, acc: list[Any]) -> dict[str, int]:
        acc = self._compact(acc)
        distinct = int(self._sorted_unique(np.concatenate(acc[0])).size) if acc[0] else 0
        return {"ids": int(acc[2]), "distinct_ids": distinct, "duplicate_ids": int(acc[2]) - distinct}


def _add_id_counts(summary: dict[str, Any], id_counts: Mapping[str, int]) -> dict[str, Any]:
    return dict(summary, **id_counts)


def _add_dead_letter_counts(summary: dict[str, Any], counts: Mapping[tuple[str, str], int]) -> dict[str, Any]:
    by_stage: dict[str, dict[str, int]] = {}
    for (stage, code), n in sorted(counts.items()):
        by_stage.setdefault(stage, {})[code] = n
    dead_score = sum(by_stage.get(SCORE_STAGE, {}).values())
    dead_total = sum(sum(v.values()) for v in by_stage.values())
    out = dict(summary)
    out["dead_letter_by_stage_and_reason"] = by_stage
    out["dead_lettered"] = dead_total
    out["documents_in"] = summary["documents"] + dead_score  # documents that reached scoring
    out["rows_in"] = summary["documents"] + dead_total  # with ReadCorpus: every raw row
    return out


def _dead_letter_key(record: Mapping[str, Any]) -> tuple[str, str]:
    reason = str(record.get(C.DEAD_REASON_KEY, ""))
    return str(record.get(C.DEAD_STAGE_KEY, "")), reason.split(":", 1)[0].strip()


# --- The transform ------------------------------------------------------------------------


class ScoreResult(NamedTuple):
    """The outputs of `ScoreCorpus`."""

    scores: beam.PCollection
    dead_letter: beam.PCollection
    summary: beam.PCollection  # one dict (accuracy etc. only for labelled corpora)


class ScoreCorpus(beam.PTransform):
    """Documents (or a `ReadCorpus`) -> score records, dead letters and a summary.

    Apply it to a PCollection of ``{"id", "text", "label"?}`` dicts, or to the
    pipeline (``p | ScoreCorpus(models=..., corpus=ReadCorpus(...))``), in which
    case the reader's dead letters are part of the result too.
    """

    def __init__(
        self,
        *,
        models: str | Sequence[str | ModelInfo] | Mapping[str, str] | ModelInfo,
        corpus: beam.PTransform | None = None,
        labelled: bool | None = None,
        min_batch_size: int | None = DEFAULT_BATCH_SIZE,
        max_batch_size: int | None = DEFAULT_BATCH_SIZE,
        max_batch_duration_secs: int | None = None,
        sort_buffer: int = DEFAULT_SORT_BUFFER,
        share_model_across_processes: bool = False,
        model_copies: int | None = None,
        retry_failed_batches: bool = False,
        auc_max_bins: int = DEFAULT_AUC_MAX_BINS,
        handler_class: type[ClassifierModelHandler] = ClassifierModelHandler,
    ):
        """Validates the settings and reads the model cards.

        Args:
          models: One export dir, ``NAME=DIR`` entries, a list, or ``{name: dir}``;
            several models are scored side by side in one pass.
          corpus: A `beam_rnn.io.ReadCorpus` to read from when applied to the pipeline.
          labelled: Whether documents carry labels (adds ``true_label`` and the
            summary).  Default: the corpus's setting, else True.
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
          auc_max_bins: Distinct scores kept exactly for the AUC (see module doc).
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
        digest = hashlib.sha1(repr((handler_class.__qualname__, self._handler.infos)).encode()).hexdigest()[:16]
        self._model_identifier = f"beam_rnn_{digest}"

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

    def _run_inference(self, keyed: beam.PCollection, handler: ClassifierModelHandler, name: str):
        return keyed | name >> RunInference(
            KeyedModelHandler(handler), model_identifier=self._model_identifier
        ).with_exception_handling()

    def expand(self, pvalue: Any) -> ScoreResult:
        dead_parts = []
        if isinstance(pvalue, beam.pvalue.PBegin):
            if self._corpus is None:
                raise ValueError("ScoreCorpus applied to a pipeline needs corpus=ReadCorpus(...).")
            documents, read_dead = pvalue | "ReadCorpus" >> self._corpus
            dead_parts.append(read_dead)
        else:
            documents = pvalue
        checked = documents | "Validate" >> beam.ParDo(_ValidateFn()).with_outputs(DEAD_LETTER_TAG, main="keyed")
        dead_parts.append(checked[DEAD_LETTER_TAG])
        keyed = checked.keyed
        if self._sort_buffer > 1:
            keyed = keyed | "SortByLength" >> beam.ParDo(_SortByLengthFn(self._sort_buffer))

        results, dlq = self._run_inference(keyed, self._handler, "RunInference")
        score_parts = [results | "ToRecords" >> beam.ParDo(_ToRecordFn(self.infos, self._labelled))]
        failed = dlq.failed_inferences | "FailedBatches" >> beam.ParDo(_FailedBatchFn(self._retry)).with_outputs(
            _FailedBatchFn.RETRY, main="dead"
        )
        dead_parts.append(failed.dead)
        if self._retry:
            single = self._handler.with_batch_size(1, 1)
            retried, retry_dlq = self._run_inference(failed[_FailedBatchFn.RETRY], single, "RetrySingly")
            score_parts.append(retried | "RetriedToRecords" >> beam.ParDo(_ToRecordFn(self.infos, self._labelled)))
            dead_parts.append(
                retry_dlq.failed_inferences | "RetryFailures" >> beam.ParDo(_FailedBatchFn(retry=False))
            )
        scores = tuple(score_parts) | "Scores" >> beam.Flatten()
        dead = tuple(dead_parts) | "DeadLetters" >> beam.Flatten()

        metrics = scores | "Summarize" >> beam.CombineGlobally(self._summary_fn)
        dead_counts = (
            dead
            | "DeadLetterKeys" >> beam.Map(_dead_letter_key)
            | "CountDeadLetters" >> beam.combiners.Count.PerElement()
        )
        id_counts = (
            checked.keyed
            | "DocumentIds" >> beam.Map(lambda keyed_text: keyed_text[0][0])
            | "CountDistinctIds" >> beam.CombineGlobally(DistinctIdsFn())
        )
        summary = (
            metrics
            | "AddDeadLetterCounts" >> beam.Map(_add_dead_letter_counts, beam.pvalue.AsDict(dead_counts))
            | "AddIdCounts" >> beam.Map(_add_id_counts, beam.pvalue.AsSingleton(id_counts))
        )
        return ScoreResult(scores, dead, summary)


# --- Writing ---------------------------------------------------------------------------


def _csv_value(value: Any, kind: str) -> Any:
    if value is None:
        return ""
    if kind == FLOATS:
        return json.dumps(value)
    if kind == BOOL:
        return "true" if value else "false"
    return value


def _csv_header(columns: Sequence[tuple[str, str]]) -> str:
    return _csv_line([name for name, _ in columns])


def _csv_line(values: Sequence[Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(values)
    return out.getvalue()


def _to_csv(record: Mapping[str, Any], columns: Sequence[tuple[str, str]]) -> str:
    return _csv_line([_csv_value(record.get(name), kind) for name, kind in columns])


def _arrow_schema(columns: Sequence[tuple[str, str]]):
    import pyarrow as pa  # pylint: disable=import-outside-toplevel

    types = {STR: pa.string(), INT: pa.int64(), FLOAT: pa.float64(), FLOATS: pa.list_(pa.float64()), BOOL: pa.bool_()}
    return pa.schema([(name, types[kind]) for name, kind in columns])


def _to_row(record: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    return {name: record.get(name) for name in names}


def _to_example(record: Mapping[str, Any], columns: Sequence[tuple[str, str]]) -> bytes:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    feature = {}
    for name, kind in columns:
        value = record.get(name)
        if value is None:
            continue
        if kind == STR:
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode("utf-8")]))
        elif kind in (INT, BOOL):
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
        elif kind == FLOAT:
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
        else:
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=value))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


class WriteScores(beam.PTransform):
    """Writes score records to ``<prefix>-SSSSS-of-NNNNN.<format>`` (jsonl, csv, parquet, tfrecord).

    csv: a header row per shard, lists as JSON, booleans as true/false, None empty.
    parquet: typed columns (probability float64 or list<float64>).  tfrecord:
    tf.Example (probabilities as float_list, booleans as int64 0/1, None omitted).
    """

    def __init__(
        self,
        file_path_prefix: str,
        *,
        output_format: str,
        columns: Sequence[tuple[str, str]],
        num_shards: int = 0,
    ):
        super().__init__()
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"Unknown output format {output_format!r}; expected one of {OUTPUT_FORMATS}.")
        self._prefix = file_path_prefix
        self._format = output_format
        self._columns = list(columns)
        self._num_shards = num_shards

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        columns, shards = self._columns, self._num_shards
        if self._format == OUTPUT_JSONL:
            return records | "WriteJsonl" >> WriteJsonLines(self._prefix, num_shards=shards)
        if self._format == OUTPUT_CSV:
            return (
                records
                | "ToCsv" >> beam.Map(_to_csv, columns)
                | "WriteCsv"
                >> beam.io.WriteToText(
                    self._prefix, file_name_suffix=".csv", num_shards=shards, header=_csv_header(columns)
                )
            )
        if self._format == OUTPUT_PARQUET:
            names = [name for name, _ in columns]
            return (
                records
                | "ToRows" >> beam.Map(_to_row, names)
                | "WriteParquet"
                >> beam.io.WriteToParquet(
                    self._prefix, _arrow_schema(columns), file_name_suffix=".parquet", num_shards=shards
                )
            )
        return (
            records
            | "ToExamples" >> beam.Map(_to_example, columns)
            | "WriteTfrecord" >> beam.io.WriteToTFRecord(self._prefix, file_name_suffix=".tfrecord", num_shards=shards)
        )


def output_patterns(prefix: str, output_format: str) -> dict[str, str]:
    """Globs of what the score pipeline writes under `prefix` (scores, dead letters, summary)."""
    return {
        "scores": f"{prefix}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9]*.{output_format}",
        "dead_letter": f"{prefix}-dead_letter-[0-9][0-9][0-9][0-9][0-9]-of-[0-9]*.jsonl",
        "summary": f"{prefix}-summary.json",
    }


def summary_json(summary: Mapping[str, Any]) -> str:
    return json.dumps(_finite(summary), indent=2, sort_keys=True)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_summary(summary: beam.PCollection, prefix: str) -> beam.PCollection:
    """Writes the one summary dict to ``<prefix>-summary.json``."""
    return (
        summary
        | "SummaryJson" >> beam.Map(summary_json)
        | "WriteSummary"
        >> beam.io.WriteToText(prefix + "-summary", file_name_suffix=".json", num_shards=1, shard_name_template="")
    )


__all__ = [
    "ClassifierModelHandler",
    "ClassifierModels",
    "LoadedSavedModel",
    "ModelDirError",
    "ModelInfo",
    "OUTPUT_FORMATS",
    "ScoreCorpus",
    "ScoreResult",
    "ScoreSummaryFn",
    "WriteScores",
    "auc_from_histogram",
    "check_model_loads",
    "load_saved_model",
    "output_patterns",
    "read_model_info",
    "resolve_models",
    "score_columns",
    "write_summary",
]
