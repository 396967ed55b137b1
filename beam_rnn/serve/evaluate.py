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

A combiner (`ReportCombineFn`) then computes, per model: accuracy with its Wilson
interval, AUC (binary), per-class precision/recall/F1/support, macro-F1 (and ``f1``:
binary, of class 1; K > 2, macro), log loss, expected calibration error (10
equal-width confidence bins), confusion matrix, accuracy by document length bucket
(tertiles of the data's token counts unless boundaries are given) and by prefix;
between the models, agreement and McNemar's test on the paired predictions; and
warnings (a class never predicted, one class only).  Its state is counts, sums, a
counter per distinct token count and a bounded AUC histogram
(`beam_rnn.core.metrics`): it does not grow with the corpus.
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
from beam_rnn.core.threads import limit_blas_threads
from beam_rnn.core.metrics import (
    auc_from_histogram,
    class_probabilities,
    f1_from_confusion,
    histogram_add,
    macro_f1,
    mcnemar,
    merge_histograms,
    per_class_metrics,
    predicted_labels,
    quantile_boundaries,
    wilson_interval,
)
from beam_rnn.io import DEAD_LETTER_TAG, dead_letter
from beam_rnn.serve.config import EvaluateConfig
from beam_rnn.serve.handler import ClassifierModelHandler, ClassifierModels
from beam_rnn.serve.score import Infer, _SortByLengthFn, _ValidateFn

EVALUATE_STAGE = "evaluate"
PREFIX_FRACTIONS = tuple(round(0.1 * i, 1) for i in range(1, 11))
LENGTH_QUANTILES = (1 / 3, 2 / 3)  # without --length-boundaries: tertiles of the documents' token counts
ECE_BINS = 10
EPS = 1e-7
_DEFAULTS = EvaluateConfig()


def length_bucket(length: int, boundaries: Sequence[int]) -> int:
    """Index of the length bucket of a document of `length` tokens (bucket i: boundaries[i-1] <= length < boundaries[i])."""
    return int(np.searchsorted(np.asarray(boundaries), length, side="right"))


def length_bucket_names(count: int) -> tuple[str, ...]:
    """Names of `count` length buckets, shortest first: short/medium/long for three."""
    return {1: ("all",), 2: ("short", "long"), 3: ("short", "medium", "long")}.get(
        count, tuple(f"length_{i + 1}" for i in range(count)))


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


def bidirectional_early(model: Any, ids: np.ndarray, cuts: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """`prefix_early` of a single-layer bidirectional model, with its forward direction shared by the prefixes.

    `model` is a `beam_rnn.serve.bidirectional.PrefixBidirectional`: one forward pass
    per document, the backward direction re-run per prefix (all of a batch's at once).
    """
    logits = model.logits(ids, cuts)
    width = len(cuts[0]) if cuts else 0
    flat = np.concatenate(logits) if logits else np.zeros((0, 1 if num_classes == 2 else num_classes), np.float32)
    probs = _probs(flat, num_classes)
    return probs.reshape((len(cuts), width) + probs.shape[1:])


class EvaluationModels(ClassifierModels):
    """The loaded models plus the streaming model's step weights; `predict` adds lengths and prefixes.

    Early predictions: the streaming model from its NumPy step (`streaming_early`); a
    single-layer bidirectional model from `bidirectional_early` (its forward direction
    shared by the prefixes, in NumPy); any other model by re-running it on each prefix
    (`prefix_early`).  The 100% prefix of every model is its full pass, so the early
    curve ends exactly at the reported accuracy.
    """

    def __init__(self, infos: Sequence[ModelInfo], fractions: Sequence[float]):
        super().__init__(infos)
        from beam_rnn.serve.bidirectional import PrefixBidirectional  # pylint: disable=import-outside-toplevel

        limit_blas_threads()  # the early passes are NumPy steps (beam_rnn.core.threads)
        self._fractions = tuple(fractions)
        self._num_classes = infos[0].num_classes
        # Every streaming (kind "lstm") model steps token by token, whatever its name (e.g. plain=... pt=...).
        self._steps = {info.name: read_step_weights(info.model_dir) for info in infos if info.kind == C.MODEL_LSTM}
        self.streaming = next(iter(self._steps), None)  # the one the report's latency table times
        self.step_weights = self._steps.get(self.streaming)
        self.prefix_models = {name: PrefixBidirectional.from_module(model.module, self._num_classes)
                              for name, model in zip(self.names, self._models) if name not in self._steps}

    def predict(self, texts: Sequence[str]) -> tuple[Any, list[Any], list[Any]]:
        """``(token counts, [probabilities per model], [prefix probabilities per model])`` for a batch."""
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        tok = self._models[0].module.signatures["tokenize"](text=tf.constant(list(texts)))
        ids = tok["token_ids"].numpy()
        lengths = tok["lengths"].numpy().astype(int)
        full = [probabilities for probabilities, _ in self.full_pass(texts)]
        cuts = [prefix_lengths(int(n), self._fractions) for n in lengths]
        whole = np.array([[c == n for c in cut] for cut, n in zip(cuts, lengths)], dtype=bool).reshape(len(cuts), -1)
        early = []
        for m, (name, model) in enumerate(zip(self.names, self._models)):
            if name in self._steps:
                prefixes = streaming_early(self._steps[name], ids, lengths, cuts, self._num_classes)
            elif self.prefix_models.get(name) is not None:
                prefixes = bidirectional_early(self.prefix_models[name], ids, cuts, self._num_classes)
            else:
                prefixes = prefix_early(model.module.signatures["classify_ids"], ids, cuts)
            rows, cols = np.nonzero(whole)
            prefixes[rows, cols] = np.asarray(full[m]).reshape((len(cuts),) + prefixes.shape[2:])[rows]
            early.append(prefixes)
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


def _to_record(element: tuple[tuple[str, Any], PredictionResult],
               label_names: Sequence[str] | None = None) -> dict[str, Any]:
    """``{id, true_label[, true_label_name], predicted_label, [predicted_label_name], length, probability, early}``.

    ``predicted_label`` (and its name) map each model's name to its predicted class,
    as ``probability`` and ``early`` map it to its probabilities.
    """
    (doc_id, label), result = element
    out = result.inference
    label = int(label)
    predicted = {name: int(predicted_labels(np.asarray(p, dtype=np.float64)[None])[0])
                 for name, p in out["probability"].items()}
    record: dict[str, Any] = {C.ID_KEY: doc_id, C.TRUE_LABEL_KEY: label}
    if label_names:
        record[C.TRUE_LABEL_NAME_KEY] = label_names[label]
    record[C.PREDICTED_LABEL_KEY] = predicted
    if label_names:
        record[C.PREDICTED_LABEL_NAME_KEY] = {name: label_names[k] for name, k in predicted.items()}
    record.update({"length": out["length"], "probability": out["probability"], "early": out["early"]})
    return record


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

    records: beam.PCollection  # per document: {id, true_label[, true_label_name], predicted_label, ...} (`_to_record`)
    metrics: beam.PCollection  # one dict (`ReportCombineFn`)
    dead_letter: beam.PCollection  # labels that are no class, invalid documents, inference failures


class EvaluateModels(beam.PTransform):
    """Labelled documents -> per-document records, one metrics dict, dead letters.

    Args:
      models: The exports (see `beam_rnn.core.artifacts.resolve_models`); the one
        named ``lstm`` is the streaming model, read token by token.
      config: Batch size, length boundaries, AUC bins, the incremental sample (`beam_rnn.serve.incremental`).
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

    def expand(self, documents: beam.PCollection):  # returns a NamedTuple of PCollections (Beam only checks PCollection hints)
        first = self.infos[0]
        mapped = documents | "MapLabels" >> beam.ParDo(
            _MapLabelsFn(first.num_classes, first.label_names)).with_outputs(DEAD_LETTER_TAG, main="docs")
        checked = mapped.docs | "Validate" >> beam.ParDo(_ValidateFn(EVALUATE_STAGE)).with_outputs(
            DEAD_LETTER_TAG, main="keyed")
        keyed = checked.keyed
        if self._config.sort_buffer > 1:
            keyed = keyed | "SortByLength" >> beam.ParDo(_SortByLengthFn(self._config.sort_buffer))
        inferred = keyed | "Infer" >> Infer(self._handler, stage=EVALUATE_STAGE)
        [results] = inferred.results
        records = results | "ToRecords" >> beam.Map(_to_record, first.label_names)
        metrics = records | "CombineMetrics" >> beam.CombineGlobally(ReportCombineFn(
            [info.name for info in self.infos], first.num_classes,
            length_boundaries=self._config.length_boundaries, auc_max_bins=self._config.auc_max_bins,
            label_names=first.label_names, confidence_level=self._config.confidence_level,
            mcnemar_exact_below=self._config.mcnemar_exact_below))
        if self._config.incremental_sample:
            from beam_rnn.serve.incremental import IncrementalMeasures  # pylint: disable=import-outside-toplevel

            measures = checked.keyed | "Incremental" >> IncrementalMeasures(
                self.infos, sample=self._config.incremental_sample, batch_size=self._config.batch_size)
            metrics = metrics | "AddIncremental" >> beam.Map(
                lambda m, extra: dict(m, incremental=extra), beam.pvalue.AsSingleton(measures))
        dead = ((mapped[DEAD_LETTER_TAG], checked[DEAD_LETTER_TAG], *inferred.dead_letter)
                | "DeadLetters" >> beam.Flatten())
        return EvaluationResult(records, metrics, dead)


# --- Aggregation ------------------------------------------------------------------------


class ReportCombineFn(beam.CombineFn):
    """Counts and sums for every metric, and an AUC histogram: state does not grow with the corpus.

    Per model: the confusion matrix (so per-class precision, recall, F1 and support,
    macro-F1), log loss, calibration bins, correct predictions per prefix and per
    token count, the AUC histogram; per pair of models: the 2x2 table of right/wrong
    for McNemar's test.  Token counts are kept exactly (one counter per distinct
    length, bounded by the longest document the models read), so the length buckets
    are made in `extract_output`: from `length_boundaries` when given, else at the
    tertiles of the evaluated documents' own lengths.

    The AUC is exact (float32 scores, ties 1/2) while a model has at most
    `auc_max_bins` distinct scores, then a bounded histogram with a guaranteed
    error bound (`auc_method`, `auc_max_error`), as in `beam_rnn.serve.summary.ScoreSummaryFn`.

    Args:
      model_names: The models of each record's ``probability`` and ``early``.
      num_classes: K.
      fractions: The prefix fractions of ``early``.
      length_boundaries: Token counts separating the length buckets; None: the tertiles.
      auc_max_bins: Distinct scores per model kept exactly for the AUC.
      label_names: Class names by id (None: ``"0"``, ``"1"``, ...).
      confidence_level: Of the Wilson intervals; McNemar's test is significant below 1 - this.
      mcnemar_exact_below: Exact binomial McNemar while the discordant pairs are fewer.
    """

    def __init__(self, model_names: Sequence[str], num_classes: int, fractions: Sequence[float] = PREFIX_FRACTIONS,
                 length_boundaries: Sequence[int] | None = _DEFAULTS.length_boundaries,
                 auc_max_bins: int = _DEFAULTS.auc_max_bins, label_names: Sequence[str] | None = None,
                 confidence_level: float = _DEFAULTS.confidence_level,
                 mcnemar_exact_below: int = _DEFAULTS.mcnemar_exact_below):
        if auc_max_bins < 2:
            raise ValueError(f"auc_max_bins must be >= 2, got {auc_max_bins}.")
        if label_names is not None and len(label_names) != num_classes:
            raise ValueError(f"{len(label_names)} label names for {num_classes} classes.")
        self._max_bins = auc_max_bins
        self._names = list(model_names)
        self._k = num_classes
        self._fractions = list(fractions)
        self._boundaries = None if length_boundaries is None else [int(b) for b in length_boundaries]
        self._classes = [str(n) for n in label_names] if label_names else [str(i) for i in range(num_classes)]
        self._confidence = confidence_level
        self._exact_below = mcnemar_exact_below

    def create_accumulator(self):
        k, nf, nm = self._k, len(self._fractions), len(self._names)
        return {
            "n": 0,
            "agree": 0,
            "length_docs": {},  # token count -> documents
            # [i, j, right_i, right_j] for i < j: the paired table of McNemar's test
            "paired": np.zeros((nm, nm, 2, 2), np.int64),
            "models": {n: {"confusion": np.zeros((k, k), np.int64), "log_loss": 0.0,
                           "ece_count": np.zeros(ECE_BINS, np.int64), "ece_conf": np.zeros(ECE_BINS),
                           "ece_correct": np.zeros(ECE_BINS), "length_correct": {},
                           # Memory: a bounded {float32 bits >> shift: [neg, pos]} histogram, not a score per
                           # document (a list grew ~0.3 KB/doc/model with its pickled merge copies).
                           "early_correct": np.zeros(nf, np.int64), "auc_hist": {}, "auc_shift": 0}
                       for n in self._names},
        }

    def add_input(self, acc, record):
        label = int(record[C.TRUE_LABEL_KEY])
        length = int(record["length"])
        acc["n"] += 1
        acc["length_docs"][length] = acc["length_docs"].get(length, 0) + 1
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
            m["length_correct"][length] = m["length_correct"].get(length, 0) + int(pred == label)
            early = np.asarray(record["early"][name], dtype=np.float64)
            m["early_correct"] += predicted_labels(early) == label
            if self._k == 2 and cp[1] == cp[1]:  # NaN scores have no rank
                m["auc_hist"], m["auc_shift"] = histogram_add(
                    m["auc_hist"], m["auc_shift"], float(cp[1]), label, self._max_bins)
        right = [int(p == label) for p in preds]
        for i in range(len(preds)):
            for j in range(i + 1, len(preds)):
                acc["paired"][i, j, right[i], right[j]] += 1
        acc["agree"] += len(set(preds)) == 1
        return acc

    def merge_accumulators(self, accumulators):
        accumulators = list(accumulators)
        out = accumulators[0]
        for acc in accumulators[1:]:
            out["n"] += acc["n"]
            out["agree"] += acc["agree"]
            out["paired"] += acc["paired"]
            _add_counts(out["length_docs"], acc["length_docs"])
            for name in self._names:
                a, b = out["models"][name], acc["models"][name]
                for key in a:
                    if key == "length_correct":
                        _add_counts(a[key], b[key])
                    elif key not in ("auc_hist", "auc_shift"):
                        a[key] = a[key] + b[key]
                a["auc_hist"], a["auc_shift"] = merge_histograms(
                    [(a["auc_hist"], a["auc_shift"]), (b["auc_hist"], b["auc_shift"])], self._max_bins)
        return out

    def _interval(self, successes: float, n: int) -> list[float] | None:
        ci = wilson_interval(int(successes), int(n), self._confidence)
        return None if ci is None else list(ci)

    def _length_buckets(self, length_docs: Mapping[int, int]) -> tuple[list[int], list[dict[str, Any]]]:
        """The boundaries (given, or at the tertiles) and per bucket its name, token range and documents."""
        if self._boundaries is not None:
            boundaries = self._boundaries
        else:
            boundaries = quantile_boundaries(length_docs, LENGTH_QUANTILES)
        lengths = sorted(length_docs)
        buckets = []
        for i, name in enumerate(length_bucket_names(len(boundaries) + 1)):
            inside = [t for t in lengths if length_bucket(t, boundaries) == i]
            low = boundaries[i - 1] if i else (inside[0] if inside else 0)
            high = boundaries[i] - 1 if i < len(boundaries) else (inside[-1] if inside else None)
            buckets.append({"name": name, "min_tokens": low, "max_tokens": high,
                            "documents": sum(length_docs[t] for t in inside)})
        return boundaries, buckets

    def _model_metrics(self, m: dict, n: int, boundaries: Sequence[int],
                       buckets: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        confusion = m["confusion"]
        correct = int(np.trace(confusion))
        ece = float(np.sum(np.abs(m["ece_correct"] - m["ece_conf"]))) / n if n else 0.0
        auc, _, _, tied = auc_from_histogram(m["auc_hist"]) if self._k == 2 else (None, 0, 0, 0.0)
        exact = m["auc_shift"] == 0
        bucket_correct = [0] * len(buckets)
        for length, c in m["length_correct"].items():
            bucket_correct[length_bucket(length, boundaries)] += c
        early = {f"{int(round(f * 100))}%": int(c) for f, c in zip(self._fractions, m["early_correct"])}
        return {
            "documents": n,
            "accuracy": correct / n if n else 0.0,
            "accuracy_interval": self._interval(correct, n),
            "auc": auc,
            "auc_method": None if auc is None else ("exact" if exact else "histogram"),
            "auc_max_error": None if auc is None else (0.0 if exact else 0.5 * tied),
            "f1": f1_from_confusion(confusion),
            "f1_definition": (f"F1 of class {self._classes[1]!r} (id 1)" if self._k == 2
                              else f"macro-F1: unweighted mean of the per-class F1 of {self._k} classes"),
            "macro_f1": macro_f1(confusion),
            "per_class": {name: stats for name, stats in zip(self._classes, per_class_metrics(confusion))},
            "log_loss": m["log_loss"] / n if n else 0.0,
            "ece": ece,
            "confusion_matrix": confusion.tolist(),
            "accuracy_by_length": {
                b["name"]: (c / b["documents"] if b["documents"] else None) for b, c in zip(buckets, bucket_correct)
            },
            "accuracy_by_length_interval": {
                b["name"]: self._interval(c, b["documents"]) for b, c in zip(buckets, bucket_correct)
            },
            "early_accuracy": {key: c / n if n else 0.0 for key, c in early.items()},
            "early_accuracy_interval": {key: self._interval(c, n) for key, c in early.items()},
            "calibration": [
                {"bin": b, "count": int(m["ece_count"][b]),
                 "confidence": float(m["ece_conf"][b] / m["ece_count"][b]) if m["ece_count"][b] else None,
                 "accuracy": float(m["ece_correct"][b] / m["ece_count"][b]) if m["ece_count"][b] else None,
                 "accuracy_interval": self._interval(m["ece_correct"][b], m["ece_count"][b])}
                for b in range(ECE_BINS)
            ],
        }

    def _comparisons(self, paired: np.ndarray, n: int) -> list[dict[str, Any]]:
        """McNemar's test for every pair of models on the same documents."""
        out = []
        for i, a in enumerate(self._names):
            for j in range(i + 1, len(self._names)):
                t = paired[i, j]
                test = mcnemar(int(t[1, 0]), int(t[0, 1]), self._exact_below)
                out.append({
                    "models": [a, self._names[j]], "documents": n,
                    "both_right": int(t[1, 1]), "only_first_right": int(t[1, 0]),
                    "only_second_right": int(t[0, 1]), "both_wrong": int(t[0, 0]),
                    "accuracy_difference": (int(t[1, 0]) - int(t[0, 1])) / n if n else 0.0,
                    "test": "mcnemar", "method": test["method"], "statistic": test["statistic"],
                    "p_value": test["p_value"], "significance_level": round(1 - self._confidence, 10),
                    "significant": test["p_value"] < 1 - self._confidence,
                })
        return out

    def _warnings(self, models: Mapping[str, Mapping[str, Any]], n: int) -> list[str]:
        """Models that never predict a class or predict only one; classes absent from the data."""
        if not n:
            return ["No document was evaluated: every metric is empty."]
        out = []
        first = next(iter(models.values()))
        absent = [c for c, s in first["per_class"].items() if not s["support"]]
        if absent:
            out.append(f"{len(absent)} of {self._k} classes have no document in this data "
                       f"(their recall is undefined): {', '.join(map(repr, absent))}.")
        for name, m in models.items():
            predicted = [c for c, s in m["per_class"].items() if s["predicted"]]
            never = [c for c, s in m["per_class"].items() if not s["predicted"]]
            if len(predicted) == 1:
                out.append(f"Model {name} predicts only one class, {predicted[0]!r}, for all {n} documents.")
            elif never:
                support = ", ".join(f"{c!r} ({m['per_class'][c]['support']} documents)" for c in never)
                out.append(f"Model {name} never predicts {len(never)} of {self._k} classes: {support}.")
        return out

    def extract_output(self, acc):
        n = acc["n"]
        boundaries, buckets = self._length_buckets(acc["length_docs"])
        models = {name: self._model_metrics(acc["models"][name], n, boundaries, buckets) for name in self._names}
        return {
            "documents": n,
            "class_names": list(self._classes),
            "confidence_level": self._confidence,
            "documents_by_length": {b["name"]: b["documents"] for b in buckets},
            "length_boundaries": list(boundaries),
            "length_boundaries_from": ("given (--length-boundaries)" if self._boundaries is not None
                                       else "tertiles of the documents' token counts"),
            "length_buckets": buckets,
            "agreement": (acc["agree"] / n) if n and len(self._names) > 1 else None,
            "models": models,
            "comparisons": self._comparisons(acc["paired"], n),
            "warnings": self._warnings(models, n),
        }


def _add_counts(into: dict, other: Mapping) -> None:
    for key, value in other.items():
        into[key] = into.get(key, 0) + value
