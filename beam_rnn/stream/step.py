"""Per-token streaming inference for the unidirectional classifier, in NumPy.

The streaming ("lstm") model built by `beam_rnn.train.models.build_classifier` is a
stack of standard Keras recurrent layers followed by a small dense head.  This
module replays one token at a time with the weights exported by
`beam_rnn.train.models.extract_step_weights`, so a Beam worker can keep per-stream
recurrent state and emit a prediction after every token without loading
TensorFlow (a heavy import with its own thread pools, which matters when many
DoFn instances share a worker).

The maths mirrors tf_keras exactly (float32 throughout):

* LSTM: gate order i, f, c, o; recurrent activation sigmoid, activation tanh.
* GRU (``reset_after=True``, the tf_keras default): gate order z, r, h; the
  bias has shape ``(2, 3 * units)`` — row 0 input bias, row 1 recurrent bias —
  and the reset gate is applied after the recurrent matmul.
* SimpleRNN: tanh.

A padding token (id 0) leaves the state unchanged, as Keras masking does.

State layout (shared with the TF step in `beam_rnn.train.models`): a list of arrays in
the order of `models.state_spec`: ``[h_0, c_0, h_1, c_1, ...]`` for LSTM and
``[h_0, h_1, ...]`` for GRU / SimpleRNN.  Each array is ``[units]`` for a single
stream (`step`) or ``[batch, units]`` for many (`step_batch`).

This module must not import TensorFlow; a test checks it in a subprocess.
"""

import dataclasses
import io
import os
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# --- Keys of the flat weight dict (also the names inside the .npz file) ------
# Flat, dot-separated names rather than nested dicts so the dict goes straight
# into `np.savez` and comes back with `np.load(allow_pickle=False)`.
FORMAT_VERSION = 1
META_FORMAT_VERSION = "meta.format_version"
META_CELL = "meta.cell"
META_NUM_LAYERS = "meta.num_layers"
META_UNITS = "meta.units"
META_NUM_CLASSES = "meta.num_classes"
EMBEDDING = "embedding"
DENSE_HIDDEN_KERNEL = "dense_hidden.kernel"
DENSE_HIDDEN_BIAS = "dense_hidden.bias"
LOGITS_KERNEL = "logits.kernel"
LOGITS_BIAS = "logits.bias"

CELL_LSTM = "lstm"
CELL_GRU = "gru"
CELL_SIMPLE_RNN = "simple_rnn"
CELLS = (CELL_LSTM, CELL_GRU, CELL_SIMPLE_RNN)

# Gate blocks per cell type: the width of kernel / bias is gates * units.
_GATES = {CELL_LSTM: 4, CELL_GRU: 3, CELL_SIMPLE_RNN: 1}

# Above this many float32 values (64 MiB) the per-token table of layer-0 input
# projections is not precomputed; the projection is then done per step instead.
_MAX_PROJECTION_TABLE_VALUES = 16 * 1024 * 1024


def layer_key(index: int, name: str) -> str:
    """Returns the weight-dict key of one recurrent layer's array.

    Args:
        index: Recurrent layer index (0 = closest to the embedding).
        name: One of "kernel", "recurrent_kernel", "bias".

    Returns:
        The key, e.g. ``"rnn_0.kernel"``.
    """
    return f"rnn_{index}.{name}"


def num_states_per_layer(cell: str) -> int:
    """Returns how many state vectors one layer of `cell` carries (h, or h and c)."""
    if cell not in _GATES:
        raise ValueError(f"Unknown cell {cell!r}; expected one of {CELLS}.")
    return 2 if cell == CELL_LSTM else 1


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # The tanh form never overflows (1 / (1 + exp(-x)) does for x << 0, with a
    # RuntimeWarning) and stays within float32 rounding of tf.sigmoid.
    return np.float32(0.5) * (np.tanh(np.float32(0.5) * x) + np.float32(1.0))


def _as_f32(value: Any, key: str) -> np.ndarray:
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"Weight {key!r} must be numeric, got dtype {array.dtype}.")
    return np.ascontiguousarray(array, dtype=np.float32)


def _scalar(weights: Mapping[str, Any], key: str) -> Any:
    if key not in weights:
        raise ValueError(f"Step weights are missing {key!r}.")
    return np.asarray(weights[key]).item()


