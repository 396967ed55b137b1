"""The scoring summary: metrics per model, distinct ids, dead letters and counts, in bounded state.

`ScoreSummaryFn` keeps K x K confusion counts per model and, for binary models,
an AUC histogram: the AUC is EXACT (Mann-Whitney rank statistic over the distinct
float32 scores, ties counted 1/2, which is what ``sklearn.metrics.roc_auc_score``
computes) while a model has at most ``auc_max_bins`` distinct scores; beyond that
the accumulator coarsens to a bounded histogram on the float32 bit pattern
(monotone, finer than 2^-15 relative) and the summary says
``"auc_method": "histogram"`` and reports ``auc_max_error``, a guaranteed bound
computed from the histogram (`beam_rnn.core.metrics`).

`summarize` adds what the rest of the pipeline knows: dead letters by stage and
reason, distinct and duplicate ids (`DistinctIdsFn`), and the ``counters`` block
(rows in, scored, dead-lettered, failed batches, ``reconciled``), all computed in
the pipeline, so the summary file is written once.
"""

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import apache_beam as beam
import numpy as np

from beam_rnn.core import constants as C
from beam_rnn.core.artifacts import ModelInfo
from beam_rnn.core.metrics import auc_from_histogram, histogram_add, merge_histograms
from beam_rnn.serve.config import ScoreConfig
from beam_rnn.core.outputs import class_names
from beam_rnn.serve.records import PREDICTED_LABEL, PROBABILITIES, TRUE_LABEL, model_prefixes

SCORE_STAGE = "score"
_DEFAULTS = ScoreConfig()


class ScoreSummaryFn(beam.CombineFn):
    """Score records -> summary metrics per model (accuracy, confusion, counts, AUC), with bounded state.

    The accumulator holds K x K confusion counts per model and, for binary
    models, an AUC histogram of at most `auc_max_bins` keys: exact float32 scores
    while they fit, else the float32 bit pattern with the lowest bits dropped.
    """

    def __init__(self, infos: Sequence[ModelInfo], *, auc_max_bins: int = _DEFAULTS.auc_max_bins):
        super().__init__()
        if auc_max_bins < 2:
            raise ValueError(f"auc_max_bins must be >= 2, got {auc_max_bins}.")
        self._infos = tuple(infos)
        self._max_bins = auc_max_bins
        self._keys = [(prefix + PROBABILITIES, prefix + PREDICTED_LABEL) for prefix in model_prefixes(infos)]
        self._k = infos[0].num_classes
        self._binary = infos[0].binary
        self._names = class_names(infos[0].label_names, self._k)

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
                score = record[p_key][self._names[1]]  # P(class 1)
                if score != score:  # NaN
                    acc["nan_scores"][m] += 1
                    continue
                acc["hist"][m], acc["shift"][m] = histogram_add(
                    acc["hist"][m], acc["shift"][m], score, true, self._max_bins)
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
            out["hist"][m], out["shift"][m] = merge_histograms(
                [(acc["hist"][m], acc["shift"][m]) for acc in accumulators], self._max_bins)
        return out

    def extract_output(self, acc: dict[str, Any]) -> dict[str, Any]:
        names = self._names
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
                "true_label_counts": dict(zip(names, true_counts)),
                "predicted_label_counts": dict(zip(names, predicted_counts)),
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
            C.CLASS_NAMES_KEY: list(names),
            "confusion_layout": "confusion[true class id][predicted class id], ids as in class_names",
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


class _SumPairsFn(beam.CombineFn):
    """``(failed batches, documents retried)`` pairs -> their sums."""

    def create_accumulator(self) -> tuple[int, int]:
        return 0, 0

    def add_input(self, acc: tuple[int, int], pair: tuple[int, int]) -> tuple[int, int]:
        return acc[0] + pair[0], acc[1] + pair[1]

    def merge_accumulators(self, accumulators: Iterable[tuple[int, int]]) -> tuple[int, int]:
        accumulators = list(accumulators)
        return sum(a[0] for a in accumulators), sum(a[1] for a in accumulators)

    def extract_output(self, acc: tuple[int, int]) -> tuple[int, int]:
        return acc


def _dead_letter_key(record: Mapping[str, Any]) -> tuple[str, str]:
    reason = str(record.get(C.DEAD_REASON_KEY, ""))
    return str(record.get(C.DEAD_STAGE_KEY, "")), reason.split(":", 1)[0].strip()


def complete_summary(
    metrics: Mapping[str, Any],
    dead_counts: Mapping[tuple[str, str], int],
    id_counts: Mapping[str, int],
    documents_in: int,
    failures: tuple[int, int],
) -> dict[str, Any]:
    """The summary: `ScoreSummaryFn`'s metrics plus dead letters, ids and the counters block.

    Args:
      metrics: `ScoreSummaryFn`'s output (``documents`` = documents scored).
      dead_counts: ``{(stage, reason code): n}`` of every dead letter.
      id_counts: `DistinctIdsFn`'s output.
      documents_in: Documents that reached scoring (scored or dead-lettered there).
      failures: ``(failed batches, documents retried one at a time)``.
    """
    by_stage: dict[str, dict[str, int]] = {}
    for (stage, code), n in sorted(dead_counts.items()):
        by_stage.setdefault(stage, {})[code] = n
    dead_score = sum(by_stage.get(SCORE_STAGE, {}).values())
    dead_total = sum(sum(v.values()) for v in by_stage.values())
    scored = metrics["documents"]
    out = dict(metrics, **id_counts)
    out["dead_letter_by_stage_and_reason"] = by_stage
    out["dead_lettered"] = dead_total
    out["documents_in"] = scored + dead_score  # documents that reached scoring
    out["rows_in"] = scored + dead_total  # with ReadCorpus: every raw row
    read_dead = dead_total - dead_score
    out["counters"] = {
        "rows_in": documents_in + read_dead,
        "read_dead_lettered": read_dead,
        "documents_in": documents_in,
        "scored": scored,
        "score_dead_lettered": dead_score,
        "failed_batches": failures[0],
        "retried_singly": failures[1],
        "dead_lettered": dead_total,
        # Counted apart: every document that entered scoring was scored or dead-lettered.
        "reconciled": documents_in == scored + dead_score,
    }
    return out


def summarize(
    summary_fn: ScoreSummaryFn,
    *,
    scores: beam.PCollection,
    dead: beam.PCollection,
    documents: beam.PCollection,
    ids: beam.PCollection,
    failures: beam.PCollection,
) -> beam.PCollection:
    """One summary dict (see `complete_summary`), from combiners only: nothing is collected."""
    metrics = scores | "Summarize" >> beam.CombineGlobally(summary_fn)
    dead_counts = (
        dead
        | "DeadLetterKeys" >> beam.Map(_dead_letter_key)
        | "CountDeadLetters" >> beam.combiners.Count.PerElement()
    )
    id_counts = ids | "CountDistinctIds" >> beam.CombineGlobally(DistinctIdsFn())
    documents_in = documents | "CountDocuments" >> beam.combiners.Count.Globally()
    failure_counts = failures | "CountFailures" >> beam.CombineGlobally(_SumPairsFn())
    return metrics | "CompleteSummary" >> beam.Map(
        complete_summary,
        beam.pvalue.AsDict(dead_counts),
        beam.pvalue.AsSingleton(id_counts),
        beam.pvalue.AsSingleton(documents_in),
        beam.pvalue.AsSingleton(failure_counts),
    )
