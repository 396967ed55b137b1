"""Evaluating exported models on a labelled corpus: the numbers behind the streaming-vs-BiLSTM report.

`EvaluateModels` scores through the same path as `ScoreCorpus`: the documents go
through `beam_rnn.serve.score.Infer` (RunInference with Beam's model sharing and
its failure output: a batch that fails becomes ``inference_failed`` dead letters)
with `EvaluationModelHandler`, a `ClassifierModelHandler` whose models, besides
the full pass, compute:

* the token count of each document (the exported ``tokenize`` signature, the TFT
  graph, so every model sees exactly the ids it was trained on);
* early prediction: the prediction after the first 10%, 20%, ... 100% of each
  document's tokens — the streaming model (``lstm``) from its per-token NumPy step
  (one pass over the batch, O(1) per token), the other models by re-running them
  on each prefix (``classify_ids``; a BiLSTM has no per-token state, which is the
  point of the comparison).

A combiner (`ReportCombineFn`) then computes, per model: accuracy, AUC (binary),
F1 (binary: positive class; K > 2: macro), log loss, expected calibration error
(10 equal-width confidence bins), confusion matrix, accuracy by document length
bucket and by prefix; and the agreement between the models.  Its state is counts,
sums and a bounded AUC histogram (`beam_rnn.core.metrics`): it does not grow with
the corpus.
"""

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import PredictionResult

from beam_rnn.core import constants as C
from beam_rnn.core.artifacts import ModelInfo, ModelsArg
from beam_rnn.core.metrics import (
    auc_from_histogram,
    class_probabilities,
    f1_from_confusion,
    histogram_add,
    merge_histograms,
    predicted_labels,
)
from beam_rnn.io import DEAD_LETTER_TAG, dead_letter
from beam_rnn.serve.config import EvaluateConfig
from beam_rnn.serve.handler import ClassifierModelHandler, ClassifierModels
from beam_rnn.serve.score import Infer, _ValidateFn

EVALUATE_STAGE = "evaluate"
PREFIX_FRACTIONS = tuple(round(0.1 * i, 1) for i in range(1, 11))
DEFAULT_LENGTH_BOUNDARIES = EvaluateConfig().length_boundaries  # tokens: short < 100 <= medium < 300 <= long
LENGTH_BUCKETS = ("short", "medium", "long")
ECE_BINS = 10
EPS = 1e-7
_DEFAULTS = EvaluateConfig()


def length_bucket(length: int, boundaries: Sequence[int] = DEFAULT_LENGTH_BOUNDARIES) -> int:
    """Index into LENGTH_BUCKETS for a document of `length` tokens."""
    return int(np.searchsorted(np.asarray(boundaries), length, side="right"))


def prefix_lengths(length: int, fractions: Sequence[float] = PREFIX_FRACTIONS) -> list[int]:
    """Tokens in each prefix: ceil(f * length), at least 1 token for a non-empty document."""
    return [max(1, math.ceil(round(f * length, 6))) if length else 0 for f in fractions]


# --- Early prediction ------------------------------------------------------------------


def _probs(logits: np.ndarray, num_classes: int) -> np.ndarray:
    from beam_rnn.stream.step import probabilities  # pylint: disable=import-outside-toplevel

    p = probabilities(np.asarray(logits, dtype=np.float32), num_classes)
    return p[..., 0] if num_classes == 2 and p.ndim == 2 else p


def streaming_early(weights: Any, ids: np.ndarray, lengths: np.ndarray, cuts: Sequence[Sequence[int]],
                    num_classes: int) -> np.ndarray:
    """Predictions after each prefix, from the streaming model's per-token step: one pass over the batch.

    Every stream advances a token at a time; a document's prediction is read
    whenever it reaches one of its prefix lengths.
    """
    from beam_rnn.stream import step as rnn_step  # pylint: disable=import-outside-toplevel

    n, k = len(cuts), num_classes
    num_fractions = len(cuts[0]) if cuts else 0
    state = rnn_step.initial_state(weights, n)
    out = np.zeros((n, num_fractions) + (() if k == 2 else (k,)), dtype=np.float32)
    wanted: dict[int, list[tuple[int, int]]] = {}
    for i, c in enumerate(cuts):
        for j, t in enumerate(c):
            wanted.setdefault(t, []).append((i, j))
    for t in range(1, ids.shape[1] + 1):
        logits, state = rnn_step.step_batch(weights, ids[:, t - 1], state)
        for i, j in wanted.get(t, ()):
            out[i, j] = _probs(logits[i : i + 1], k)[0]
    for i in range(n):  # empty documents: the prediction of no tokens
        if lengths[i] == 0:
            logits, _ = rnn_step.step_batch(weights, np.zeros(1, np.int64), rnn_step.initial_state(weights, 1))
            out[i, :] = _probs(logits, k)[0]
    return out


