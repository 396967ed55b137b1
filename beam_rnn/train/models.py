"""Pure model builders for the bidirectional and streaming text classifiers.

No training and no I/O here: a `ModelConfig` goes in, a tf_keras model (or a
per-token step function over one) comes out.

Both models take right-padded token ids ``[batch, time]`` (0 = padding, masked
by ``Embedding(mask_zero=True)``) and return LOGITS: ``[batch, 1]`` for binary
tasks, ``[batch, K]`` for K > 2 classes.  The sigmoid / softmax belongs to the
loss and the export, so the same model serves both.

* "bilstm" is the TensorFlow tutorial "Text classification with an RNN".
* "lstm" is unidirectional and built only from standard Keras recurrent layers,
  so that `make_tf_step` (TF) and `beam_rnn.stream.step` (NumPy) can replay it one
  token at a time with carried state and reproduce the full pass exactly.

Layers are named deterministically ("embedding", "rnn_0", ..., "dense_hidden",
"dropout", "logits") so exports can find weights by name, and every initialiser
is seeded from ``config.seed`` so a config always builds the same weights
without touching the global random state.
"""

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from beam_rnn.stream import step as rnn_step
from beam_rnn.train.config import CELLS, KIND_BILSTM, KIND_LSTM, KINDS, ModelConfig  # noqa: F401  (public here)

EMBEDDING_LAYER = "embedding"
DENSE_HIDDEN_LAYER = "dense_hidden"
DROPOUT_LAYER = "dropout"
EMBEDDING_DROPOUT_LAYER = "embedding_dropout"
LOGITS_LAYER = "logits"
INPUT_NAME = "token_ids"

# The tutorial's stacked variant ends with Dropout(0.5); used when the config
# leaves dropout at 0.
_TUTORIAL_STACKED_DROPOUT = 0.5

_CELL_LAYERS: dict[str, Callable[..., keras.layers.Layer]] = {
    rnn_step.CELL_LSTM: keras.layers.LSTM,
    rnn_step.CELL_GRU: keras.layers.GRU,
    rnn_step.CELL_SIMPLE_RNN: keras.layers.SimpleRNN,
}


# Cell classes behind those layers, to check a model matches its config.
_CELL_TYPES: dict[str, type] = {
    rnn_step.CELL_LSTM: keras.layers.LSTMCell,
    rnn_step.CELL_GRU: keras.layers.GRUCell,
    rnn_step.CELL_SIMPLE_RNN: keras.layers.SimpleRNNCell,
}


def rnn_layer_name(index: int) -> str:
    """Returns the name of recurrent layer `index` ("rnn_0" is nearest the embedding)."""
    return f"rnn_{index}"


class _Seeds:
    """Hands out distinct, reproducible initialiser seeds derived from one base seed."""

    def __init__(self, base: int) -> None:
        self._base = base
        self._next = base * 1000
        self._aside = 0

    def aside(self, offset: int = 0) -> int:
        """A seed outside the sequence `take` hands out (for layers that must not shift the others' seeds)."""
        return self._base * 1000 + 999 - offset

    def aside_next(self) -> int:
        """Another seed outside `take`'s sequence, distinct from `aside()` and from earlier calls."""
        self._aside += 1
        return self.aside(self._aside)

    def take(self) -> int:
        seed = self._next
        self._next += 1
        return seed


def _recurrent_layer(
    config: ModelConfig,
    units: int,
    seeds: _Seeds,
    name: str,
    return_sequences: bool,
    go_backwards: bool = False,
) -> keras.layers.Layer:
    """One standard Keras recurrent layer of `config.cell` with seeded initialisers.

    Default activations (and GRU reset_after=True) are kept on purpose: the
    NumPy step in `rnn_step` hard-codes exactly those.
    """
    layer = _CELL_LAYERS[config.cell](
        units,
        return_sequences=return_sequences,
        go_backwards=go_backwards,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seeds.take()),
        recurrent_initializer=keras.initializers.Orthogonal(seed=seeds.take()),
        dropout=config.recurrent_dropout,
        recurrent_dropout=config.recurrent_dropout,
        name=name,
    )
    if config.recurrent_dropout > 0:
        _seed_dropout(layer, seeds)
    return layer


