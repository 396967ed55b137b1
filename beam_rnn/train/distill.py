"""Distillation from a trained bidirectional model: ``train --teacher DIR`` (issue 15 item 2).

The streaming LSTM learns from a mixture of the true label and a teacher's class
probabilities on the WHOLE text: target = (1 - w) * one_hot(label) + w * p_teacher,
with w = ``--teacher-weight``.  The teacher (a BiLSTM export trained on the same
preprocessing) is called on each batch inside the tf.data pipeline, before
``--prefix-training`` cuts documents short, so a prefix is taught the teacher's view
of the full text: what the student should already believe after reading part of it.

Each batch's target is packed as ``[label, teacher probabilities...]`` (binary:
``[label, P(1)]``, K classes: ``[label, p_1..p_K]``) so the loss mixes them while
the accuracy and AUC metrics still read the true label, whatever w.  The validation
data carries the teacher too: ``val_loss`` is the distillation loss, ``val_accuracy``
(the default early-stopping monitor) is plain accuracy.  The exported model is the
plain classifier; nothing of the teacher is in it.
"""

from collections.abc import Callable
from typing import Any

import tensorflow as tf
import tf_keras as keras

from beam_rnn.core import constants as C
from beam_rnn.core.artifacts import ModelDirError, available_models, join_path, read_model_card, read_model_info
from beam_rnn.train.errors import TrainerInputError
from beam_rnn.train.models import KIND_LSTM


def teacher_dir(path: str) -> str:
    """The teacher export: `path` itself, or its ``bilstm/`` when `path` is a training output."""
    if not tf.io.gfile.exists(join_path(path, C.MODEL_CARD_FILE)) and C.MODEL_BILSTM in available_models(path):
        return join_path(path, C.MODEL_BILSTM)
    return path


def check_teacher(config: Any, transformed_dir: str, stats: dict[str, Any]) -> None:
    """Refuses an unusable ``--teacher`` before any training (one line, exit 2).

    The teacher must be a complete export, for the same task (classes) and the same
    token ids: its vocabulary must be this preprocessing's, word for word.
    """
    if not config.teacher:
        return
    if KIND_LSTM not in config.kinds:
        raise TrainerInputError("--teacher teaches the streaming LSTM; this run trains no lstm")
    if config.folds:
        raise TrainerInputError("--teacher with --folds: the teacher was trained on the folds that would validate")
    path = teacher_dir(config.teacher)
    try:
        info = read_model_info(path)
        card = read_model_card(path)
    except ModelDirError as e:
        raise TrainerInputError(f"--teacher {config.teacher}: {e}") from e
    if info.num_classes != int(stats["num_classes"]):
        raise TrainerInputError(f"--teacher {path} has {info.num_classes} classes, this data {stats['num_classes']}")
    from beam_rnn.preprocess.transform import read_vocabulary  # pylint: disable=import-outside-toplevel

    vocab_path = join_path(path, "vocab.txt")
    if not tf.io.gfile.exists(vocab_path):
        raise TrainerInputError(f"--teacher {path} has no vocab.txt to check its token ids against")
    with tf.io.gfile.GFile(vocab_path) as f:
        teacher_words = f.read().split("\n")[:-1]  # one word + "\n" each; words may hold other line breaks (U+0085)
    if teacher_words != read_vocabulary(transformed_dir) or card.get("id_space_size") != int(
            stats["vocab_size_with_reserved"]):
        raise TrainerInputError(f"--teacher {path} was trained on another preprocessing (its vocabulary differs "
                                f"from {transformed_dir}'s): its token ids would mean other words")


def distilling(config: Any, kind: str) -> bool:
    """Whether `kind` trains with the teacher (the streaming LSTM only)."""
    return bool(config.teacher) and kind == KIND_LSTM


class Teacher:
    """The teacher's class probabilities on a batch of token ids, callable inside tf.data."""

    def __init__(self, path: str, num_classes: int):
        self.model_dir = teacher_dir(path)
        self._module = tf.saved_model.load(join_path(self.model_dir, C.SAVED_MODEL_DIR))
        self._classify = self._module.signatures["classify_ids"]
        self.num_classes = num_classes

    def pack(self, ids: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        """``[label, teacher probabilities...]`` per row (binary labels are ``[batch, 1]`` floats)."""
        probabilities = self._classify(token_ids=ids)["probabilities"]
        if self.num_classes == 2:
            return tf.concat([labels, tf.reshape(probabilities, [-1, 1])], axis=1)
        return tf.concat([tf.cast(labels, tf.float32)[:, tf.newaxis], probabilities], axis=1)


class DistillationLoss(keras.losses.Loss):
    """Cross-entropy against (1 - w) * one_hot(label) + w * p_teacher, from logits."""

    def __init__(self, num_classes: int, weight: float, name: str = "distillation", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.num_classes, self.weight = int(num_classes), float(weight)

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        w = tf.constant(self.weight, tf.float32)
        if self.num_classes == 2:
            target = (1.0 - w) * y_true[:, :1] + w * y_true[:, 1:2]
            return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=y_pred), axis=-1)
        one_hot = tf.one_hot(tf.cast(y_true[:, 0], tf.int32), self.num_classes)
        target = (1.0 - w) * one_hot + w * y_true[:, 1:]
        return tf.nn.softmax_cross_entropy_with_logits(labels=target, logits=y_pred)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes, "weight": self.weight}


class _LabelAUC(keras.metrics.AUC):
    """AUC of the true label (column 0 of a packed target)."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(y_true[:, :1], y_pred, sample_weight)


def _true_label(metric: Callable[..., tf.Tensor], **kwargs: Any) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    def on_label(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        return metric(y_true[:, :1], y_pred, **kwargs)
    return on_label


def loss_and_metrics(num_classes: int, weight: float) -> tuple[keras.losses.Loss, list[keras.metrics.Metric]]:
    """The compile arguments of a distilled model: `DistillationLoss`, and accuracy (and AUC) of the true label."""
    if num_classes == 2:
        metrics = [keras.metrics.MeanMetricWrapper(_true_label(keras.metrics.binary_accuracy, threshold=0.0),
                                                   name="accuracy"),
                   _LabelAUC(name="auc", from_logits=True)]
    else:
        metrics = [keras.metrics.MeanMetricWrapper(_true_label(keras.metrics.sparse_categorical_accuracy),
                                                   name="accuracy")]
    return DistillationLoss(num_classes, weight), metrics