def prefix_early(classify_ids: Any, ids: np.ndarray, cuts: Sequence[Sequence[int]]) -> np.ndarray:
    """Predictions after each prefix from re-running a model (``classify_ids``) on every prefix."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    cols = []
    for j in range(len(cuts[0]) if cuts else 0):
        prefix = np.zeros_like(ids)
        for i, c in enumerate(cuts):
            prefix[i, : c[j]] = ids[i, : c[j]]
        cols.append(classify_ids(token_ids=tf.constant(prefix))["probabilities"].numpy())
    return np.stack(cols, axis=1)


def read_step_weights(model_dir: str) -> Any:
    """The streaming model's step weights (any Beam filesystem)."""
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel

    from beam_rnn.stream import step as rnn_step  # pylint: disable=import-outside-toplevel

    with FileSystems.open(FileSystems.join(model_dir, C.STEP_WEIGHTS_FILE)) as f:
        return rnn_step.StepWeights.from_dict(rnn_step.read_npz(f.read()))


class EvaluationModels(ClassifierModels):
    """The loaded models plus the streaming model's step weights; `predict` adds lengths and prefixes."""

    def __init__(self, infos: Sequence[ModelInfo], fractions: Sequence[float]):
        super().__init__(infos)
        self._fractions = tuple(fractions)
        self._num_classes = infos[0].num_classes
        self.streaming = C.MODEL_LSTM if C.MODEL_LSTM in self.names else None
        self.step_weights = None
        if self.streaming:
            self.step_weights = read_step_weights(infos[self.names.index(self.streaming)].model_dir)

    def predict(self, texts: Sequence[str]) -> tuple[Any, list[Any], list[Any]]:
        """``(token counts, [probabilities per model], [prefix probabilities per model])`` for a batch."""
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        tok = self._models[0].module.signatures["tokenize"](text=tf.constant(list(texts)))
        ids = tok["token_ids"].numpy()
        lengths = tok["lengths"].numpy().astype(int)
        full = [probabilities for probabilities, _ in self.full_pass(texts)]
        cuts = [prefix_lengths(int(n), self._fractions) for n in lengths]
        early = []
        for name, model in zip(self.names, self._models):
            if name == self.streaming:
                early.append(streaming_early(self.step_weights, ids, lengths, cuts, self._num_classes))
            else:
                early.append(prefix_early(model.module.signatures["classify_ids"], ids, cuts))
        return lengths, full, early


class EvaluationModelHandler(ClassifierModelHandler):
    """RunInference handler of the evaluation: per document ``{"length", "probability", "early"}``.

    ``probability`` and ``early`` map each model's name to P(1) (binary) or the K
    probabilities, and to that at each prefix fraction.
    """

    def __init__(self, models: ModelsArg, *, fractions: Sequence[float] = PREFIX_FRACTIONS, **kwargs: Any):
        super().__init__(models, **kwargs)
        self._fractions = tuple(fractions)
        self._settings["fractions"] = self._fractions

    def model_identifier(self) -> str:
        return f"{super().model_identifier()}_{len(self._fractions)}"

    def load_model(self) -> EvaluationModels:
        return EvaluationModels(self._infos, self._fractions)

    def run_inference(self, batch: Sequence[str], model: EvaluationModels,
                      inference_args: dict[str, Any] | None = None) -> list[PredictionResult]:
        texts = list(batch)
        lengths, full, early = model.predict(texts)
        names = [info.name for info in self._infos]
        return [
            PredictionResult(text, {
                "length": int(lengths[i]),
                "probability": {n: np.asarray(full[m][i]).tolist() for m, n in enumerate(names)},
                "early": {n: np.asarray(early[m][i]).tolist() for m, n in enumerate(names)},
            }, self._model_id)
            for i, text in enumerate(texts)
        ]


def _to_record(element: tuple[tuple[str, Any], PredictionResult]) -> dict[str, Any]:
    (doc_id, label), result = element
    out = result.inference
    return {C.ID_KEY: doc_id, C.LABEL_KEY: int(label), "length": out["length"],
            "probability": out["probability"], "early": out["early"]}