def _get(weights: Mapping[str, Any], key: str) -> np.ndarray:
    if key not in weights:
        raise ValueError(f"Step weights are missing {key!r}.")
    return _as_f32(weights[key], key)


def _read_layers(
    weights: Mapping[str, Any], cell: str, num_layers: int, units: int, input_dim: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """The recurrent layers' (kernels, recurrent kernels, biases), shapes checked."""
    width = _GATES[cell] * units
    bias_shape = (2, width) if cell == CELL_GRU else (width,)
    kernels, recurrent_kernels, biases = [], [], []
    for i in range(num_layers):
        kernel = _get(weights, layer_key(i, "kernel"))
        recurrent = _get(weights, layer_key(i, "recurrent_kernel"))
        bias = _get(weights, layer_key(i, "bias"))
        expected = {
            "kernel": ((input_dim, width), kernel.shape),
            "recurrent_kernel": ((units, width), recurrent.shape),
            "bias": (bias_shape, bias.shape),
        }
        for name, (want, got) in expected.items():
            if tuple(got) != want:
                raise ValueError(
                    f"{layer_key(i, name)!r} has shape {tuple(got)}, expected {want} "
                    f"for a {cell} layer with {units} units."
                )
        kernels.append(kernel)
        recurrent_kernels.append(recurrent)
        biases.append(bias)
        input_dim = units
    return kernels, recurrent_kernels, biases


def _read_head(weights: Mapping[str, Any], units: int, num_classes: int) -> tuple[np.ndarray, ...]:
    """The dense head's (hidden kernel, hidden bias, logits kernel, logits bias), shapes checked."""
    dense_kernel = _get(weights, DENSE_HIDDEN_KERNEL)
    dense_bias = _get(weights, DENSE_HIDDEN_BIAS)
    logits_kernel = _get(weights, LOGITS_KERNEL)
    logits_bias = _get(weights, LOGITS_BIAS)
    out = 1 if num_classes == 2 else num_classes
    if (
        dense_kernel.ndim != 2
        or dense_kernel.shape[0] != units
        or dense_bias.shape != (dense_kernel.shape[1],)
        or logits_kernel.shape != (dense_kernel.shape[1], out)
        or logits_bias.shape != (out,)
    ):
        raise ValueError(
            "Dense head shapes are inconsistent: "
            f"dense_hidden {dense_kernel.shape}/{dense_bias.shape}, "
            f"logits {logits_kernel.shape}/{logits_bias.shape}, "
            f"units={units}, outputs={out}."
        )
    return dense_kernel, dense_bias, logits_kernel, logits_bias


@dataclasses.dataclass(frozen=True, eq=False)
class StepWeights:
    """Weights of a streaming classifier, ready for per-token NumPy inference.

    Build with `StepWeights.from_dict` (the dict from
    `models.extract_step_weights`) or `StepWeights.load` (its ``.npz`` file).

    Attributes:
        cell: "lstm", "gru" or "simple_rnn".
        units: Width of every recurrent layer's state.
        num_classes: 2 (one logit) or K > 2 (K logits).
        embedding: ``[vocab, embedding_dim]``; row 0 is padding and unused.
        kernels: Per layer, ``[input_dim, gates * units]``.
        recurrent_kernels: Per layer, ``[units, gates * units]``.
        biases: Per layer, ``[gates * units]`` (``[2, 3 * units]`` for GRU).
        dense_hidden_kernel: ``[units, dense_units]``.
        dense_hidden_bias: ``[dense_units]``.
        logits_kernel: ``[dense_units, out]``.
        logits_bias: ``[out]``.
        input_table: ``[vocab, gates * units]`` = embedding @ kernel_0 + input
            bias, precomputed so a step skips the embedding matmul; None when
            the vocabulary is too large for it to pay off in memory.
    """

    cell: str
    units: int
    num_classes: int
    embedding: np.ndarray
    kernels: tuple[np.ndarray, ...]
    recurrent_kernels: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    dense_hidden_kernel: np.ndarray
    dense_hidden_bias: np.ndarray
    logits_kernel: np.ndarray
    logits_bias: np.ndarray
    input_table: np.ndarray | None = dataclasses.field(default=None, repr=False)

    @property
    def num_layers(self) -> int:
        """Number of stacked recurrent layers."""
        return len(self.kernels)

    @property
    def vocab_size(self) -> int:
        """Number of embedding rows (token ids are in ``[0, vocab_size)``)."""
        return int(self.embedding.shape[0])

    @property
    def num_outputs(self) -> int:
        """Width of the logits: 1 for binary, K otherwise."""
        return int(self.logits_bias.shape[0])

    @classmethod
    def from_dict(cls, weights: Mapping[str, Any], precompute: bool = True) -> "StepWeights":
        """Builds StepWeights from the flat dict of `extract_step_weights`.

        Args:
            weights: Flat mapping of key -> array (an ``np.load`` result works).
            precompute: Whether to build the per-token layer-0 input table
                (skipped anyway when it would exceed 64 MiB).

        Returns:
            Validated, float32 StepWeights.

        Raises:
            ValueError: If keys are missing or shapes are inconsistent.
        """
        version = int(_scalar(weights, META_FORMAT_VERSION))
        if version != FORMAT_VERSION:
            raise ValueError(
                f"Unsupported step-weights format version {version}; "
                f"this code reads version {FORMAT_VERSION}."
            )
        cell = str(_scalar(weights, META_CELL))
        if cell not in _GATES:
            raise ValueError(f"Unknown cell {cell!r} in step weights; expected one of {CELLS}.")
        num_layers = int(_scalar(weights, META_NUM_LAYERS))
        units = int(_scalar(weights, META_UNITS))
        num_classes = int(_scalar(weights, META_NUM_CLASSES))
        if num_layers < 1 or units < 1 or num_classes < 2:
            raise ValueError(
                f"Invalid step-weights metadata: num_layers={num_layers}, "
                f"units={units}, num_classes={num_classes}."
            )

        embedding = _get(weights, EMBEDDING)
        if embedding.ndim != 2:
            raise ValueError(f"{EMBEDDING!r} must be 2-D, got shape {embedding.shape}.")
        kernels, recurrent_kernels, biases = _read_layers(weights, cell, num_layers, units, embedding.shape[1])
        dense_kernel, dense_bias, logits_kernel, logits_bias = _read_head(weights, units, num_classes)

        table = None
        if precompute and embedding.shape[0] * _GATES[cell] * units <= _MAX_PROJECTION_TABLE_VALUES:
            table = embedding @ kernels[0] + _input_bias(cell, biases[0])
            table = np.ascontiguousarray(table, dtype=np.float32)
        return cls(
            cell=cell,
            units=units,
            num_classes=num_classes,
            embedding=embedding,
            kernels=tuple(kernels),
            recurrent_kernels=tuple(recurrent_kernels),
            biases=tuple(biases),
            dense_hidden_kernel=dense_kernel,
            dense_hidden_bias=dense_bias,
            logits_kernel=logits_kernel,
            logits_bias=logits_bias,
            input_table=table,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], precompute: bool = True) -> "StepWeights":
        """Loads StepWeights from an ``.npz`` written with ``np.savez(path, **weights)``.

        Args:
            path: Local path of the ``.npz`` file.
            precompute: See `from_dict`.

        Returns:
            Validated StepWeights.

        Raises:
            FileNotFoundError: No file at `path`.
            ValueError: The file is not a readable ``.npz`` (truncated, corrupt) or
                does not hold valid step weights (one line).
        """
        return cls.from_dict(read_npz(path), precompute=precompute)

    def to_dict(self) -> dict[str, np.ndarray]:
        """Returns the flat dict form (same keys as `extract_step_weights`)."""
        result: dict[str, np.ndarray] = {
            META_FORMAT_VERSION: np.asarray(FORMAT_VERSION, dtype=np.int64),
            META_CELL: np.asarray(self.cell),
            META_NUM_LAYERS: np.asarray(self.num_layers, dtype=np.int64),
            META_UNITS: np.asarray(self.units, dtype=np.int64),
            META_NUM_CLASSES: np.asarray(self.num_classes, dtype=np.int64),
            EMBEDDING: self.embedding,
            DENSE_HIDDEN_KERNEL: self.dense_hidden_kernel,
            DENSE_HIDDEN_BIAS: self.dense_hidden_bias,
            LOGITS_KERNEL: self.logits_kernel,
            LOGITS_BIAS: self.logits_bias,
        }
        for i in range(self.num_layers):
            result[layer_key(i, "kernel")] = self.kernels[i]
            result[layer_key(i, "recurrent_kernel")] = self.recurrent_kernels[i]
            result[layer_key(i, "bias")] = self.biases[i]
        return result


