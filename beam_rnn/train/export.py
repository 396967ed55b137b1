"""Exports a trained classifier for serving: SavedModel, .keras, NumPy step weights, card.

`export_model` writes, under ``model_dir`` (``OUTPUT/<kind>/``)::

    saved_model/          TF SavedModel, TFT transform graph inside (raw strings in)
    model.keras           tf_keras model on RAW STRINGS (TextVectorization + classifier)
    step_weights.npz      streaming model only: weights for `beam_rnn.stream.step`
    vocab.txt             the vocabulary, one word per line (word i has id i + num_oov + 1)
    preprocess_config.json  the PreprocessConfig that produced the ids
    model_card.json       config, data statistics, metrics, versions, signatures

SavedModel signatures (all inputs and outputs are flat, named tensors):

* ``serving_default``: ``text`` string[None] -> ``probabilities`` float32 ([None]
  = P(label 1) for binary, [None, K] for K classes), ``label`` int64[None],
  ``logits`` float32[None, out] (out = 1 for binary, K otherwise).
* ``classify_ids``: ``token_ids`` int64[None, None] (right-padded with 0) -> the
  same outputs as ``serving_default``.
* ``tokenize``: ``text`` string[None] -> ``token_ids`` int64[None, None]
  (right-padded with 0, exactly the TFT transform's ids) and ``lengths`` int64[None].
* streaming model ("lstm") only:

  - ``initial_state``: ``batch_size`` int32 scalar -> one float32[batch, units]
    zero tensor per state, named as `models.state_spec` (``h_0``, ``c_0``, ``h_1``...).
  - ``step``: ``token_ids`` int64[None] plus the named states -> ``logits``,
    ``probabilities``, ``label`` and the new states under the same names.
    A token id 0 (padding) leaves a row's state unchanged.

Loading ``model.keras`` needs ``import beam_rnn.train.export`` (or `beam_rnn.train.keras_text`)
first: see `beam_rnn.train.keras_text`, which builds that model.
"""

import datetime
import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from beam_rnn.core import constants as C
from beam_rnn.core.manifest import MANIFEST_FILE, write_manifest
from beam_rnn.train import models
from beam_rnn.train.errors import ExportError
from beam_rnn.train.keras_text import (  # noqa: F401  the last three: documented as export's (model card, README)
    PROBABILITIES,
    TEXT_INPUT,
    build_keras_text_model,
    KERAS_3_WARNING,
    load_keras_model,
    tf_keras_flavour,
)

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

VOCAB_TEXT_FILE = "vocab.txt"
CARD_FORMAT_VERSION = 1

# Raw texts every export is checked on (empty, tags, punctuation, OOV words).
_CHECK_TEXTS = (
    "",
    "The movie was GOOD, really good!<br /><br />Great film.",
    "zzqx unknownword qqwertyzz",
    "a",
    "<b>bad</b> awful ... terrible; plot-holes & 'acting'",
)


# --- The SavedModel ---------------------------------------------------------------


def _probabilities(logits: tf.Tensor, num_classes: int) -> tf.Tensor:
    if num_classes == 2:
        return tf.sigmoid(logits[:, 0])
    return tf.nn.softmax(logits, axis=-1)


def _labels(logits: tf.Tensor, num_classes: int) -> tf.Tensor:
    if num_classes == 2:
        return tf.cast(logits[:, 0] > 0.0, tf.int64)
    return tf.argmax(logits, axis=-1, output_type=tf.int64)


def _at_least_one_step(ids: tf.Tensor) -> tf.Tensor:
    """Right-pads [batch, time] ids with 0 to one column if time == 0 (all texts empty)."""
    extra = tf.maximum(1 - tf.shape(ids)[1], 0)
    return tf.pad(ids, [[0, 0], [0, extra]])