class _MapLabelsFn(beam.DoFn):
    """Corpus labels -> class ids (ints pass through, names via the card); others -> dead letters."""

    def __init__(self, num_classes: int, label_names: Sequence[str] | None):
        super().__init__()
        self._k = num_classes
        self._names = list(label_names or [])

    def process(self, doc: Mapping[str, Any]) -> Iterator[Any]:
        label = doc.get(C.LABEL_KEY)
        if isinstance(label, str) and label in self._names:
            label = self._names.index(label)
        if isinstance(label, int) and 0 <= label < self._k:
            yield dict(doc, **{C.LABEL_KEY: label})
        else:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(
                doc.get(C.ID_KEY, ""), json.dumps(doc, ensure_ascii=False)[:1000],
                f"label_not_in_model: label {label!r} is not one of the model's {self._k} classes",
                stage=EVALUATE_STAGE))


class EvaluationResult(NamedTuple):
    """The outputs of `EvaluateModels`."""

    records: beam.PCollection  # per document: {id, label, length, probability, early}
    metrics: beam.PCollection  # one dict (`ReportCombineFn`)
    dead_letter: beam.PCollection  # labels that are no class, invalid documents, inference failures


class EvaluateModels(beam.PTransform):
    """Labelled documents -> per-document records, one metrics dict, dead letters.

    Args:
      models: The exports (see `beam_rnn.core.artifacts.resolve_models`); the one
        named ``lstm`` is the streaming model, read token by token.
      config: Batch size, length boundaries, AUC bins.
      share_model_across_processes, model_copies: Beam's model sharing, as for scoring.
    """

    def __init__(self, *, models: ModelsArg, config: EvaluateConfig = _DEFAULTS,
                 share_model_across_processes: bool = False, model_copies: int | None = None) -> None:
        super().__init__()
        self._handler = EvaluationModelHandler(
            models, min_batch_size=1, max_batch_size=config.batch_size,
            share_model_across_processes=share_model_across_processes, model_copies=model_copies)
        self._config = config

    @property
    def infos(self) -> tuple[ModelInfo, ...]:
        return self._handler.infos

    def expand(self, documents: beam.PCollection) -> EvaluationResult:
        first = self.infos[0]
        mapped = documents | "MapLabels" >> beam.ParDo(
            _MapLabelsFn(first.num_classes, first.label_names)).with_outputs(DEAD_LETTER_TAG, main="docs")
        checked = mapped.docs | "Validate" >> beam.ParDo(_ValidateFn(EVALUATE_STAGE)).with_outputs(
            DEAD_LETTER_TAG, main="keyed")
        inferred = checked.keyed | "Infer" >> Infer(self._handler, stage=EVALUATE_STAGE)
        [results] = inferred.results
        records = results | "ToRecords" >> beam.Map(_to_record)
        metrics = records | "CombineMetrics" >> beam.CombineGlobally(ReportCombineFn(
            [info.name for info in self.infos], first.num_classes,
            length_boundaries=self._config.length_boundaries, auc_max_bins=self._config.auc_max_bins))
        dead = ((mapped[DEAD_LETTER_TAG], checked[DEAD_LETTER_TAG], *inferred.dead_letter)
                | "DeadLetters" >> beam.Flatten())
        return EvaluationResult(records, metrics, dead)


# --- Aggregation ------------------------------------------------------------------------


