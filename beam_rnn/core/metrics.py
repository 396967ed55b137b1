"""Metrics, defined once: ranks and correlations, AUC (exact and from a bounded histogram), F1.

Used by the scoring summary (`beam_rnn.serve`), the evaluation report and the
embedding evaluation.  NumPy only: no TensorFlow, no Beam.
"""

import math
import struct
from collections.abc import Mapping, Sequence

import numpy as np


def rankdata(x: Sequence[float] | np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given their average rank (scipy.stats.rankdata's 'average')."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(x.size, dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_x)) + 1
    starts = np.concatenate([[0], boundaries]).astype(np.int64)
    ends = np.concatenate([boundaries, [x.size]]).astype(np.int64)
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return ranks


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN for fewer than two points or a constant input."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.size < 2:
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((xc * xc).sum() * (yc * yc).sum()))
    return float((xc * yc).sum() / denom) if denom > 0 else float("nan")


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: the Pearson correlation of average-tie ranks."""
    return pearson(rankdata(x), rankdata(y))


def predicted_labels(probs: np.ndarray) -> np.ndarray:
    """Labels from probabilities: P(1) > 0.5 for binary ([N]), argmax for [N, K]."""
    probs = np.asarray(probs)
    if probs.ndim == 1:
        return (probs > 0.5).astype(np.int64)
    return np.argmax(probs, axis=1).astype(np.int64)


def class_probabilities(probs: np.ndarray) -> np.ndarray:
    """[N, K] class probabilities (binary [N] becomes [N, 2])."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        return np.stack([1.0 - probs, probs], axis=1)
    return probs


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Exact binary ROC AUC (Mann-Whitney U with average ranks for ties); None with one class."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    pos = int(np.sum(labels == 1))
    neg = int(labels.size - pos)
    if pos == 0 or neg == 0:
        return None
    rank_sum = float(np.sum(rankdata(scores)[labels == 1]))
    return (rank_sum - pos * (pos + 1) / 2.0) / (pos * neg)


def f1_from_confusion(confusion: np.ndarray) -> float:
    """Binary: F1 of class 1; K > 2: macro F1 (classes with no support and no predictions skipped)."""
    confusion = np.asarray(confusion, dtype=np.float64)

    def f1(k: int) -> float | None:
        tp = confusion[k, k]
        fp = confusion[:, k].sum() - tp
        fn = confusion[k, :].sum() - tp
        if tp + fp + fn == 0:
            return None
        return 2 * tp / (2 * tp + fp + fn)

    if confusion.shape[0] == 2:
        return f1(1) or 0.0
    scores = [s for s in (f1(k) for k in range(confusion.shape[0])) if s is not None]
    return float(np.mean(scores)) if scores else 0.0


# --- AUC in bounded memory: a histogram of float32 bit patterns ------------------------


def float32_bits(value: float) -> int:
    """The IEEE-754 float32 bit pattern of `value` (monotone in value for value >= 0)."""
    return struct.unpack("<I", struct.pack("<f", value))[0]


def coarsen_histogram(hist: Mapping[int, Sequence[int]], from_shift: int, to_shift: int) -> dict:
    """Re-buckets ``{key: [negatives, positives]}`` from keys >> from_shift to keys >> to_shift."""
    if to_shift == from_shift:
        return dict(hist) if not isinstance(hist, dict) else hist
    drop = to_shift - from_shift
    out: dict[int, list[int]] = {}
    for key, (neg, pos) in hist.items():
        bucket = out.setdefault(key >> drop, [0, 0])
        bucket[0] += neg
        bucket[1] += pos
    return out


def auc_from_histogram(hist: Mapping[int, Sequence[int]]) -> tuple[float | None, int, int, float]:
    """Mann-Whitney AUC from ``{ordered key: [negatives, positives]}`` (same-key pairs count 1/2).

    Returns:
      ``(auc or None, positives, negatives, tied_pair_fraction)``; tied_pair_fraction
      is the share of (positive, negative) pairs that fall in the same key.
    """
    below = 0
    wins = 0.0
    tied = 0
    positives = negatives = 0
    for key in sorted(hist):
        neg, pos = hist[key]
        wins += pos * (below + 0.5 * neg)
        tied += pos * neg
        below += neg
        positives += pos
        negatives += neg
    pairs = positives * negatives
    if not pairs:
        return None, positives, negatives, 0.0
    return wins / pairs, positives, negatives, tied / pairs


def shrink_histogram(hist: dict, shift: int, max_bins: int) -> tuple[dict, int]:
    """Drops low float32 bits until `hist` has at most `max_bins` keys; returns ``(hist, shift)``."""
    while len(hist) > max_bins:
        hist = coarsen_histogram(hist, shift, shift + 1)
        shift += 1
    return hist, shift


def histogram_add(hist: dict, shift: int, score: float, label: int, max_bins: int) -> tuple[dict, int]:
    """Counts one (score, label in {0, 1}) into the AUC histogram (in place); returns ``(hist, shift)``."""
    bucket = hist.setdefault(float32_bits(score) >> shift, [0, 0])
    bucket[label] += 1
    return shrink_histogram(hist, shift, max_bins) if len(hist) > max_bins else (hist, shift)


def merge_histograms(parts: Sequence[tuple[Mapping, int]], max_bins: int) -> tuple[dict, int]:
    """Merges ``(hist, shift)`` pairs at the coarsest of their shifts, then bounds the result."""
    shift = max((s for _, s in parts), default=0)
    merged: dict[int, list[int]] = {}
    for hist, s in parts:
        for key, (neg, pos) in coarsen_histogram(hist, s, shift).items():
            bucket = merged.setdefault(key, [0, 0])
            bucket[0] += neg
            bucket[1] += pos
    return shrink_histogram(merged, shift, max_bins)
