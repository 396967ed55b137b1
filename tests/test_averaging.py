"""Tests for the trainer's optimiser options: ``--ema-momentum`` (beam_rnn.train.averaging: the average, what
validation sees, resume) and ``--weight-decay`` (AdamW, biases excluded)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from beam_rnn.core import constants as C
from beam_rnn.train import trainer
from beam_rnn.train.averaging import WARMUP, WeightAverage
from beam_rnn.train import models
from beam_rnn.train.config import TrainConfig
from tests.test_trainer import (  # the trainer tests' corpus, config and fault injection
    RESUME,
    _assert_same_training,
    _checkpoint_arrays,
    _history,
    _Killed,
    _KillAt,
    binary_dir,  # noqa: F401  (a fixture)
)

EMA = dict(RESUME, ema_momentum=0.9)


def test_average_updates_with_warmup_and_swaps_back(tmp_path):
    model = keras.Sequential([keras.layers.Dense(2, input_shape=(3,))])
    average = WeightAverage(model, 0.5, str(tmp_path / "epoch_{epoch:03d}"))
    expected = [v.numpy() for v in model.trainable_variables]
    for n, value in enumerate((1.0, 3.0, -2.0)):
        for variable in model.trainable_variables:
            variable.assign(tf.fill(variable.shape, value))
        average._update()  # pylint: disable=protected-access
        decay = min(0.5, (1 + n) / (WARMUP + n))
        expected = [decay * e + (1 - decay) * value for e in expected]
    assert int(average.state.updates.numpy()) == 3
    for got, want in zip(average.state.averages, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)

    average.swap()  # the model holds the average, the average the raw weights
    for variable, want in zip(model.trainable_variables, expected):
        np.testing.assert_allclose(variable.numpy(), want, rtol=1e-6)
    assert all(np.all(a.numpy() == -2.0) for a in average.state.averages)
    average.swap()
    assert all(np.all(v.numpy() == -2.0) for v in model.trainable_variables)
    with pytest.raises(ValueError, match="momentum"):
        WeightAverage(model, 1.0, str(tmp_path / "x"))


def test_ema_model_is_the_average_validation_saw(binary_dir, tmp_path):  # noqa: F811
    plain = trainer.train(binary_dir, str(tmp_path / "plain"), TrainConfig(**RESUME, ema_momentum=0.0))["metrics"]
    ema = trainer.train(binary_dir, str(tmp_path / "ema"), TrainConfig(**EMA))["metrics"]
    plain_history = _history(str(tmp_path / "plain" / C.MODEL_LSTM))
    ema_history = _history(str(tmp_path / "ema" / C.MODEL_LSTM))
    # The raw weights train exactly as without averaging (same batches, same Dropout draws) ...
    common = min(len(plain_history), len(ema_history))
    assert [h["loss"] for h in plain_history[:common]] == [h["loss"] for h in ema_history[:common]]
    # ... while validation sees the average.
    assert any(p["val_loss"] != e["val_loss"] for p, e in zip(plain_history[:common], ema_history[:common]))
    # The kept weights are what validation saw at the kept epoch (evaluated again after training) ...
    best = next(h for h in ema_history if h["epoch"] == ema["best_epoch"])
    assert ema["accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-6)
    assert ema["loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    # ... and not the raw weights of that epoch (the plain run's checkpoint of the same epoch).
    model_dir = tmp_path / "ema" / C.MODEL_LSTM
    exported, _ = trainer.load_trained_model(str(model_dir))
    raw = _checkpoint_arrays(trainer.checkpoint_path(str(tmp_path / "plain" / C.MODEL_LSTM), ema["best_epoch"]))
    averaged = _checkpoint_arrays(trainer.checkpoint_path(str(model_dir), ema["best_epoch"]))
    kernels = [k for k in averaged if "kernel" in k and "optimizer" not in k]
    assert kernels and any(not np.array_equal(raw[k], averaged[k]) for k in kernels)
    assert json.loads((model_dir / trainer.TRAIN_CONFIG_FILE).read_text())["ema_momentum"] == 0.9
    assert ema["ema_momentum"] == 0.9 and plain["ema_momentum"] == 0.0  # metrics.json, hence the model card
    assert plain["best_epoch"] >= 1 and exported.get_weights()


def test_ema_resumes_bit_identically(binary_dir, tmp_path):  # noqa: F811
    reference = tmp_path / "reference"
    trainer.train(binary_dir, str(reference), TrainConfig(**EMA))
    resumed = tmp_path / "resumed"
    with pytest.raises(_Killed):
        trainer.train(binary_dir, str(resumed), TrainConfig(**EMA), callbacks=[_KillAt(1, batch=3)])
    metrics = trainer.train(binary_dir, str(resumed), TrainConfig(**EMA))["metrics"]
    assert metrics["resumed"] and metrics["start_epoch"] == 1
    _assert_same_training(reference / C.MODEL_LSTM, resumed / C.MODEL_LSTM)
    assert not os.path.exists(resumed / C.MODEL_LSTM / trainer.BACKUP_DIR)


@pytest.mark.parametrize("decay", [0.0, 2.0])
def test_weight_decay_shrinks_kernels_not_biases(decay):
    config = TrainConfig(**dict(RESUME, weight_decay=decay))
    model = models.build_classifier(config.model_config(C.MODEL_LSTM, vocab_size=50, num_classes=2))
    trainer._compile(model, config, C.MODEL_LSTM, 2)  # pylint: disable=protected-access
    before = {v.name: v.numpy() for v in model.trainable_variables}
    zero = [tf.zeros_like(v) for v in model.trainable_variables]
    model.optimizer.apply_gradients(zip(zero, model.trainable_variables))  # a step that only decays
    factor = 1.0 - config.learning_rate_for(C.MODEL_LSTM) * decay
    for variable in model.trainable_variables:
        want = before[variable.name] * (1.0 if "bias" in variable.name else factor)
        np.testing.assert_allclose(variable.numpy(), want, rtol=1e-6, err_msg=variable.name)
    assert type(model.optimizer).__name__ == ("AdamW" if decay else "Adam")