def _seed_dropout(layer: keras.layers.Layer, seeds: _Seeds) -> None:
    """Gives a recurrent layer with dropout seeded generators whose state the trainer can save.

    Keras builds the cell without a seed and with TF1 stateful random ops (state inside the
    kernel, lost on a kill). A seeded tf.random.Generator instead (state in a variable the
    trainer's checkpoints save), seeded aside so the initial weights do not change with the rate.
    tf_keras exports no public way to seed a cell's generator, hence its private class (tf_keras 2.21).
    """
    from tf_keras.src.backend import RandomGenerator  # pylint: disable=import-outside-toplevel

    for owner in (layer.cell, layer):  # the cell draws the masks; the layer has a generator of its own too
        owner._random_generator = RandomGenerator(seeds.aside_next(), rng_type="stateful")  # pylint: disable=protected-access


def _bidirectional(config: ModelConfig, units: int, seeds: _Seeds, name: str, return_sequences: bool) -> keras.layers.Layer:
    # An explicit backward layer: otherwise Bidirectional clones the forward
    # layer's config, seeds included, and both directions start identical.
    forward = _recurrent_layer(config, units, seeds, f"{name}_forward", return_sequences)
    backward = _recurrent_layer(config, units, seeds, f"{name}_backward", return_sequences, go_backwards=True)
    wrapper = keras.layers.Bidirectional(forward, backward_layer=backward, name=name)
    if config.recurrent_dropout > 0:  # Bidirectional rebuilt both layers from their configs: seed its copies
        for layer in (wrapper.forward_layer, wrapper.backward_layer):
            _seed_dropout(layer, seeds)
    return wrapper


class PerTokenOutputs(keras.layers.Layer):
    """Appends the token mask to per-token logits: ``[batch, time, out]`` -> ``[batch, time, out + 1]``.

    The loss (`beam_rnn.train.losses`) needs to know which steps are tokens; the mask
    travels in the output so it needs no input of its own, and stops here.
    """

    def call(self, logits: tf.Tensor, mask: tf.Tensor | None = None) -> tf.Tensor:
        if mask is None:
            mask = tf.ones(tf.shape(logits)[:2], tf.bool)
        return tf.concat([logits, tf.cast(mask, logits.dtype)[..., tf.newaxis]], axis=-1)

    def compute_mask(self, inputs: tf.Tensor, mask: tf.Tensor | None = None) -> None:
        return None


def build_classifier(config: ModelConfig, *, per_token: bool = False) -> keras.Model:
    """Builds the (untrained, uncompiled) classifier described by `config`.

    Args:
        config: Model hyper-parameters.
        per_token: "lstm" only: the training view of ``train --timestep-loss`` / ``--smoothness``: the last
            recurrent layer returns every step and the head runs on each, followed by
            `PerTokenOutputs`.  Its weights are the plain model's, in the same order
            (``plain.set_weights(per_token_model.get_weights())``).

    Returns:
        A functional tf_keras model: int token ids ``[batch, time]`` (right
        0-padded; int32 is accepted too) -> float32 logits ``[batch, out]``
        (per_token: ``[batch, time, out + 1]``, the logits after each token and the token mask).
    """
    if per_token:
        _require_streaming(config)
    seeds = _Seeds(config.seed)
    inputs = keras.Input(shape=(None,), dtype="int64", name=INPUT_NAME)
    x = keras.layers.Embedding(
        config.vocab_size,
        config.embedding_dim,
        mask_zero=True,
        embeddings_initializer=keras.initializers.RandomUniform(-0.05, 0.05, seed=seeds.take()),
        name=EMBEDDING_LAYER,
    )(inputs)
    if config.embedding_dropout > 0:
        # A seed of its own, outside the sequence handed out below: with or without this layer the
        # initial weights are the same, so comparisons at one seed differ in the dropout only.
        x = keras.layers.SpatialDropout1D(config.embedding_dropout, seed=seeds.aside(), rng_type="stateful",
                                          name=EMBEDDING_DROPOUT_LAYER)(x)

    dropout = config.dropout
    if config.kind == KIND_BILSTM:
        if config.stacked_tutorial:
            widths = [config.units, config.units // 2]
            dropout = dropout or _TUTORIAL_STACKED_DROPOUT
        else:
            widths = [config.units] * config.layers
        for index, units in enumerate(widths):
            last = index == len(widths) - 1
            x = _bidirectional(config, units, seeds, rnn_layer_name(index), return_sequences=not last)(x)
    else:
        for index in range(config.layers):
            last = index == config.layers - 1
            x = _recurrent_layer(config, config.units, seeds, rnn_layer_name(index),
                                 return_sequences=per_token or not last)(x)

    x = keras.layers.Dense(
        config.dense_units,
        activation="relu",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seeds.take()),
        name=DENSE_HIDDEN_LAYER,
    )(x)
    if dropout > 0:
        # A tf.random.Generator (state in a variable) rather than Keras' default TF1
        # stateful op (state inside the kernel): the trainer saves its state, so a
        # resumed run draws the same masks as an uninterrupted one.
        x = keras.layers.Dropout(dropout, seed=seeds.take(), rng_type="stateful", name=DROPOUT_LAYER)(x)
    logits = keras.layers.Dense(
        config.num_outputs,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seeds.take()),
        name=LOGITS_LAYER,
    )(x)
    if per_token:
        logits = PerTokenOutputs(name="per_token_outputs")(logits)
    return keras.Model(inputs=inputs, outputs=logits, name=f"{config.kind}_classifier")


