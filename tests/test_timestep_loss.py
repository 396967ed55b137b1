"""A loss on the prediction after every token (`train --timestep-loss`, beam_rnn.train.losses)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from beam_rnn.core import constants as C
from beam_rnn.core.errors import InputError
from beam_rnn.train import losses, models, trainer
from beam_rnn.train.config import ModelConfig, TrainConfig
from tests.test_trainer import (  # the trainer tests' corpus, configs and fault injection
    RESUME,
    SMALL,
    _assert_same_training,
    _Killed,
    _KillAt,
    binary_dir,  # noqa: F401  (a fixture)
)


def test_position_weights_grow_with_the_position_and_sum_to_one_per_document():
    mask = tf.constant([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(losses.position_weights(mask).numpy(),
                               [[1 / 6, 2 / 6, 3 / 6, 0], [1, 0, 0, 0], [0, 0, 0, 0]], rtol=1e-6)


def _by_hand(target, logits, mask, share, binary, smoothness=0.0):
    """(1 - s) CE(last step) + s sum_t t / (1+..+n) CE(step t) + W mean_t |z_t - z_(t-1)|^2, one document at a
    time, in NumPy."""
    def ce(p, z):
        if binary:
            q = 1 / (1 + np.exp(-z))
            return float(np.mean(-(p * np.log(q) + (1 - p) * np.log(1 - q))))
        q = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        return float(-(p * np.log(q)).sum())

    out = []
    for b in range(logits.shape[0]):
        n = int(mask[b].sum())
        steps = sum((t + 1) / (n * (n + 1) / 2) * ce(target[b], logits[b, t]) for t in range(n))
        changes = [float(np.sum((logits[b, t] - logits[b, t - 1]) ** 2)) for t in range(1, n)]
        smooth = smoothness * np.mean(changes) if changes else 0.0
        out.append((1 - share) * ce(target[b], logits[b, -1]) + share * steps + smooth)
    return np.mean(out)


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("teacher_weight", [0.0, 0.4])
def test_the_loss_weights_every_prefix_by_position_and_the_metrics_read_the_whole_document(num_classes,
                                                                                             teacher_weight):
    rng = np.random.default_rng(0)
    out = 1 if num_classes == 2 else num_classes
    lengths = [3, 5, 1]
    logits = rng.normal(size=(3, 5, out)).astype(np.float32)
    mask = np.array([[1.0] * n + [0.0] * (5 - n) for n in lengths], np.float32)
    for b, n in enumerate(lengths):  # padding carries the last token's logits forward, as Keras does
        logits[b, n:] = logits[b, n - 1]
    y_pred = tf.constant(np.concatenate([logits, mask[..., None]], axis=-1))
    labels = np.array([1, 0, 1]) if num_classes == 2 else np.array([2, 0, 1])
    hard = labels[:, None].astype(np.float32) if num_classes == 2 else np.eye(num_classes)[labels]
    if teacher_weight:
        teacher = rng.uniform(size=(3, 1)) if num_classes == 2 else rng.dirichlet(np.ones(num_classes), size=3)
        y_true = np.concatenate([labels[:, None], teacher], axis=1).astype(np.float32)
        target = (1 - teacher_weight) * hard + teacher_weight * teacher
    else:
        y_true = labels[:, None].astype(np.float32) if num_classes == 2 else labels
        target = hard
    for share, smoothness in ((0.3, 0.0), (1.0, 0.0), (0.5, 2.0), (0.0, 0.7)):
        loss, metrics = losses.loss_and_metrics(num_classes, teacher_weight=teacher_weight, timestep_share=share,
                                                smoothness=smoothness)
        want = _by_hand(target, logits, mask, share, num_classes == 2, smoothness)
        np.testing.assert_allclose(loss(tf.constant(y_true), y_pred).numpy(), want, rtol=1e-5)
    final = logits[:, -1]
    predicted = (final[:, 0] > 0).astype(int) if num_classes == 2 else final.argmax(1)
    metrics[0].update_state(tf.constant(y_true), y_pred)
    assert metrics[0].result().numpy() == pytest.approx(np.mean(predicted == labels))


def test_the_per_token_view_has_the_plain_models_weights_and_its_last_step_is_the_whole_pass():
    config = ModelConfig(kind="lstm", vocab_size=20, embedding_dim=8, units=8, dense_units=8, layers=2, dropout=0.3)
    plain, view = models.build_classifier(config), models.build_classifier(config, per_token=True)
    assert [w.shape for w in plain.weights] == [w.shape for w in view.weights]
    plain.set_weights(view.get_weights())
    ids = np.array([[3, 4, 5, 0, 0], [7, 8, 9, 10, 11], [2, 0, 0, 0, 0]])
    steps = view(ids).numpy()
    assert steps.shape == (3, 5, 2)
    np.testing.assert_array_equal(steps[..., 1], ids != 0)
    np.testing.assert_allclose(steps[:, -1, :1], plain(ids).numpy(), atol=1e-6)
    np.testing.assert_allclose(steps[1, 2, :1], plain(ids[1:2, :3]).numpy()[0], atol=1e-6)  # a prefix's own pass
    with pytest.raises(ValueError, match="per-token step"):
        models.build_classifier(ModelConfig(kind="bilstm", vocab_size=20), per_token=True)


def test_the_options_reach_the_streaming_model_only_and_are_checked():
    config = TrainConfig(timestep_loss=0.5, smoothness=1.0)
    assert trainer.timestep_share(config, "lstm") == 0.5 and trainer.timestep_share(config, "bilstm") == 0.0
    assert trainer.per_token(config, "lstm") and not trainer.per_token(config, "bilstm")
    assert trainer.per_token(TrainConfig(smoothness=1.0), "lstm") and not trainer.per_token(TrainConfig(), "lstm")
    assert TrainConfig().timestep_loss == 0.0 and TrainConfig().smoothness == 0.0
    with pytest.raises(InputError):
        TrainConfig(timestep_loss=1.5)
    with pytest.raises(InputError):
        TrainConfig(smoothness=-1.0)


def test_a_streaming_lstm_trains_with_the_timestep_loss_and_exports_the_plain_classifier(binary_dir, tmp_path):  # noqa: F811
    prep = binary_dir
    common = dict(kinds=("lstm",), epochs=4, **SMALL)
    plain = trainer.train(prep, str(tmp_path / "plain"), TrainConfig(**common))
    metrics = trainer.run_training(prep, str(tmp_path / "steps"), TrainConfig(timestep_loss=0.5, smoothness=0.5,
                                                                                  **common))["lstm"]
    assert metrics["timestep_loss"] == 0.5 and metrics["smoothness"] == 0.5
    assert "timestep_loss" not in plain["metrics"] and "smoothness" not in plain["metrics"]
    assert metrics["accuracy"] > 0.75, metrics  # whole-document accuracy of a learnable task
    # The weights went elsewhere than plain training's (the loss did something), into the plain classifier.
    model, _ = trainer.load_trained_model(str(tmp_path / "steps" / "lstm"))
    assert model.output_shape == (None, 1)
    assert any(not np.array_equal(a, b) for a, b in zip(model.get_weights(), plain["model"].get_weights()))
    card = json.loads((tmp_path / "steps" / "lstm" / "model_card.json").read_text())
    assert card["metrics"]["timestep_loss"] == 0.5
    saved = json.loads((tmp_path / "steps" / "lstm" / trainer.TRAIN_CONFIG_FILE).read_text())
    assert saved["timestep_loss"] == 0.5
    assert os.path.isdir(tmp_path / "steps" / "lstm" / "saved_model")


def test_the_per_token_view_resumes_bit_identically(binary_dir, tmp_path):  # noqa: F811
    """Killed mid-epoch and rerun, a --timestep-loss --smoothness run (Dropout, averaged weights) ends where an
    uninterrupted one does: the per-token view's training state is the plain model's."""
    config = TrainConfig(**dict(RESUME, timestep_loss=0.5, smoothness=0.5))
    reference = tmp_path / "reference"
    trainer.train(binary_dir, str(reference), config)
    resumed = tmp_path / "resumed"
    with pytest.raises(_Killed):
        trainer.train(binary_dir, str(resumed), config, callbacks=[_KillAt(1, batch=3)])
    metrics = trainer.train(binary_dir, str(resumed), config)["metrics"]
    assert metrics["resumed"] and metrics["start_epoch"] == 1 and metrics["timestep_loss"] == 0.5
    _assert_same_training(reference / C.MODEL_LSTM, resumed / C.MODEL_LSTM)
