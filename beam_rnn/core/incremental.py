"""Incrementality measures of a sequence classifier over the prefixes of a document (issue 15).

A classifier read incrementally gives one label per prefix: ``labels[t]`` after
tokens ``1..t+1`` of an ``n``-token document (``labels[-1]`` is the final output).
The measures are those of Baumann & Schlangen (2011), as Madureira & Schlangen
(EMNLP 2020) apply them to sequence classification:

* edit overhead EO = unnecessary edits / all edits.  The first output is the one
  necessary edit; every later change of the label is an unnecessary one, so
  EO = changes / (1 + changes).
* correction time CT = (index, from 0, of the prefix from which the label never
  changes again) / (n - 1): 0 when the first label already was the final one.
* relative correctness RC = fraction of the prefixes whose label equals the final label.
* rate of reanalysis RR = label changes / (n - 1).

A single-token document has CT = RR = 0 (nothing to revise).  With an output delay
of ``d`` tokens a label is emitted only once it has held for ``d`` more prefixes
(``labels[t] == labels[t+1] == ... == labels[t+d]``, the hold cut short where the
document ends, so the final label is always emitted); until then the previous
emission stands, and before the first emission there is no output, which counts
as incorrect for RC.  EO and RC are also reported with delays (`DELAYS`).

Pure Python/NumPy: the Beam stage and the report use it; the unit tests check it on
hand-made label sequences.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

DELAYS = (1, 2)
MEASURES = ("edit_overhead", "correction_time", "relative_correctness", "reanalysis_rate")


def changes(labels: Sequence[Any]) -> int:
    """How often the label changes from one prefix to the next."""
    return sum(1 for a, b in zip(labels, labels[1:]) if a != b)


def edit_overhead(labels: Sequence[Any]) -> float:
    """Unnecessary edits / all edits (0 for a label that never changes)."""
    if not labels:
        raise ValueError("no prefixes")
    c = changes(labels)
    return c / (1 + c)


def final_from(labels: Sequence[Any]) -> int:
    """0-based index of the prefix from which the label never changes again."""
    if not labels:
        raise ValueError("no prefixes")
    t = len(labels) - 1
    while t > 0 and labels[t - 1] == labels[-1]:
        t -= 1
    return t


def correction_time(labels: Sequence[Any]) -> float:
    """`final_from` / (n - 1); 0 for a single prefix."""
    n = len(labels)
    return final_from(labels) / (n - 1) if n > 1 else 0.0


def relative_correctness(labels: Sequence[Any], final: Any = None) -> float:
    """Fraction of prefixes whose label equals the final one (`final` overrides ``labels[-1]``)."""
    if not labels:
        raise ValueError("no prefixes")
    final = labels[-1] if final is None else final
    return sum(1 for label in labels if label == final) / len(labels)


def reanalysis_rate(labels: Sequence[Any]) -> float:
    """Label changes / (n - 1); 0 for a single prefix."""
    n = len(labels)
    return changes(labels) / (n - 1) if n > 1 else 0.0


def delayed(labels: Sequence[Any], delay: int) -> list[Any]:
    """The output after each prefix when a label is emitted only after holding `delay` more prefixes.

    None where nothing has been emitted yet.
    """
    if delay < 0:
        raise ValueError(f"delay must be >= 0, got {delay}")
    n, out, current = len(labels), [], None
    for t in range(n):
        # Emitted at prefix t + delay (or when the document ends): the output after prefix t is
        # the latest label whose hold completed by then.
        s = t - delay
        if s >= 0 and all(labels[u] == labels[s] for u in range(s, min(t, n - 1) + 1)):
            current = labels[s]
        if t == n - 1:  # the document ended: the labels still holding are emitted now
            current = labels[-1]
        out.append(current)
    return out


def decision_index(tops: Sequence[float], positions: Sequence[int], threshold: float,
                   min_tokens: int = 1) -> int | None:
    """The decision policy (`stream --decide-at`): the index of the first output whose top class
    probability reaches `threshold` at token position >= `min_tokens`; None when it never fires."""
    for i, (top, position) in enumerate(zip(tops, positions)):
        if position >= min_tokens and top >= threshold:
            return i
    return None


def _delayed_edit_overhead(outputs: Sequence[Any]) -> float:
    emitted = [o for o in outputs if o is not None]
    return edit_overhead(emitted)


def document_measures(labels: Sequence[Any], delays: Sequence[int] = DELAYS) -> dict[str, float | int]:
    """Every measure of one document's prefix labels (keys: `MEASURES`, ``final_from``, ``n``, and
    ``edit_overhead_d{d}`` / ``relative_correctness_d{d}`` per delay)."""
    values: dict[str, float | int] = {
        "n": len(labels),
        "final_from": final_from(labels),
        "edit_overhead": edit_overhead(labels),
        "correction_time": correction_time(labels),
        "relative_correctness": relative_correctness(labels),
        "reanalysis_rate": reanalysis_rate(labels),
    }
    for d in delays:
        outputs = delayed(labels, d)
        values[f"edit_overhead_d{d}"] = _delayed_edit_overhead(outputs)
        values[f"relative_correctness_d{d}"] = relative_correctness(outputs, labels[-1])
    return values


def summarize(documents: Iterable[tuple[Mapping[str, float | int], bool | None]]) -> dict[str, Any]:
    """Corpus means of `document_measures`, overall and split by a correct / incorrect final output.

    Args:
        documents: ``(document_measures(...), final output correct?)`` pairs (None: unlabelled).

    Returns:
        {"documents": N, "mean": {measure: value}, "correct": {...}, "incorrect": {...}}
        (a group without documents has an empty dict and count 0).
    """
    groups: dict[str, list[Mapping[str, float | int]]] = {"all": [], "correct": [], "incorrect": []}
    for measures, correct in documents:
        groups["all"].append(measures)
        if correct is not None:
            groups["correct" if correct else "incorrect"].append(measures)

    def means(rows: list[Mapping[str, float | int]]) -> dict[str, float]:
        if not rows:
            return {}
        keys = [k for k in rows[0] if k not in ("n", "final_from")]
        return {k: sum(float(r[k]) for r in rows) / len(rows) for k in keys}

    return {"documents": len(groups["all"]), "mean": means(groups["all"]),
            "correct": means(groups["correct"]), "correct_documents": len(groups["correct"]),
            "incorrect": means(groups["incorrect"]), "incorrect_documents": len(groups["incorrect"])}
