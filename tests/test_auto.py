"""Defaults that adapt to the corpus (beam_rnn.train.auto): pure rules, no training."""

import dataclasses

import pytest

from beam_rnn.train import auto
from beam_rnn.train.config import ModelConfig, ModelSettings, TrainConfig


def _resolve(config=None, *, train=20_000, validation=5_000, classes=2):
    return auto.resolve(config or TrainConfig(), train_documents=train, validation_documents=validation,
                        num_classes=classes)


def test_an_imdb_sized_corpus_keeps_the_settings_tuned_on_imdb():
    config, chosen = _resolve(train=20_132, validation=4_868)
    assert (config.epochs, config.early_stopping_patience, config.model.dropout) == (5, 2, 0.0)
    assert {c["source"] for c in chosen.values()} == {auto.AUTO}
    assert "20,132 training documents" in chosen["epochs"]["reason"]
    # Everything else is untouched.
    assert dataclasses.replace(config, epochs=None, early_stopping_patience=None,
                               model=dataclasses.replace(config.model, dropout=None)) == TrainConfig()


@pytest.mark.parametrize("train, validation, classes, expected", [
    (auto.LARGE_CORPUS, 2_500, 2, (auto.EPOCHS_LARGE, 2, 0.0)),  # the boundary counts as large
    (auto.LARGE_CORPUS - 1, 2_500, 2, (auto.EPOCHS_SMALL, 2, auto.DROPOUT_SMALL)),
    (5_536, 1_384, 2, (auto.EPOCHS_SMALL, 3, auto.DROPOUT_SMALL)),  # SST-2: small, noisy validation
    (6_835, 1_709, 5, (auto.EPOCHS_MULTICLASS, 3, auto.DROPOUT_SMALL)),  # SST-1: five classes
    (50_000, 1_000, 6, (auto.EPOCHS_LARGE, 3, 0.0)),  # large corpus, many classes, small validation
])
def test_small_corpora_get_more_epochs_dropout_and_patience(train, validation, classes, expected):
    config, chosen = _resolve(train=train, validation=validation, classes=classes)
    assert (config.epochs, config.early_stopping_patience, config.model.dropout) == expected
    assert [chosen[k]["value"] for k in ("epochs", "early_stopping_patience", "dropout")] == list(expected)


def test_given_settings_win_and_are_recorded_as_given():
    given = TrainConfig(epochs=7, early_stopping_patience=0, model=ModelSettings(dropout=0.0))
    config, chosen = _resolve(given, train=900, validation=100, classes=3)
    assert (config.epochs, config.early_stopping_patience, config.model.dropout) == (7, 0, 0.0)
    assert all(c == {"value": c["value"], "source": auto.GIVEN, "reason": "set explicitly"} for c in chosen.values())
    line = auto.describe(chosen)
    assert line == "epochs 7 (given); patience 0 (given); dropout 0 (given)"


def test_the_log_line_says_why():
    _, chosen = _resolve(train=5_536, validation=1_384)
    line = auto.describe(chosen)
    assert line.startswith("epochs 10 (5,536 training documents (< 10,000)")
    assert "patience 3 (1,384 validation documents (< 2,000): a noisy val_accuracy)" in line
    assert "dropout 0.5 (5,536 training documents (< 10,000): regularise)" in line


def test_unresolved_settings_build_a_model_without_dropout():
    # A bare ModelConfig (library use, no corpus to choose from) has no Dropout layer.
    made = TrainConfig().model_config("lstm", vocab_size=10, num_classes=2)
    assert isinstance(made, ModelConfig) and made.dropout == 0.0
    assert TrainConfig().epochs is None and TrainConfig().model.dropout is None


def test_train_help_shows_the_auto_defaults():
    from pipelines import train as driver

    helptext = " ".join(driver.build_parser().format_help().split())
    assert "auto: 5 from 10,000 training documents, else 10 (15 with more than 2 classes)" in helptext
    assert "auto: 0.5 below 10,000 training documents, else 0" in helptext
    assert "auto: 2, or 3 below 2,000 validation documents" in helptext
