"""Refit on the train and eval splits together after model selection (`train --refit`, beam_rnn.train.refit)."""

import dataclasses
import json
import os

import numpy as np
import pytest

from beam_rnn.core import constants as C
from beam_rnn.train import data, refit, trainer
from beam_rnn.train.checks import check_training_inputs
from beam_rnn.train.config import TrainConfig
from beam_rnn.train.errors import TrainerInputError
from tests.test_trainer import (  # the trainer tests' corpus, configs and fault injection
    RESUME,
    _checkpoint_arrays,
    _history,
    _Killed,
    _KillAt,
    binary_dir,  # noqa: F401  (a fixture)
)

CONFIG = dict(RESUME, epochs=3, early_stopping_patience=3)  # three epochs run, the best one is kept


def _weights(model_dir: str) -> list[np.ndarray]:
    return trainer.load_trained_model(model_dir)[0].get_weights()


def _documents(transformed_dir: str, split: str) -> int:
    with open(os.path.join(transformed_dir, C.STATS_FILE)) as f:
        return int(json.load(f)["splits"][split]["documents"])


def test_shards_of_several_globs_are_read_in_order_and_a_glob_matching_nothing_is_an_error(binary_dir):  # noqa: F811
    train, held = data.train_pattern(binary_dir), data.eval_pattern(binary_dir)
    assert data.shard_files([train, held]) == data.shard_files(train) + data.shard_files(held)
    both = len(data.sequence_lengths([train, held]))
    assert both == len(data.sequence_lengths(train)) + len(data.sequence_lengths(held))
    with pytest.raises(TrainerInputError, match="no files match"):
        data.shard_files([train, os.path.join(binary_dir, "nothing-*")])


def test_refit_trains_the_exported_model_on_both_splits_for_the_kept_epochs(binary_dir, tmp_path):  # noqa: F811
    plain = trainer.run_training(binary_dir, str(tmp_path / "plain"), TrainConfig(**CONFIG), export=False)
    refitted = trainer.run_training(binary_dir, str(tmp_path / "refit"), TrainConfig(**CONFIG, refit=True),
                                    export=False)
    selected, after = plain[C.MODEL_LSTM], refitted[C.MODEL_LSTM]
    # The selection run is the plain run: the same validation figures and kept epoch.
    for key in ("accuracy", "loss", "best_epoch", "epochs_run"):
        assert after[key] == selected[key], key
    info = after["refit"]
    assert info["epochs"] == selected["best_epoch"] >= 1
    assert info["train_examples"] == _documents(binary_dir, C.TRAIN_PREFIX) + _documents(binary_dir, C.EVAL_PREFIX)
    assert "selection run's" in info["note"]
    model_dir = tmp_path / "refit" / C.MODEL_LSTM
    history = [json.loads(line) for line in (model_dir / trainer.REFIT_DIR / trainer.HISTORY_FILE).read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, info["epochs"] + 1))
    assert not any(k.startswith("val_") for h in history for k in h), "the refit has no validation"
    assert json.loads((model_dir / trainer.METRICS_FILE).read_text())["refit"] == info
    # weights/ holds the refit model (other weights than the selection run's), and nothing is left to resume.
    assert any(not np.array_equal(a, b) for a, b in zip(_weights(str(model_dir)), _weights(str(tmp_path / "plain" / C.MODEL_LSTM))))
    assert not (model_dir / trainer.BACKUP_DIR).exists() and not (model_dir / trainer.REFIT_DIR / trainer.BACKUP_DIR).exists()


def _selection_then_refit(transformed_dir, output_dir, config, callbacks=()):
    """What run_training does for one kind with --refit (the faults go to the refit phase)."""
    inputs = check_training_inputs(transformed_dir, config)
    selection = trainer.train(transformed_dir, output_dir, config, inputs=inputs, keep_backup=True)
    return selection, refit.refit(transformed_dir, config, selection=selection, inputs=inputs, callbacks=callbacks)


def test_a_refit_killed_mid_epoch_resumes_bit_identically_without_training_the_selection_again(
        binary_dir, tmp_path):  # noqa: F811
    config = TrainConfig(**CONFIG, refit=True)
    reference = tmp_path / "reference"
    _selection_then_refit(binary_dir, str(reference), config)
    resumed = tmp_path / "resumed"
    with pytest.raises(_Killed):
        _selection_then_refit(binary_dir, str(resumed), config, callbacks=[_KillAt(0, batch=2)])
    assert (resumed / C.MODEL_LSTM / trainer.BACKUP_DIR).exists(), "the selection run's backup waits for the refit"
    selection, result = _selection_then_refit(binary_dir, str(resumed), config)
    assert selection["metrics"]["resumed"] and selection["metrics"]["epochs_this_run"] == 0
    assert result["metrics"]["refit"]["epochs"] == selection["metrics"]["best_epoch"]
    for a, b in zip(_weights(str(reference / C.MODEL_LSTM)), _weights(str(resumed / C.MODEL_LSTM))):
        assert np.array_equal(a, b)
    ref_dir, res_dir = (d / C.MODEL_LSTM / trainer.REFIT_DIR for d in (reference, resumed))
    names = sorted(p.name[: -len(".index")] for p in (ref_dir / trainer.CHECKPOINTS_DIR).glob("epoch_*.index"))
    assert len(names) == result["metrics"]["refit"]["epochs"]
    for name in names:  # every epoch's weights, average and optimizer state
        a, b = (_checkpoint_arrays(str(d / trainer.CHECKPOINTS_DIR / name)) for d in (ref_dir, res_dir))
        assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a), name
    assert [h["loss"] for h in _history(str(ref_dir))] == [h["loss"] for h in _history(str(res_dir))]


