"""Incremental evaluation: every model's label after every token of a sample of documents (issue 15).

`IncrementalMeasures` takes the evaluation's validated documents
(``((id, label), text)``), keeps a deterministic sample of them (the `sample`
documents with the smallest SHA-256 of their id: the same documents on every run
and runner), and reads each one incrementally, exactly at every token:

* every streaming model (kind ``lstm``, whatever its name) truly incrementally: its per-token NumPy step,
  one step per token for a whole batch of documents, O(1) a token;
* every other model (the BiLSTM) *restart-incrementally*, since it has no per-token
  state: a single-layer bidirectional model with `beam_rnn.serve.bidirectional`
  (its forward direction run once per document and shared by the prefixes ``1..n``,
  the backward direction re-run on every prefix, all prefixes of a batch at once); any
  other (``--stacked``) re-run whole on every prefix through ``classify_ids``.

Per document and model the prefix labels become the measures of
`beam_rnn.core.incremental` (edit overhead, correction time, relative
correctness, reanalysis rate, EO/RC with output delays); the stage outputs one dict:
per model the corpus means (overall and by correct / incorrect final output), the
distribution of the position where the label becomes final (deciles of the text),
accuracy and RC against the fraction of tokens read (deciles), and the measured
cost per token.  Its combiner keeps the sample's per-document measures: bounded by
`sample`, not by the corpus.
"""

import hashlib
import time
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from beam_rnn.core import constants as C
from beam_rnn.core import incremental as inc
from beam_rnn.core.artifacts import ModelInfo
from beam_rnn.core.metrics import class_probabilities, predicted_labels
from beam_rnn.core.threads import limit_blas_threads
from beam_rnn.serve.evaluate import PREFIX_FRACTIONS, prefix_lengths, read_step_weights

NAMESPACE = "beam_rnn.incremental"
PREFIX_ROWS = 256  # prefixes per classify_ids call of a restart-incremental model


def _labels(probabilities: Any) -> tuple[np.ndarray, np.ndarray]:
    """Predicted classes and the top class probability of [N] / [N, 1] (binary: P(1)) or [N, K] probabilities."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    return predicted_labels(p), class_probabilities(p).max(axis=1)


def sample_key(doc_id: str) -> str:
    """What picks the sample: the documents with the smallest keys (stable across runs and runners)."""
    return hashlib.sha256(str(doc_id).encode("utf-8")).hexdigest()


Labels = list[list[int]]  # per document, the label after each token
Tops = list[list[float]]  # per document, the top class probability after each token


def streaming_labels(weights: Any, ids: np.ndarray, lengths: np.ndarray, num_classes: int) -> tuple[Labels, Tops]:
    """The streaming model's label (and top probability) after each token of each document (one step a token, batched)."""
    from beam_rnn.stream import step as rnn_step  # pylint: disable=import-outside-toplevel

    state = rnn_step.initial_state(weights, len(ids))
    labels: Labels = [[] for _ in range(len(ids))]
    tops: Tops = [[] for _ in range(len(ids))]
    for t in range(int(lengths.max(initial=0))):
        logits, state = rnn_step.step_batch(weights, ids[:, t], state)
        label, top = _labels(rnn_step.probabilities(np.asarray(logits, np.float32), num_classes))
        for i in np.flatnonzero(lengths > t):
            labels[i].append(int(label[i]))
            tops[i].append(float(top[i]))
    return labels, tops


def bidirectional_labels(model: Any, ids: np.ndarray, lengths: np.ndarray, num_classes: int) -> tuple[Labels, Tops]:
    """A single-layer bidirectional model's label (and top probability) after each token, restart-incrementally:
    `beam_rnn.serve.bidirectional.PrefixBidirectional` (the forward direction once, the backward re-runs batched)."""
    from beam_rnn.stream.step import probabilities  # pylint: disable=import-outside-toplevel

    logits = model.logits(ids, [range(1, int(n) + 1) for n in lengths])
    labels, tops = [], []
    for doc in logits:
        label, top = _labels(probabilities(doc, num_classes))
        labels.append(label.tolist())
        tops.append(top.tolist())
    return labels, tops


