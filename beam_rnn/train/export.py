"""Exports a trained classifier for serving: SavedModel, .keras, NumPy step weights, card.

`export_model` writes, under ``model_dir`` (``OUTPUT/<kind>/``)::

    saved_model/          TF SavedModel, TFT transform graph inside (raw strings in)
    model.keras           tf_keras model on RAW STRINGS (TextVectorization + classifier)
    step_weights.npz      streaming model only: weights for `beam_rnn.stream.step`
    vocab.txt             the vocabulary, one word per line (word i has id i + num_oov + 1)
    preprocess_config.json  the PreprocessConfig that produced the ids
    model_card.json       config, data statistics, metrics, versions, signatures

The SavedModel's signatures are described in `beam_rnn.train.serving` (``serving_default``,
``classify_ids``, ``tokenize``; ``initial_state`` and ``step`` for the streaming model).

Each named step is logged at INFO with its duration (``export lstm: SavedModel 3.2 s``).
What the steps cost: the "Export time" section of benchmarks/RESULTS.md (benchmarks/export.py).

Loading ``model.keras`` needs ``import beam_rnn.train.export`` (or `beam_rnn.train.keras_text`)
first: see `beam_rnn.train.keras_text`, which builds that model.
"""

import contextlib
import datetime
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from beam_rnn.core import constants as C
from beam_rnn.core import progress
from beam_rnn.core.manifest import MANIFEST_FILE, write_manifest
from beam_rnn.core.outputs import class_names as class_names_of
from beam_rnn.train import models
from beam_rnn.train.errors import ExportError
from beam_rnn.train.keras_text import (  # noqa: F401  KERAS_3_WARNING, load_keras_model, tf_keras_flavour: documented as export's
    KERAS_3_WARNING,
    PROBABILITIES,
    TEXT_INPUT,
    build_keras_text_model,
    load_keras_model,
    tf_keras_flavour,
)
from beam_rnn.train.serving import (  # noqa: F401  the signature and output names, importable from here as before
    BATCH_SIZE,
    CLASS_PROBABILITIES,
    CLASSIFY_IDS_SIGNATURE,
    INITIAL_STATE_SIGNATURE,
    LABEL,
    LENGTHS,
    LOGITS,
    SERVING_SIGNATURE,
    STEP_SIGNATURE,
    TOKEN_IDS,
    TOKENIZE_SIGNATURE,
    ServingModule,
    at_least_one_step,
    describe_signatures,
    probabilities,
)

logger = logging.getLogger(__name__)

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


def copy_tree(src: str, dst: str) -> None:
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
    logits = model(at_least_one_step(tf.cast(ids, tf.int64)), training=False)
    return probabilities(tf.cast(logits, tf.float32), model_config.num_classes).numpy()


def _check_saved_model(loaded: Any, texts: Sequence[str], expected: np.ndarray, model_config: models.ModelConfig,
                       class_names: Sequence[str]) -> float:
    """Max |served - expected| of the reloaded ``serving_default``; its named outputs must agree with it."""
    out = {k: v.numpy() for k, v in loaded.signatures[SERVING_SIGNATURE](text=tf.constant(list(texts))).items()}
    served = out[PROBABILITIES]
    by_class = out[CLASS_PROBABILITIES]
    expected_by_class = np.stack([1.0 - served, served], axis=1) if model_config.num_classes == 2 else served
    names = np.array([n.encode() for n in class_names], dtype=object)
    consistent = (
        by_class.shape == (len(texts), model_config.num_classes)
        and np.allclose(by_class, expected_by_class, atol=1e-6, rtol=0)
        and np.array_equal(out[C.PREDICTED_LABEL_KEY], out[LABEL])
        and np.array_equal(out[C.PREDICTED_LABEL_NAME_KEY], names[out[LABEL]])
        and np.array_equal(out[C.CLASS_NAMES_KEY], np.tile(names, (len(texts), 1)))
    )
    if not consistent:
        raise ExportError(f"The exported {SERVING_SIGNATURE} outputs disagree with each other: {out}")
    return float(np.max(np.abs(served - expected)))


def _step_weights_probabilities(staging: str, token_ids: np.ndarray, num_classes: int) -> np.ndarray:
    """Probabilities of the written step_weights.npz replayed with the NumPy step over `token_ids`."""
    from beam_rnn.stream import step as rnn_step

    weights = rnn_step.StepWeights.load(os.path.join(staging, C.STEP_WEIGHTS_FILE))
    batch = token_ids.shape[0]
    state = rnn_step.initial_state(weights, batch=batch)
    logits = rnn_step.step_batch(weights, np.zeros(batch, np.int64), state)[0]
    for t in range(token_ids.shape[1]):
        logits, state = rnn_step.step_batch(weights, token_ids[:, t], state)
    return rnn_step.probabilities(logits, num_classes)


def _check_differences(diffs: Mapping[str, float], tolerance: float) -> dict[str, float]:
    bad = {k: v for k, v in diffs.items() if not v <= tolerance}
    if bad:
        raise ExportError(f"Exported artefacts disagree with the trained model beyond {tolerance}: {bad}")
    return dict(diffs)


