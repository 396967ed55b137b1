"""Defaults that adapt to the corpus: the training settings a user leaves unset, chosen from the data.

`TrainConfig` leaves three settings to this module unless they are given (``None``
means "auto"): the epoch budget, the early-stopping patience and the Dropout before
the logits.  `resolve` fixes them from the number of training documents, the size of
the validation split and the number of classes, and says why, so the model card
records what was chosen and on what grounds (``metrics.json`` / the card's
``metrics.hyperparameters``).

The rules, and what they rest on (benchmarks/epoch_curves.py: per-epoch validation
and dev accuracy with early stopping off, 2 seeds; RESULTS.md "Defaults that adapt
to the corpus"):

* IMDB-sized corpora (>= `LARGE_CORPUS` training documents) keep the settings tuned
  on IMDB: 5 epochs at most, no Dropout (the models peak after 1-3 epochs there).
* Smaller corpora overfit within 2-3 epochs whatever the budget (SST-2: validation
  loss at its lowest after epoch 2; training on to 15 epochs lost 1.5-2 points of
  dev accuracy), and Dropout 0.5 before the logits gained 0.2-0.8 points of dev
  accuracy at the kept epoch, so they get Dropout 0.5 and a budget of 10 epochs
  that early stopping ends sooner.
* Early stopping (`TrainConfig.monitor`, not chosen here) watches validation
  accuracy: the loss rises from overconfidence while accuracy still improves.
* More than two classes: a larger budget.  On TREC (6 classes) early stopping on the
  validation loss ended training while validation accuracy was still rising, and 15
  epochs gained 2.6 points of test accuracy (issue 14); on SST-1 (5 classes) dev
  accuracy peaked at epoch 3, where early stopping on validation accuracy ends it
  anyway: the budget is a cap, it costs time only while accuracy still improves.
* A small validation split (< `SMALL_VALIDATION` documents) makes the monitored
  metric noisy from epoch to epoch: one more epoch of patience.

No TensorFlow here.
"""

import dataclasses
from typing import Any

from beam_rnn.train.config import TrainConfig

LARGE_CORPUS = 10_000  # training documents from which the IMDB-tuned settings apply as they are
SMALL_VALIDATION = 2_000  # validation documents below which the patience grows by one epoch

EPOCHS_LARGE = 5
EPOCHS_SMALL = 10
EPOCHS_MULTICLASS = 15
PATIENCE = 2
DROPOUT_SMALL = 0.5

AUTO = "auto"  # the source of a value this module chose
GIVEN = "given"  # ... and of one the user set


def _choice(given: Any, chosen: Any, reason: str) -> dict[str, Any]:
    """The record of one setting: the user's value when given (not None), else the chosen one and why."""
    if given is not None:
        return {"value": given, "source": GIVEN, "reason": "set explicitly"}
    return {"value": chosen, "source": AUTO, "reason": reason}


def resolve(config: TrainConfig, *, train_documents: int, validation_documents: int,
            num_classes: int) -> tuple[TrainConfig, dict[str, dict[str, Any]]]:
    """The config with every auto setting fixed, and a record of each choice.

    Args:
        config: The training configuration (fields left None are chosen here).
        train_documents: Documents the model trains on (a fold's share under
            cross-validation).
        validation_documents: Documents of the split that drives early stopping.
        num_classes: Label count of the task.

    Returns:
        (resolved config, {setting: {"value", "source": "auto" or "given", "reason"}})
        for "epochs", "early_stopping_patience" and "dropout".
    """
    large = train_documents >= LARGE_CORPUS
    size = f"{train_documents:,} training documents"
    if large:
        epochs, why = EPOCHS_LARGE, f"{size} (>= {LARGE_CORPUS:,}): the models peak after 1-3 epochs"
    elif num_classes > 2:
        epochs, why = EPOCHS_MULTICLASS, f"{size} (< {LARGE_CORPUS:,}) and {num_classes} classes: later peaks"
    else:
        epochs, why = EPOCHS_SMALL, f"{size} (< {LARGE_CORPUS:,}): room for early stopping to find the peak"
    choices = {"epochs": _choice(config.epochs, epochs, why)}

    patience = PATIENCE + (validation_documents < SMALL_VALIDATION)
    choices["early_stopping_patience"] = _choice(
        config.early_stopping_patience, patience, f"{validation_documents:,} validation documents"
        + (f" (< {SMALL_VALIDATION:,}): a noisy {config.monitor}" if patience > PATIENCE else ""))

    dropout = 0.0 if large else DROPOUT_SMALL
    choices["dropout"] = _choice(
        config.model.dropout, dropout,
        f"{size}" + (": no Dropout (as tuned on IMDB)" if large else f" (< {LARGE_CORPUS:,}): regularise"))

    resolved = dataclasses.replace(
        config, epochs=choices["epochs"]["value"],
        early_stopping_patience=choices["early_stopping_patience"]["value"],
        model=dataclasses.replace(config.model, dropout=choices["dropout"]["value"]))
    return resolved, choices


def describe(choices: dict[str, dict[str, Any]]) -> str:
    """One log line: each setting with its value, and why when it was chosen here."""
    return "; ".join(f"{name.replace('early_stopping_', '')} {c['value']:g}"
                     + (f" ({c['reason']})" if c["source"] == AUTO else " (given)") for name, c in choices.items())
