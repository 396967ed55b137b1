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
(the default early-stopping monitor) is plain accuracy (the loss and metrics:
`beam_rnn.train.losses`).  The exported model is the plain classifier; nothing of
the teacher is in it.
"""

from typing import Any

import tensorflow as tf

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
