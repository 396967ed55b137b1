"""The tf_keras model on RAW STRINGS written as ``model.keras`` (tokeniser + classifier copy).

Loading ``model.keras``: it is a tf_keras (Keras 2) file whose tokeniser uses
functions registered here, so the loading process must ``import beam_rnn.train.export``
(which imports this module) BEFORE anything resolves ``tf.keras``.  That import registers the functions and,
through ``beam_rnn/__init__``, sets ``TF_USE_LEGACY_KERAS=1`` so that
``tf.keras.models.load_model`` (what Beam's stock ``TFModelHandlerNumpy`` calls)
is tf_keras.  Mind the import order: ``apache_beam.ml.inference.tensorflow_inference``
imports ``tensorflow_hub``, which resolves ``tf.keras`` at import time, so import
beam_rnn FIRST (or export TF_USE_LEGACY_KERAS=1 in the environment).  Keras 3
cannot read a tf_keras ``.keras`` file; importing this module after ``tf.keras``
became Keras 3 warns (`KERAS_3_WARNING`), and `load_keras_model` (tf_keras
directly) still works with a custom model handler.  The stock handler also needs
the ``tensorflow-hub`` package, which beam_rnn does not depend on.
"""

import contextlib
import itertools
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import tensorflow as tf
import tf_keras as keras

from beam_rnn.core import constants as C
from beam_rnn.train import models
from beam_rnn.train.errors import ExportError

KERAS_PACKAGE = "beam_rnn"
TEXT_INPUT = C.TEXT_KEY  # "text": the input of model.keras and of the text signatures
PROBABILITIES = "probabilities"  # the output of model.keras and of the serving signatures


# The TFT graph's patterns, from the one TF-free tokenisation spec (a .keras loader
# imports this module, so it must not need tensorflow_transform).
from beam_rnn.core.spec import HTML_TAG_REGEX, PUNCTUATION_REGEX  # noqa: E402


def tf_keras_flavour() -> str | None:
    """Which Keras ``tf.keras`` means in this process, without deciding it.

    Returns:
        "tf_keras" (Keras 2, can load our model.keras), "keras_3", "keras_2", or
        None while TensorFlow has not resolved ``tf.keras`` yet (it then follows
        TF_USE_LEGACY_KERAS, which ``import beam_rnn`` sets to 1).
    """
    obj = vars(tf).get("keras")
    if obj is None:
        return None
    attrs = getattr(obj, "__dict__", {})  # a plain dict: reading it resolves nothing
    version = attrs.get("_tfll_keras_version")
    if version:
        return version
    if attrs.get("_tfll_initialized") is False:
        return None
    name = attrs.get("__name__", "")
    if name.startswith("tf_keras"):
        return "tf_keras"
    if name.startswith("keras"):
        return "keras_3" if keras_3_installed() else "keras_2"
    return None


def keras_3_installed() -> bool:
    from importlib import metadata

    try:
        return metadata.version("keras").startswith("3.")
    except metadata.PackageNotFoundError:
        return False


KERAS_3_WARNING = (
    "tf.keras is already Keras 3 in this process, so tf.keras.models.load_model (as used by "
    "apache_beam's TFModelHandlerNumpy) cannot load beam_rnn's model.keras (a tf_keras file). "
    "Import beam_rnn before anything that touches tf.keras (e.g. before "
    "apache_beam.ml.inference.tensorflow_inference, which imports tensorflow_hub), or set "
    "TF_USE_LEGACY_KERAS=1 in the environment; or load it with beam_rnn.train.export.load_keras_model."
)

if tf_keras_flavour() == "keras_3":
    warnings.warn(KERAS_3_WARNING, RuntimeWarning, stacklevel=2)


# --- Keras-serialisable tokenisation (used by model.keras) ----------------------


@keras.saving.register_keras_serializable(package=KERAS_PACKAGE, name="standardize")
def keras_standardize(text: tf.Tensor) -> tf.Tensor:
    """`beam_rnn.core.spec` steps 1-3 for TextVectorization, as `beam_rnn.preprocess.tft_graph.standardize`."""
    text = tf.strings.lower(text)
    text = tf.strings.regex_replace(text, HTML_TAG_REGEX, " ")
    return tf.strings.regex_replace(text, PUNCTUATION_REGEX, "")


@keras.saving.register_keras_serializable(package=KERAS_PACKAGE, name="split_whitespace")
def keras_split_whitespace(text: tf.Tensor) -> tf.RaggedTensor:
    """Whitespace split plus one trailing "" token per row.

    TextVectorization maps "" (its mask token) to id 0, i.e. padding, so the ids
    are unchanged; the extra column only guarantees that a batch of empty texts
    still has one (masked) time step, which the recurrent layers need.
    """
    tokens = tf.strings.split(text)
    pad = tf.RaggedTensor.from_tensor(tf.fill(tf.stack([tf.shape(text)[0], 1]), ""))
    return tf.concat([tokens, pad], axis=1)


