"""Keras callbacks and the saved training state that make a killed run resume bit-identically.

See `beam_rnn.train.trainer` for the protocol: after every epoch the history line,
the epoch checkpoint, TensorBoard scalars and early stopping run, then
`CommitState` commits the whole training state (`TrainingState`) to ``backup/``.
`TrainingProgress` is the console's view: a live line with an ETA within each epoch
and one line per epoch with each metric named by its split.
"""

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf
import tf_keras as keras
from tensorflow.core.framework import summary_pb2

from beam_rnn.core import progress
from beam_rnn.train import models

logger = logging.getLogger(__name__)


class EpochLog(keras.callbacks.Callback):
    """Appends one JSON line per completed epoch; remembers where this run started."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.first_epoch: int | None = None
        self.last_epoch: int | None = None
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        if self.first_epoch is None:
            self.first_epoch = epoch
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        self.last_epoch = epoch
        record = {"epoch": epoch + 1, "seconds": round(time.time() - self._start, 3), "pid": os.getpid()}
        record.update({k: float(v) for k, v in (logs or {}).items()})
        with tf.io.gfile.GFile(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


class ScalarLogs(keras.callbacks.Callback):
    """Per-epoch TensorBoard scalars under `log_dir/train` and `log_dir/validation`.

    Same layout and tags ("epoch_loss", "epoch_accuracy", ...) as
    `keras.callbacks.TensorBoard`, written with core `tf.summary.write`, so it works
    without the `tensorboard` package installed (TF 2.21 no longer depends on it);
    view with `tensorboard --logdir OUTPUT/<kind>/logs`.
    """

    def __init__(self, log_dir: str) -> None:
        super().__init__()
        self.log_dir = log_dir
        self._writers: dict[str, Any] = {}
        self._metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        )

    def _writer(self, name: str):
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(os.path.join(self.log_dir, name))
        return self._writers[name]

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            name, tag = ("validation", key[len("val_"):]) if key.startswith("val_") else ("train", key)
            with self._writer(name).as_default():
                tf.summary.write(f"epoch_{tag}", tf.constant(float(value), tf.float32), step=epoch,
                                 metadata=self._metadata)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def random_generators(model: keras.Model) -> dict[str, tf.random.Generator]:
    """The random generators of the layers that draw random numbers in training (Dropout).

    Keras keeps a layer's generator out of its weights and checkpoints on purpose
    (backwards compatibility), so the training state saves it explicitly.  A
    layer on a legacy stateful RNG (TF1 random ops, state inside the kernel)
    could not be resumed exactly: refuse it.
    """
    models.forget_dropout_masks(model)
    generators = {}
    for index, layer in enumerate(model.submodules):
        rng = getattr(layer, "_random_generator", None)
        if rng is None or not isinstance(layer, keras.layers.Layer):
            continue
        rates = [getattr(layer, name, None) for name in ("rate", "dropout", "recurrent_dropout")]
        rates = [r for r in rates if isinstance(r, (int, float))]
        if rates and not any(r > 0 for r in rates):
            continue  # draws nothing
        if rng._rng_type != rng.RNG_STATEFUL:  # pylint: disable=protected-access
            raise ValueError(f"layer {layer.name!r} uses a {rng._rng_type!r} random generator whose state cannot be "
                             "saved; build it with rng_type='stateful' (see models.build_classifier)")
        rng._maybe_init()  # pylint: disable=protected-access  (creates the generator's state variable now)
        generators[f"{index}_{layer.name}"] = rng._generator  # pylint: disable=protected-access
    return generators


class TrainingState:
    """Everything a restart needs to continue bit-identically, in one `tf.train.Checkpoint`.

    Model weights, optimizer (Adam slots, iteration counter), Dropout generator
    states, the weight average (``--ema-momentum``) and the number of finished epochs; `tf.train.CheckpointManager`
    rewrites its pointer file atomically after the new files are complete, so a
    process killed while saving leaves the previous epoch's state in place.
    """

    def __init__(self, backup_dir: str, model: keras.Model, weight_average: tf.Module | None = None) -> None:
        self.epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")
        model.optimizer.build(model.trainable_variables)  # slots exist before a restore
        parts: dict[str, Any] = {"model": model, "optimizer": model.optimizer, "epochs_done": self.epochs_done}
        if weight_average is not None:  # `beam_rnn.train.averaging.WeightAverage.state`
            parts["weight_average"] = weight_average
        generators = random_generators(model)
        if generators:
            parts["rng"] = generators
        self.checkpoint = tf.train.Checkpoint(**parts)
        self.manager = tf.train.CheckpointManager(self.checkpoint, backup_dir, max_to_keep=1, checkpoint_name="state")

    def restore(self) -> int:
        """Load the last committed state; returns the number of finished epochs."""
        self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
        return int(self.epochs_done.numpy())

    def commit(self, epochs_done: int) -> None:
        self.epochs_done.assign(epochs_done)
        self.manager.save(checkpoint_number=epochs_done)


class CommitState(keras.callbacks.Callback):
    """Commits the training state after every epoch (after history, checkpoint and early stopping)."""

    def __init__(self, state: TrainingState) -> None:
        super().__init__()
        self.state = state

    def on_epoch_end(self, epoch, logs=None):
        self.state.commit(epoch + 1)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """`keras.callbacks.EarlyStopping` whose state continues across a restart.

    `on_train_begin` resets the state, then replays the epochs finished before
    the restart (their logs from history.jsonl) through Keras' own `on_epoch_end`,
    so the best value, the epochs without improvement and a stop already decided
    carry over.  No weights are held in memory: `train` loads the best epoch's
    checkpoint at the end.
    """

    def __init__(self, past: Sequence[Mapping[str, Any]], **kwargs) -> None:
        super().__init__(restore_best_weights=False, **kwargs)
        self.past = [dict(record) for record in past]

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for record in self.past:
            super().on_epoch_end(int(record["epoch"]) - 1, record)


def metrics_text(logs: Mapping[str, Any], prefix: str = "") -> str:
    """``loss 0.412, accuracy 0.810, AUC 0.880`` from Keras logs (the keys starting with `prefix`)."""
    names = {"loss": "loss", "accuracy": "accuracy", "auc": "AUC"}
    parts = []
    for key, name in names.items():
        value = logs.get(prefix + key)
        if value is not None:
            parts.append(f"{name} {float(value):.3f}")
    return ", ".join(parts)


class TrainingProgress(keras.callbacks.Callback):
    """Reports training on the console: live batches with an ETA, then one line per epoch.

    Within an epoch `beam_rnn.core.progress` shows ``epoch 2/5 120/391 batches (31%,
    4.1/s, ETA 1:06)`` (and the validation batches after them); each finished epoch
    logs ``bilstm epoch 2/5 (31s): train loss ..., accuracy ... | validation (M docs)
    loss ..., accuracy ...`` — train-set figures are the running averages Keras reports
    over the epoch's batches.
    """

    def __init__(self, kind: str, epochs: int, steps_per_epoch: int, validation_documents: int) -> None:
        super().__init__()
        self.kind = kind
        self.epochs = epochs
        self.steps = steps_per_epoch
        self.validation_documents = validation_documents
        self._label = ""  # the counter shown now ("" outside an epoch)
        self._epoch = ""
        self._start = 0.0

    def _show(self, label: str, total: int | None) -> None:
        if self._label:
            progress.BOARD.remove(self._label)
        self._label = label
        if label:
            progress.count(label, 0, unit="batches", total=total)

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()
        self._epoch = f"epoch {epoch + 1}/{self.epochs}"
        self._show(self._epoch, self.steps)

    def on_train_batch_end(self, batch, logs=None):
        progress.count(self._label, unit="batches", total=self.steps, done=batch + 1)

    def on_test_begin(self, logs=None):
        if self._label:  # the validation pass at the end of an epoch of fit
            self._show(f"{self._epoch} validation", None)

    def on_test_batch_end(self, batch, logs=None):
        if self._label:
            progress.count(self._label, unit="batches", done=batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        self._show("", None)
        logs = logs or {}
        seconds = time.time() - self._start
        line = f"{self.kind} {self._epoch} ({seconds:.0f}s): train {metrics_text(logs)}"
        validation = metrics_text(logs, "val_")
        if validation:
            line += f" | validation ({self.validation_documents:,} docs) {validation}"
        logger.info("%s", line)
