"""Word2Vec CBOW: windows, subsampling, the Beam stage, training, export, evaluation, warm start."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from beam_rnn import embeddings as E
from beam_rnn.core import constants as C
from beam_rnn.core import metrics
from beam_rnn.core.manifest import write_manifest
from beam_rnn.embeddings import CbowConfig, EmbeddingsConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeRng:
    """Hands out fixed draws so the hand computation is exact."""

    def __init__(self, uniforms, integers=None):
        self._u = np.asarray(uniforms, dtype=np.float64)
        self._i = None if integers is None else np.asarray(integers)

    def random(self, n):
        assert n == self._u.size
        return self._u

    def integers(self, low, high, size):
        assert size == self._i.size and self._i.min() >= low and self._i.max() < high
        return self._i


# --- Pure functions -------------------------------------------------------------


def test_keep_probabilities_match_word2vec_formula_by_hand():
    # total = 10, sample = 0.1 -> t = 1; keep = (sqrt(f/t) + 1) * t / f, capped at 1.
    keep = E.keep_probabilities([0, 0, 6, 3, 1], sample=0.1)
    np.testing.assert_allclose(keep, [0.0, 0.0, (6**0.5 + 1) / 6, (3**0.5 + 1) / 3, 1.0])
    np.testing.assert_allclose(keep[2:4], [0.574915, 0.910684], atol=1e-6)
    np.testing.assert_array_equal(E.keep_probabilities([0, 4, 2], sample=0), [0.0, 1.0, 1.0])


def test_trainable_counts_zero_padding_oov_and_rare():
    np.testing.assert_array_equal(
        E.trainable_counts([5, 9, 9, 4, 1, 7], min_count=4, num_oov_buckets=2), [0, 0, 0, 4, 0, 7]
    )


def test_cbow_windows_without_subsampling():
    # ids: 0 = pad, 1 = OOV (k = 1) are removed first; kept words 2 3 4 5 6.
    ctx, tgt = E.cbow_windows([2, 1, 3, 4, 0, 5, 6], 2, np.ones(7), None)
    np.testing.assert_array_equal(tgt, [2, 3, 4, 5, 6])
    np.testing.assert_array_equal(
        ctx,
        [[0, 0, 3, 4],  # slots: offsets -2 -1 +1 +2
         [0, 2, 4, 5],
         [2, 3, 5, 6],
         [3, 4, 6, 0],
         [4, 5, 0, 0]],
    )


def test_cbow_windows_with_subsampling_and_dynamic_window_by_hand():
    keep = np.array([1.0, 1.0, 1.0, 0.5, 0.2, 1.0, 0.0, 1.0])
    ids = [2, 3, 4, 1, 5, 3, 6, 7]
    # Draws per input token: id 3 (p .5) kept at u .4, dropped at u .6; id 4 (p .2) dropped
    # at u .3; OOV 1 and id 6 (p 0) never kept; p = 1 always kept.
    rng = FakeRng([0.9, 0.4, 0.3, 0.0, 0.99, 0.6, 0.0, 0.5], integers=[1, 2, 1, 2])
    ctx, tgt = E.cbow_windows(ids, 2, keep, rng, dynamic_window=True)
    # kept: 2 3 5 7 ; effective windows 1 2 1 2
    np.testing.assert_array_equal(tgt, [2, 3, 5, 7])
    np.testing.assert_array_equal(ctx, [[0, 0, 3, 0], [0, 2, 5, 7], [0, 3, 7, 0], [3, 5, 0, 0]])


def test_cbow_windows_drops_targets_without_context_and_checks_ids():
    ctx, tgt = E.cbow_windows([1, 5, 1], 3, np.ones(6), None)
    assert ctx.shape == (0, 6) and tgt.shape == (0,)
    with pytest.raises(ValueError):
        E.cbow_windows([9], 1, np.ones(3), None)


def test_document_seed_is_stable_and_distinct():
    assert E.document_seed(1, "a", 0) == E.document_seed(1, b"a", 0)
    assert len({E.document_seed(1, "a", 0), E.document_seed(1, "a", 1), E.document_seed(2, "a", 0)}) == 3


# --- Beam stage -------------------------------------------------------------------


def _transformed_example(doc_id: str, ids) -> bytes:
    import tensorflow as tf

    return tf.train.Example(features=tf.train.Features(feature={
        C.TOKEN_IDS_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=list(ids))),
        C.ID_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[doc_id.encode()])),
        C.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[0])),
    })).SerializeToString()


DOCS = {"d0": [2, 3, 1, 4], "d1": [4, 4, 5], "d2": [1, 6]}


def test_beam_stage_produces_exactly_the_expected_examples(tmp_path):
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    expected = [
        ((0, 3), 2), ((2, 4), 3), ((3, 0), 4),  # d0: OOV removed -> 2 3 4
        ((0, 4), 4), ((4, 5), 4), ((4, 0), 5),  # d1
    ]  # d2: one word, no context -> nothing
    out = str(tmp_path / "cbow")
    with TestPipeline(argv=["--runner=DirectRunner"]) as p:
        docs = p | beam.Create([_transformed_example(k, v) for k, v in DOCS.items()])
        config = E.CbowConfig(window=1, sample=0, seed=7, passes=1, min_count=1, dynamic_window=False)
        res = docs | E.MakeCbowExamples(config=config, output_dir=out)
        assert_that(res.examples[0] | beam.FlatMap(E.decode_cbow_examples), equal_to(expected))
        assert_that(res.counts | beam.Map(lambda c: c.tolist()), equal_to([[0, 2, 1, 1, 3, 1, 1]]), label="counts")
    meta = E.read_meta(out)
    assert meta["examples_per_pass"] == [6] and meta["counts"].tolist() == [0, 2, 1, 1, 3, 1, 1]
    assert {k: meta[k] for k in ("window", "sample", "seed", "passes", "min_count", "dynamic_window")} == {
        "window": 1, "sample": 0.0, "seed": 7, "passes": 1, "min_count": 1, "dynamic_window": False}
    files = __import__("glob").glob(E.pass_pattern(os.path.join(out, E.EXAMPLES_DIR), 0))
    ctx, tgt = E.load_cbow_examples(files, window=1)
    assert sorted(zip(map(tuple, ctx.tolist()), tgt.tolist())) == sorted(expected)


def test_make_cbow_examples_takes_its_defaults_from_cbow_config():
    from beam_rnn.embeddings.examples import MakeCbowExamples

    default = CbowConfig()
    settings = MakeCbowExamples(num_oov_buckets=2)._settings
    assert settings == {"window": default.window, "sample": default.sample, "seed": default.seed,
                        "passes": default.epochs, "min_count": default.min_count, "num_oov_buckets": 2,
                        "dynamic_window": default.dynamic_window}
    assert MakeCbowExamples(config=CbowConfig(epochs=4, passes=2, sample=0))._settings["passes"] == 2


def test_dofn_is_deterministic_per_document():
    from beam_rnn.embeddings.examples import _CbowExamplesDoFn

    counts = np.array([0, 50, 40, 30, 20, 10, 5, 5, 5])
    fn = _CbowExamplesDoFn(window=2, sample=0.01, seed=3, passes=2, min_count=1, num_oov_buckets=1,
                             dynamic_window=True)
    doc = ("doc-1", np.array([2, 3, 4, 2, 5, 1, 6, 7, 8, 2, 3, 4, 5]))
    # Compared decoded: the encoder's feature-map order in the bytes is not fixed.
    first = [(o.tag, o.value[0], E.decode_cbow_examples(o.value[1])) for o in fn.process(doc, counts)]
    again = [(o.tag, o.value[0], E.decode_cbow_examples(o.value[1])) for o in fn.process(doc, counts)]
    assert first == again and {t for t, _, _ in first} <= {"pass0", "pass1"}
    assert all(n == len(block) > 0 for _, n, block in first)


# --- Training and export ------------------------------------------------------------


def _write_examples(path: str, contexts: np.ndarray, targets: np.ndarray) -> None:
    import tensorflow as tf

    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for lo in range(0, len(targets), 7):  # blocks of 7 examples, like short documents
            w.write(E.encode_cbow_block(contexts[lo:lo + 7], targets[lo:lo + 7]))



def test_blocks_round_trip_and_load_in_record_order(tmp_path):
    rng = np.random.default_rng(5)
    ctx = rng.integers(0, 50, size=(23, 4))
    tgt = rng.integers(2, 50, size=23)
    back_ctx, back_tgt = E.decode_cbow_block(E.encode_cbow_block(ctx, tgt))
    np.testing.assert_array_equal(back_ctx, ctx)
    np.testing.assert_array_equal(back_tgt, tgt)
    path = str(tmp_path / "blocks.tfrecord.gz")
    _write_examples(path, ctx, tgt)  # 4 blocks of 7, 7, 7, 2 examples
    loaded_ctx, loaded_tgt = E.load_cbow_examples([path], window=2)
    np.testing.assert_array_equal(loaded_ctx, ctx)
    np.testing.assert_array_equal(loaded_tgt, tgt)
    assert E.count_examples([path]) == 23
    with pytest.raises(ValueError):
        E.encode_cbow_block(ctx[:3], tgt[:4])


def _topic_corpus(rng, docs=150, length=30):
    # Two topics: ids 2..11 co-occur, ids 12..21 co-occur.
    out = []
    for d in range(docs):
        lo = 2 if d % 2 == 0 else 12
        out.append(rng.integers(lo, lo + 10, size=length))
    return out


def _topic_examples(tmp_path):
    """One pass of the two-topic corpus written as block records: (path, contexts, targets, counts)."""
    rng = np.random.default_rng(0)
    parts = [E.cbow_windows(doc, 2, np.ones(22), None) for doc in _topic_corpus(rng)]
    ctx = np.concatenate([p[0] for p in parts])
    tgt = np.concatenate([p[1] for p in parts])
    path = str(tmp_path / "pass-000-00000-of-00001.tfrecord.gz")
    _write_examples(path, ctx, tgt)
    return path, ctx, tgt, E.trainable_counts(np.bincount(tgt, minlength=22), min_count=1)


def _train_topics(path, counts, **config):
    """Trains 4 epochs; returns (result, same-topic cosine, other-topic cosine)."""
    config = E.CbowConfig(dim=16, window=2, negatives=3, epochs=4, batch_size=32, learning_rate=0.05, seed=3, **config)
    model = E.build_cbow_model(22, 16, window=2, seed=3)
    result = E.train_cbow(model, [[path]], counts, config)
    wv = E.WordVectors(*E.model_vectors(model, [f"w{i}" for i in range(20)], counts))
    return result, float(wv.unit[0] @ wv.unit[1]), float(wv.unit[0] @ wv.unit[15])  # ids 2, 3 vs 2, 17


def test_training_lowers_the_loss_and_learns_topics(tmp_path):
    path, _, tgt, counts = _topic_examples(tmp_path)
    result, same, other = _train_topics(path, counts)
    losses = result["epoch_losses"]
    assert result["examples"] == 4 * tgt.size
    assert losses[-1] < losses[0] * 0.9, losses
    assert same > other


def test_training_in_chunks_sees_every_example_and_still_learns(tmp_path):
    path, ctx, tgt, counts = _topic_examples(tmp_path)
    chunks = list(E.iter_cbow_chunks([path], window=2, max_examples=500))
    assert len(chunks) > 3 and all(c[1].size >= 500 for c in chunks[:-1])
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), tgt)  # consecutive, complete
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), ctx)
    result, same, other = _train_topics(path, counts, max_examples_in_memory=500)
    assert result["examples"] == 4 * tgt.size
    assert result["epoch_losses"][-1] < result["epoch_losses"][0] * 0.9
    assert same > other


def test_vectors_round_trip_through_word2vec_text(tmp_path):
    rng = np.random.default_rng(1)
    words = ["the", "movie", "good", "\x85odd"]  # U+0085 is a word here, not a separator
    vecs = (rng.normal(size=(4, 7)) * 10.0 ** rng.integers(-8, 8, size=(4, 7))).astype(np.float32)
    path = str(tmp_path / "v.txt")
    E.save_word2vec_text(path, words, vecs)
    with open(path, encoding="utf-8") as f:
        assert f.readline() == "4 7\n"
    loaded = E.load_word2vec_text(path)
    assert list(loaded) == words
    np.testing.assert_array_equal(np.stack(list(loaded.values())), vecs)
    vpath, mpath = E.save_projector_tsv(str(tmp_path), words, vecs)
    assert open(mpath, encoding="utf-8").read().split("\n")[:-1] == words
    np.testing.assert_array_equal(np.loadtxt(vpath, delimiter="\t", dtype=np.float32), vecs)
    with pytest.raises(ValueError):
        E.save_word2vec_text(path, ["two words"], vecs[:1])
    glove = tmp_path / "glove.txt"
    glove.write_text("a 1 2\nb 3 4\n")
    assert {k: v.tolist() for k, v in E.load_word2vec_text(str(glove)).items()} == {"a": [1, 2], "b": [3, 4]}
    assert E.read_word2vec_dim(path) == 7 and E.read_word2vec_dim(str(glove)) == 2


# --- Evaluation --------------------------------------------------------------------


def test_rankdata_and_spearman_by_hand():
    np.testing.assert_array_equal(metrics.rankdata([10, 20, 10, 30]), [1.5, 3, 1.5, 4])
    # ranks x: 1 2 3 4, y: 1 3 2 4 -> d^2 = 2, rho = 1 - 6*2 / (4*15) = 0.8
    assert metrics.spearman([1, 2, 3, 4], [5, 7, 6, 8]) == pytest.approx(0.8)
    assert metrics.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_word_pair_similarity_with_coverage(tmp_path):
    vectors = {"cat": np.array([1.0, 0.0]), "dog": np.array([0.9, 0.1]), "car": np.array([0.0, 1.0]),
               "Tiger": np.array([1.0, 0.05])}
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("# header\n# Word 1\tWord 2\tHuman\ncat\tdog\t9\ncat\tcar\t1\ntiger\tcat\t8\n"
                     "dog\tcar\t2\ncat\tunicorn\t5\n")
    res = E.evaluate_word_pairs(vectors, str(pairs))
    assert res["pairs_covered"] == 4 and res["pairs_total"] == 5 and res["coverage"] == pytest.approx(0.8)
    # cosines: cat-dog .994, cat-car 0, tiger-cat .9988, dog-car .110 -> ranks 3 1 4 2; human 4 1 3 2.
    assert res["spearman"] == pytest.approx(0.8)


def test_analogy_3cosadd_excludes_question_words_and_reports_coverage(tmp_path):
    vectors = {
        "man": np.array([1.0, 0.0, 0.0]),
        "woman": np.array([1.0, 1.0, 0.0]),
        "king": np.array([1.0, 0.0, 1.0]),
        "queen": np.array([1.0, 0.9, 1.0]),
        "prince": np.array([0.0, 0.0, 1.0]),
    }
    q = tmp_path / "q.txt"
    # king - man + woman = (1, 1, 1): nearest overall is "woman"/"queen"-ish; woman is excluded.
    q.write_text(": family\nman woman king queen\nman woman king prince\n: gram1\nman woman king zebra\n")
    res = E.evaluate_analogies(vectors, str(q))
    assert (res["correct"], res["covered"], res["total"]) == (1, 2, 3)
    assert res["accuracy"] == pytest.approx(0.5) and res["coverage"] == pytest.approx(2 / 3)
    assert res["semantic"]["covered"] == 2 and res["syntactic"]["total"] == 1
    # Restricting to the top 4 words drops "prince" (a candidate) and the question needing it.
    assert E.evaluate_analogies(vectors, str(q), restrict_vocab=4)["covered"] == 1


# --- Warm start -----------------------------------------------------------------------


def _classifier(vocab_size: int, dim: int):
    from beam_rnn.train import models

    return models.build_classifier(models.ModelConfig(kind="bilstm", vocab_size=vocab_size, embedding_dim=dim,
                                                      units=4, dense_units=4))


def test_warm_start_sets_exactly_the_matching_rows_and_freezes():
    vocab = ["the", "good", "bad", "plot"]
    k = 2
    model = _classifier(len(vocab) + k + 1, 3)
    before = model.get_layer("embedding").get_weights()[0].copy()
    vectors = {"good": np.array([1.0, 2.0, 3.0]), "PLOT": np.array([4.0, 5.0, 6.0]), "zebra": np.ones(3)}
    matrix, matched = E.pretrained_embedding_matrix(vectors, vocab, k, 3, initial=before, rescale=False)
    assert matched == 2
    changed = [i for i in range(matrix.shape[0]) if not np.array_equal(matrix[i], before[i])]
    assert changed == [k + 1 + 1, k + 1 + 3]  # good, plot
    np.testing.assert_array_equal(matrix[4], [1, 2, 3])
    np.testing.assert_array_equal(matrix[6], [4, 5, 6])
    order = [w.name for w in model.weights]
    E.warm_start_embedding(model, matrix, freeze=True)
    layer = model.get_layer("embedding")
    np.testing.assert_array_equal(layer.get_weights()[0], matrix)
    assert not layer.trainable and all("embedding" not in w.name for w in model.trainable_weights)
    assert [w.name for w in model.weights] == order
    import tf_keras as keras

    model.compile(optimizer=keras.optimizers.Adam(0.1), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    model.fit(np.array([[3, 4, 5], [6, 2, 0]]), np.array([1.0, 0.0]), epochs=2, verbose=0)
    np.testing.assert_array_equal(layer.get_weights()[0], matrix)
    with pytest.raises(ValueError):
        E.pretrained_embedding_matrix(vectors, vocab, k, 4, initial=None)


def test_warm_start_from_file_reads_vocabulary_and_oov_layout(tmp_path):
    prep = tmp_path / "prep"
    (prep / C.TRANSFORM_FN_DIR / "assets").mkdir(parents=True)
    (prep / C.TRANSFORM_FN_DIR / "assets" / C.VOCAB_FILENAME).write_text("the\ngood\nbad\n")
    (prep / C.STATS_FILE).write_text(json.dumps({"num_oov_buckets": 1}))
    vec_path = tmp_path / "v.txt"
    E.save_word2vec_text(str(vec_path), ["bad", "other"], np.array([[1, 1], [2, 2]], np.float32))
    model = _classifier(5, 2)
    before = model.get_layer("embedding").get_weights()[0].copy()
    info = E.warm_start_from_file(model, str(vec_path), str(prep))  # rescaled by default, like `train`
    after = model.get_layer("embedding").get_weights()[0]
    assert info["matched"] == 1 and info["rescaled"] and model.get_layer("embedding").trainable
    # One factor brings the matched rows' RMS (1.0) to the initial matrix's RMS.
    np.testing.assert_allclose(after[4], np.ones(2) * np.sqrt(np.mean(before.astype(np.float64) ** 2)), rtol=1e-5)
    np.testing.assert_array_equal(after[:4], before[:4])
    info = E.warm_start_from_file(model, str(vec_path), str(prep), rescale=False)
    assert not info["rescaled"]
    np.testing.assert_array_equal(model.get_layer("embedding").get_weights()[0][4], [1, 1])


# --- Driver --------------------------------------------------------------------------


def _tiny_prep(root, docs=None):
    import tensorflow as tf

    words = [f"w{i}" for i in range(20)]
    (root / C.TRANSFORM_FN_DIR / "assets").mkdir(parents=True)
    (root / C.TRANSFORM_FN_DIR / "assets" / C.VOCAB_FILENAME).write_text("\n".join(words) + "\n")
    (root / C.STATS_FILE).write_text(json.dumps({"num_oov_buckets": 1, "vocab_size_with_reserved": 22}))
    (root / C.TRANSFORMED_DIR).mkdir()
    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(str(root / C.TRANSFORMED_DIR / "train-00000-of-00001.tfrecord.gz"),
                              options="GZIP") as w:
        for i, doc in enumerate(_topic_corpus(rng, docs=60, length=20) if docs is None else docs):
            w.write(_transformed_example(f"doc{i}", np.append(doc, 1)))
    write_manifest(str(root))
    return words


def test_driver_end_to_end_on_a_tiny_corpus(tmp_path):
    from pipelines import embeddings as driver

    words = _tiny_prep(tmp_path / "prep")
    ev = tmp_path / "eval"
    ev.mkdir()
    (ev / E.WORDSIM_FILE).write_text("w0\tw1\t9\nw0\tw15\t1\nw1\tw2\t8\nw3\tw18\t2\n")
    out = tmp_path / "out"
    metrics = driver.run(["--transformed", str(tmp_path / "prep"), "--output", str(out), "--epochs", "2",
                          "--dim", "8", "--window", "2", "--min-count", "1", "--batch-size", "32",
                          "--eval-data", str(ev), "--runner", "DirectRunner"], save_main_session=False)
    loaded = E.load_word2vec_text(str(out / E.VECTORS_TXT))
    assert list(loaded) == words and len(next(iter(loaded.values()))) == 8
    assert (out / E.VECTORS_TSV).exists() and (out / E.METADATA_TSV).exists()
    saved = json.loads((out / E.METRICS_FILE).read_text())
    assert saved["evaluation"]["wordsim353"]["pairs_covered"] == 4
    assert len(metrics["examples_per_pass"]) == 2 and metrics["corpus_words"] == 60 * 20


def _driver_config(argv):
    from beam_rnn.cli.flags import config_from_flags, parse_known_flags
    from pipelines import embeddings as driver

    known, rest = parse_known_flags(driver.build_parser(), argv)
    return config_from_flags(EmbeddingsConfig, known, cbow=config_from_flags(CbowConfig, known)), rest


def test_driver_flags_default_to_the_configs():
    config, rest = _driver_config(["--transformed", "p", "--output", "o", "--runner", "DirectRunner"])
    assert config == EmbeddingsConfig("p", "o") and config.cbow == CbowConfig() and rest == ["--runner", "DirectRunner"]
    assert (config.splits, config.evaluate, config.delete_examples) == (("train",), True, False)
    assert CbowConfig().min_count == 5 and CbowConfig().dynamic_window  # what the CLI has always used


def test_driver_accepts_every_flag_of_the_command_line():
    config, rest = _driver_config([
        "--transformed", "p", "--output", "o", "--splits", "train", "eval", "--epochs", "3", "--passes", "2",
        "--dim", "8", "--window", "3", "--negatives", "4", "--sample", "0", "--min_count", "2", "--fixed-window",
        "--batch-size", "16", "--learning-rate", "0.05", "--max-examples-in-memory", "300", "--seed", "7",
        "--backend", "gensim", "--workers", "1", "--eval-data", "ev", "--no-eval", "--analogy-restrict-vocab", "30", "--delete-examples"])
    assert rest == []
    assert config == EmbeddingsConfig(
        "p", "o", splits=("train", "eval"), eval_data="ev", evaluate=False, analogy_restrict_vocab=30,
        delete_examples=True, cbow=CbowConfig(dim=8, window=3, negatives=4, sample=0.0, min_count=2, epochs=3,
                                              passes=2, dynamic_window=False, batch_size=16, learning_rate=0.05,
                                              max_examples_in_memory=300, seed=7, backend="gensim", workers=1))
    assert config.eval_dir() is None  # --no-eval


def test_driver_rejects_bad_values_with_exit_2(capsys):
    from beam_rnn.cli import run_command

    for argv, message in ((["--window", "0"], "--window must be >= 1, got 0"),
                          (["--splits", "test"], "argument --splits: invalid choice: 'test'"),
                          (["--passes", "0"], "--passes must be >= 1, got 0"),
                          (["--backend", "torch"], "argument --backend: invalid choice: 'torch'"),
                          (["--workers", "0"], "--workers must be >= 1, got 0")):
        assert run_command("embeddings", ["--transformed", "p", "--output", "o", *argv]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert len(errors) == 1 and message in errors[0], errors


def test_driver_run_fails_when_no_example_is_made(tmp_path):
    from beam_rnn.core.errors import RunFailed, exit_code
    from pipelines import embeddings as driver

    _tiny_prep(tmp_path / "prep", docs=[np.array([2]), np.array([3, 1])])  # one word each: no context
    with pytest.raises(RunFailed, match="no CBOW examples were made") as e:
        driver.run(["--transformed", str(tmp_path / "prep"), "--output", str(tmp_path / "out"), "--no-eval",
                    "--min-count", "1", "--epochs", "1"], save_main_session=False)
    assert exit_code(e.value) == 1


def test_cli_exits_2_on_missing_transformed_dir(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.embeddings", "--transformed", str(tmp_path / "nope"),
         "--output", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_analogy_answer_is_never_a_question_word():
    vectors = {"big": np.array([1.0, 0.0, 0.0]), "bigger": np.array([1.0, 0.1, 0.0]),
               "small": np.array([0.0, 1.0, 0.0]), "smaller": np.array([0.1, 1.0, 0.2]),
               "tree": np.array([0.0, 0.0, 1.0])}
    # bigger - big + small is almost "small" itself; excluded, the answer is "smaller".
    res = E.evaluate_analogies(vectors, [("gram2-comparative", "big", "bigger", "small", "smaller")])
    assert res["correct"] == 1 and res["syntactic"]["accuracy"] == 1.0


def test_rescale_matches_the_initial_rms_and_keeps_cosines():
    init = np.full((5, 2), 0.05, np.float32)
    vectors = {"a": np.array([3.0, 4.0]), "b": np.array([-6.0, 8.0])}
    matrix, matched = E.pretrained_embedding_matrix(vectors, ["a", "b"], 2, 2, initial=init, rescale=True)
    assert matched == 2
    np.testing.assert_allclose(np.sqrt(np.mean(matrix[3:] ** 2)), 0.05, rtol=1e-5)
    np.testing.assert_allclose(matrix[4] / matrix[3], np.array([-6.0, 8.0]) / np.array([3.0, 4.0]), rtol=1e-5)
    np.testing.assert_array_equal(matrix[:3], init[:3])


def test_driver_exits_2_on_a_damaged_transformed_dir(tmp_path):
    """A shard altered after preprocessing: one line naming it, exit 2, before any work."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    _tiny_prep(tmp_path / "prep")
    shard = tmp_path / "prep" / C.TRANSFORMED_DIR / "train-00000-of-00001.tfrecord.gz"
    shard.write_bytes(shard.read_bytes()[:-10])
    proc = subprocess.run([sys.executable, "-m", "pipelines.embeddings", "--transformed", str(tmp_path / "prep"),
                           "--output", str(tmp_path / "vec")], capture_output=True, text=True, cwd=str(ROOT),
                          timeout=300, check=False)
    errors = [line for line in proc.stderr.splitlines() if "embeddings: error:" in line]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert "transformed/train-00000-of-00001.tfrecord.gz is damaged" in errors[0]
    assert not (tmp_path / "vec").exists()