class ReportCombineFn(beam.CombineFn):
    """Counts and sums for every metric, and an AUC histogram: state does not grow with the corpus.

    The AUC is exact (float32 scores, ties 1/2) while a model has at most
    `auc_max_bins` distinct scores, then a bounded histogram with a guaranteed
    error bound (`auc_method`, `auc_max_error`), as in `beam_rnn.serve.summary.ScoreSummaryFn`.
    """

    def __init__(self, model_names: Sequence[str], num_classes: int, fractions: Sequence[float] = PREFIX_FRACTIONS,
                 length_boundaries: Sequence[int] = DEFAULT_LENGTH_BOUNDARIES,
                 auc_max_bins: int = _DEFAULTS.auc_max_bins):
        if auc_max_bins < 2:
            raise ValueError(f"auc_max_bins must be >= 2, got {auc_max_bins}.")
        self._max_bins = auc_max_bins
        self._names = list(model_names)
        self._k = num_classes
        self._fractions = list(fractions)
        self._boundaries = list(length_boundaries)

    def create_accumulator(self):
        k, nb, nf = self._k, len(LENGTH_BUCKETS), len(self._fractions)
        return {
            "n": 0,
            "agree": 0,
            "bucket_docs": np.zeros(nb, np.int64),
            "models": {n: {"confusion": np.zeros((k, k), np.int64), "log_loss": 0.0,
                           "ece_count": np.zeros(ECE_BINS, np.int64), "ece_conf": np.zeros(ECE_BINS),
                           "ece_correct": np.zeros(ECE_BINS), "bucket_correct": np.zeros(nb, np.int64),
                           # Memory: a bounded {float32 bits >> shift: [neg, pos]} histogram, not a score per
                           # document (a list grew ~0.3 KB/doc/model with its pickled merge copies).
                           "early_correct": np.zeros(nf, np.int64), "auc_hist": {}, "auc_shift": 0}
                       for n in self._names},
        }

    def add_input(self, acc, record):
        label = record[C.LABEL_KEY]
        bucket = length_bucket(record["length"], self._boundaries)
        acc["n"] += 1
        acc["bucket_docs"][bucket] += 1
        preds = []
        for name in self._names:
            m = acc["models"][name]
            p = np.asarray(record["probability"][name], dtype=np.float64)
            cp = class_probabilities(p[None])[0]
            pred = int(predicted_labels(p[None])[0])
            preds.append(pred)
            m["confusion"][label, pred] += 1
            m["log_loss"] += -math.log(max(cp[label], EPS))
            conf = float(cp.max())
            b = min(int(conf * ECE_BINS), ECE_BINS - 1)
            m["ece_count"][b] += 1
            m["ece_conf"][b] += conf
            m["ece_correct"][b] += pred == label
            m["bucket_correct"][bucket] += pred == label
            early = np.asarray(record["early"][name], dtype=np.float64)
            m["early_correct"] += predicted_labels(early) == label
            if self._k == 2 and cp[1] == cp[1]:  # NaN scores have no rank
                m["auc_hist"], m["auc_shift"] = histogram_add(
                    m["auc_hist"], m["auc_shift"], float(cp[1]), label, self._max_bins)
        acc["agree"] += len(set(preds)) == 1
        return acc

    def merge_accumulators(self, accumulators):
        accumulators = list(accumulators)
        out = accumulators[0]
        for acc in accumulators[1:]:
            out["n"] += acc["n"]
            out["agree"] += acc["agree"]
            out["bucket_docs"] += acc["bucket_docs"]
            for name in self._names:
                a, b = out["models"][name], acc["models"][name]
                for key in a:
                    if key not in ("auc_hist", "auc_shift"):
                        a[key] = a[key] + b[key]
                a["auc_hist"], a["auc_shift"] = merge_histograms(
                    [(a["auc_hist"], a["auc_shift"]), (b["auc_hist"], b["auc_shift"])], self._max_bins)
        return out

    def _model_metrics(self, m: dict, n: int, bucket_docs: np.ndarray) -> dict[str, Any]:
        confusion = m["confusion"]
        ece = float(np.sum(np.abs(m["ece_correct"] - m["ece_conf"]))) / n if n else 0.0
        auc, _, _, tied = auc_from_histogram(m["auc_hist"]) if self._k == 2 else (None, 0, 0, 0.0)
        exact = m["auc_shift"] == 0
        return {
            "documents": n,
            "accuracy": float(np.trace(confusion)) / n if n else 0.0,
            "auc": auc,
            "auc_method": None if auc is None else ("exact" if exact else "histogram"),
            "auc_max_error": None if auc is None else (0.0 if exact else 0.5 * tied),
            "f1": f1_from_confusion(confusion),
            "log_loss": m["log_loss"] / n if n else 0.0,
            "ece": ece,
            "confusion_matrix": confusion.tolist(),
            "accuracy_by_length": {
                LENGTH_BUCKETS[i]: (float(m["bucket_correct"][i] / bucket_docs[i]) if bucket_docs[i] else None)
                for i in range(len(LENGTH_BUCKETS))
            },
            "early_accuracy": {f"{int(round(f * 100))}%": float(c) / n if n else 0.0
                               for f, c in zip(self._fractions, m["early_correct"])},
            "calibration": [
                {"bin": b, "count": int(m["ece_count"][b]),
                 "confidence": float(m["ece_conf"][b] / m["ece_count"][b]) if m["ece_count"][b] else None,
                 "accuracy": float(m["ece_correct"][b] / m["ece_count"][b]) if m["ece_count"][b] else None}
                for b in range(ECE_BINS)
            ],
        }

    def extract_output(self, acc):
        n = acc["n"]
        return {
            "documents": n,
            "documents_by_length": {LENGTH_BUCKETS[i]: int(acc["bucket_docs"][i]) for i in range(len(LENGTH_BUCKETS))},
            "length_boundaries": self._boundaries,
            "agreement": (acc["agree"] / n) if n and len(self._names) > 1 else None,
            "models": {name: self._model_metrics(acc["models"][name], n, acc["bucket_docs"]) for name in self._names},
        }