class ServingModule(tf.Module):
    """The exported tf.Module: TFT transform layer + classifier + signature functions."""

    def __init__(self, model: keras.Model, model_config: models.ModelConfig, tft_layer: Any) -> None:
        super().__init__(name="beam_rnn_serving")
        # The classifier's variables are tracked, not the tf_keras model itself:
        # tracking the model would make tf.saved_model.save also run Keras's own
        # (slow, unused here) per-layer SavedModel serialisation.
        self.model_variables = list(model.variables)
        # The TFT transform layer owns the vocabulary table and its asset.
        self.tft_layer = tft_layer
        num_classes = model_config.num_classes

        def outputs(logits: tf.Tensor) -> dict[str, tf.Tensor]:
            return {
                PROBABILITIES: _probabilities(logits, num_classes),
                LABEL: _labels(logits, num_classes),
                LOGITS: logits,
            }

        def text_to_ids(text: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            transformed = self.tft_layer({TEXT_INPUT: text})
            ids = transformed[TOKEN_IDS]
            if isinstance(ids, tf.SparseTensor):
                lengths = tf.math.bincount(
                    tf.cast(ids.indices[:, 0], tf.int32), minlength=tf.size(text), dtype=tf.int64
                )
                ids = tf.sparse.to_dense(ids, default_value=0)
            else:  # RaggedTensor (newer TFT output representations)
                lengths = tf.cast(ids.row_lengths(), tf.int64)
                ids = ids.to_tensor(default_value=0)
            return tf.cast(ids, tf.int64), lengths

        def classify(ids: tf.Tensor) -> dict[str, tf.Tensor]:
            logits = model(_at_least_one_step(ids), training=False)
            return outputs(tf.cast(logits, tf.float32))

        text_spec = tf.TensorSpec([None], tf.string, name=TEXT_INPUT)

        @tf.function(input_signature=[text_spec])
        def serve(text: tf.Tensor) -> dict[str, tf.Tensor]:
            ids, _ = text_to_ids(text)
            return classify(ids)

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int64, name=TOKEN_IDS)])
        def classify_ids(token_ids: tf.Tensor) -> dict[str, tf.Tensor]:
            return classify(token_ids)

        @tf.function(input_signature=[text_spec])
        def tokenize(text: tf.Tensor) -> dict[str, tf.Tensor]:
            ids, lengths = text_to_ids(text)
            return {TOKEN_IDS: ids, LENGTHS: lengths}

        self.serve = serve
        self.classify_ids = classify_ids
        self.tokenize = tokenize
        self.signature_functions = {
            SERVING_SIGNATURE: serve,
            CLASSIFY_IDS_SIGNATURE: classify_ids,
            TOKENIZE_SIGNATURE: tokenize,
        }

        if model_config.kind == models.KIND_LSTM:
            spec = models.state_spec(model_config)
            names = [name for name, _ in spec]
            tf_step = models.make_tf_step(model, model_config)

            @tf.function(input_signature=[tf.TensorSpec([], tf.int32, name=BATCH_SIZE)])
            def initial_state(batch_size: tf.Tensor) -> dict[str, tf.Tensor]:
                return dict(zip(names, models.initial_states(model_config, batch_size)))

            step_signature = [tf.TensorSpec([None], tf.int64, name=TOKEN_IDS)] + [
                tf.TensorSpec([None, units], tf.float32, name=name) for name, units in spec
            ]

            def step_fn(token_ids: tf.Tensor, *states: tf.Tensor) -> dict[str, tf.Tensor]:
                logits, new_states = tf_step(token_ids, list(states))
                result = outputs(tf.cast(logits, tf.float32))
                result.update(zip(names, new_states))
                return result

            step = tf.function(step_fn, input_signature=step_signature)
            self.initial_state = initial_state
            self.step = step
            self.signature_functions[INITIAL_STATE_SIGNATURE] = initial_state
            self.signature_functions[STEP_SIGNATURE] = step


