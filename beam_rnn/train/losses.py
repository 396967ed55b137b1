"""The training loss and metrics: what `trainer` compiles a model with.

Targets (y_true) come in two shapes:

* plain labels: ``[batch, 1]`` floats for binary tasks, ``[batch]`` ints for K > 2;
* packed (``train --teacher``, `beam_rnn.train.distill`): ``[label, teacher probabilities...]``
  per row (binary ``[label, P(1)]``, K classes ``[label, p_1..p_K]``); the target the loss
  uses is (1 - w) * one_hot(label) + w * p_teacher, w = ``--teacher-weight``.

Outputs (y_pred) too:

* logits ``[batch, out]`` (the classifier as exported);
* the per-token view (``train --timestep-loss``, `models.build_classifier(per_token=True)`):
  ``[batch, time, out + 1]``, the logits after every token, then the token mask (1 for a
  token, 0 for padding).  Keras carries a masked step's output forward, so the last step
  holds the whole document's logits.

With the per-token view the loss is (1 - s) * CE(whole document) + s * sum_t w_t CE(after
token t), s = ``--timestep-loss``, w_t = t / (1 + ... + n) for a document of n tokens:
every prefix is asked for the answer, later prefixes (which have read more) more firmly.
``--smoothness W`` adds W times the mean over a document's tokens of the squared change of
the logits from the token before (also in the per-token view): a penalty on changing one's
mind, which is what the edit overhead counts.
Accuracy and AUC always read the true label and the whole document's logits, so
``val_accuracy`` (early stopping, the kept epoch) means the same with every loss.
"""

from typing import Any

import tensorflow as tf
import tf_keras as keras


def _rows(y_true: tf.Tensor) -> tf.Tensor:
    """y_true as float ``[batch, k]``: column 0 the label, then the teacher's probabilities (if packed)."""
    y_true = tf.cast(y_true, tf.float32)
    return tf.reshape(y_true, [tf.shape(y_true)[0], -1])


def per_token_view(timestep_share: float, smoothness: float) -> bool:
    """Whether the model trains in the per-token view: the one rule the model, its loss and its metrics share."""
    return timestep_share > 0 or smoothness > 0


def _final_logits(y_pred: tf.Tensor, per_token: bool) -> tf.Tensor:
    return y_pred[:, -1, :-1] if per_token else y_pred


def soft_target(y_true: tf.Tensor, num_classes: int, teacher_weight: float) -> tf.Tensor:
    """The probabilities the loss aims at, ``[batch, out]``: the label, mixed with the teacher's when packed."""
    rows = _rows(y_true)
    hard = rows[:, :1] if num_classes == 2 else tf.one_hot(tf.cast(rows[:, 0], tf.int32), num_classes)
    if not teacher_weight:
        return hard
    w = tf.constant(teacher_weight, tf.float32)
    return (1.0 - w) * hard + w * rows[:, 1:]


def cross_entropy(target: tf.Tensor, logits: tf.Tensor, num_classes: int) -> tf.Tensor:
    """Cross-entropy from logits over the last axis (target broadcast to the logits' shape)."""
    target = tf.broadcast_to(target, tf.shape(logits))
    if num_classes == 2:
        return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits), axis=-1)
    return tf.nn.softmax_cross_entropy_with_logits(labels=target, logits=logits)


def position_weights(mask: tf.Tensor) -> tf.Tensor:
    """w_t = t / (1 + ... + n) at the n tokens of each row of a right-padded ``[batch, time]`` 0/1 mask (0 elsewhere)."""
    positions = tf.cumsum(mask, axis=1) * mask
    return tf.math.divide_no_nan(positions, tf.reduce_sum(positions, axis=1, keepdims=True))


class ClassifierLoss(keras.losses.Loss):
    """Cross-entropy against the label (mixed with a teacher's probabilities), optionally after every token too."""

    def __init__(self, num_classes: int, teacher_weight: float = 0.0, timestep_share: float = 0.0,
                 smoothness: float = 0.0, name: str = "classifier_loss", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.teacher_weight, self.timestep_share = float(teacher_weight), float(timestep_share)
        self.smoothness = float(smoothness)
        self.per_token = per_token_view(self.timestep_share, self.smoothness)

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        target = soft_target(y_true, self.num_classes, self.teacher_weight)
        if not self.per_token:
            return cross_entropy(target, y_pred, self.num_classes)
        logits, mask = y_pred[..., :-1], y_pred[..., -1]
        whole = cross_entropy(target, logits[:, -1], self.num_classes)
        s = tf.constant(self.timestep_share, tf.float32)
        loss = (1.0 - s) * whole
        if self.timestep_share:
            steps = cross_entropy(target[:, tf.newaxis, :], logits, self.num_classes)  # [batch, time]
            loss += s * tf.reduce_sum(position_weights(mask) * steps, axis=1)
        if self.smoothness:
            change = tf.reduce_sum(tf.square(logits[:, 1:] - logits[:, :-1]), axis=-1)  # [batch, time - 1]
            pairs = mask[:, 1:]  # right-padded: token t and t-1 both present
            mean_change = tf.math.divide_no_nan(tf.reduce_sum(pairs * change, axis=1), tf.reduce_sum(pairs, axis=1))
            loss += tf.constant(self.smoothness, tf.float32) * mean_change
        return loss

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes, "teacher_weight": self.teacher_weight,
                "timestep_share": self.timestep_share, "smoothness": self.smoothness}


class _LabelAUC(keras.metrics.AUC):
    """AUC of the true label (column 0 of y_true) against the whole document's logits."""

    def __init__(self, per_token: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.per_token = per_token

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(_rows(y_true)[:, :1], _final_logits(y_pred, self.per_token), sample_weight)


def _on_label(metric: Any, per_token: bool, **kwargs: Any) -> Any:
    def on_label(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        return metric(_rows(y_true)[:, :1], _final_logits(y_pred, per_token), **kwargs)
    return on_label


def loss_and_metrics(num_classes: int, *, teacher_weight: float = 0.0, timestep_share: float = 0.0,
                     smoothness: float = 0.0) -> tuple[keras.losses.Loss, list[keras.metrics.Metric]]:
    """The compile arguments: the loss, and accuracy (and AUC when binary) of the true label.

    Args:
        num_classes: 2 (one logit) or K.
        teacher_weight: > 0: targets are packed with a teacher's probabilities (`beam_rnn.train.distill`).
        timestep_share: The share of the loss after every token (``--timestep-loss``).
        smoothness: The weight of the logits' change from token to token (``--smoothness``).
        Either > 0: the model gives the per-token view (`per_token_view`; see the module docstring).
    """
    per_token = per_token_view(timestep_share, smoothness)
    if not teacher_weight and not per_token:  # plain labels and logits: Keras's own
        if num_classes == 2:
            return keras.losses.BinaryCrossentropy(from_logits=True), [
                keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0),  # logit 0 == probability 0.5
                keras.metrics.AUC(name="auc", from_logits=True)]
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True), [
            keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    if num_classes == 2:
        metrics = [keras.metrics.MeanMetricWrapper(_on_label(keras.metrics.binary_accuracy, per_token, threshold=0.0),
                                                   name="accuracy"),
                   _LabelAUC(per_token, name="auc", from_logits=True)]
    else:
        metrics = [keras.metrics.MeanMetricWrapper(_on_label(keras.metrics.sparse_categorical_accuracy, per_token),
                                                   name="accuracy")]
    return ClassifierLoss(num_classes, teacher_weight, timestep_share, smoothness), metrics
