"""Score records: their keys and their typed columns (what `WriteScores` writes).

The names are the project's output vocabulary (`beam_rnn.core.outputs`).
"""

from collections.abc import Sequence

from beam_rnn.core import constants as C
from beam_rnn.core.artifacts import ModelInfo
from beam_rnn.core.outputs import class_names, probability_columns

# Score record keys.
ID = C.ID_KEY
MODEL = "model"
PROBABILITIES = C.PROBABILITIES_KEY
PREDICTED_LABEL = C.PREDICTED_LABEL_KEY
PREDICTED_LABEL_NAME = C.PREDICTED_LABEL_NAME_KEY
TRUE_LABEL = C.TRUE_LABEL_KEY
TRUE_LABEL_NAME = C.TRUE_LABEL_NAME_KEY
AGREEMENT = "agreement"

# Column kinds (see `score_columns`).
STR, INT, FLOAT, BOOL = "str", "int", "float", "bool"


def model_prefixes(infos: Sequence[ModelInfo]) -> list[str]:
    """The key prefix of each model's fields: none for one model, ``<name>_`` for several."""
    return [""] if len(infos) == 1 else [f"{info.name}_" for info in infos]


def record_model(info: ModelInfo, model_id: str | None) -> str:
    """The ``model`` field of a one-model record, from the model that scored it (its ``PredictionResult.model_id``).

    The model's name while it is the configured export; after a model refresh
    (`ClassifierModelHandler.update_model_path`) replaced it, the export dir that
    scored the document.
    """
    return info.name if model_id in (None, "", info.model_dir) else model_id


def score_columns(infos: Sequence[ModelInfo], *, labelled: bool) -> list[tuple[str, str]]:
    """The ``(column, kind)`` schema of score records in column formats (`beam_rnn.core.outputs.flat_record`)."""
    names = class_names(infos[0].label_names, infos[0].num_classes)
    columns = [(ID, STR)] + ([(MODEL, STR)] if len(infos) == 1 else [])
    for prefix in model_prefixes(infos):
        columns += [(prefix + PREDICTED_LABEL, INT), (prefix + PREDICTED_LABEL_NAME, STR)]
        columns += [(column, FLOAT) for column in probability_columns(names, prefix)]
    if len(infos) > 1:
        columns.append((AGREEMENT, BOOL))
    if labelled:
        columns += [(TRUE_LABEL, INT), (TRUE_LABEL_NAME, STR)]
    return columns