def _describe_signatures(functions: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Names, inputs and outputs (dtype, shape) of each signature, for the model card."""

    def spec_dict(spec: Any) -> dict[str, Any]:
        shape = None if spec.shape.rank is None else [d for d in spec.shape.as_list()]
        return {"dtype": spec.dtype.name, "shape": shape}

    described = []
    for name, function in functions.items():
        concrete = function.get_concrete_function()
        args, kwargs = concrete.structured_input_signature
        inputs = {spec.name: spec_dict(spec) for spec in list(args) + list(kwargs.values())}
        outputs = {key: spec_dict(spec) for key, spec in sorted(concrete.structured_outputs.items())}
        described.append({"name": name, "inputs": inputs, "outputs": outputs})
    return described


def load_exported(model_dir: str) -> Any:
    """Loads ``model_dir/saved_model`` (or a SavedModel dir itself); signatures under ``.signatures``."""
    path = model_dir
    if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        path = os.path.join(model_dir, C.SAVED_MODEL_DIR)
    if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        raise ExportError(f"No exported SavedModel under {model_dir} (expected {path}/saved_model.pb).")
    return tf.saved_model.load(path)


# --- Inputs checks ------------------------------------------------------------------


def _read_json(path: str, what: str) -> dict[str, Any]:
    if not tf.io.gfile.exists(path):
        raise ExportError(f"Missing {what}: {path} (is this a complete preprocessing output?).")
    with tf.io.gfile.GFile(path) as f:
        try:
            return json.loads(f.read())
        except json.JSONDecodeError as e:
            raise ExportError(f"Unreadable {what} {path}: {e}") from e


def _check_inputs(
    model: keras.Model, model_config: models.ModelConfig, transformed_dir: str
) -> tuple[dict[str, Any], Any, list[str]]:
    """Validates the preprocessing output and the model; returns (stats, preprocess config, vocab)."""
    from beam_rnn.preprocess.tft_graph import PreprocessConfig
    from beam_rnn.preprocess.transform import read_vocabulary, vocabulary_path

    if not tf.io.gfile.isdir(transformed_dir):
        raise ExportError(f"Preprocessing output directory {transformed_dir} does not exist.")
    transform_fn = os.path.join(transformed_dir, C.TRANSFORM_FN_DIR)
    if not tf.io.gfile.exists(os.path.join(transform_fn, "saved_model.pb")):
        raise ExportError(
            f"No TFT transform graph at {transform_fn} (expected saved_model.pb); "
            "run the preprocess pipeline first."
        )
    if not tf.io.gfile.exists(vocabulary_path(transformed_dir)):
        raise ExportError(f"No vocabulary asset at {vocabulary_path(transformed_dir)}.")
    stats = _read_json(os.path.join(transformed_dir, C.STATS_FILE), "statistics file")
    config_dict = _read_json(os.path.join(transformed_dir, C.PREPROCESS_CONFIG_FILE), "preprocess config")
    preprocess_config = PreprocessConfig.from_dict(config_dict)
    vocabulary = read_vocabulary(transformed_dir)
    if not vocabulary:
        raise ExportError(f"The vocabulary at {vocabulary_path(transformed_dir)} is empty.")

    id_space = len(vocabulary) + preprocess_config.num_oov_buckets + 1
    if model_config.vocab_size != id_space:
        raise ExportError(
            f"ModelConfig.vocab_size={model_config.vocab_size} does not match the preprocessing "
            f"output's id space {id_space} ({len(vocabulary)} words + "
            f"{preprocess_config.num_oov_buckets} OOV + padding)."
        )
    try:
        embedding_rows = int(model.get_layer(models.EMBEDDING_LAYER).input_dim)
    except ValueError as e:
        raise ExportError(f"The model has no {models.EMBEDDING_LAYER!r} layer: {e}") from e
    if embedding_rows != model_config.vocab_size:
        raise ExportError(
            f"The model's embedding has {embedding_rows} rows but ModelConfig.vocab_size is {model_config.vocab_size}."
        )
    out_width = model.output_shape[-1]
    if out_width != model_config.num_outputs:
        raise ExportError(
            f"The model outputs {out_width} logits but ModelConfig(num_classes={model_config.num_classes}) "
            f"needs {model_config.num_outputs}."
        )
    data_classes = int(stats.get("num_classes") or 0)
    if data_classes > model_config.num_classes:
        raise ExportError(
            f"The data has {data_classes} classes but the model only {model_config.num_classes}."
        )
    return stats, preprocess_config, vocabulary


# --- Model card -----------------------------------------------------------------------


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    import beam_rnn

    versions: dict[str, str | None] = {"python": platform.python_version(), "beam_rnn": beam_rnn.__version__}
    for key, dist in (
        ("tensorflow", "tensorflow"),
        ("tf_keras", "tf-keras"),
        ("keras", "keras"),
        ("tensorflow_transform", "tensorflow-transform"),
        ("apache_beam", "apache-beam"),
        ("numpy", "numpy"),
    ):
        try:
            versions[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[key] = None
    return versions


def _jsonable(value: Any) -> Any:
    """Plain JSON types from numpy scalars/arrays, tuples, etc. (non-finite floats -> None)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def _data_stats(stats: Mapping[str, Any]) -> dict[str, Any]:
    splits = stats.get("splits", {})
    return {
        "rows_in": stats.get("rows_in"),
        "documents_out": stats.get("documents_out"),
        "dead_lettered": stats.get("dead_lettered"),
        "split_sizes": {name: s.get("documents") for name, s in splits.items()},
        "label_counts": stats.get("label_counts"),
        "label_counts_by_split": {name: s.get("label_counts") for name, s in splits.items()},
        "token_length_percentiles": {name: s.get("token_length_percentiles") for name, s in splits.items()},
        "mean_token_length": {name: s.get("mean_token_length") for name, s in splits.items()},
        "oov_rate": {name: s.get("oov_rate") for name, s in splits.items()},
        "empty_documents": {name: s.get("empty_documents") for name, s in splits.items()},
    }


# --- Export -----------------------------------------------------------------------------


def _copy_tree(src: str, dst: str) -> None:
    """Recursive copy that also works for remote (gs://...) destinations."""
    if tf.io.gfile.exists(dst):
        tf.io.gfile.rmtree(dst)
    for root, _, files in tf.io.gfile.walk(src):
        target = os.path.join(dst, os.path.relpath(root, src)) if root != src else dst
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(os.path.join(root, name), os.path.join(target, name), overwrite=True)


def _reference_probabilities(
    model: keras.Model, model_config: models.ModelConfig, tft_layer: Any, texts: Sequence[str]
) -> np.ndarray:
    """In-process probabilities: TFT transform -> dense ids -> model -> sigmoid/softmax."""
    ids = tft_layer({TEXT_INPUT: tf.constant(list(texts))})[TOKEN_IDS]
    ids = tf.sparse.to_dense(ids) if isinstance(ids, tf.SparseTensor) else ids.to_tensor()
    logits = model(_at_least_one_step(tf.cast(ids, tf.int64)), training=False)
    return _probabilities(tf.cast(logits, tf.float32), model_config.num_classes).numpy()


def _verify(
    staging: str,
    model: keras.Model,
    model_config: models.ModelConfig,
    tft_layer: Any,
    tolerance: float,
) -> dict[str, float]:
    """Reloads what was written and checks it reproduces the in-process model."""
    texts = list(_CHECK_TEXTS)
    expected = _reference_probabilities(model, model_config, tft_layer, texts)
    loaded = tf.saved_model.load(os.path.join(staging, C.SAVED_MODEL_DIR))
    served = loaded.signatures[SERVING_SIGNATURE](text=tf.constant(texts))[PROBABILITIES].numpy()
    keras_model = keras.models.load_model(os.path.join(staging, C.KERAS_FILE))
    from_keras = keras_model(tf.constant(texts), training=False).numpy().reshape(expected.shape)
    diffs = {
        "saved_model_vs_in_process": float(np.max(np.abs(served - expected))),
        "keras_vs_in_process": float(np.max(np.abs(from_keras - expected))),
    }
    if model_config.kind == models.KIND_LSTM:
        from beam_rnn.stream import step as rnn_step

        weights = rnn_step.StepWeights.load(os.path.join(staging, C.STEP_WEIGHTS_FILE))
        ids = loaded.signatures[TOKENIZE_SIGNATURE](text=tf.constant(texts))[TOKEN_IDS].numpy()
        state = rnn_step.initial_state(weights, batch=len(texts))
        logits = rnn_step.step_batch(weights, np.zeros(len(texts), np.int64), state)[0]
        for t in range(ids.shape[1]):
            logits, state = rnn_step.step_batch(weights, ids[:, t], state)
        numpy_probs = rnn_step.probabilities(logits, model_config.num_classes)
        diffs["step_weights_vs_in_process"] = float(np.max(np.abs(numpy_probs.reshape(expected.shape) - expected)))
    bad = {k: v for k, v in diffs.items() if not v <= tolerance}
    if bad:
        raise ExportError(f"Exported artefacts disagree with the trained model beyond {tolerance}: {bad}")
    return diffs


def _model_card(model_config: models.ModelConfig, preprocess_config: Any, vocabulary: Sequence[str],
                stats: Mapping[str, Any], metrics: Mapping[str, Any] | None, *, signatures: list[dict[str, Any]],
                files: Mapping[str, str], verification: Mapping[str, float] | None, started: float) -> dict[str, Any]:
    """model_card.json: config, tokenisation, data statistics, metrics, versions, signatures, files."""
    return {
        "format_version": CARD_FORMAT_VERSION,
        "kind": model_config.kind,
        "model_config": model_config.to_dict(),
        "vocabulary_size": len(vocabulary),
        "id_space_size": model_config.vocab_size,
        "num_oov_buckets": preprocess_config.num_oov_buckets,
        "max_tokens": preprocess_config.max_tokens,
        "num_classes": model_config.num_classes,
        "label_names": stats.get("label_names"),
        "preprocess_config": preprocess_config.to_dict(),
        "metrics": _jsonable(dict(metrics or {})),
        "data": _jsonable(_data_stats(stats)),
        "versions": _versions(),
        "signatures": signatures,
        "keras_loading": (
            "tf_keras file: `import beam_rnn.train.export` before the first use of tf.keras "
            "(registers the tokeniser and sets TF_USE_LEGACY_KERAS=1), then "
            "tf.keras.models.load_model(path) or beam_rnn.train.export.load_keras_model(path)."
        ),
        "streaming": model_config.kind == models.KIND_LSTM,
        "files": files,
        "verification": verification,
        "export_seconds": round(time.time() - started, 3),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _publish(staging: str, model_dir: str, streaming: bool) -> None:
    """Copies a finished staging directory into `model_dir`, its manifest last (removed first)."""
    tf.io.gfile.makedirs(model_dir)
    if tf.io.gfile.exists(os.path.join(model_dir, MANIFEST_FILE)):
        tf.io.gfile.remove(os.path.join(model_dir, MANIFEST_FILE))
    for name in sorted(os.listdir(staging), key=lambda n: (n == MANIFEST_FILE, n)):
        src = os.path.join(staging, name)
        dst = os.path.join(model_dir, name)
        if os.path.isdir(src):
            _copy_tree(src, dst)
        else:
            tf.io.gfile.copy(src, dst, overwrite=True)
    if not streaming and tf.io.gfile.exists(os.path.join(model_dir, C.STEP_WEIGHTS_FILE)):
        tf.io.gfile.remove(os.path.join(model_dir, C.STEP_WEIGHTS_FILE))  # stale, from another kind


def export_model(
    model: keras.Model,
    model_config: models.ModelConfig,
    transformed_dir: str,
    model_dir: str,
    metrics: Mapping[str, Any] | None = None,
    *,
    verify: bool = True,
    tolerance: float = 1e-5,
) -> dict[str, Any]:
    """Writes every serving artefact of a trained classifier under `model_dir`.

    Args:
        model: Trained tf_keras classifier (token ids -> logits) from `models.build_classifier`.
        model_config: Its config.
        transformed_dir: The preprocessing output (transform_fn/, stats.json,
            preprocess_config.json).
        model_dir: Destination (``OUTPUT/<kind>/``); existing artefacts are replaced.
        metrics: Evaluation metrics and training information for the model card.
        verify: Reload the written SavedModel, .keras file and step weights and
            check them against the in-process model on a few texts.
        tolerance: Largest probability difference `verify` accepts.

    Returns:
        The model card (also written to ``model_dir/model_card.json``), plus
        ``"model_dir"`` and, when verified, ``"verification"`` max differences.

    Raises:
        ExportError: When an input is missing or inconsistent, or verification fails.
    """
    import tensorflow_transform as tft

    started = time.time()
    stats, preprocess_config, vocabulary = _check_inputs(model, model_config, transformed_dir)
    tft_output = tft.TFTransformOutput(transformed_dir)
    tft_layer = tft_output.transform_features_layer()
    streaming = model_config.kind == models.KIND_LSTM

    staging = tempfile.mkdtemp(prefix="beam_rnn_export_")
    try:
        module = ServingModule(model, model_config, tft_layer)
        signatures = {name: fn.get_concrete_function() for name, fn in module.signature_functions.items()}
        tf.saved_model.save(module, os.path.join(staging, C.SAVED_MODEL_DIR), signatures=signatures)

        keras_model = build_keras_text_model(
            model,
            model_config,
            vocabulary,
            num_oov_buckets=preprocess_config.num_oov_buckets,
            max_tokens=preprocess_config.max_tokens,
        )
        keras_model.save(os.path.join(staging, C.KERAS_FILE))

        files = {
            "saved_model": C.SAVED_MODEL_DIR,
            "keras": C.KERAS_FILE,
            "vocabulary": VOCAB_TEXT_FILE,
            "preprocess_config": C.PREPROCESS_CONFIG_FILE,
            "model_card": C.MODEL_CARD_FILE,
        }
        if streaming:
            np.savez(os.path.join(staging, C.STEP_WEIGHTS_FILE), **models.extract_step_weights(model, model_config))
            files["step_weights"] = C.STEP_WEIGHTS_FILE
        with open(os.path.join(staging, VOCAB_TEXT_FILE), "w", encoding="utf-8") as f:
            f.write("".join(word + "\n" for word in vocabulary))
        with open(os.path.join(staging, C.PREPROCESS_CONFIG_FILE), "w", encoding="utf-8") as f:
            f.write(preprocess_config.to_json())

        verification = _verify(staging, model, model_config, tft_layer, tolerance) if verify else None
        from beam_rnn.train.golden import write_tokenizer_golden  # texts -> ids of the graph just saved

        files["tokenizer_golden"] = write_tokenizer_golden(staging, vocabulary)

        card = _model_card(model_config, preprocess_config, vocabulary, stats, metrics,
                           signatures=_describe_signatures(module.signature_functions), files=files,
                           verification=verification, started=started)
        with open(os.path.join(staging, C.MODEL_CARD_FILE), "w", encoding="utf-8") as f:
            f.write(json.dumps(card, indent=2, sort_keys=False))

        # The manifest covers exactly the exported files and is copied last: a model
        # directory without one is an export that did not finish.
        write_manifest(staging)
        _publish(staging, model_dir, streaming)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dict(card, model_dir=model_dir)
