"""Tests for beam_rnn.train.export: SavedModel signatures, .keras file, step weights, model card.

One module-scoped fixture runs two tiny preprocessing pipelines (binary labels
with one OOV bucket; three string labels with two OOV buckets and truncation),
exports three models (streaming LSTM and BiLSTM on the binary data; a 2-layer
GRU streaming model on the 3-class data), computes reference outputs in-process
from the TFT transform graph and the Keras models, then DELETES the
preprocessing outputs.  The exports are then exercised in fresh subprocesses:
one that imports only tensorflow (beam_rnn is not even importable there), and
one that loads model.keras the way Beam's stock TFModelHandlerNumpy does.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from beam_rnn.core import constants as C
from beam_rnn.preprocess import tft_graph as preprocessing
from beam_rnn.stream import step as rnn_step
from beam_rnn.train import export, keras_text, models
from tests.helpers import preprocess_docs as _preprocess
from tests.helpers import randomize_weights as _randomize
from tests.helpers import synthetic_docs as _docs

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

from tests.helpers import WORDS  # noqa: E402

# Raw texts every export is checked on: empty, OOV words, tags, punctuation, case,
# a long text (beyond max_tokens of the 3-class preprocessing), a lone OOV word.
TEXTS = [
    "",
    "Good movie, GREAT plot!<br /><br />The actor... was fine.",
    "zzqx unknownword qqwertyzz bad",
    "the",
    "<i>awful</i> film; poor plot & 'bad' actor -- of the a and",
    " ".join(WORDS * 2),
    "xyzzy",
    "   ",
]

SERVE_TOL = 1e-6
STEP_TOL = 1e-5


def _tft_ids(transformed_dir: str, texts: list[str]) -> np.ndarray:
    import tensorflow_transform as tft

    layer = tft.TFTransformOutput(transformed_dir).transform_features_layer()
    ids = layer({C.TEXT_KEY: tf.constant(texts)})[C.TOKEN_IDS_KEY]
    return tf.sparse.to_dense(ids).numpy()


def _reference_probs(model: keras.Model, num_classes: int, ids: np.ndarray) -> np.ndarray:
    padded = ids if ids.shape[1] else np.zeros((ids.shape[0], 1), np.int64)
    logits = model(tf.constant(padded, tf.int64), training=False)
    if num_classes == 2:
        return tf.sigmoid(logits[:, 0]).numpy()
    return tf.nn.softmax(logits, axis=-1).numpy()


# The tf-only consumer: no beam_rnn (not even importable: no PYTHONPATH, cwd
# elsewhere), no TFT, no tf_keras, no Beam.  (`import tensorflow` itself pulls
# in parts of Keras 3; that is TensorFlow's business, so it is not checked.)
_TF_ONLY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    spec = json.load(open(sys.argv[1]))
    texts = spec["texts"]
    for name, case in spec["cases"].items():
        loaded = tf.saved_model.load(case["path"])
        sigs = loaded.signatures
        out = {}
        serve = sigs["serving_default"]
        served = serve(text=tf.constant(texts))
        for key, value in served.items():
            value = value.numpy()
            if value.dtype == object:  # tf.string: unicode, so np.load needs no pickle
                value = np.char.decode(value.astype(bytes), "utf-8")
            out["serve." + key] = value
        tok = sigs["tokenize"](text=tf.constant(texts))
        ids = tok["token_ids"].numpy()
        out["tokenize.token_ids"] = ids
        out["tokenize.lengths"] = tok["lengths"].numpy()
        by_ids = sigs["classify_ids"](token_ids=tf.constant(ids))
        out["classify_ids.probabilities"] = by_ids["probabilities"].numpy()
        only_empty = serve(text=tf.constant(["", ""]))
        out["serve_empty.probabilities"] = only_empty["probabilities"].numpy()
        if case["streaming"]:
            state = sigs["initial_state"](batch_size=tf.constant(len(texts), tf.int32))
            out["initial_state.names"] = np.array(sorted(state))
            result = None
            for t in range(ids.shape[1]):
                result = sigs["step"](token_ids=tf.constant(ids[:, t]), **state)
                state = {k: result[k] for k in state}
            out["step.probabilities"] = result["probabilities"].numpy()
            out["step.label"] = result["label"].numpy()
        signatures = {}
        for key, fn in sigs.items():
            signatures[key] = {
                "inputs": sorted(fn.structured_input_signature[1]),
                "outputs": sorted(fn.structured_outputs),
            }
        out["signatures"] = np.array(json.dumps(signatures))
        np.savez(case["result"], **out)
    mods = sorted(m for m in sys.modules if m.split(".")[0] in ("beam_rnn", "tensorflow_transform", "tf_keras", "apache_beam"))
    print(json.dumps({"modules": mods}))
    """
)

