"""The output vocabulary: how a prediction and a document's truth are written in every output.

Score files, the scoring summary, evaluate records, stream outputs, `Prediction`
objects and `stream --json` all use these names (`beam_rnn.core.constants`)::

    predicted_label        class id 0..K-1
    predicted_label_name   class name (str(id) for models trained on int labels)
    probabilities          {class name: probability} (every class, also for binary models)
    true_label             the document's label as a class id (None: not one of the model's classes)
    true_label_name        its class name

Column formats (csv, parquet, tfrecord) have one ``probability_<class name>``
column per class instead of the ``probabilities`` mapping (`flat_record`).
Several models in one record prefix each model's fields with ``<model name>_``.
No TF, no Beam.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from beam_rnn.core import constants as C

PROBABILITY_COLUMN_PREFIX = "probability_"


def class_names(label_names: Sequence[str] | None, num_classes: int) -> tuple[str, ...]:
    """The names of the classes by id: the model card's, else "0", "1", ... (int labels)."""
    if label_names is not None:
        return tuple(str(name) for name in label_names)
    return tuple(str(i) for i in range(num_classes))


def class_distribution(probability: float | Sequence[float], num_classes: int) -> list[float]:
    """Every class's probability: a binary model's P(class 1) becomes [1 - p, p]."""
    if num_classes == 2 and not isinstance(probability, (list, tuple)) and getattr(probability, "ndim", 0) == 0:
        p = float(probability)
        return [1.0 - p, p]
    return [float(p) for p in probability]


def prediction_fields(probability: float | Sequence[float], predicted: int, names: Sequence[str],
                      prefix: str = "") -> dict[str, Any]:
    """``{predicted_label, predicted_label_name, probabilities}`` of one model's output (keys after `prefix`)."""
    distribution = class_distribution(probability, len(names))
    return {
        prefix + C.PREDICTED_LABEL_KEY: int(predicted),
        prefix + C.PREDICTED_LABEL_NAME_KEY: names[int(predicted)],
        prefix + C.PROBABILITIES_KEY: dict(zip(names, distribution)),
    }


def truth_fields(true_label: int | None, names: Sequence[str]) -> dict[str, Any]:
    """``{true_label, true_label_name}`` (both None when the document's label is no class of the model)."""
    return {C.TRUE_LABEL_KEY: true_label,
            C.TRUE_LABEL_NAME_KEY: None if true_label is None else names[true_label]}


def probability_columns(names: Sequence[str], prefix: str = "") -> list[str]:
    """The ``probability_<class>`` column names of a column format, in class-id order."""
    return [f"{prefix}{PROBABILITY_COLUMN_PREFIX}{name}" for name in names]


def flat_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record for a column format: each ``[<model>_]probabilities`` mapping becomes one column per class."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if key.endswith(C.PROBABILITIES_KEY) and isinstance(value, Mapping):
            prefix = key[: -len(C.PROBABILITIES_KEY)]
            out.update(zip(probability_columns(list(value), prefix), value.values()))
        else:
            out[key] = value
    return out
