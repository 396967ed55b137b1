"""Incrementality measures (beam_rnn.core.incremental) on hand-made label sequences with known values."""

import pytest

from beam_rnn.core import incremental as inc


@pytest.mark.parametrize("labels, eo, ct, rc, rr", [
    # Never changes: one necessary edit, final from the first prefix.
    ([1, 1, 1, 1], 0.0, 0.0, 1.0, 0.0),
    # One change after the first prefix: 1 unnecessary edit of 2; final from index 1 of 3.
    ([0, 1, 1, 1], 1 / 2, 1 / 3, 3 / 4, 1 / 3),
    # Flip-flop: 4 changes -> EO 4/5; final label (0) from index 4 of 4; RC 3/5 (0 at t=0,2,4).
    ([0, 1, 0, 1, 0], 4 / 5, 1.0, 3 / 5, 1.0),
    # Right, wrong, right again: final from index 2 of 3.
    ([2, 0, 2, 2], 2 / 3, 2 / 3, 3 / 4, 2 / 3),
    # A single prefix: nothing to revise.
    (["pos"], 0.0, 0.0, 1.0, 0.0),
    # String labels, settles at the last prefix only.
    (["neg", "neg", "neg", "pos"], 1 / 2, 1.0, 1 / 4, 1 / 3),
])
def test_measures_of_hand_made_sequences(labels, eo, ct, rc, rr):
    assert inc.edit_overhead(labels) == pytest.approx(eo)
    assert inc.correction_time(labels) == pytest.approx(ct)
    assert inc.relative_correctness(labels) == pytest.approx(rc)
    assert inc.reanalysis_rate(labels) == pytest.approx(rr)
    measures = inc.document_measures(labels)
    assert [measures[m] for m in inc.MEASURES] == pytest.approx([eo, ct, rc, rr])
    assert measures["n"] == len(labels)


def test_final_from_counts_from_zero():
    assert inc.final_from([1, 1, 1]) == 0
    assert inc.final_from([0, 1, 1]) == 1
    assert inc.final_from([1, 0, 1]) == 2
    with pytest.raises(ValueError):
        inc.final_from([])


@pytest.mark.parametrize("labels, delay, expected", [
    # No delay: every label is emitted at once.
    ([0, 1, 1, 1], 0, [0, 1, 1, 1]),
    # Delay 1: 0 did not hold for one more prefix and is never emitted; 1 is, once it held (t=2).
    ([0, 1, 1, 1], 1, [None, None, 1, 1]),
    # Delay 2: 1 emitted at t=3 (held t=1..3).
    ([0, 1, 1, 1], 2, [None, None, None, 1]),
    # A blip (1 at t=2) is filtered out by delay 1; the earlier emission stands.
    ([0, 0, 1, 0, 0], 1, [None, 0, 0, 0, 0]),
    # The final label is emitted when the document ends, even if it appeared at the last prefix.
    ([0, 0, 0, 1], 1, [None, 0, 0, 1]),
    ([0, 0, 0, 1], 2, [None, None, 0, 1]),
])
def test_delayed_output(labels, delay, expected):
    assert inc.delayed(labels, delay) == expected


def test_delayed_measures():
    labels = [0, 0, 1, 0, 0]  # one blip
    m = inc.document_measures(labels)
    assert m["edit_overhead"] == pytest.approx(2 / 3) and m["relative_correctness"] == pytest.approx(4 / 5)
    # Delay 1 hides the blip: no unnecessary edit; RC loses only the prefix before the first emission.
    assert m["edit_overhead_d1"] == 0.0 and m["relative_correctness_d1"] == pytest.approx(4 / 5)
    # Delay 2: no label holds for three prefixes in a row until the document ends.
    assert inc.delayed(labels, 2) == [None, None, None, None, 0]
    assert m["edit_overhead_d2"] == 0.0 and m["relative_correctness_d2"] == pytest.approx(1 / 5)
    # A wrong early emission that is later corrected costs an edit with delay too.
    m = inc.document_measures([1, 1, 1, 0, 0, 0])
    assert inc.delayed([1, 1, 1, 0, 0, 0], 1) == [None, 1, 1, 1, 0, 0]
    assert m["edit_overhead_d1"] == pytest.approx(1 / 2) and m["relative_correctness_d1"] == pytest.approx(2 / 6)
    with pytest.raises(ValueError):
        inc.delayed([0], -1)


def test_summarize_splits_by_correct_final_output():
    docs = [(inc.document_measures([0, 1, 1, 1]), True),   # EO 1/2, RC 3/4
            (inc.document_measures([1, 1, 1, 1]), True),   # EO 0, RC 1
            (inc.document_measures([0, 1, 0, 1, 0]), False),  # EO 4/5, RC 3/5
            (inc.document_measures([1, 1]), None)]         # unlabelled: overall only
    summary = inc.summarize(docs)
    assert summary["documents"] == 4 and summary["correct_documents"] == 2 and summary["incorrect_documents"] == 1
    assert summary["mean"]["edit_overhead"] == pytest.approx((1 / 2 + 0 + 4 / 5 + 0) / 4)
    assert summary["correct"]["edit_overhead"] == pytest.approx(1 / 4)
    assert summary["correct"]["relative_correctness"] == pytest.approx((3 / 4 + 1) / 2)
    assert summary["incorrect"]["relative_correctness"] == pytest.approx(3 / 5)
    assert set(summary["mean"]) == {*inc.MEASURES, "edit_overhead_d1", "relative_correctness_d1",
                                    "edit_overhead_d2", "relative_correctness_d2"}
    assert inc.summarize([])["mean"] == {}
