"""Tests for beam_rnn.train.models (Keras builders, TF step) and beam_rnn.stream.step (NumPy step).

The central property: running the streaming model one token at a time with
carried state — through the TF step and through the NumPy step — gives the same
logits as the full Keras pass, for every prefix, with random and trained
weights, for every cell type and depth.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from beam_rnn.train import models
from beam_rnn.stream import step as rnn_step

TOL = 1e-5
REPO_ROOT = Path(__file__).resolve().parents[1]

# Small but non-degenerate: embedding_dim != units != dense_units so any
# transposed or mis-sliced weight shows up as a shape error or a mismatch.
VOCAB = 23


def _stream_config(cell: str, layers: int, num_classes: int = 2, **overrides) -> models.ModelConfig:
    fields = dict(
        kind="lstm",
        vocab_size=VOCAB,
        num_classes=num_classes,
        embedding_dim=6,
        units=5,
        layers=layers,
        cell=cell,
        dense_units=7,
        dropout=0.25,
        seed=3,
    )
    fields.update(overrides)
    return models.ModelConfig(**fields)


def _randomize(model: keras.Model, seed: int) -> None:
    """Replaces every weight with larger random values so gates are far from 0.5/linear."""
    rng = np.random.default_rng(seed)
    new = []
    for weight in model.get_weights():
        fan_in = weight.shape[0] if weight.ndim == 2 else 1
        scale = 2.0 / np.sqrt(fan_in) if weight.ndim == 2 else 0.7
        new.append((rng.standard_normal(weight.shape) * scale).astype(np.float32))
    model.set_weights(new)


def _right_padded_ids(batch_lengths: list[int], max_len: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(batch_lengths), max_len), dtype=np.int64)
    for row, length in enumerate(batch_lengths):
        ids[row, :length] = rng.integers(1, VOCAB, size=length)
    return ids


def _assert_step_matches_full(model: keras.Model, config: models.ModelConfig, ids: np.ndarray) -> None:
    """Steps `ids` through the TF step, NumPy step_batch and NumPy step; compares to model()."""
    batch, time = ids.shape
    tf_step = tf.function(models.make_tf_step(model, config), input_signature=models.step_input_signature(config))
    weights = rnn_step.StepWeights.from_dict(models.extract_step_weights(model, config))

    tf_states = models.initial_states(config, batch)
    np_states = rnn_step.initial_state(weights, batch)
    single_states = [rnn_step.initial_state(weights) for _ in range(batch)]
    spread = []
    for t in range(time):
        column = ids[:, t]
        tf_logits, new_tf_states = tf_step(tf.constant(column), tf_states)
        np_logits, new_np_states = rnn_step.step_batch(weights, column, np_states)
        single_logits = []
        for row in range(batch):
            logits, single_states[row] = rnn_step.step(weights, int(column[row]), single_states[row])
            single_logits.append(logits)
        single_logits = np.stack(single_logits)

        # Padding leaves the state of that row bit-for-bit unchanged.
        pad = column == 0
        for old, new in zip(tf_states, new_tf_states):
            np.testing.assert_array_equal(old.numpy()[pad], new.numpy()[pad])
        for old, new in zip(np_states, new_np_states):
            np.testing.assert_array_equal(old[pad], new[pad])
        tf_states, np_states = new_tf_states, new_np_states

        # Every prefix: the streamed logits equal the full pass on ids[:, :t+1].
        expected = model(ids[:, : t + 1], training=False).numpy()
        assert tf_logits.shape == expected.shape
        assert np_logits.shape == expected.shape
        assert single_logits.shape == expected.shape
        np.testing.assert_allclose(tf_logits.numpy(), expected, atol=TOL, rtol=0)
        np.testing.assert_allclose(np_logits, expected, atol=TOL, rtol=0)
        np.testing.assert_allclose(single_logits, expected, atol=TOL, rtol=0)
        spread.append(np.ptp(expected))

    # Final logits equal the whole padded batch in one call.
    np.testing.assert_allclose(np_logits, model(ids, training=False).numpy(), atol=TOL, rtol=0)
    # Guard against a vacuous pass: the logits must actually vary across inputs.
    assert max(spread) > 0.1, f"logits barely vary ({max(spread)}); the equality check proves little"


# --- Structure -------------------------------------------------------------------------


def _layer_types(model: keras.Model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


def test_bilstm_default_is_the_tutorial_model():
    config = models.ModelConfig(kind="bilstm", vocab_size=1000)
    model = models.build_classifier(config)
    assert _layer_types(model) == ["InputLayer", "Embedding", "Bidirectional", "Dense", "Dense"]
    embedding, bidi, hidden, logits = (model.get_layer(n) for n in ("embedding", "rnn_0", "dense_hidden", "logits"))
    assert embedding.input_dim == 1000 and embedding.output_dim == 64 and embedding.mask_zero
    assert type(bidi.forward_layer).__name__ == "LSTM" and type(bidi.backward_layer).__name__ == "LSTM"
    assert bidi.forward_layer.units == 64 and not bidi.forward_layer.return_sequences
    assert bidi.merge_mode == "concat"
    assert hidden.units == 64 and hidden.activation is keras.activations.relu
    assert logits.units == 1 and logits.activation is keras.activations.linear
    # The two directions must not start from the same weights.
    assert not np.array_equal(bidi.forward_layer.cell.kernel.numpy(), bidi.backward_layer.cell.kernel.numpy())


@pytest.mark.parametrize("kind", ["lstm", "bilstm"])
def test_embedding_dropout_drops_whole_dimensions_in_training_only_and_keeps_the_initial_weights(kind):
    small = dict(kind=kind, vocab_size=40, embedding_dim=8, units=6, dense_units=5)
    plain = models.build_classifier(models.ModelConfig(**small))
    dropped = models.build_classifier(models.ModelConfig(**small, embedding_dropout=0.5))
    assert _layer_types(dropped)[:3] == ["InputLayer", "Embedding", "SpatialDropout1D"]
    for layer in plain.layers:  # same seeds: the dropout's generator is seeded aside
        for a, b in zip(layer.get_weights(), dropped.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b)
    ids = tf.constant([[3, 4, 5, 6, 0, 0]])
    np.testing.assert_array_equal(plain(ids).numpy(), dropped(ids, training=False).numpy())
    assert not np.array_equal(dropped(ids, training=True).numpy(), dropped(ids, training=False).numpy())
    # Spatial: a dimension is dropped at every position of the document at once.
    embedded = dropped.get_layer("embedding")(ids)
    out = dropped.get_layer("embedding_dropout")(embedded, training=True).numpy()[0, :4]
    zero = (out == 0).all(axis=0)
    assert zero.any() and ((out != 0) | zero).all()
    if kind == "lstm":  # the streaming step weights do not change
        config = models.ModelConfig(**small, embedding_dropout=0.5)
        assert sorted(models.extract_step_weights(dropped, config)) == sorted(
            models.extract_step_weights(plain, models.ModelConfig(**small)))


@pytest.mark.parametrize("kind", ["lstm", "bilstm"])
def test_recurrent_dropout_acts_in_training_only_with_seeded_saveable_generators(kind):
    from beam_rnn.train.callbacks import random_generators

    small = dict(kind=kind, vocab_size=40, embedding_dim=8, units=6, dense_units=5)
    plain = models.build_classifier(models.ModelConfig(**small))
    dropped = models.build_classifier(models.ModelConfig(**small, recurrent_dropout=0.5))
    for a, b in zip(plain.get_weights(), dropped.get_weights()):  # the generators are seeded aside
        np.testing.assert_array_equal(a, b)
    ids = tf.constant([[3, 4, 5, 6, 0, 0]])
    np.testing.assert_allclose(plain(ids).numpy(), dropped(ids, training=False).numpy(), rtol=1e-6)
    first = dropped(ids, training=True).numpy()
    assert not np.allclose(first, dropped(ids, training=False).numpy())
    assert not np.array_equal(first, dropped(ids, training=True).numpy()), "a new mask per call"
    again = models.build_classifier(models.ModelConfig(**small, recurrent_dropout=0.5))
    np.testing.assert_array_equal(first, again(ids, training=True).numpy())  # seeded: the same masks
    # Every recurrent layer's generator is one the trainer can save (none is a TF1 stateful op).
    assert len(random_generators(dropped)) >= (2 if kind == "lstm" else 4)
    assert not random_generators(plain)


def test_bilstm_stacked_tutorial_variant():
    config = models.ModelConfig(kind="bilstm", vocab_size=1000, stacked_tutorial=True)
    model = models.build_classifier(config)
    assert _layer_types(model) == [
        "InputLayer", "Embedding", "Bidirectional", "Bidirectional", "Dense", "Dropout", "Dense",
    ]
    first, second = model.get_layer("rnn_0"), model.get_layer("rnn_1")
    assert first.forward_layer.units == 64 and first.forward_layer.return_sequences
    assert second.forward_layer.units == 32 and not second.forward_layer.return_sequences
    assert model.get_layer("dense_hidden").units == 64
    assert model.get_layer("dropout").rate == 0.5
    assert model.get_layer("logits").units == 1


def test_bilstm_layers_stack_with_return_sequences():
    model = models.build_classifier(models.ModelConfig(kind="bilstm", vocab_size=50, units=8, layers=3))
    rnns = [model.get_layer(f"rnn_{i}") for i in range(3)]
    assert [r.forward_layer.return_sequences for r in rnns] == [True, True, False]
    assert model(np.array([[2, 3, 4, 0]])).shape == (1, 1)


@pytest.mark.parametrize("cell", ["lstm", "gru", "simple_rnn"])
def test_lstm_kind_structure(cell):
    config = _stream_config(cell, layers=2)
    model = models.build_classifier(config)
    names = [layer.name for layer in model.layers]
    assert names == ["token_ids", "embedding", "rnn_0", "rnn_1", "dense_hidden", "dropout", "logits"]
    expected_type = {"lstm": "LSTM", "gru": "GRU", "simple_rnn": "SimpleRNN"}[cell]
    assert [type(model.get_layer(f"rnn_{i}")).__name__ for i in range(2)] == [expected_type] * 2
    assert model.get_layer("rnn_0").return_sequences and not model.get_layer("rnn_1").return_sequences
    assert model.get_layer("embedding").mask_zero
    if cell == "gru":
        assert model.get_layer("rnn_0").cell.reset_after
    assert models.state_spec(config) == (
        [("h_0", 5), ("c_0", 5), ("h_1", 5), ("c_1", 5)] if cell == "lstm" else [("h_0", 5), ("h_1", 5)]
    )


@pytest.mark.parametrize("kind", ["bilstm", "lstm"])
@pytest.mark.parametrize("num_classes,width", [(2, 1), (5, 5)])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_output_shapes(kind, num_classes, width, dtype):
    config = models.ModelConfig(kind=kind, vocab_size=40, num_classes=num_classes, embedding_dim=8, units=8, dense_units=8)
    model = models.build_classifier(config)
    logits = model(np.array([[5, 6, 7, 0], [9, 0, 0, 0], [1, 2, 3, 4]], dtype=dtype))
    assert logits.shape == (3, width)
    assert logits.dtype == tf.float32


# --- Config ----------------------------------------------------------------------------


def test_config_round_trips_through_json():
    config = models.ModelConfig(kind="lstm", vocab_size=99, num_classes=4, cell="gru", layers=2, dropout=0.1, seed=7)
    restored = models.ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert config.to_dict()["cell"] == "gru"


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(kind="transformer", vocab_size=10), "kind"),
        (dict(kind="lstm", vocab_size=10, cell="tcn"), "cell"),
        (dict(kind="lstm", vocab_size=2), "vocab_size"),
        (dict(kind="lstm", vocab_size=10, num_classes=1), "num_classes"),
        (dict(kind="lstm", vocab_size=10, units=0), "units"),
        (dict(kind="lstm", vocab_size=10, layers=0), "layers"),
        (dict(kind="lstm", vocab_size=10, dropout=1.0), "dropout"),
        (dict(kind="lstm", vocab_size=10, stacked_tutorial=True), "stacked_tutorial"),
        (dict(kind="bilstm", vocab_size=10, stacked_tutorial=True, layers=2), "stacked_tutorial"),
        (dict(kind="lstm", vocab_size=10.5), "vocab_size"),
    ],
)
def test_invalid_configs_raise(fields, message):
    with pytest.raises(ValueError, match=message):
        models.ModelConfig(**fields)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unit"):
        models.ModelConfig.from_dict({"kind": "lstm", "vocab_size": 10, "unit": 3})


def test_bilstm_has_no_step():
    config = models.ModelConfig(kind="bilstm", vocab_size=30, units=4, embedding_dim=4, dense_units=4)
    model = models.build_classifier(config)
    with pytest.raises(ValueError, match="no per-token step"):
        models.make_tf_step(model, config)
    with pytest.raises(ValueError, match="no per-token step"):
        models.extract_step_weights(model, config)
    with pytest.raises(ValueError, match="no per-token step"):
        models.state_spec(config)


def test_make_tf_step_rejects_mismatched_model():
    model = models.build_classifier(_stream_config("gru", layers=1))
    with pytest.raises(ValueError, match="does not match"):
        models.make_tf_step(model, _stream_config("lstm", layers=1))


def test_same_seed_same_weights_other_seed_differs():
    config = _stream_config("lstm", layers=2)
    first = models.build_classifier(config).get_weights()
    second = models.build_classifier(config).get_weights()
    other = models.build_classifier(_stream_config("lstm", layers=2, seed=4)).get_weights()
    assert len(first) == len(second)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    # Every randomly initialised (2-D) weight changes with the seed; biases start
    # at constants (LSTM: unit forget bias) whatever the seed.
    random_pairs = [(a, c) for a, c in zip(first, other) if a.ndim == 2]
    assert len(random_pairs) >= 6
    assert all(not np.array_equal(a, c) for a, c in random_pairs)


def test_bilstm_same_seed_same_weights():
    config = models.ModelConfig(kind="bilstm", vocab_size=30, units=4, embedding_dim=4, dense_units=4, layers=2)
    for a, b in zip(models.build_classifier(config).get_weights(), models.build_classifier(config).get_weights()):
        np.testing.assert_array_equal(a, b)


def test_dropout_masks_are_seeded_and_their_state_can_be_saved(tmp_path):
    """Dropout draws from a seeded tf.random.Generator: same config, same masks; its state
    round-trips through a checkpoint, so a resumed training draws the masks it would have drawn."""
    config = _stream_config("lstm", layers=1, dropout=0.5)
    ids = tf.constant([[3, 4, 5, 0], [6, 7, 0, 0]], tf.int64)

    def generator(model):
        rng = model.get_layer(models.DROPOUT_LAYER)._random_generator
        rng._maybe_init()
        return rng._generator

    first = models.build_classifier(config)
    draws = [first(ids, training=True).numpy() for _ in range(3)]
    assert not np.array_equal(draws[0], draws[1])  # a new mask every call
    np.testing.assert_array_equal(first(ids, training=False).numpy(), first(ids, training=False).numpy())
    second = models.build_classifier(config)
    np.testing.assert_array_equal(second(ids, training=True).numpy(), draws[0])  # seeded

    # Save after one draw, restore into a fresh model: the next masks are draws[1], draws[2].
    saved = tf.train.Checkpoint(rng=generator(second)).write(str(tmp_path / "rng"))
    third = models.build_classifier(config)
    tf.train.Checkpoint(rng=generator(third)).read(saved).assert_consumed()
    np.testing.assert_array_equal(third(ids, training=True).numpy(), draws[1])
    np.testing.assert_array_equal(third(ids, training=True).numpy(), draws[2])
    # The generator's state is not a model weight (exports and step weights are unchanged).
    assert len(third.get_weights()) == len(models.build_classifier(_stream_config("lstm", layers=1, dropout=0.0)).get_weights())


# --- Step equivalence --------------------------------------------------------------------


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", ["lstm", "gru", "simple_rnn"])
def test_step_matches_full_pass_random_weights(cell, layers):
    config = _stream_config(cell, layers)
    model = models.build_classifier(config)
    _randomize(model, seed=11 + layers)
    ids = _right_padded_ids([7, 3, 1, 5], max_len=7, seed=layers)
    _assert_step_matches_full(model, config, ids)


def test_step_matches_full_pass_multiclass():
    config = _stream_config("lstm", layers=2, num_classes=5)
    model = models.build_classifier(config)
    _randomize(model, seed=5)
    _assert_step_matches_full(model, config, _right_padded_ids([6, 2, 4], max_len=6, seed=9))


def test_step_matches_full_pass_trained_weights():
    config = _stream_config("lstm", layers=1, units=8, embedding_dim=8, dense_units=8)
    model = models.build_classifier(config)
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 9, size=256)
    ids = np.zeros((256, 8), dtype=np.int64)
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(1, VOCAB, size=length)
    labels = (ids == 5).any(axis=1).astype(np.float32)[:, None]
    before = [w.copy() for w in model.get_weights()]
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[keras.metrics.BinaryAccuracy(threshold=0.0)],
    )
    history = model.fit(ids, labels, batch_size=32, epochs=6, verbose=0, shuffle=False)
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))
    # The task is easy; a model that learnt it has weights that matter.
    assert history.history["binary_accuracy"][-1] > 0.85
    _assert_step_matches_full(model, config, ids[:6])


def test_tf_step_padding_keeps_state_and_initial_states():
    config = _stream_config("gru", layers=2)
    model = models.build_classifier(config)
    _randomize(model, seed=1)
    step = models.make_tf_step(model, config)
    states = models.initial_states(config, 3)
    assert [tuple(s.shape) for s in states] == [(3, 5), (3, 5)]
    assert all(not np.any(s.numpy()) for s in states)
    logits, states = step(tf.constant([4, 5, 6], tf.int64), states)
    logits_pad, states_pad = step(tf.constant([0, 0, 0], tf.int64), states)
    np.testing.assert_array_equal(logits.numpy(), logits_pad.numpy())
    for a, b in zip(states, states_pad):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# --- NumPy step / weight file --------------------------------------------------------------


def test_step_weights_round_trip_through_npz(tmp_path):
    config = _stream_config("lstm", layers=2, num_classes=3)
    model = models.build_classifier(config)
    _randomize(model, seed=2)
    weights = models.extract_step_weights(model, config)
    expected_keys = {
        "meta.format_version", "meta.cell", "meta.num_layers", "meta.units", "meta.num_classes",
        "embedding", "dense_hidden.kernel", "dense_hidden.bias", "logits.kernel", "logits.bias",
    } | {f"rnn_{i}.{name}" for i in range(2) for name in ("kernel", "recurrent_kernel", "bias")}
    assert set(weights) == expected_keys
    assert weights["embedding"].shape == (VOCAB, 6)
    assert weights["rnn_0.kernel"].shape == (6, 20) and weights["rnn_1.kernel"].shape == (5, 20)

    path = tmp_path / "step_weights.npz"
    np.savez(path, **weights)
    loaded = rnn_step.StepWeights.load(path)
    assert (loaded.cell, loaded.num_layers, loaded.units, loaded.num_classes) == ("lstm", 2, 5, 3)
    for key, value in loaded.to_dict().items():
        np.testing.assert_array_equal(value, weights[key])

    # Loaded weights (with and without the precomputed table) step identically.
    direct = rnn_step.StepWeights.from_dict(weights, precompute=False)
    assert loaded.input_table is not None and direct.input_table is None
    state_a, state_b = rnn_step.initial_state(loaded), rnn_step.initial_state(direct)
    for token in [3, 9, 0, 14]:
        logits_a, state_a = rnn_step.step(loaded, token, state_a)
        logits_b, state_b = rnn_step.step(direct, token, state_b)
        np.testing.assert_allclose(logits_a, logits_b, atol=TOL)
    np.testing.assert_allclose(
        logits_a, model(np.array([[3, 9, 14]])).numpy()[0], atol=TOL
    )


def test_gru_bias_shape_in_weights():
    config = _stream_config("gru", layers=1)
    weights = models.extract_step_weights(models.build_classifier(config), config)
    assert weights["rnn_0.bias"].shape == (2, 15)
    assert weights["rnn_0.recurrent_kernel"].shape == (5, 15)


def test_step_weights_validation():
    config = _stream_config("simple_rnn", layers=1)
    weights = models.extract_step_weights(models.build_classifier(config), config)
    broken = dict(weights)
    broken["rnn_0.kernel"] = broken["rnn_0.kernel"][:, :3]
    with pytest.raises(ValueError, match="rnn_0.kernel"):
        rnn_step.StepWeights.from_dict(broken)
    missing = dict(weights)
    del missing["logits.bias"]
    with pytest.raises(ValueError, match="logits.bias"):
        rnn_step.StepWeights.from_dict(missing)
    loaded = rnn_step.StepWeights.from_dict(weights)
    with pytest.raises(ValueError, match="outside"):
        rnn_step.step(loaded, VOCAB, rnn_step.initial_state(loaded))
    with pytest.raises(ValueError, match="Token ids"):
        rnn_step.step_batch(loaded, np.array([1, -1]), rnn_step.initial_state(loaded, 2))
    with pytest.raises(ValueError, match="shape"):
        rnn_step.step_batch(loaded, np.array([1, 2, 3]), rnn_step.initial_state(loaded, 2))


def test_numpy_step_does_not_mutate_input_state():
    config = _stream_config("lstm", layers=2)
    model = models.build_classifier(config)
    _randomize(model, seed=8)
    weights = rnn_step.StepWeights.from_dict(models.extract_step_weights(model, config))
    _, state = rnn_step.step_batch(weights, np.array([3, 4]), rnn_step.initial_state(weights, 2))
    snapshot = [s.copy() for s in state]
    rnn_step.step_batch(weights, np.array([7, 0]), state)
    rnn_step.step(weights, 6, [s[0] for s in state])
    for a, b in zip(state, snapshot):
        np.testing.assert_array_equal(a, b)


def test_probabilities():
    binary = rnn_step.probabilities(np.array([[0.0], [100.0], [-100.0]]), 2)
    np.testing.assert_allclose(binary, [[0.5], [1.0], [0.0]], atol=1e-6)
    assert np.all(np.isfinite(binary))
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0]], dtype=np.float32)
    probs = rnn_step.probabilities(logits, 3)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs[0], tf.nn.softmax(logits[0]).numpy(), atol=1e-6)
    np.testing.assert_allclose(probs[1], [1.0, 0.0, 0.0], atol=1e-6)
    with pytest.raises(ValueError):
        rnn_step.probabilities(np.zeros((2, 1)), 3)


def test_rnn_step_imports_without_tensorflow():
    code = (
        "import sys, beam_rnn.stream.step\n"
        "assert 'tensorflow' not in sys.modules, 'rnn_step pulled in tensorflow'\n"
        "assert 'tf_keras' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
