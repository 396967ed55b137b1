"""The incremental evaluation stage (beam_rnn.serve.incremental) against independent per-prefix references.

Exports: tests/test_inference.py's module fixture `env` (a streaming LSTM and a BiLSTM with
random weights, so labels change along the prefixes).
"""

import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

import apache_beam as beam
from beam_rnn.core import incremental as inc
from beam_rnn.core.artifacts import resolve_models
from beam_rnn.serve import incremental as stage
from beam_rnn.serve.bidirectional import PrefixBidirectional
from beam_rnn.serve.evaluate import read_step_weights
from beam_rnn.serve.handler import LoadedSavedModel
from tests.test_inference import env  # noqa: F401  (the module fixture with the exports)

TEXTS = ["w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12", "w3 w9 w1", "w7", "w2 w2 w5 w8 w1 w4 w6 w9 w3",
         "w10 w4 w4 w1 w2", ""]


def _one_prefix_at_a_time(model: LoadedSavedModel, ids: np.ndarray, n: int, tops: bool = False):
    """Reference: the model's serving label (and top probability) of each prefix, one classify_ids call each."""
    labels, top = [], []
    for t in range(1, n + 1):
        p = model.module.signatures["classify_ids"](token_ids=tf.constant(ids[None, :t]))["probabilities"].numpy()
        p = p.reshape(-1)
        labels.append(int(p[0] > 0.5) if p.size == 1 else int(np.argmax(p)))
        top.append(max(p[0], 1 - p[0]) if p.size == 1 else float(p.max()))
    return (labels, top) if tops else labels


@pytest.fixture(scope="module")
def loaded(env):  # noqa: F811
    models = {name: LoadedSavedModel(env["dirs"][name]) for name in ("lstm", "bilstm")}
    tok = models["lstm"].module.signatures["tokenize"](text=tf.constant(TEXTS))
    return models, tok["token_ids"].numpy(), tok["lengths"].numpy().astype(int)


def test_streaming_and_restart_labels_equal_a_full_pass_on_every_prefix(env, loaded):  # noqa: F811
    models, ids, lengths = loaded
    assert lengths.tolist()[-1] == 0 and lengths.max() >= 10
    weights = read_step_weights(env["dirs"]["lstm"])
    streamed, streamed_tops = stage.streaming_labels(weights, ids, lengths, 2)
    restarted, restarted_tops = {}, {}
    for name, m in models.items():
        restarted[name], restarted_tops[name] = stage.restart_labels(m.module.signatures["classify_ids"], ids, lengths)
    shared = PrefixBidirectional.from_module(models["bilstm"].module, 2)  # forward direction shared by the prefixes
    shared_labels, shared_tops = stage.bidirectional_labels(shared, ids, lengths, 2)
    for i, n in enumerate(lengths):
        for name, m in models.items():
            reference, reference_tops = _one_prefix_at_a_time(m, ids[i], int(n), tops=True)
            assert restarted[name][i] == reference, (name, i)
            np.testing.assert_allclose(restarted_tops[name][i], reference_tops, atol=1e-5)
            if name == "bilstm":
                assert shared_labels[i] == reference, i
                np.testing.assert_allclose(shared_tops[i], reference_tops, atol=1e-5)
        reference, reference_tops = _one_prefix_at_a_time(models["lstm"], ids[i], int(n), tops=True)
        assert streamed[i] == reference, i
        np.testing.assert_allclose(streamed_tops[i], reference_tops, atol=1e-5)
        assert all(0.5 <= x <= 1.0 for x in streamed_tops[i])
    assert streamed[-1] == [] and restarted["bilstm"][-1] == []
    # The random weights make labels change along the prefixes somewhere (else the measures test nothing).
    assert any(inc.changes(seq) for seq in streamed + restarted["bilstm"])