def read_npz(source: bytes | str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file (a path, or the file's bytes), read eagerly.

    Args:
        source: Local path, or the whole file as bytes.

    Returns:
        Name -> array.

    Raises:
        FileNotFoundError: `source` is a path with no file.
        ValueError: A truncated or corrupt archive (bad zip directory, bad CRC,
            a cut-off member, pickled data): one line, with the underlying error.
    """
    # allow_pickle=False: the file may come from a model directory that is
    # not fully trusted, and nothing in the format needs pickling.
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)
    try:
        with np.load(handle, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, NotImplementedError) as e:
        # zipfile raises BadZipFile / EOFError / zlib.error / KeyError for damaged
        # archives and NotImplementedError for a member whose compression method it
        # does not know (a corrupted header); NumPy ValueError / OSError for damaged members.
        detail = " ".join(f"{type(e).__name__}: {e}".split())
        raise ValueError(f"not a readable .npz file ({detail[:300]})") from e


def _input_bias(cell: str, bias: np.ndarray) -> np.ndarray:
    # GRU with reset_after keeps separate input / recurrent biases; only the
    # input one may be folded into the input projection (the recurrent one sits
    # inside r * (h @ U + b_rec)).
    return bias[0] if cell == CELL_GRU else bias


def initial_state(weights: StepWeights, batch: int | None = None) -> list[np.ndarray]:
    """Returns the all-zero state (what Keras starts every sequence with).

    Args:
        weights: The streaming model's weights.
        batch: None for one stream (arrays ``[units]``), else the number of
            streams (arrays ``[batch, units]``).

    Returns:
        The state list in `models.state_spec` order.
    """
    if batch is not None and batch < 0:
        raise ValueError(f"batch must be >= 0 or None, got {batch}.")
    shape = (weights.units,) if batch is None else (batch, weights.units)
    count = weights.num_layers * num_states_per_layer(weights.cell)
    return [np.zeros(shape, dtype=np.float32) for _ in range(count)]


def _cell(
    cell: str,
    x_proj: np.ndarray,
    states: Sequence[np.ndarray],
    recurrent_kernel: np.ndarray,
    bias: np.ndarray,
) -> list[np.ndarray]:
    """Advances one recurrent layer given its input projection (x @ W + b_in).

    Works on ``[units]`` and ``[batch, units]`` alike (slicing is on the last
    axis). Returns the layer's new states (h first).
    """
    u = recurrent_kernel.shape[0]
    h_prev = states[0]
    if cell == CELL_LSTM:
        z = x_proj + h_prev @ recurrent_kernel
        i = _sigmoid(z[..., :u])
        f = _sigmoid(z[..., u : 2 * u])
        c = f * states[1] + i * np.tanh(z[..., 2 * u : 3 * u])
        o = _sigmoid(z[..., 3 * u :])
        return [o * np.tanh(c), c]
    if cell == CELL_GRU:
        inner = h_prev @ recurrent_kernel + bias[1]
        z = _sigmoid(x_proj[..., :u] + inner[..., :u])
        r = _sigmoid(x_proj[..., u : 2 * u] + inner[..., u : 2 * u])
        hh = np.tanh(x_proj[..., 2 * u :] + r * inner[..., 2 * u :])
        return [z * h_prev + (np.float32(1.0) - z) * hh]
    # SimpleRNN.
    return [np.tanh(x_proj + h_prev @ recurrent_kernel)]


def _advance(weights: StepWeights, token_ids: np.ndarray | int, state: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Runs every recurrent layer for one token per stream (no masking)."""
    cell = weights.cell
    per_layer = num_states_per_layer(cell)
    if weights.input_table is not None:
        x_proj = weights.input_table[token_ids]
    else:
        x_proj = weights.embedding[token_ids] @ weights.kernels[0] + _input_bias(cell, weights.biases[0])
    new_state: list[np.ndarray] = []
    for layer in range(weights.num_layers):
        if layer > 0:
            # Input of layer L is the new h of layer L-1.
            x_proj = new_state[-per_layer] @ weights.kernels[layer] + _input_bias(cell, weights.biases[layer])
        layer_states = state[layer * per_layer : (layer + 1) * per_layer]
        new_state.extend(
            _cell(cell, x_proj, layer_states, weights.recurrent_kernels[layer], weights.biases[layer])
        )
    return new_state


def _head(weights: StepWeights, state: Sequence[np.ndarray]) -> np.ndarray:
    """Dense head on the top layer's h: relu hidden layer, then linear logits."""
    top_h = state[(weights.num_layers - 1) * num_states_per_layer(weights.cell)]
    hidden = np.maximum(top_h @ weights.dense_hidden_kernel + weights.dense_hidden_bias, np.float32(0.0))
    return hidden @ weights.logits_kernel + weights.logits_bias


def _check_state(weights: StepWeights, state: Sequence[np.ndarray], batch: int | None) -> None:
    count = weights.num_layers * num_states_per_layer(weights.cell)
    if len(state) != count:
        raise ValueError(f"Expected a state list of {count} arrays, got {len(state)}.")
    shape = (weights.units,) if batch is None else (batch, weights.units)
    for i, array in enumerate(state):
        if np.shape(array) != shape:
            raise ValueError(f"State {i} has shape {np.shape(array)}, expected {shape}.")


def step(weights: StepWeights, token_id: int, state: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Advances ONE stream by one token.

    Args:
        weights: The streaming model's weights.
        token_id: Token id in ``[0, vocab_size)``; 0 (padding) leaves the state
            unchanged.
        state: Current state, arrays of shape ``[units]`` (see `initial_state`).

    Returns:
        ``(logits, new_state)``: logits ``[out]`` (out = 1 for binary, K
        otherwise) for the sequence so far, and the new state. The input state
        is never modified.

    Raises:
        ValueError: If the token id is out of range or the state is malformed.
    """
    token = int(token_id)
    if not 0 <= token < weights.vocab_size:
        raise ValueError(f"Token id {token} is outside [0, {weights.vocab_size}).")
    _check_state(weights, state, None)
    new_state = list(state) if token == 0 else _advance(weights, token, state)
    return _head(weights, new_state), new_state


def step_batch(
    weights: StepWeights, token_ids: np.ndarray, state: Sequence[np.ndarray]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Advances many streams by one token each.

    Args:
        weights: The streaming model's weights.
        token_ids: Integer array ``[batch]``; rows with id 0 (padding) keep
            their state.
        state: Current state, arrays of shape ``[batch, units]``.

    Returns:
        ``(logits [batch, out], new_state)``; the input state is not modified.

    Raises:
        ValueError: If ids are not a 1-D integer array in range, or the state
            does not match.
    """
    ids = np.asarray(token_ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"token_ids must be a 1-D integer array, got {ids.dtype} {ids.shape}.")
    if ids.size and (ids.min() < 0 or ids.max() >= weights.vocab_size):
        raise ValueError(f"Token ids must be in [0, {weights.vocab_size}), got {ids.min()}..{ids.max()}.")
    _check_state(weights, state, ids.shape[0])
    keep = ids != 0
    if not keep.any():
        new_state = list(state)
    else:
        advanced = _advance(weights, ids, state)
        if keep.all():
            new_state = advanced
        else:
            # Same as Keras masking: padded rows carry their previous state.
            mask = keep[:, None]
            new_state = [np.where(mask, new, old) for new, old in zip(advanced, state)]
    return _head(weights, new_state), new_state


def probabilities(logits: np.ndarray, num_classes: int) -> np.ndarray:
    """Turns logits into probabilities.

    Args:
        logits: ``[..., 1]`` for binary, ``[..., K]`` for K classes.
        num_classes: 2 for binary (sigmoid), K > 2 (softmax over the last axis).

    Returns:
        Array of the same shape as `logits`: P(class 1) for binary, the class
        distribution for K > 2.
    """
    values = np.asarray(logits, dtype=np.float32)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
    expected = 1 if num_classes == 2 else num_classes
    if values.ndim == 0 or values.shape[-1] != expected:
        raise ValueError(f"Logits of shape {values.shape} do not fit num_classes={num_classes}.")
    if num_classes == 2:
        return _sigmoid(values)
    # Shift by the max so exp never overflows.
    shifted = np.exp(values - values.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