def forget_dropout_masks(model: keras.Model) -> None:
    """Drops the recurrent dropout masks Keras cached in its last graphs (each call draws new ones anyway).

    Left in place (``recurrent_dropout`` > 0, once the model was built or trained), they make
    `tf.Module.submodules` fail (it cannot order the cache's graphs); call this before walking it.
    """
    for layer in model.layers:
        for rnn in (layer.forward_layer, layer.backward_layer) if isinstance(layer, keras.layers.Bidirectional) else (layer,):
            for owner in (rnn, getattr(rnn, "cell", None)):
                if hasattr(owner, "reset_dropout_mask"):
                    owner.reset_dropout_mask()
                    owner.reset_recurrent_dropout_mask()


def _require_streaming(config: ModelConfig) -> None:
    if config.kind != KIND_LSTM:
        raise ValueError(
            f"Model kind {config.kind!r} has no per-token step: only the unidirectional "
            f"{KIND_LSTM!r} model can be run one token at a time."
        )


def state_spec(config: ModelConfig) -> list[tuple[str, int]]:
    """Names and widths of the streaming model's per-layer states.

    Args:
        config: A config of kind "lstm".

    Returns:
        ``[("h_0", units), ("c_0", units), ("h_1", units), ...]`` for LSTM;
        ``[("h_0", units), ("h_1", units), ...]`` for GRU / SimpleRNN. This is
        the order of the state lists of `make_tf_step` and `rnn_step`.

    Raises:
        ValueError: If the config is not a streaming one.
    """
    _require_streaming(config)
    names = ["h", "c"] if config.cell == rnn_step.CELL_LSTM else ["h"]
    return [(f"{name}_{layer}", config.units) for layer in range(config.layers) for name in names]


def initial_states(config: ModelConfig, batch_size: int | tf.Tensor) -> list[tf.Tensor]:
    """Zero states for `batch_size` streams (what Keras starts a sequence with).

    Args:
        config: A config of kind "lstm".
        batch_size: Python int or scalar int tensor (usable inside tf.function).

    Returns:
        float32 tensors ``[batch_size, units]`` in `state_spec` order.
    """
    return [tf.zeros(tf.stack([batch_size, units]), dtype=tf.float32) for _, units in state_spec(config)]


def step_input_signature(config: ModelConfig) -> list[Any]:
    """The fixed `tf.function` input signature of the step: ``[token_ids, states]``.

    Args:
        config: A config of kind "lstm".

    Returns:
        ``[TensorSpec([None], int64), [TensorSpec([None, units], float32), ...]]``.
    """
    states = [tf.TensorSpec([None, units], tf.float32, name=name) for name, units in state_spec(config)]
    return [tf.TensorSpec([None], tf.int64, name=INPUT_NAME), states]