def restart_labels(classify_ids: Any, ids: np.ndarray, lengths: np.ndarray) -> tuple[Labels, Tops]:
    """A model's label (and top probability) after each token, by re-running it on every prefix (batched)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    rows = [(i, t) for i, n in enumerate(lengths) for t in range(1, int(n) + 1)]
    rows.sort(key=lambda r: r[1])  # similar lengths together: less padding per call
    out: list[dict[int, tuple[int, float]]] = [{} for _ in range(len(ids))]
    for start in range(0, len(rows), PREFIX_ROWS):
        chunk = rows[start:start + PREFIX_ROWS]
        width = chunk[-1][1]
        prefixes = np.zeros((len(chunk), width), np.int64)
        for r, (i, t) in enumerate(chunk):
            prefixes[r, :t] = ids[i, :t]
        label, top = _labels(classify_ids(token_ids=tf.constant(prefixes))["probabilities"].numpy())
        for r, (i, t) in enumerate(chunk):
            out[i][t] = (int(label[r]), float(top[r]))
    labels = [[d[t][0] for t in range(1, int(n) + 1)] for d, n in zip(out, lengths)]
    return labels, [[d[t][1] for t in range(1, int(n) + 1)] for d, n in zip(out, lengths)]


class _IncrementalFn(beam.DoFn):
    """A batch of sampled documents -> per document and model, the label after every token (and timings)."""

    def __init__(self, infos: Sequence[ModelInfo]):
        super().__init__()
        self._infos = tuple(infos)
        self._documents = Metrics.counter(NAMESPACE, "documents")
        self._tokens = Metrics.counter(NAMESPACE, "tokens")

    def setup(self) -> None:
        from beam_rnn.serve.bidirectional import PrefixBidirectional  # pylint: disable=import-outside-toplevel
        from beam_rnn.serve.handler import LoadedSavedModel  # pylint: disable=import-outside-toplevel

        limit_blas_threads()  # NumPy steps at every token (beam_rnn.core.threads)
        self._models = [LoadedSavedModel(info.model_dir) for info in self._infos]
        self._weights = {info.name: read_step_weights(info.model_dir)
                         for info in self._infos if info.kind == C.MODEL_LSTM}
        self._prefix_models = {info.name: PrefixBidirectional.from_module(model.module, info.num_classes)
                               for info, model in zip(self._infos, self._models) if info.name not in self._weights}

    def process(self, batch: Sequence[tuple[tuple[str, int], str]]) -> Iterator[dict[str, Any]]:
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        texts = [text for _, text in batch]
        tok = self._models[0].module.signatures["tokenize"](text=tf.constant(texts))
        ids, lengths = tok["token_ids"].numpy(), tok["lengths"].numpy().astype(int)
        labels, tops, seconds = {}, {}, {}
        for info, model in zip(self._infos, self._models):
            start = time.perf_counter()
            if info.name in self._weights:
                labels[info.name], tops[info.name] = streaming_labels(self._weights[info.name], ids, lengths,
                                                                      info.num_classes)
            elif self._prefix_models.get(info.name) is not None:
                labels[info.name], tops[info.name] = bidirectional_labels(self._prefix_models[info.name], ids,
                                                                          lengths, info.num_classes)
            else:
                labels[info.name], tops[info.name] = restart_labels(model.module.signatures["classify_ids"], ids,
                                                                    lengths)
            seconds[info.name] = time.perf_counter() - start
        self._documents.inc(len(batch))
        self._tokens.inc(int(lengths.sum()))
        for i, ((doc_id, label), _) in enumerate(batch):
            yield {"id": doc_id, "label": int(label), "n": int(lengths[i]),
                   "labels": {name: seq[i] for name, seq in labels.items()},
                   "tops": {name: seq[i] for name, seq in tops.items()},
                   "seconds": {name: s * int(lengths[i]) / max(int(lengths.sum()), 1) for name, s in seconds.items()}}


DECISION_THRESHOLDS = (0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def decision_point(tops: Sequence[float], threshold: float, min_tokens: int = 1) -> tuple[int, bool]:
    """(tokens read when the decision policy fires, whether it fired): `core.incremental.decision_index`,
    as `StreamingClassifier.decide` applies it; else (the whole text, False), where the final label
    stands in for the decision."""
    i = inc.decision_index(tops, range(1, len(tops) + 1), threshold, min_tokens)
    return (len(tops), False) if i is None else (i + 1, True)


def _decile_index(t: int, n: int) -> int:
    """The decile of the text (0..9) that prefix index t (0-based) of n falls in."""
    return min(9, int(10 * t / n)) if n else 0


def summarize(documents: Sequence[dict[str, Any]], model_names: Sequence[str],
              streaming: Collection[str] = (C.MODEL_LSTM,)) -> dict[str, Any]:
    """The stage's output dict from the per-document labels (see the module docstring); `streaming`
    names the models read token by token (the others were re-run on every prefix)."""
    read = [d for d in documents if d["n"] > 0]
    out: dict[str, Any] = {"sample_documents": len(documents), "documents_read": len(read),
                           "documents_without_tokens": len(documents) - len(read),
                           "tokens": sum(d["n"] for d in read), "models": {}}
    for name in model_names:
        rows, final_at, correct_at, rc_at = [], [0] * 10, [0] * len(PREFIX_FRACTIONS), [0] * len(PREFIX_FRACTIONS)
        for d in read:
            seq, n = d["labels"][name], d["n"]
            measures = inc.document_measures(seq)
            rows.append((measures, seq[-1] == d["label"]))
            final_at[_decile_index(measures["final_from"], n)] += 1
            for j, cut in enumerate(prefix_lengths(n, PREFIX_FRACTIONS)):  # the early-prediction report's prefixes
                label = seq[cut - 1]
                correct_at[j] += label == d["label"]
                rc_at[j] += label == seq[-1]
        k = max(len(read), 1)
        decisions = {}
        for threshold in DECISION_THRESHOLDS:  # the decision policy of `stream --decide-at P`, replayed
            points = [decision_point(d["tops"][name], threshold) for d in read]
            decisions[f"{threshold:g}"] = {
                "fired": sum(fired for _, fired in points) / k,
                "read_fraction": sum(t / d["n"] for d, (t, _) in zip(read, points)) / k,
                "accuracy": sum(d["labels"][name][t - 1] == d["label"] for d, (t, _) in zip(read, points)) / k}
        seconds = sum(d["seconds"][name] for d in read)
        out["models"][name] = {
            "mode": "incremental" if name in streaming else "restart-incremental",
            **inc.summarize(rows),
            "final_from_deciles": final_at,
            "accuracy_at_fraction": {f"{f:.1f}": c / k for f, c in zip(PREFIX_FRACTIONS, correct_at)},
            "relative_correctness_at_fraction": {f"{f:.1f}": c / k for f, c in zip(PREFIX_FRACTIONS, rc_at)},
            "decisions": decisions,
            "seconds": round(seconds, 3),
            "microseconds_per_token": round(1e6 * seconds / max(out["tokens"], 1), 2),
        }
    return out


class IncrementalMeasures(beam.PTransform):
    """Validated ``((id, label), text)`` documents -> one dict of incremental measures per model.

    Args:
      infos: The evaluated models (``lstm`` is read token by token, the others per prefix).
      sample: Documents to read (the smallest `sample_key`s); the output is bounded by it.
      batch_size: Sampled documents per model call.
    """

    def __init__(self, infos: Sequence[ModelInfo], *, sample: int, batch_size: int = 32) -> None:
        super().__init__()
        if sample < 1:
            raise ValueError(f"sample must be >= 1, got {sample}")
        self._infos, self._sample, self._batch_size = tuple(infos), int(sample), int(batch_size)

    def expand(self, documents: beam.PCollection) -> beam.PCollection:
        names = [info.name for info in self._infos]
        streaming = [info.name for info in self._infos if info.kind == C.MODEL_LSTM]
        return (documents
                | "Sample" >> beam.combiners.Top.Of(self._sample, key=lambda d: sample_key(d[0][0]), reverse=True)
                # Shortest first: a batch then holds similar lengths (the streaming pass steps every row
                # to the batch's longest document).
                | "Documents" >> beam.FlatMap(lambda docs: sorted(docs, key=lambda d: len(d[1])))
                | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self._batch_size)
                | "ReadEveryToken" >> beam.ParDo(_IncrementalFn(self._infos))
                | "Collect" >> beam.combiners.ToList()
                | "Summarize" >> beam.Map(summarize, names, streaming))
