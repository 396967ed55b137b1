"""beam_rnn.core.metrics: per-class metrics, Wilson intervals, McNemar's test, quantile boundaries,
checked against values computed by hand (and against SciPy where it is installed)."""

import math

import numpy as np
import pytest

from beam_rnn.core import metrics

# rows: true class, columns: predicted class
CONFUSION = np.array([[5, 2, 0],
                      [1, 3, 1],
                      [4, 0, 0]])


def test_per_class_metrics_by_hand():
    a, b, c = metrics.per_class_metrics(CONFUSION)
    # class 0: tp 5, predicted 10, support 7
    assert a == {"precision": 0.5, "recall": 5 / 7, "f1": 10 / 17, "support": 7, "predicted": 10}
    # class 1: tp 3, predicted 5, support 5
    assert b == {"precision": 0.6, "recall": 0.6, "f1": 0.6, "support": 5, "predicted": 5}
    # class 2: never right, predicted once, 4 documents
    assert c == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 4, "predicted": 1}
    assert metrics.macro_f1(CONFUSION) == pytest.approx((10 / 17 + 0.6 + 0.0) / 3, abs=1e-15)
    assert metrics.f1_from_confusion(CONFUSION) == metrics.macro_f1(CONFUSION)


def test_undefined_per_class_values_are_none_not_zero():
    never_predicted = np.array([[4, 0, 0], [2, 0, 0], [0, 0, 0]])
    _, b, c = metrics.per_class_metrics(never_predicted)
    assert b["precision"] is None and b["recall"] == 0.0 and b["f1"] == 0.0
    assert c == {"precision": None, "recall": None, "f1": None, "support": 0, "predicted": 0}
    # class 2 (neither present nor predicted) is left out of the macro average
    assert metrics.macro_f1(never_predicted) == pytest.approx((8 / 10 + 0.0) / 2)


def test_binary_f1_is_the_f1_of_class_1():
    confusion = np.array([[50, 10], [5, 35]])  # class 1: tp 35, fp 10, fn 5
    assert metrics.f1_from_confusion(confusion) == pytest.approx(70 / 85)
    assert metrics.macro_f1(confusion) == pytest.approx((100 / 115 + 70 / 85) / 2)


def test_wilson_interval_by_hand():
    low, high = metrics.wilson_interval(8, 10, 0.95)
    assert (low, high) == (pytest.approx(0.4901624, abs=1e-6), pytest.approx(0.9433178, abs=1e-6))
    low, high = metrics.wilson_interval(0, 10, 0.95)  # not empty at 0 successes
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.2775328, abs=1e-6)
    low, high = metrics.wilson_interval(10, 10, 0.95)
    assert high == pytest.approx(1.0, abs=1e-12) and low == pytest.approx(1 - 0.2775328, abs=1e-6)
    assert metrics.wilson_interval(0, 0, 0.95) is None
    narrow = metrics.wilson_interval(800, 1000, 0.90)
    assert narrow[0] > low and narrow[1] - narrow[0] < 0.05


def test_mcnemar_exact_binomial_by_hand():
    # b = 3, c = 9: P(X <= 3 | n = 12, 1/2) = (1 + 12 + 66 + 220) / 4096; two-sided doubles it
    test = metrics.mcnemar(3, 9, exact_below=25)
    assert test["method"] == "exact_binomial"
    assert test["p_value"] == pytest.approx(598 / 4096, abs=1e-15)
    assert metrics.mcnemar(0, 5, exact_below=25)["p_value"] == pytest.approx(2 / 32)
    assert metrics.mcnemar(4, 4, exact_below=25)["p_value"] == 1.0
    assert metrics.mcnemar(0, 0, exact_below=25)["p_value"] == 1.0
    assert metrics.mcnemar(0, 0, exact_below=0)["p_value"] == 1.0  # no discordant pair: no evidence
    assert metrics.mcnemar(12, 12, exact_below=25)["method"] == "exact_binomial"  # b + c = 24


def test_mcnemar_chi_square_with_continuity_correction_by_hand():
    test = metrics.mcnemar(30, 50, exact_below=25)
    assert test["method"] == "chi_square_continuity_corrected"
    assert test["statistic"] == pytest.approx(19 ** 2 / 80)  # (|30 - 50| - 1)^2 / 80 = 4.5125
    # chi-square 1 dof: P(X > 4.5125) = P(|Z| > sqrt(4.5125)) = 2 * (1 - Phi(2.124265))
    assert test["p_value"] == pytest.approx(0.03365, abs=2e-5)  # normal table: Phi(2.124) = 0.98317
    assert metrics.mcnemar(13, 12, exact_below=25)["method"] == "chi_square_continuity_corrected"  # b + c = 25


def test_mcnemar_and_wilson_agree_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    for b, c in ((3, 9), (0, 7), (10, 11), (1, 20)):
        assert metrics.mcnemar(b, c, 25)["p_value"] == pytest.approx(stats.binomtest(b, b + c).pvalue, rel=1e-9)
    for b, c in ((30, 50), (100, 131), (400, 380)):
        chi2 = (abs(b - c) - 1) ** 2 / (b + c)
        assert metrics.mcnemar(b, c, 25)["p_value"] == pytest.approx(stats.chi2.sf(chi2, 1), rel=1e-9)
    for k, n in ((8, 10), (0, 10), (37, 41), (500, 1000)):
        ci = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert metrics.wilson_interval(k, n, 0.95) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_quantile_boundaries():
    uniform = {length: 1 for length in range(1, 10)}
    assert metrics.quantile_boundaries(uniform, (1 / 3, 2 / 3)) == [4, 7]  # 1-3, 4-6, 7-9
    assert metrics.quantile_boundaries({5: 30}, (1 / 3, 2 / 3)) == []  # one length: one bucket
    # 10 documents of 5 tokens cannot be split: the first tertile falls inside the tie
    assert metrics.quantile_boundaries({5: 10, 6: 1, 7: 1}, (1 / 3, 2 / 3)) == [6]
    assert metrics.quantile_boundaries({}, (0.5,)) == []
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 400, 3000)
    counts = {int(v): int(n) for v, n in zip(*np.unique(lengths, return_counts=True))}
    b1, b2 = metrics.quantile_boundaries(counts, (1 / 3, 2 / 3))
    assert abs(np.mean(lengths < b1) - 1 / 3) < 0.01 and abs(np.mean(lengths < b2) - 2 / 3) < 0.01
    assert math.isclose(b1, np.quantile(lengths, 1 / 3), abs_tol=3)


def test_wilson_interval_always_holds_the_proportion():
    for n in range(1, 80):
        for k in range(n + 1):
            low, high = metrics.wilson_interval(k, n, 0.95)
            assert 0.0 <= low <= k / n <= high <= 1.0, (k, n, low, high)