@keras.saving.register_keras_serializable(package=KERAS_PACKAGE, name="TokenizeText")
class TokenizeText(keras.layers.Layer):
    """Raw strings [batch] -> tokens [batch, time] right-padded with "" (at least one column).

    Only used when num_oov_buckets > 1 (TextVectorization has exactly one OOV id);
    a `StringLookup(mask_token="", num_oov_indices=k)` follows it.
    """

    def __init__(self, max_tokens: int | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", tf.string)
        super().__init__(**kwargs)
        self.max_tokens = max_tokens

    def call(self, text: tf.Tensor) -> tf.Tensor:
        text = tf.convert_to_tensor(text, dtype=tf.string)
        if text.shape.rank == 2:
            text = tf.squeeze(text, axis=-1)
        tokens = tf.strings.split(keras_standardize(text))
        if self.max_tokens is not None:
            tokens = tokens[:, : self.max_tokens]
        dense = tokens.to_tensor(default_value="")
        extra = tf.maximum(1 - tf.shape(dense)[1], 0)
        return tf.pad(dense, [[0, 0], [0, extra]], constant_values="")

    def compute_output_shape(self, input_shape: Any) -> tf.TensorShape:
        return tf.TensorShape([tf.TensorShape(input_shape)[0], None])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["max_tokens"] = self.max_tokens
        return config


@contextlib.contextmanager
def generic_rnn_path(model: keras.Model) -> Iterator[None]:
    """While tracing inference graphs: the model's LSTM/GRU layers take Keras's generic RNN path.

    In a graph, a tf_keras LSTM/GRU layer whose cuDNN kernel could be used wraps its
    loop in a backend-selection function and builds that function's gradients (for
    training) on every trace: seconds per layer, for graphs that only ever run
    inference.  Inside this context those layers run the generic ``backend.rnn``
    loop over their cell instead, the same computation (the cell and the standard
    kernel both compute ``x·W + h·U + b`` and then the gates) with the same masking
    semantics; the export's checks compare the results with the eager model.  A
    tf_keras without the ``_could_use_gpu_kernel`` attribute just keeps its path.
    """
    models.forget_dropout_masks(model)
    switched = [layer for layer in model.submodules if getattr(layer, "_could_use_gpu_kernel", False) is True]
    for layer in switched:
        layer._could_use_gpu_kernel = False
    try:
        yield
    finally:
        for layer in switched:
            layer._could_use_gpu_kernel = True


def _layer_chain(model: keras.Model) -> list[Any]:
    """The layers after the input of a model that is one chain (`models.build_classifier`'s are);
    ``[model]`` itself for any other graph."""
    layers = model.get_config()["layers"]
    for previous, layer in itertools.pairwise(layers):
        nodes = layer["inbound_nodes"]
        if len(nodes) != 1 or len(nodes[0]) != 1 or nodes[0][0][0] != previous["name"]:
            return [model]
    return [model.get_layer(layer["name"]) for layer in layers[1:]]


def build_keras_text_model(
    model: keras.Model,
    model_config: models.ModelConfig,
    vocabulary: Sequence[str],
    *,
    num_oov_buckets: int = C.DEFAULT_NUM_OOV_BUCKETS,
    max_tokens: int | None = None,
) -> keras.Model:
    """A tf_keras model on raw strings: tokeniser -> `model`'s layers -> sigmoid/softmax.

    Args:
        model: The trained classifier (token ids -> logits); its layers (and so
            its variables) are shared, not copied.
        model_config: Its config.
        vocabulary: The words, most frequent first (as in the TFT vocabulary file).
        num_oov_buckets: The preprocessing's OOV buckets (ids 1..k).
        max_tokens: The preprocessing's truncation (None: keep every token).

    Returns:
        ``text`` string[batch] -> ``probabilities`` [batch, 1] (binary, P(label 1))
        or [batch, K].
    """
    text = keras.Input(shape=(), dtype=tf.string, name=TEXT_INPUT)
    words = list(vocabulary)
    if num_oov_buckets == 1:
        # Layout 0 = pad (""), 1 = [UNK], words from 2: exactly ours with one OOV id.
        vectorizer = keras.layers.TextVectorization(
            standardize=keras_standardize,
            split=keras_split_whitespace,
            output_mode="int",
            output_sequence_length=max_tokens,
            vocabulary=words,
            name="text_vectorization",
        )
        ids = vectorizer(text)
    else:
        # Layout 0 = mask (""), 1..k = OOV (same fingerprint hash as TFT's
        # StaticVocabularyTable: to_hash_bucket_fast), words from k + 1.
        tokens = TokenizeText(max_tokens=max_tokens, name="tokenize_text")(text)
        lookup = keras.layers.StringLookup(
            vocabulary=words, mask_token="", num_oov_indices=num_oov_buckets, name="string_lookup"
        )
        ids = lookup(tokens)
    # The trained model's own layers, applied in a flat chain (weights shared, not
    # copied): a clone, or the model nested as one layer, would make building and
    # every load of model.keras trace each recurrent layer once more (seconds per
    # LSTM) for the same outputs.  Calling them adds nodes but changes no output.
    with generic_rnn_path(model):  # the functional construction traces each layer once
        logits = ids
        for layer in _layer_chain(model):
            logits = layer(logits)
    activation = "sigmoid" if model_config.num_classes == 2 else "softmax"
    probabilities = keras.layers.Activation(activation, name=PROBABILITIES)(logits)
    return keras.Model(text, probabilities, name=f"{model_config.kind}_text_classifier")


def load_keras_model(path: str) -> keras.Model:
    """Loads ``model.keras`` (a file, or a model_dir holding one) with tf_keras."""
    if tf.io.gfile.isdir(path):
        path = os.path.join(path, C.KERAS_FILE)
    if not tf.io.gfile.exists(path):
        raise ExportError(f"No Keras model at {path}.")
    return keras.models.load_model(path)