def test_the_stage_samples_deterministically_and_summarizes_every_token(env, loaded):  # noqa: F811
    models, ids, lengths = loaded
    infos = resolve_models([env["dirs"]["lstm"], env["dirs"]["bilstm"]])
    docs = [((f"doc{i}", i % 2), text) for i, text in enumerate(TEXTS)]
    sample = 4
    chosen = sorted(range(len(docs)), key=lambda i: stage.sample_key(docs[i][0][0]))[:sample]
    reference = {name: {i: _one_prefix_at_a_time(m, ids[i], int(lengths[i]), tops=True) for i in chosen}
                 for name, m in models.items()}
    expected_labels = {name: {i: labels for i, (labels, _) in r.items()} for name, r in reference.items()}

    def check(outputs):
        [out] = outputs
        assert out["sample_documents"] == sample
        read = [i for i in chosen if lengths[i] > 0]
        assert out["documents_without_tokens"] == sample - len(read)
        assert out["tokens"] == int(sum(lengths[i] for i in read))
        for name in ("lstm", "bilstm"):
            got = out["models"][name]
            assert got["mode"] == ("incremental" if name == "lstm" else "restart-incremental")
            want = inc.summarize([(inc.document_measures(expected_labels[name][i]),
                                   expected_labels[name][i][-1] == docs[i][0][1]) for i in read])
            assert got["documents"] == len(read)
            for key, value in want["mean"].items():
                assert got["mean"][key] == pytest.approx(value), (name, key)
            assert got["correct_documents"] == want["correct_documents"]
            assert sum(got["final_from_deciles"]) == len(read)
            final = [expected_labels[name][i][-1] == docs[i][0][1] for i in read]
            assert got["accuracy_at_fraction"]["1.0"] == pytest.approx(sum(final) / len(read))
            assert got["relative_correctness_at_fraction"]["1.0"] == 1.0
            assert got["microseconds_per_token"] > 0
            # The decision policy replayed: fires at the first top probability >= P, else the final label stands.
            for p_key, dec in got["decisions"].items():
                points = []
                for i in read:
                    labels, tops = reference[name][i]
                    t = next((t for t, x in enumerate(tops, 1) if x >= float(p_key) - 1e-6), None)
                    points.append((i, t))
                # Tolerance: a top probability within 1e-6 of P could fall either side (float32 vs the reference).
                near = any(abs(x - float(p_key)) < 1e-5 for i in read for x in reference[name][i][1])
                if near:
                    continue
                assert dec["fired"] == pytest.approx(sum(t is not None for _, t in points) / len(read))
                fraction = sum((t or lengths[i]) / lengths[i] for i, t in points) / len(read)
                assert dec["read_fraction"] == pytest.approx(fraction)
                right = sum(reference[name][i][0][(t or lengths[i]) - 1] == docs[i][0][1] for i, t in points)
                assert dec["accuracy"] == pytest.approx(right / len(read))

    with TestPipeline(runner="DirectRunner") as p:
        out = (p | beam.Create(docs) | stage.IncrementalMeasures(infos, sample=sample, batch_size=3))
        assert_that(out, check)


def test_sample_must_be_positive(env):  # noqa: F811
    with pytest.raises(ValueError, match="sample must be >= 1"):
        stage.IncrementalMeasures(resolve_models([env["dirs"]["lstm"]]), sample=0)


def test_every_streaming_model_steps_token_by_token_whatever_its_name(env):  # noqa: F811
    """plain=... and pt=... (two streaming LSTMs compared in one evaluate) are both read incrementally."""
    from beam_rnn.serve.evaluate import EvaluationModels, PREFIX_FRACTIONS

    lstm = env["dirs"]["lstm"]
    infos = resolve_models([f"plain={lstm}", f"pt={lstm}", env["dirs"]["bilstm"]])
    docs = [((f"doc{i}", i % 2), text) for i, text in enumerate(TEXTS)]

    def check(outputs):
        [out] = outputs
        modes = {name: m["mode"] for name, m in out["models"].items()}
        assert modes == {"plain": "incremental", "pt": "incremental", "bilstm": "restart-incremental"}
        assert out["models"]["plain"]["mean"] == out["models"]["pt"]["mean"]

    with TestPipeline(runner="DirectRunner") as p:
        assert_that(p | beam.Create(docs) | stage.IncrementalMeasures(infos, sample=4, batch_size=3), check)
    models = EvaluationModels(infos, PREFIX_FRACTIONS)
    assert models.prefix_models.keys() == {"bilstm"} and models.streaming == "plain"
    _, full, early = models.predict(TEXTS)
    np.testing.assert_array_equal(early[0], early[1])  # both from the NumPy step
