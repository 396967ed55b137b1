"""Metrics, defined once: ranks and correlations, AUC (exact and from a bounded histogram), per-class
metrics and F1, Wilson intervals, McNemar's test, quantile boundaries.

Used by the scoring summary (`beam_rnn.serve`), the evaluation report and the
embedding evaluation.  NumPy and the standard library only: no TensorFlow, no Beam, no SciPy.
"""

import math
import statistics
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


def per_class_metrics(confusion: np.ndarray) -> list[dict[str, float | int | None]]:
    """Precision, recall, F1, support and predictions of each class of a confusion matrix (rows: truth).

    Undefined values are None, not 0: precision of a class never predicted, recall of
    a class with no document, F1 of a class neither present nor predicted.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    out = []
    for k in range(confusion.shape[0]):
        tp = int(confusion[k, k])
        predicted = int(confusion[:, k].sum())
        support = int(confusion[k, :].sum())
        out.append({
            "precision": tp / predicted if predicted else None,
            "recall": tp / support if support else None,
            "f1": 2 * tp / (predicted + support) if predicted + support else None,
            "support": support,
            "predicted": predicted,
        })
    return out


def macro_f1(confusion: np.ndarray) -> float:
    """The unweighted mean of the per-class F1 (classes neither present nor predicted left out)."""
    scores = [c["f1"] for c in per_class_metrics(confusion) if c["f1"] is not None]
    return float(np.mean(scores)) if scores else 0.0


def f1_from_confusion(confusion: np.ndarray) -> float:
    """Binary: F1 of class 1; K > 2: macro-F1 (`macro_f1`)."""
    confusion = np.asarray(confusion)
    if confusion.shape[0] == 2:
        return per_class_metrics(confusion)[1]["f1"] or 0.0
    return macro_f1(confusion)


# --- Intervals and paired tests (standard library only) ---------------------------------


def wilson_interval(successes: int, n: int, confidence: float) -> tuple[float, float] | None:
    """Wilson score interval of a proportion (Wilson 1927); None for n = 0.

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or n.
    """
    if n <= 0:
        return None
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # It always holds p: clamp the rounding of centre +- half at p = 0 and p = 1.
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def mcnemar(b: int, c: int, exact_below: int) -> dict[str, float | int | str]:
    """McNemar's test of paired predictions: is one model right where the other is wrong more often?

    Args:
      b: Documents the first model gets right and the second wrong.
      c: Documents the second model gets right and the first wrong.
      exact_below: Use the exact two-sided binomial test (b ~ Binomial(b + c, 1/2))
        while b + c is below this; the chi-square statistic with continuity correction,
        (|b - c| - 1)^2 / (b + c) on 1 degree of freedom, from there on.

    Returns:
      ``{"b", "c", "method" ("exact_binomial" or "chi_square_continuity_corrected"),
      "statistic" (the chi-square value, or min(b, c) for the exact test), "p_value"}``.
    """
    n = b + c
    if n < exact_below or n == 0:
        tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n if n else 0.5
        return {"b": b, "c": c, "method": "exact_binomial", "statistic": min(b, c), "p_value": min(1.0, 2 * tail)}
    statistic = (abs(b - c) - 1) ** 2 / n
    return {"b": b, "c": c, "method": "chi_square_continuity_corrected", "statistic": statistic,
            "p_value": math.erfc(math.sqrt(statistic / 2))}  # chi-square (1 dof) survival function


def quantile_boundaries(counts: Mapping[int, int], fractions: Sequence[float]) -> list[int]:
    """Boundaries that split integer values with these counts near the given quantiles.

    Each boundary ``b`` puts values ``< b`` below it: of the observed values it is the
    one whose share of values below is closest to the fraction (ties of the data cannot
    be split).  Boundaries that would leave a bucket empty are dropped, so the result is
    strictly increasing and every bucket holds at least one value.
    """
    values = sorted(v for v, n in counts.items() if n > 0)
    if not values:
        return []
    total = sum(counts[v] for v in values)
    below = np.cumsum([0] + [counts[v] for v in values])[:-1] / total  # share of values < each value
    chosen = []
    for f in fractions:
        i = int(np.argmin(np.abs(below - f)))
        if i > 0 and (not chosen or values[i] > chosen[-1]):
            chosen.append(values[i])
    return chosen


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
