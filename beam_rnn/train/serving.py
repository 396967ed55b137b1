"""The exported SavedModel's module: TFT transform graph + classifier + signature functions.

Signatures (all inputs and outputs are flat, named tensors; N = batch, K = classes):

* ``serving_default``: ``text`` string[N] ->

  - ``probabilities`` float32 ([N] = P(label 1) for binary, [N, K] otherwise),
    ``label`` int64[N], ``logits`` float32[N, out] (out = 1 for binary, K otherwise);
  - in the project's output vocabulary (`beam_rnn.core.constants`):
    ``predicted_label`` int64[N] (= ``label``), ``predicted_label_name`` string[N]
    (the class name; str(id) for int labels), ``class_probabilities`` float32[N, K]
    (also [N, 2] for binary), ``class_names`` string[N, K] (the names in class-id
    order, repeated per row: TF Serving's row format needs the batch dimension on
    every output).
* ``classify_ids``: ``token_ids`` int64[N, T] (right-padded with 0) -> the same outputs.
* ``tokenize``: ``text`` string[N] -> ``token_ids`` int64[N, T] (right-padded with 0,
  exactly the TFT transform's ids) and ``lengths`` int64[N].
* streaming model ("lstm") only:

  - ``initial_state``: ``batch_size`` int32 scalar -> one float32[batch, units]
    zero tensor per state, named as `models.state_spec` (``h_0``, ``c_0``, ``h_1``...).
  - ``step``: ``token_ids`` int64[N] plus the named states -> ``logits``,
    ``probabilities``, ``label`` and the new states under the same names.
    A token id 0 (padding) leaves a row's state unchanged.

Every signature function is traced exactly once: ``serving_default`` calls the
traced ``tokenize`` and ``classify_ids`` functions instead of tracing the TFT
graph and the classifier again, and the module holds concrete functions only, so
`tf.saved_model.save` (whose save context is part of tf.function's cache key)
has nothing to re-trace.  Tracing a tf_keras LSTM also builds its gradient
functions (the backend-selection wrapper registers them), so each trace avoided
saves seconds.  The functions are traced without AutoGraph: they have no Python
control flow on tensors, and converting the tf_keras layer code they call (LSTM,
backend.rnn, the TFT layer) to AutoGraph took about as long as all the rest of
the SavedModel step.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf
import tf_keras as keras

from beam_rnn.core import constants as C
from beam_rnn.train import models
from beam_rnn.train.keras_text import PROBABILITIES, TEXT_INPUT, generic_rnn_path

# --- Names of the SavedModel signatures, inputs and outputs -------------------
SERVING_SIGNATURE = "serving_default"
CLASSIFY_IDS_SIGNATURE = "classify_ids"
TOKENIZE_SIGNATURE = "tokenize"
INITIAL_STATE_SIGNATURE = "initial_state"
STEP_SIGNATURE = "step"

TOKEN_IDS = C.TOKEN_IDS_KEY  # "token_ids"
LENGTHS = "lengths"
BATCH_SIZE = "batch_size"
LABEL = "label"
LOGITS = "logits"
CLASS_PROBABILITIES = "class_probabilities"  # [N, K] also for binary (`probabilities` is [N] there)


def probabilities(logits: tf.Tensor, num_classes: int) -> tf.Tensor:
    """P(label 1) [N] for binary, the softmax [N, K] otherwise."""
    if num_classes == 2:
        return tf.sigmoid(logits[:, 0])
    return tf.nn.softmax(logits, axis=-1)


def labels(logits: tf.Tensor, num_classes: int) -> tf.Tensor:
    if num_classes == 2:
        return tf.cast(logits[:, 0] > 0.0, tf.int64)
    return tf.argmax(logits, axis=-1, output_type=tf.int64)


def at_least_one_step(ids: tf.Tensor) -> tf.Tensor:
    """Right-pads [batch, time] ids with 0 to one column if time == 0 (all texts empty)."""
    extra = tf.maximum(1 - tf.shape(ids)[1], 0)
    return tf.pad(ids, [[0, 0], [0, extra]])


def _outputs(logits: tf.Tensor, num_classes: int) -> dict[str, tf.Tensor]:
    """``probabilities``, ``label``, ``logits`` (the outputs of every classifying signature)."""
    return {
        PROBABILITIES: probabilities(logits, num_classes),
        LABEL: labels(logits, num_classes),
        LOGITS: logits,
    }


def _named_outputs(logits: tf.Tensor, num_classes: int, class_names: Sequence[str]) -> dict[str, tf.Tensor]:
    """`_outputs` plus the output vocabulary's names, each with the batch dimension first."""
    result = _outputs(logits, num_classes)
    probs = result[PROBABILITIES]
    by_class = tf.stack([1.0 - probs, probs], axis=1) if num_classes == 2 else probs
    names = tf.constant(list(class_names), dtype=tf.string)
    result.update({
        C.PREDICTED_LABEL_KEY: result[LABEL],
        C.PREDICTED_LABEL_NAME_KEY: tf.gather(names, result[LABEL]),
        CLASS_PROBABILITIES: by_class,
        C.CLASS_NAMES_KEY: tf.tile(names[tf.newaxis, :], tf.stack([tf.shape(logits)[0], 1])),
    })
    return result


