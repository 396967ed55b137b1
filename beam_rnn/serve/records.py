"""Score records: their keys and their typed columns (what `WriteScores` writes)."""

from collections.abc import Sequence

from beam_rnn.core import constants as C
from beam_rnn.core.artifacts import ModelInfo

# Score record keys.
ID = C.ID_KEY
MODEL = "model"
PROBABILITY = "probability"
PREDICTED_LABEL = "label"
LABEL_NAME = "label_name"
TRUE_LABEL = "true_label"
AGREEMENT = "agreement"

# Column kinds (see `score_columns`).
STR, INT, FLOAT, FLOATS, BOOL = "str", "int", "float", "floats", "bool"


def score_columns(infos: Sequence[ModelInfo], *, labelled: bool) -> list[tuple[str, str]]:
    """The ``(column, kind)`` schema of score records; kind is str/int/float/floats/bool."""
    first = infos[0]
    prob_kind = FLOAT if first.binary else FLOATS
    if len(infos) == 1:
        columns = [(ID, STR), (MODEL, STR), (PROBABILITY, prob_kind), (PREDICTED_LABEL, INT)]
        if first.label_names is not None:
            columns.append((LABEL_NAME, STR))
    else:
        columns = [(ID, STR)]
        for info in infos:
            columns += [(f"{info.name}_{PROBABILITY}", prob_kind), (f"{info.name}_{PREDICTED_LABEL}", INT)]
            if info.label_names is not None:
                columns.append((f"{info.name}_{LABEL_NAME}", STR))
        columns.append((AGREEMENT, BOOL))
    if labelled:
        columns.append((TRUE_LABEL, INT))
    return columns