# Loads model.keras exactly as apache_beam's TFModelHandlerNumpy does
# (tf.keras.models.load_model), after the documented `import beam_rnn.train.export`.
_KERAS_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys
    import numpy as np
    import tensorflow as tf
    import beam_rnn.train.export  # documented requirement: registers the tokeniser, picks tf_keras

    spec = json.load(open(sys.argv[1]))
    texts = spec["texts"]
    report = {"keras": tf.keras.__name__, "hub": importlib.util.find_spec("tensorflow_hub") is not None}
    report["flavour"] = beam_rnn.train.export.tf_keras_flavour()
    for name, case in spec["cases"].items():
        model = tf.keras.models.load_model(case["keras"])
        probs = model.predict(np.array(texts, dtype=object), verbose=0)
        out = {"predict": probs}
        if report["hub"]:
            from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerNumpy
            handler = TFModelHandlerNumpy(model_uri=case["keras"])
            stock = handler.load_model()
            results = list(handler.run_inference([np.array(t, dtype=object) for t in texts], stock))
            out["handler"] = np.stack([np.asarray(r.inference) for r in results])
        np.savez(case["result"], **out)
    print(json.dumps(report))
    """
)


def _run(script: str, spec_path: Path, *, cwd: Path, pythonpath: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_USE_LEGACY_KERAS")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.run(
        [PYTHON, "-c", script, str(spec_path)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _export_cases(cases: dict, root: Path, out: dict) -> None:
    """Exports each (prep, stats, config) case with random weights; reference outputs into `out`."""
    for i, (name, (prep, stats, cfg)) in enumerate(cases.items()):
        model = models.build_classifier(cfg)
        _randomize(model, seed=10 + i)
        if cfg.recurrent_dropout:  # as after fit: Keras has cached dropout masks in a training graph
            tf.function(lambda x, model=model: model(x, training=True))(tf.constant([[2, 3, 4, 0]], tf.int64))
        model_dir = str(root / "models" / name)
        metrics = {"accuracy": np.float32(0.75), "loss": 0.5, "train_seconds": 1.25, "epochs": np.int64(2)}
        # Built-in verification on one export (it is covered by the checks below for all).
        card = export.export_model(model, cfg, prep, model_dir, metrics, verify=(name == "lstm"))
        ids = _tft_ids(prep, TEXTS)
        with open(os.path.join(prep, C.TRANSFORM_FN_DIR, "assets", C.VOCAB_FILENAME)) as f:
            vocab = [line.rstrip("\n") for line in f]
        out["cases"][name] = {
            "config": cfg,
            "model_dir": model_dir,
            "card": card,
            "stats": stats,
            "prep": prep,
            "tft_ids": ids,
            "reference": _reference_probs(model, cfg.num_classes, ids),
            "vocab": vocab,
        }


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    prep_binary = str(root / "prep_binary")
    prep_multi = str(root / "prep_multi")
    cfg_binary = preprocessing.PreprocessConfig(vocab_size=50, min_frequency=1, eval_fraction=0.25)
    cfg_multi = preprocessing.PreprocessConfig(
        vocab_size=10,
        min_frequency=1,
        num_oov_buckets=2,
        max_tokens=8,
        label_type=C.LABEL_TYPE_STRING,
        label_set=("neg", "neu", "pos"),
        eval_fraction=0.25,
    )
    stats_binary = _preprocess(prep_binary, _docs(60, [0, 1], seed=1), cfg_binary)
    stats_multi = _preprocess(prep_multi, _docs(60, ["neg", "neu", "pos"], seed=2), cfg_multi)

    small = dict(embedding_dim=8, units=6, dense_units=5)
    v_binary = stats_binary["vocab_size_with_reserved"]
    v_multi = stats_multi["vocab_size_with_reserved"]
    cases = {
        "lstm": (prep_binary, stats_binary, models.ModelConfig(kind="lstm", vocab_size=v_binary, seed=1, **small)),
        "bilstm": (
            prep_binary,
            stats_binary,
            # Recurrent dropout too: its masks, cached by a training call, must not break the export.
            models.ModelConfig(kind="bilstm", vocab_size=v_binary, dropout=0.25, recurrent_dropout=0.2, seed=2, **small),
        ),
        "gru3": (
            prep_multi,
            stats_multi,
            models.ModelConfig(kind="lstm", vocab_size=v_multi, num_classes=3, cell="gru", layers=2, seed=3, **small),
        ),
    }
    out = {"root": root, "cases": {}, "log": []}
    log_handler = logging.Handler(level=logging.DEBUG)  # the step lines are DEBUG, the "done" line INFO
    log_handler.emit = lambda record: out["log"].append(record.getMessage())
    export_logger = logging.getLogger(export.__name__)
    export_logger.addHandler(log_handler)
    old_level = export_logger.level
    export_logger.setLevel(logging.DEBUG)
    try:
        _export_cases(cases, root, out)
    finally:
        export_logger.removeHandler(log_handler)
        export_logger.setLevel(old_level)
    for name, c in out["cases"].items():
        c["preprocess_config"] = cfg_binary if c["prep"] == prep_binary else cfg_multi
    # Everything below must work without the preprocessing outputs.
    shutil.rmtree(prep_binary)
    shutil.rmtree(prep_multi)

    spec_dir = root / "spec"
    spec_dir.mkdir()
    tf_spec = {
        "texts": TEXTS,
        "cases": {
            name: {
                "path": os.path.join(c["model_dir"], C.SAVED_MODEL_DIR),
                "streaming": c["config"].kind == "lstm",
                "result": str(spec_dir / f"tf_{name}.npz"),
            }
            for name, c in out["cases"].items()
        },
    }
    (spec_dir / "tf.json").write_text(json.dumps(tf_spec))
    out["tf_report"] = _run(_TF_ONLY_SCRIPT, spec_dir / "tf.json", cwd=spec_dir, pythonpath=None)
    keras_spec = {
        "texts": TEXTS,
        "cases": {
            name: {"keras": os.path.join(c["model_dir"], C.KERAS_FILE), "result": str(spec_dir / f"keras_{name}.npz")}
            for name, c in out["cases"].items()
        },
    }
    (spec_dir / "keras.json").write_text(json.dumps(keras_spec))
    extra = os.environ.get("PYTHONPATH")
    out["keras_report"] = _run(
        _KERAS_SCRIPT, spec_dir / "keras.json", cwd=spec_dir, pythonpath=os.pathsep.join(filter(None, [str(REPO_ROOT), extra]))
    )
    for name, c in out["cases"].items():
        with np.load(spec_dir / f"tf_{name}.npz") as data:
            c["tf"] = {k: data[k] for k in data.files}
        with np.load(spec_dir / f"keras_{name}.npz", allow_pickle=False) as data:
            c["keras"] = {k: data[k] for k in data.files}
    return out


CASES = ["lstm", "bilstm", "gru3"]
STREAMING = ["lstm", "gru3"]


def test_preprocessing_outputs_were_deleted_and_subprocess_used_only_tensorflow(exported):
    assert not (exported["root"] / "prep_binary").exists()
    assert not (exported["root"] / "prep_multi").exists()
    assert exported["tf_report"]["modules"] == []


@pytest.mark.parametrize("name", CASES)
def test_signatures(exported, name):
    case = exported["cases"][name]
    sigs = json.loads(str(case["tf"]["signatures"]))
    expected = {"serving_default", "classify_ids", "tokenize"}
    if name in STREAMING:
        expected |= {"initial_state", "step"}
    assert set(sigs) == expected
    # Only `text` is fed: TFT pruned the id/label inputs of the preprocessing_fn.
    assert sigs["serving_default"]["inputs"] == ["text"]
    named = ["class_names", "class_probabilities", "predicted_label", "predicted_label_name"]
    assert sigs["serving_default"]["outputs"] == sorted(["label", "logits", "probabilities"] + named)
    assert sigs["classify_ids"]["outputs"] == sigs["serving_default"]["outputs"]
    assert sigs["classify_ids"]["inputs"] == ["token_ids"]
    assert sigs["tokenize"]["outputs"] == ["lengths", "token_ids"]
    if name in STREAMING:
        names = sorted(n for n, _ in models.state_spec(case["config"]))
        assert sigs["initial_state"]["inputs"] == ["batch_size"]
        assert sigs["initial_state"]["outputs"] == names
        assert sigs["step"]["inputs"] == sorted(names + ["token_ids"])
        assert sigs["step"]["outputs"] == sorted(names + ["label", "logits", "probabilities"])
        assert list(case["tf"]["initial_state.names"]) == names


@pytest.mark.parametrize("name", CASES)
def test_serving_default_matches_in_process_model(exported, name):
    case = exported["cases"][name]
    probs = case["tf"]["serve.probabilities"]
    ref = case["reference"]
    num_classes = case["config"].num_classes
    assert probs.dtype == np.float32
    assert probs.shape == ((len(TEXTS),) if num_classes == 2 else (len(TEXTS), num_classes))
    np.testing.assert_allclose(probs, ref, atol=SERVE_TOL, rtol=0)
    # Non-degenerate: the texts do not all get the same answer.
    assert np.ptp(probs, axis=0).max() > 1e-3
    labels = case["tf"]["serve.label"]
    assert labels.dtype == np.int64
    if num_classes == 2:
        np.testing.assert_array_equal(labels, (ref > 0.5).astype(np.int64))
        assert case["tf"]["serve.logits"].shape == (len(TEXTS), 1)
    else:
        np.testing.assert_array_equal(labels, ref.argmax(axis=1))
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    # A batch of only empty texts (no time step at all) works and equals the "" row.
    np.testing.assert_allclose(case["tf"]["serve_empty.probabilities"][0], probs[0], atol=SERVE_TOL, rtol=0)


@pytest.mark.parametrize("name", CASES)
def test_serving_default_named_outputs(exported, name):
    """predicted_label[_name], class_probabilities [N, K] and class_names [N, K], read by a TF-only process."""
    case = exported["cases"][name]
    tf_out = case["tf"]
    n, k = len(TEXTS), case["config"].num_classes
    names = ["neg", "neu", "pos"] if name == "gru3" else ["0", "1"]
    ref = case["reference"]
    by_class = np.stack([1 - ref, ref], axis=1) if k == 2 else ref
    assert tf_out["serve.class_probabilities"].dtype == np.float32
    assert tf_out["serve.class_probabilities"].shape == (n, k)
    np.testing.assert_allclose(tf_out["serve.class_probabilities"], by_class, atol=SERVE_TOL, rtol=0)
    np.testing.assert_allclose(tf_out["serve.class_probabilities"].sum(axis=1), 1.0, atol=1e-6)
    predicted = tf_out["serve.predicted_label"]
    assert predicted.dtype == np.int64 and predicted.shape == (n,)
    np.testing.assert_array_equal(predicted, by_class.argmax(axis=1))
    np.testing.assert_array_equal(predicted, tf_out["serve.label"])
    assert tf_out["serve.predicted_label_name"].tolist() == [names[i] for i in predicted]
    assert tf_out["serve.class_names"].shape == (n, k)
    assert tf_out["serve.class_names"].tolist() == [names] * n
    # The model card describes them with the batch dimension first (TF Serving's row format).
    card_outputs = case["card"]["signatures"][0]["outputs"]
    assert card_outputs["class_names"] == {"dtype": "string", "shape": [None, k]}
    assert card_outputs["class_probabilities"] == {"dtype": "float32", "shape": [None, k]}
    assert card_outputs["predicted_label"] == {"dtype": "int64", "shape": [None]}
    assert card_outputs["predicted_label_name"] == {"dtype": "string", "shape": [None]}


def test_serving_handler_reads_the_export(exported):
    """beam_rnn.serve.handler's check and batch call work on the new signature (binary P(1) unchanged)."""
    from beam_rnn.core.artifacts import resolve_models
    from beam_rnn.serve.handler import ClassifierModels, check_model_loads

    case = exported["cases"]["bilstm"]
    (info,) = resolve_models(case["model_dir"])
    check_model_loads(info)
    ((probs, labels),) = ClassifierModels([info]).full_pass(TEXTS)
    np.testing.assert_allclose(probs, case["tf"]["serve.probabilities"], atol=SERVE_TOL, rtol=0)
    np.testing.assert_array_equal(labels, case["tf"]["serve.label"])


