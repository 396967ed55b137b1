"""beam_rnn.serve.bidirectional: a BiLSTM's prefix predictions with the forward direction shared."""

import numpy as np
import pytest
import tensorflow as tf

from beam_rnn.serve.bidirectional import PrefixBidirectional
from beam_rnn.serve.evaluate import bidirectional_early, prefix_early, prefix_lengths
from beam_rnn.train import models

SMALL = dict(vocab_size=40, embedding_dim=8, units=6, dense_units=5)


def _model(seed: int, **config):
    model_config = models.ModelConfig(**{**SMALL, "kind": "bilstm", "seed": seed, **config})
    model = models.build_classifier(model_config)
    rng = np.random.default_rng(seed)
    for v in model.variables:  # weights large enough that labels change along the prefixes
        v.assign(rng.normal(0.0, 0.8, v.shape).astype(np.float32))
    return model, model_config


def _ids(seed: int, lengths):
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), max(lengths)), np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(1, SMALL["vocab_size"], n)
    ids[0, 2] = 0  # a padding id inside a text is masked, as Keras does
    return ids


@pytest.mark.parametrize("cell,num_classes", [("lstm", 2), ("gru", 2), ("simple_rnn", 2), ("lstm", 3)])
def test_every_prefix_equals_the_keras_model_on_that_prefix(cell, num_classes):
    model, config = _model(7, cell=cell, num_classes=num_classes)
    prefix = PrefixBidirectional.from_variables(model.variables, num_classes)
    assert prefix is not None
    lengths = [9, 4, 1, 0, 6]
    ids = _ids(3, lengths)
    cuts = [list(range(0, n + 1)) for n in lengths]  # 0: the empty text
    got = prefix.logits(ids, cuts)
    for i, n in enumerate(lengths):
        assert got[i].shape == (n + 1, config.num_outputs)
        for t in range(n + 1):
            want = model(models_input(ids[i:i + 1, :t]), training=False).numpy()[0]
            np.testing.assert_allclose(got[i][t], want, atol=1e-5, err_msg=f"doc {i} prefix {t}")


def models_input(ids: np.ndarray) -> tf.Tensor:
    """A prefix as the model takes it; the empty prefix as one padding column (what the export feeds)."""
    return tf.constant(ids if ids.shape[1] else np.zeros((ids.shape[0], 1), np.int64))


def test_stacked_and_unidirectional_models_are_not_taken():
    stacked, _ = _model(1, stacked_tutorial=True)
    two_layers, _ = _model(1, layers=2)
    lstm, _ = _model(1, kind="lstm")
    for model in (stacked, two_layers, lstm):
        assert PrefixBidirectional.from_variables(model.variables, 2) is None


def test_evaluate_early_prefixes_match_rerunning_the_model():
    model, config = _model(11)
    lengths = [25, 3, 12, 1]
    ids = _ids(5, lengths)
    cuts = [prefix_lengths(n) for n in lengths]

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int64)])
    def classify(token_ids):
        return {"probabilities": tf.sigmoid(model(token_ids, training=False)[:, 0])}

    want = prefix_early(lambda token_ids: classify(token_ids), ids, cuts)
    got = bidirectional_early(PrefixBidirectional.from_variables(model.variables, 2), ids, cuts, 2)
    assert got.shape == want.shape == (4, 10)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_documents_go_through_in_bounded_groups_with_the_same_results(monkeypatch):
    from beam_rnn.serve import bidirectional

    model, _ = _model(13)
    prefix = PrefixBidirectional.from_variables(model.variables, 2)
    lengths = [7, 2, 9, 1, 4]
    ids = _ids(8, lengths)
    cuts = [list(range(1, n + 1)) for n in lengths]
    whole = prefix.logits(ids, cuts)
    calls = []
    original = PrefixBidirectional._group_logits
    monkeypatch.setattr(bidirectional, "MAX_ROWS", 8)
    monkeypatch.setattr(PrefixBidirectional, "_group_logits",
                        lambda self, i, c: calls.append(sum(map(len, c))) or original(self, i, c))
    grouped = prefix.logits(ids, cuts)
    assert calls == [7, 2, 9, 5]  # at most 8 prefixes a group, but a 9-token document alone
    for a, b in zip(whole, grouped):
        np.testing.assert_allclose(a, b, atol=1e-6)