def test_a_run_without_refit_after_a_killed_refit_exports_the_selection_and_drops_the_stale_refit(
        binary_dir, tmp_path):  # noqa: F811
    trainer.run_training(binary_dir, str(tmp_path / "plain"), TrainConfig(**CONFIG), export=False)
    out = tmp_path / "out"
    with pytest.raises(_Killed):
        _selection_then_refit(binary_dir, str(out), TrainConfig(**CONFIG, refit=True), callbacks=[_KillAt(0, batch=2)])
    model_dir = out / C.MODEL_LSTM
    assert (model_dir / trainer.REFIT_DIR).exists()
    metrics = trainer.run_training(binary_dir, str(out), TrainConfig(**CONFIG), export=False)[C.MODEL_LSTM]
    assert metrics["resumed"] and metrics["epochs_this_run"] == 0 and "refit" not in metrics
    assert not (model_dir / trainer.REFIT_DIR).exists() and not (model_dir / trainer.BACKUP_DIR).exists()
    for a, b in zip(_weights(str(model_dir)), _weights(str(tmp_path / "plain" / C.MODEL_LSTM))):
        assert np.array_equal(a, b)  # the selection run's model, as a plain run exports it
    # A finished refit is wiped too when a changed config starts the model afresh.
    trainer.run_training(binary_dir, str(out), TrainConfig(**CONFIG, refit=True), export=False)
    assert (model_dir / trainer.REFIT_DIR).exists()
    trainer.run_training(binary_dir, str(out), TrainConfig(**dict(CONFIG, learning_rate=1e-3)), export=False)
    assert not (model_dir / trainer.REFIT_DIR).exists()


def test_the_refit_of_a_finished_selection_read_back_from_its_directory(binary_dir, tmp_path):  # noqa: F811
    config = TrainConfig(**CONFIG)
    trainer.run_training(binary_dir, str(tmp_path), config, export=False)
    selection = refit.load_selection(str(tmp_path / C.MODEL_LSTM))
    assert selection["kind"] == C.MODEL_LSTM and selection["metrics"]["best_epoch"] >= 1
    result = refit.refit(binary_dir, dataclasses.replace(config, refit=True), selection=selection,
                         inputs=check_training_inputs(binary_dir, config))
    assert result["metrics"]["refit"]["epochs"] == selection["metrics"]["best_epoch"]
    assert refit.refit_epochs({"best_epoch": None, "epochs_run": 4}) == 4


def test_the_cli_exports_the_refit_model_and_evaluate_refuses_its_eval_split(binary_dir, tmp_path, capsys):  # noqa: F811
    from beam_rnn.cli import run_command
    from tests.test_trainer import _documents as corpus_documents

    out = tmp_path / "models"
    flags = ["--embedding-dim", "16", "--units", "16", "--dense-units", "16", "--batch-size", "16",
             "--learning-rate", "0.01", "--epochs", "2"]
    assert run_command("train", ["--transformed", binary_dir, "--output", str(out), "--kind", "lstm", "--refit",
                                 *flags]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed[C.MODEL_LSTM]["refit_epochs"] == printed[C.MODEL_LSTM]["best_epoch"]
    card = json.loads((out / C.MODEL_LSTM / C.MODEL_CARD_FILE).read_text())
    assert card["metrics"]["refit"]["epochs"] == printed[C.MODEL_LSTM]["best_epoch"]

    corpus = tmp_path / "corpus.csv"
    rows = ["id,text,label"] + [f"{d['id']},{d['text']},{d['label']}" for d in corpus_documents(320, 2, seed=0)]
    corpus.write_text("\n".join(rows) + "\n")
    base = ["--model", str(out / C.MODEL_LSTM), "--input", str(corpus), "--format", "csv", "--id-column", "id",
            "--runner=DirectRunner"]
    assert run_command("evaluate", [*base, "--split", "eval", "--output", str(tmp_path / "eval")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--split eval is not held out for lstm: refit on the train and eval splits" in errors[0]
    assert not (tmp_path / "eval").exists()
