"""The optional gensim backend of `beam-rnn embeddings` (--backend gensim): same tokens, settings and files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from beam_rnn import embeddings as E
from beam_rnn.embeddings import CbowConfig
from beam_rnn.embeddings.gensim_backend import GENSIM_MAX_WORDS, id_sentences, read_token_ids
from tests.test_embeddings import ROOT, _tiny_prep

pytest.importorskip("gensim")  # in the `test` extra; the exit-2 test below runs without it either way


def test_id_sentences_remove_padding_and_oov_and_cut_long_documents():
    docs = [np.array([0, 1, 2, 3, 1, 4]), np.array([1, 0]), np.arange(2, 2 + GENSIM_MAX_WORDS + 5)]
    sentences, counts = id_sentences(docs, num_oov_buckets=1)
    np.testing.assert_array_equal(sentences[0], [2, 3, 4])
    assert [s.size for s in sentences[1:]] == [GENSIM_MAX_WORDS, 5]  # the empty document gives none
    np.testing.assert_array_equal(np.concatenate(sentences[1:]), docs[2])
    assert counts[:5].tolist() == [2, 3, 2, 2, 2] and counts.sum() == sum(d.size for d in docs)


def test_read_token_ids_reads_every_document_in_order(tmp_path):
    _tiny_prep(tmp_path / "prep", docs=[np.array([2, 3]), np.array([4]), np.array([5, 6, 7])])
    files = E.check_transformed(str(tmp_path / "prep"), ["train"])[0]
    got = read_token_ids(files, batch=2)
    assert [d.tolist() for d in got] == [[2, 3, 1], [4, 1], [5, 6, 7, 1]]  # _tiny_prep appends an OOV id


def test_train_gensim_uses_every_setting_of_the_config():
    config = CbowConfig(dim=8, window=3, negatives=4, sample=0.01, min_count=2, epochs=2, learning_rate=0.05,
                        min_learning_rate=0.001, noise_power=0.5, dynamic_window=False, seed=9, workers=1)
    sentences = [["a", "b", "c", "d", "a", "b"], ["c", "d", "a", "b"]] * 20 + [["rare", "a"]]
    model, training = E.train_gensim(sentences, config)
    got = (model.vector_size, model.window, model.negative, model.sample, model.min_count, model.epochs,
           model.alpha, model.min_alpha, model.ns_exponent, model.shrink_windows, model.seed, model.workers,
           model.sg, model.cbow_mean, model.hs)
    assert got == (8, 3, 4, 0.01, 2, 2, 0.05, 0.001, 0.5, False, 9, 1, 0, 1, 0)
    assert sorted(model.wv.index_to_key) == ["a", "b", "c", "d"]  # "rare" is below min_count
    assert training["raw_words"] == 2 * (20 * 10 + 2) and 0 < training["examples"] <= training["raw_words"]
    assert training["workers"] == 1 and training["train_seconds"] >= 0


def test_gensim_backend_writes_the_reference_files_with_the_same_words(tmp_path):
    from pipelines import embeddings as driver

    words = _tiny_prep(tmp_path / "prep")
    ev = tmp_path / "eval"
    ev.mkdir()
    (ev / E.WORDSIM_FILE).write_text("w0\tw1\t9\nw0\tw15\t1\nw1\tw2\t8\nw3\tw18\t2\n")
    common = ["--transformed", str(tmp_path / "prep"), "--epochs", "20", "--dim", "8", "--window", "2",
              "--min-count", "1", "--eval-data", str(ev), "--runner", "DirectRunner"]
    keras_out, gensim_out = tmp_path / "keras", tmp_path / "gensim"
    driver.run([*common, "--output", str(keras_out), "--epochs", "2"], save_main_session=False)
    metrics = driver.run([*common, "--output", str(gensim_out), "--backend", "gensim", "--workers", "1",
                          "--delete-examples"], save_main_session=False)
    assert sorted(os.listdir(gensim_out)) == sorted(set(os.listdir(keras_out)) - {E.EXAMPLES_DIR, E.META_FILE})
    loaded = E.load_word2vec_text(str(gensim_out / E.VECTORS_TXT))
    assert list(loaded) == list(E.load_word2vec_text(str(keras_out / E.VECTORS_TXT))) == words
    assert (gensim_out / E.METADATA_TSV).read_text().split() == words
    assert len((gensim_out / E.VECTORS_TSV).read_text().splitlines()) == len(words)
    saved = json.loads((gensim_out / E.METRICS_FILE).read_text())
    assert saved["config"]["backend"] == "gensim" and saved["config"] == metrics["config"]
    assert json.loads((gensim_out / E.CONFIG_FILE).read_text())["backend"] == "gensim"
    assert saved["corpus_words"] == 60 * 20 and saved["evaluation"]["wordsim353"]["pairs_covered"] == 4
    assert saved["raw_words"] == 20 * 60 * 20 and saved["words_per_second"] > 0
    # Two topics (w0..w9, w10..w19): gensim learns them from the same tokens.
    wv = E.WordVectors(list(loaded), np.stack(list(loaded.values())))
    same = np.mean([wv.unit[0] @ wv.unit[j] for j in range(1, 10)])
    other = np.mean([wv.unit[0] @ wv.unit[j] for j in range(10, 20)])
    assert same > other, (same, other)  # 1 worker: deterministic


def test_cli_exits_2_with_one_line_when_gensim_is_missing(tmp_path):
    blocker = tmp_path / "blocker" / "gensim"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named gensim (blocked by the test)')\n")
    _tiny_prep(tmp_path / "prep")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "blocker"), ROOT])}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.embeddings", "--transformed", str(tmp_path / "prep"),
         "--output", str(tmp_path / "out"), "--backend", "gensim", "--no-eval"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "gensim" in line]
    assert len(lines) == 1 and "pip install 'beam-rnn[gensim]'" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # found before any work
