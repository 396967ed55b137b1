"""An exponential moving average of the weights, validated, kept and exported in place of the raw weights.

With ``train --ema-momentum M`` (M > 0) every training batch updates, for each
trainable variable ``w``, an average ``a <- d * a + (1 - d) * w`` with
``d = min(M, (1 + n) / (10 + n))`` after ``n`` updates (the warm-up of
`tf.train.ExponentialMovingAverage`'s ``num_updates``, so the first epoch's average
is not dominated by the initial weights).  The averaged weights are what the model
is: the validation pass at the end of every epoch (hence early stopping and the kept
epoch) sees them, the epoch checkpoints hold them, and the exported model is the
kept epoch's average.  The raw weights keep training, and the averages are part of
the committed training state, so a killed run still resumes bit-identically.

Kept here rather than Keras' ``use_ema`` optimizers: those start the average at the
initial weights with no warm-up and only validate on it through a Keras 3 callback
(``SwapEMAWeights``) that tf_keras lacks.
"""


import tensorflow as tf
import tf_keras as keras

WARMUP = 10.0  # d = min(M, (1 + n) / (WARMUP + n))


class WeightAverage(keras.callbacks.Callback):
    """Updates the averages after each training batch; swaps them in for validation and the epoch checkpoint.

    Args:
        model: The model being trained (its trainable variables are averaged).
        momentum: M above, in (0, 1).
        checkpoint_template: ``.../epoch_{epoch:03d}`` in an existing directory: the averaged weights are saved
            there after every epoch (in place of `keras.callbacks.ModelCheckpoint`).

    ``state`` (a `tf.Module` holding the averages and the update count) belongs in
    the training state's checkpoint (`beam_rnn.train.callbacks.TrainingState`).
    """

    def __init__(self, model: keras.Model, momentum: float, checkpoint_template: str) -> None:
        super().__init__()
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"momentum must be in (0, 1), got {momentum}")
        self.momentum = momentum
        self.checkpoint_template = checkpoint_template
        self._variables = list(model.trainable_variables)
        self.state = tf.Module(name="weight_average")
        with tf.init_scope():
            self.state.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="updates")
            self.state.averages = [tf.Variable(v, trainable=False, name=f"average_{i}")
                                   for i, v in enumerate(self._variables)]
        self._swapped = False

    @tf.function
    def _update(self) -> None:
        n = tf.cast(self.state.updates.assign_add(1) - 1, tf.float32)
        decay = tf.minimum(self.momentum, (1.0 + n) / (WARMUP + n))
        for average, variable in zip(self.state.averages, self._variables):
            average.assign_sub((1.0 - decay) * (average - variable))  # = d * a + (1 - d) * w, one temporary less

    def swap(self) -> None:
        """Exchanges the model's weights and the averages (twice: back as before)."""
        for average, variable in zip(self.state.averages, self._variables):
            raw = tf.identity(variable)
            variable.assign(average)
            average.assign(raw)
        self._swapped = not self._swapped

    def on_train_batch_end(self, batch, logs=None):
        self._update()

    def on_test_begin(self, logs=None):  # the validation pass of fit (evaluate after fit has no such hook here)
        if not self._swapped:
            self.swap()

    def on_test_end(self, logs=None):
        if self._swapped:
            self.swap()

    def on_epoch_end(self, epoch, logs=None):
        self.swap()
        try:
            self.model.save_weights(self.checkpoint_template.format(epoch=epoch + 1))
        finally:
            self.swap()