@pytest.mark.parametrize("name", CASES)
def test_tokenize_matches_tft_transform(exported, name):
    case = exported["cases"][name]
    ids = case["tf"]["tokenize.token_ids"]
    tft_ids = case["tft_ids"]
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, tft_ids)
    np.testing.assert_array_equal(case["tf"]["tokenize.lengths"], (tft_ids != 0).sum(axis=1))
    k = case["preprocess_config"].num_oov_buckets
    # Every OOV bucket is used, so the .keras check below also covers OOV hashing.
    assert set(ids[(ids >= 1) & (ids <= k)].tolist()) == set(range(1, k + 1))
    if case["preprocess_config"].max_tokens:
        assert ids.shape[1] == case["preprocess_config"].max_tokens
    np.testing.assert_allclose(case["tf"]["classify_ids.probabilities"], case["tf"]["serve.probabilities"], atol=SERVE_TOL, rtol=0)


@pytest.mark.parametrize("name", STREAMING)
def test_step_signature_replays_serving(exported, name):
    case = exported["cases"][name]
    np.testing.assert_allclose(case["tf"]["step.probabilities"], case["tf"]["serve.probabilities"], atol=STEP_TOL, rtol=0)
    np.testing.assert_array_equal(case["tf"]["step.label"], case["tf"]["serve.label"])