class _Steps:
    """Times the named steps of one export.

    Each step is named on the live progress line while it runs and logged at DEBUG
    as ``export <kind>: <step> <s> s`` (``--verbose`` shows them); `slowest` feeds the
    one INFO line an export prints, so the console stays short.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        progress.step(f"export {self.kind}: {name}")
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        logger.debug("export %s: %s %.1f s", self.kind, name, self.seconds[name])

    def slowest(self, n: int = 2) -> str:
        top = sorted(self.seconds.items(), key=lambda kv: -kv[1])[:n]
        return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in top)


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
            copy_tree(src, dst)
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

    from beam_rnn.train.golden import (
        write_tokenizer_golden,  # texts -> ids of the graph just saved
    )

    started = time.time()
    steps = _Steps(model_config.kind)
    streaming = model_config.kind == models.KIND_LSTM
    with steps("input checks"):
        stats, preprocess_config, vocabulary = _check_inputs(model, model_config, transformed_dir)
        class_names = list(class_names_of(stats.get("label_names"), model_config.num_classes))
        if len(class_names) != model_config.num_classes:
            raise ExportError(f"The data's label names {class_names} do not name the model's "
                              f"{model_config.num_classes} classes.")
        tft_layer = tft.TFTransformOutput(transformed_dir).transform_features_layer()

    staging = tempfile.mkdtemp(prefix="beam_rnn_export_")
    try:
        with steps("SavedModel"):
            module = ServingModule(model, model_config, tft_layer, class_names)
            signatures = module.signature_functions
            tf.saved_model.save(module, os.path.join(staging, C.SAVED_MODEL_DIR), signatures=signatures)
        with steps("model.keras"):
            keras_model = build_keras_text_model(model, model_config, vocabulary,
                                                 num_oov_buckets=preprocess_config.num_oov_buckets,
                                                 max_tokens=preprocess_config.max_tokens)
            keras_model.save(os.path.join(staging, C.KERAS_FILE))
        files = {
            "saved_model": C.SAVED_MODEL_DIR,
            "keras": C.KERAS_FILE,
            "vocabulary": VOCAB_TEXT_FILE,
            "preprocess_config": C.PREPROCESS_CONFIG_FILE,
            "model_card": C.MODEL_CARD_FILE,
        }
        with steps("step weights and vocabulary"):
            if streaming:
                np.savez(os.path.join(staging, C.STEP_WEIGHTS_FILE), **models.extract_step_weights(model, model_config))
                files["step_weights"] = C.STEP_WEIGHTS_FILE
            with open(os.path.join(staging, VOCAB_TEXT_FILE), "w", encoding="utf-8") as f:
                f.write("".join(word + "\n" for word in vocabulary))
            with open(os.path.join(staging, C.PREPROCESS_CONFIG_FILE), "w", encoding="utf-8") as f:
                f.write(preprocess_config.to_json())

        # The written SavedModel is loaded once: for the checks and for the golden file.
        with steps("SavedModel reload"):
            loaded = tf.saved_model.load(os.path.join(staging, C.SAVED_MODEL_DIR))
        verification = None
        if verify:
            texts = list(_CHECK_TEXTS)
            with steps("SavedModel check"):
                expected = _reference_probabilities(model, model_config, tft_layer, texts)
                diffs = {"saved_model_vs_in_process": _check_saved_model(loaded, texts, expected, model_config,
                                                                         class_names)}
                if streaming:
                    ids = loaded.signatures[TOKENIZE_SIGNATURE](text=tf.constant(texts))[TOKEN_IDS].numpy()
                    numpy_probs = _step_weights_probabilities(staging, ids, model_config.num_classes)
                    diffs["step_weights_vs_in_process"] = float(
                        np.max(np.abs(numpy_probs.reshape(expected.shape) - expected)))
            with steps("model.keras check"):
                from_keras = load_keras_model(os.path.join(staging, C.KERAS_FILE))(tf.constant(texts), training=False)
                diffs["keras_vs_in_process"] = float(np.max(np.abs(from_keras.numpy().reshape(expected.shape) - expected)))
            verification = _check_differences(
                {k: diffs[k] for k in ("saved_model_vs_in_process", "keras_vs_in_process", "step_weights_vs_in_process")
                 if k in diffs}, tolerance)
        with steps("golden check"):
            files["tokenizer_golden"] = write_tokenizer_golden(
                staging, vocabulary, loaded.signatures[TOKENIZE_SIGNATURE])

        with steps("model card and manifest"):
            card = _model_card(model_config, preprocess_config, vocabulary, stats, metrics,
                               signatures=describe_signatures(signatures), files=files,
                               verification=verification, started=started)
            with open(os.path.join(staging, C.MODEL_CARD_FILE), "w", encoding="utf-8") as f:
                f.write(json.dumps(card, indent=2, sort_keys=False))
            # The manifest covers exactly the exported files and is copied last: a model
            # directory without one is an export that did not finish.
            write_manifest(staging)
        with steps("publish"):
            _publish(staging, model_dir, streaming)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("export %s: done in %.1f s (slowest: %s) -> %s", model_config.kind, time.time() - started,
                steps.slowest(), model_dir)
    return dict(card, model_dir=model_dir)