class ServingModule(tf.Module):
    """The exported tf.Module: TFT transform layer + classifier variables + signature functions.

    `signature_functions` maps each signature name to its (already traced) concrete function.
    """

    def __init__(self, model: keras.Model, model_config: models.ModelConfig, tft_layer: Any,
                 class_names: Sequence[str]) -> None:
        super().__init__(name="beam_rnn_serving")
        num_classes = model_config.num_classes
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names {list(class_names)} for {num_classes} classes.")
        # The classifier's variables are tracked, not the tf_keras model itself:
        # tracking the model would make tf.saved_model.save also run Keras's own
        # (slow, unused here) per-layer SavedModel serialisation.
        self.model_variables = list(model.variables)
        # The TFT transform layer's loaded graph owns the vocabulary table and its asset.
        # The layer exposes it for tracking as this dict; tracking the dict rather than
        # the tf_keras layer keeps Keras's legacy per-layer SavedModel serialisation
        # (which traces the layer once more, with AutoGraph) out of the save.
        tracked = getattr(tft_layer, "_saved_model_loader_tracked_dict", None)
        self.tft_graph = tft_layer if tracked is None else tracked
        names = list(class_names)
        text_spec = tf.TensorSpec([None], tf.string, name=TEXT_INPUT)

        def tokenize(text: tf.Tensor) -> dict[str, tf.Tensor]:
            ids = tft_layer({TEXT_INPUT: text})[TOKEN_IDS]
            if isinstance(ids, tf.SparseTensor):
                lengths = tf.math.bincount(
                    tf.cast(ids.indices[:, 0], tf.int32), minlength=tf.size(text), dtype=tf.int64
                )
                ids = tf.sparse.to_dense(ids, default_value=0)
            else:  # RaggedTensor (newer TFT output representations)
                lengths = tf.cast(ids.row_lengths(), tf.int64)
                ids = ids.to_tensor(default_value=0)
            return {TOKEN_IDS: tf.cast(ids, tf.int64), LENGTHS: lengths}

        def classify_ids(token_ids: tf.Tensor) -> dict[str, tf.Tensor]:
            logits = model(at_least_one_step(token_ids), training=False)
            return _named_outputs(tf.cast(logits, tf.float32), num_classes, names)

        self.tokenize = tf.function(tokenize, input_signature=[text_spec], autograph=False).get_concrete_function()
        with generic_rnn_path(model):
            self.classify_ids = tf.function(
                classify_ids, input_signature=[tf.TensorSpec([None, None], tf.int64, name=TOKEN_IDS)], autograph=False
            ).get_concrete_function()

        def serve(text: tf.Tensor) -> dict[str, tf.Tensor]:
            return self.classify_ids(self.tokenize(text)[TOKEN_IDS])

        self.serve = tf.function(serve, input_signature=[text_spec], autograph=False).get_concrete_function()
        self.streaming = model_config.kind == models.KIND_LSTM
        if self.streaming:
            self._trace_streaming(model, model_config)

    @property
    def signature_functions(self) -> dict[str, Any]:
        """{signature name: concrete function}, `serving_default` first."""
        functions = {
            SERVING_SIGNATURE: self.serve,
            CLASSIFY_IDS_SIGNATURE: self.classify_ids,
            TOKENIZE_SIGNATURE: self.tokenize,
        }
        if self.streaming:
            functions.update({INITIAL_STATE_SIGNATURE: self.initial_state, STEP_SIGNATURE: self.step})
        return functions

    def _trace_streaming(self, model: keras.Model, model_config: models.ModelConfig) -> None:
        """Traces the ``initial_state`` and ``step`` functions of a streaming model."""
        spec = models.state_spec(model_config)
        names = [name for name, _ in spec]
        tf_step = models.make_tf_step(model, model_config)

        def initial_state(batch_size: tf.Tensor) -> dict[str, tf.Tensor]:
            return dict(zip(names, models.initial_states(model_config, batch_size)))

        def step(token_ids: tf.Tensor, *states: tf.Tensor) -> dict[str, tf.Tensor]:
            logits, new_states = tf_step(token_ids, list(states))
            result = _outputs(tf.cast(logits, tf.float32), model_config.num_classes)
            result.update(zip(names, new_states))
            return result

        step_signature = [tf.TensorSpec([None], tf.int64, name=TOKEN_IDS)] + [
            tf.TensorSpec([None, units], tf.float32, name=name) for name, units in spec
        ]
        self.initial_state = tf.function(
            initial_state, input_signature=[tf.TensorSpec([], tf.int32, name=BATCH_SIZE)], autograph=False
        ).get_concrete_function()
        self.step = tf.function(step, input_signature=step_signature, autograph=False).get_concrete_function()


def describe_signatures(functions: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Names, inputs and outputs (dtype, shape) of each concrete function, for the model card."""

    def spec_dict(spec: Any) -> dict[str, Any]:
        shape = None if spec.shape.rank is None else list(spec.shape.as_list())
        return {"dtype": spec.dtype.name, "shape": shape}

    described = []
    for name, concrete in functions.items():
        args, kwargs = concrete.structured_input_signature
        inputs = {spec.name: spec_dict(spec) for spec in list(args) + list(kwargs.values())}
        outputs = {key: spec_dict(spec) for key, spec in sorted(concrete.structured_outputs.items())}
        described.append({"name": name, "inputs": inputs, "outputs": outputs})
    return described