@pytest.mark.parametrize("name", STREAMING)
def test_numpy_step_weights_replay_serving(exported, name):
    case = exported["cases"][name]
    weights = rnn_step.StepWeights.load(os.path.join(case["model_dir"], C.STEP_WEIGHTS_FILE))
    ids = case["tf"]["tokenize.token_ids"]
    state = rnn_step.initial_state(weights, batch=len(TEXTS))
    for t in range(ids.shape[1]):
        logits, state = rnn_step.step_batch(weights, ids[:, t], state)
    probs = rnn_step.probabilities(logits, case["config"].num_classes)
    if case["config"].num_classes == 2:
        probs = probs[:, 0]
    np.testing.assert_allclose(probs, case["tf"]["serve.probabilities"], atol=STEP_TOL, rtol=0)


def test_bilstm_has_no_step_weights(exported):
    assert not os.path.exists(os.path.join(exported["cases"]["bilstm"]["model_dir"], C.STEP_WEIGHTS_FILE))


def _python_tokenize(text: str, vocab: list[str], cfg: preprocessing.PreprocessConfig) -> list[int]:
    """What a NumPy/Python streaming worker does with vocab.txt + preprocess_config.json: the one spec."""
    from beam_rnn.core import spec

    index = {w: i + spec.first_word_id(cfg.num_oov_buckets) for i, w in enumerate(vocab)}
    tokens = spec.tokenize(text, cfg.max_tokens)
    return [index[t] if t in index else spec.oov_id(t, cfg.num_oov_buckets) for t in tokens]