def make_tf_step(
    model: keras.Model, config: ModelConfig
) -> Callable[[tf.Tensor, Sequence[tf.Tensor]], tuple[tf.Tensor, list[tf.Tensor]]]:
    """Returns a per-token step over `model`'s own weights.

    The step uses the model's variables (embedding table, each recurrent
    layer's ``layer.cell``, the dense head), so it stays in sync with training
    and is saved with the model when attached to the same `tf.Module`. Wrap it
    with ``tf.function(step, input_signature=step_input_signature(config))``.

    Args:
        model: A model built by `build_classifier(config)` (possibly trained).
        config: Its config (kind "lstm").

    Returns:
        ``step(token_ids int64[batch], states list of float32[batch, units])
        -> (logits float32[batch, out], new_states)``. Rows whose token id is 0
        keep their state (as Keras masking does); logits are always those of
        the sequence so far.

    Raises:
        ValueError: If the config is not a streaming one or the model does not
            match it.
    """
    _require_streaming(config)
    embedding = model.get_layer(EMBEDDING_LAYER)
    cells = [model.get_layer(rnn_layer_name(i)).cell for i in range(config.layers)]
    dense_hidden = model.get_layer(DENSE_HIDDEN_LAYER)
    logits_layer = model.get_layer(LOGITS_LAYER)
    for i, cell in enumerate(cells):
        if cell.units != config.units or not isinstance(cell, _CELL_TYPES[config.cell]):
            raise ValueError(f"Layer {rnn_layer_name(i)!r} does not match config cell={config.cell!r}, units={config.units}.")
    per_layer = 2 if config.cell == rnn_step.CELL_LSTM else 1
    num_states = per_layer * config.layers

    def step(token_ids: tf.Tensor, states: Sequence[tf.Tensor]) -> tuple[tf.Tensor, list[tf.Tensor]]:
        if len(states) != num_states:
            raise ValueError(f"Expected {num_states} state tensors, got {len(states)}.")
        token_ids = tf.convert_to_tensor(token_ids)
        keep = tf.expand_dims(tf.not_equal(token_ids, 0), -1)
        x = tf.gather(embedding.embeddings, token_ids)
        new_states: list[tf.Tensor] = []
        for layer, cell in enumerate(cells):
            old = list(states[layer * per_layer : (layer + 1) * per_layer])
            x, cell_states = cell(x, old, training=False)
            cell_states = tf.nest.flatten(cell_states)
            # Masking semantics: a padding token carries the previous state.
            kept = [tf.where(keep, new, prev) for new, prev in zip(cell_states, old)]
            new_states.extend(kept)
            x = kept[0]
        logits = logits_layer(dense_hidden(x))
        return logits, new_states

    return step


def extract_step_weights(model: keras.Model, config: ModelConfig) -> dict[str, np.ndarray]:
    """Flattens a streaming model's weights for `beam_rnn.stream.step`.

    Args:
        model: A model built by `build_classifier(config)` (possibly trained).
        config: Its config (kind "lstm").

    Returns:
        A flat dict, savable with ``np.savez(path, **weights)``:
        "meta.format_version", "meta.cell", "meta.num_layers", "meta.units",
        "meta.num_classes" (0-d arrays), "embedding", "rnn_{i}.kernel",
        "rnn_{i}.recurrent_kernel", "rnn_{i}.bias", "dense_hidden.kernel",
        "dense_hidden.bias", "logits.kernel", "logits.bias" (float32).

    Raises:
        ValueError: If the config is not a streaming one.
    """
    _require_streaming(config)

    def f32(variable: tf.Variable) -> np.ndarray:
        return np.asarray(variable.numpy(), dtype=np.float32)

    weights: dict[str, np.ndarray] = {
        rnn_step.META_FORMAT_VERSION: np.asarray(rnn_step.FORMAT_VERSION, dtype=np.int64),
        rnn_step.META_CELL: np.asarray(config.cell),
        rnn_step.META_NUM_LAYERS: np.asarray(config.layers, dtype=np.int64),
        rnn_step.META_UNITS: np.asarray(config.units, dtype=np.int64),
        rnn_step.META_NUM_CLASSES: np.asarray(config.num_classes, dtype=np.int64),
        rnn_step.EMBEDDING: f32(model.get_layer(EMBEDDING_LAYER).embeddings),
    }
    for i in range(config.layers):
        cell = model.get_layer(rnn_layer_name(i)).cell
        weights[rnn_step.layer_key(i, "kernel")] = f32(cell.kernel)
        weights[rnn_step.layer_key(i, "recurrent_kernel")] = f32(cell.recurrent_kernel)
        weights[rnn_step.layer_key(i, "bias")] = f32(cell.bias)
    dense_hidden = model.get_layer(DENSE_HIDDEN_LAYER)
    logits_layer = model.get_layer(LOGITS_LAYER)
    weights[rnn_step.DENSE_HIDDEN_KERNEL] = f32(dense_hidden.kernel)
    weights[rnn_step.DENSE_HIDDEN_BIAS] = f32(dense_hidden.bias)
    weights[rnn_step.LOGITS_KERNEL] = f32(logits_layer.kernel)
    weights[rnn_step.LOGITS_BIAS] = f32(logits_layer.bias)
    # Validate shapes now, at export time, rather than at the first Beam step.
    rnn_step.StepWeights.from_dict(weights, precompute=False)
    return weights