@pytest.mark.parametrize("name", CASES)
def test_vocab_and_config_copied_next_to_weights(exported, name):
    case = exported["cases"][name]
    with open(os.path.join(case["model_dir"], export.VOCAB_TEXT_FILE), encoding="utf-8") as f:
        vocab = [line.rstrip("\n") for line in f]
    assert vocab == case["vocab"]
    with open(os.path.join(case["model_dir"], C.PREPROCESS_CONFIG_FILE)) as f:
        cfg = preprocessing.PreprocessConfig.from_dict(json.load(f))
    assert cfg == case["preprocess_config"]
    if cfg.num_oov_buckets == 1:  # hashed OOV buckets need TF's fingerprint; one bucket does not
        ids = case["tf"]["tokenize.token_ids"]
        for row, text in zip(ids, TEXTS):
            expected = _python_tokenize(text, vocab, cfg)
            assert list(row[: len(expected)]) == expected and not row[len(expected) :].any()


@pytest.mark.parametrize("name", CASES)
def test_keras_file_matches_saved_model(exported, name):
    assert exported["keras_report"]["keras"].startswith("tf_keras"), exported["keras_report"]
    assert exported["keras_report"]["flavour"] == "tf_keras"
    case = exported["cases"][name]
    probs = case["keras"]["predict"]
    served = case["tf"]["serve.probabilities"]
    assert probs.shape[0] == len(TEXTS)
    np.testing.assert_allclose(probs.reshape(served.shape), served, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", CASES)
def test_stock_tf_model_handler_numpy_loads_keras_file(exported, name):
    if not exported["keras_report"]["hub"]:
        pytest.skip(
            "tensorflow_hub is not installed: apache_beam.ml.inference.tensorflow_inference "
            "imports it, so TFModelHandlerNumpy cannot be used here (pip install tensorflow-hub)"
        )
    case = exported["cases"][name]
    served = case["tf"]["serve.probabilities"]
    np.testing.assert_allclose(case["keras"]["handler"].reshape(served.shape), served, atol=1e-5, rtol=0)


def test_import_after_keras_3_was_resolved_warns(tmp_path):
    """The trap of importing Beam's TF handler (tensorflow_hub) before beam_rnn is reported."""
    script = textwrap.dedent(
        """
        import json, warnings
        import tensorflow as tf
        tf.keras.models  # resolves tf.keras: Keras 3, TF_USE_LEGACY_KERAS is unset
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import beam_rnn.train.export
        print(json.dumps({"flavour": beam_rnn.train.export.tf_keras_flavour(), "warnings": [str(w.message) for w in caught]}))
        """
    )
    spec = tmp_path / "unused.json"
    spec.write_text("{}")
    report = _run(script, spec, cwd=tmp_path, pythonpath=str(REPO_ROOT))
    assert report["flavour"] == "keras_3"
    assert export.KERAS_3_WARNING in report["warnings"]


def test_tf_keras_flavour_in_this_process():
    tf.keras.models  # beam_rnn is imported: TF_USE_LEGACY_KERAS=1
    assert export.tf_keras_flavour() == "tf_keras"


def test_keras_file_in_process_uses_textvectorization_for_one_oov_bucket(exported):
    binary = export.load_keras_model(exported["cases"]["lstm"]["model_dir"])
    layers = {type(layer).__name__ for layer in binary.layers}
    assert "TextVectorization" in layers
    multi = export.load_keras_model(exported["cases"]["gru3"]["model_dir"])
    assert {"TokenizeText", "StringLookup"} <= {type(layer).__name__ for layer in multi.layers}
    assert multi.get_layer("string_lookup").num_oov_indices == 2


@pytest.mark.parametrize("name", CASES)
def test_model_card(exported, name):
    case = exported["cases"][name]
    with open(os.path.join(case["model_dir"], C.MODEL_CARD_FILE)) as f:
        card = json.load(f)
    cfg = case["config"]
    stats = case["stats"]
    assert card["kind"] == cfg.kind
    assert models.ModelConfig.from_dict(card["model_config"]) == cfg
    assert card["vocabulary_size"] == len(case["vocab"]) == stats["vocabulary_words"]
    assert card["num_oov_buckets"] == case["preprocess_config"].num_oov_buckets
    assert card["num_classes"] == cfg.num_classes
    assert card["label_names"] == (["neg", "neu", "pos"] if name == "gru3" else None)
    assert card["metrics"] == {"accuracy": 0.75, "loss": 0.5, "train_seconds": 1.25, "epochs": 2}
    data = card["data"]
    assert data["rows_in"] == 60
    assert data["split_sizes"] == {s: stats["splits"][s]["documents"] for s in ("train", "eval")}
    assert sum(data["split_sizes"].values()) == 60
    assert data["label_counts"] == stats["label_counts"]
    assert data["token_length_percentiles"]["train"] == stats["splits"]["train"]["token_length_percentiles"]
    for key in ("python", "tensorflow", "tf_keras", "tensorflow_transform", "apache_beam", "beam_rnn"):
        assert card["versions"][key], key
    assert card["versions"]["tensorflow"] == tf.__version__
    sig_names = [s["name"] for s in card["signatures"]]
    assert sig_names[:3] == ["serving_default", "classify_ids", "tokenize"]
    assert ("step" in sig_names) == (cfg.kind == "lstm")
    serve = card["signatures"][0]
    assert serve["inputs"] == {"text": {"dtype": "string", "shape": [None]}}
    assert serve["outputs"]["probabilities"]["shape"] == ([None] if cfg.num_classes == 2 else [None, 3])
    assert card["created"].startswith("20")
    assert card == {k: v for k, v in case["card"].items() if k != "model_dir"}
    if name == "lstm":
        assert set(card["verification"]) == {"saved_model_vs_in_process", "keras_vs_in_process", "step_weights_vs_in_process"}
        assert max(card["verification"].values()) <= 1e-5
    else:
        assert card["verification"] is None


def test_load_exported(exported, tmp_path):
    loaded = export.load_exported(exported["cases"]["bilstm"]["model_dir"])
    out = loaded.signatures["serving_default"](text=tf.constant(TEXTS[:2]))
    np.testing.assert_allclose(
        out["probabilities"].numpy(), exported["cases"]["bilstm"]["tf"]["serve.probabilities"][:2], atol=SERVE_TOL, rtol=0
    )
    with pytest.raises(export.ExportError, match="No exported SavedModel"):
        export.load_exported(str(tmp_path))


def test_keras_standardize_is_preprocessing_standardize():
    assert keras_text.PUNCTUATION_REGEX == preprocessing.PUNCTUATION_REGEX
    assert keras_text.HTML_TAG_REGEX == preprocessing.HTML_TAG_REGEX
    texts = tf.constant(TEXTS + ["ÉCOLE <a href='x'>Link</a>", "it's [a] {test}\\n\ttab"])
    np.testing.assert_array_equal(keras_text.keras_standardize(texts).numpy(), preprocessing.standardize(texts).numpy())


# --- Errors: fast, no pipeline (the checks run before anything is loaded) ----------


def _fake_prep(root: Path, words: list[str], **skip) -> str:
    prep = root / "prep"
    (prep / C.TRANSFORM_FN_DIR / "assets").mkdir(parents=True)
    if not skip.get("saved_model"):
        (prep / C.TRANSFORM_FN_DIR / "saved_model.pb").write_bytes(b"")
    (prep / C.TRANSFORM_FN_DIR / "assets" / C.VOCAB_FILENAME).write_text("".join(w + "\n" for w in words))
    if not skip.get("stats"):
        (prep / C.STATS_FILE).write_text(json.dumps({"num_classes": 2, "splits": {}}))
    (prep / C.PREPROCESS_CONFIG_FILE).write_text(preprocessing.PreprocessConfig().to_json())
    return str(prep)


def _tiny_model(vocab_size: int):
    cfg = models.ModelConfig(kind="lstm", vocab_size=vocab_size, embedding_dim=4, units=3, dense_units=3)
    return models.build_classifier(cfg), cfg


def test_export_error_missing_directory(tmp_path):
    model, cfg = _tiny_model(5)
    with pytest.raises(export.ExportError, match="does not exist"):
        export.export_model(model, cfg, str(tmp_path / "nope"), str(tmp_path / "out"), {})


def test_export_error_missing_transform_fn(tmp_path):
    model, cfg = _tiny_model(5)
    prep = _fake_prep(tmp_path, ["a", "b", "c"], saved_model=True)
    with pytest.raises(export.ExportError, match="No TFT transform graph"):
        export.export_model(model, cfg, prep, str(tmp_path / "out"), {})
    assert not (tmp_path / "out").exists()


def test_export_error_missing_stats(tmp_path):
    model, cfg = _tiny_model(5)
    prep = _fake_prep(tmp_path, ["a", "b", "c"], stats=True)
    with pytest.raises(export.ExportError, match="stats.json"):
        export.export_model(model, cfg, prep, str(tmp_path / "out"), {})


def test_export_error_vocab_size_mismatch(tmp_path):
    model, cfg = _tiny_model(7)  # 3 words + 1 OOV + padding = 5, not 7
    prep = _fake_prep(tmp_path, ["a", "b", "c"])
    with pytest.raises(export.ExportError, match="vocab_size=7 does not match .* id space 5"):
        export.export_model(model, cfg, prep, str(tmp_path / "out"), {})


# --- Named steps and the export's own checks ---------------------------------------

EXPORT_STEPS = ["input checks", "SavedModel", "model.keras", "step weights and vocabulary", "SavedModel reload",
                "SavedModel check", "model.keras check", "golden check", "model card and manifest", "publish"]


def test_export_logs_each_named_step_with_its_time(exported):
    step_line = re.compile(r"^export (lstm|bilstm): (.+) (\d+\.\d) s$")
    logged = [m.groups() for m in map(step_line.match, exported["log"]) if m]
    checked = [kind_step for kind_step in logged if kind_step[0] == "lstm"]
    # The first export (lstm, verified): every step once, in order; the others skip the checks.
    assert [step for _, step, _ in checked[: len(EXPORT_STEPS)]] == EXPORT_STEPS
    unverified = [step for kind, step, _ in logged if kind == "bilstm"]
    assert unverified == [s for s in EXPORT_STEPS if not s.endswith(" check") or s == "golden check"]
    assert sum(line.startswith("export lstm: done in ") for line in exported["log"]) == 2  # lstm and gru3
    assert all(re.search(r"done in \d+\.\d s \(slowest: .+ \d+\.\d s, .+ \d+\.\d s\) -> ", line)
               for line in exported["log"] if " done in " in line)


class _FakeLoaded:
    """A reloaded SavedModel whose serving_default returns fixed outputs."""

    def __init__(self, outputs: dict):
        self.signatures = {"serving_default": lambda text: {k: tf.constant(v) for k, v in outputs.items()}}


def _served(probs, labels, names, row_names):
    by_class = np.stack([1 - np.asarray(probs), probs], axis=1).astype(np.float32)
    return {"probabilities": np.asarray(probs, np.float32), "label": np.asarray(labels, np.int64),
            "predicted_label": np.asarray(labels, np.int64), "predicted_label_name": np.array(names),
            "class_probabilities": by_class, "class_names": np.array(row_names)}


def test_saved_model_check_catches_inconsistent_named_outputs():
    cfg = models.ModelConfig(kind="lstm", vocab_size=5)
    texts, expected = ["a", "b"], np.array([0.2, 0.9], np.float32)
    good = _served([0.2, 0.9], [0, 1], ["neg", "pos"], [["neg", "pos"]] * 2)
    assert export._check_saved_model(_FakeLoaded(good), texts, expected, cfg, ["neg", "pos"]) < 1e-6
    for damaged in (
        dict(good, predicted_label_name=np.array(["pos", "pos"])),
        dict(good, class_names=np.array([["pos", "neg"]] * 2)),
        dict(good, predicted_label=np.array([1, 1], np.int64)),
        dict(good, class_probabilities=good["class_probabilities"][:, ::-1].copy()),
    ):
        with pytest.raises(export.ExportError, match="disagree with each other"):
            export._check_saved_model(_FakeLoaded(damaged), texts, expected, cfg, ["neg", "pos"])
