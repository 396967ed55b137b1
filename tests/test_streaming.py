"""Tests for beam_rnn.stream (tokenizer, classifier, transform), beam_rnn.core.spec and pipelines.stream.

A module-scoped fixture preprocesses two tiny synthetic corpora with TFT and
exports two streaming models with `export.export_model` (the approach of
tests/test_export.py): "lstm" (binary, 1 OOV bucket) and "gru3" (3 classes,
2-layer GRU, 2 OOV buckets, max_tokens=8).  The NumPy streaming path is then
checked against the exported SavedModel signatures (`tokenize`,
`serving_default`, `classify_ids`), which run the TFT graph itself.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from beam_rnn.core import constants as C
from beam_rnn.train import export
from beam_rnn.train import models
from beam_rnn.preprocess import tft_graph as preprocessing
from beam_rnn import stream as streaming
from beam_rnn.core import spec
from beam_rnn.stream import StreamingClassifier, StreamTokenizer, TokenizerState
from tests.helpers import p_or_list
from tests.helpers import preprocess_docs as _preprocess
from tests.helpers import randomize_weights as _randomize
from tests.helpers import synthetic_docs as _docs

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TOL = 1e-5

from tests.helpers import WORDS  # noqa: E402

# Adversarial texts: unicode whitespace (TF does not split on it), tags, a '<' with
# no '>', punctuation-only words, case outside ASCII, control characters.
ADVERSARIAL = [
    "",
    " ",
    "Good movie, GREAT plot!<br /><br />The actor... was fine.",
    "good\u00a0movie",  # NBSP: not a TF separator, one token
    "good\u2003movie\u3000plot\u2028film\u0085actor",
    "good\x1cmovie\x1dplot\x1efilm\x1fthe",  # str.split() would split these
    "good\x0bmovie\x0cplot\rfilm\tthe\nend",  # these are TF separators
    "a < b and good",
    "a<b",
    "x <y <z",
    "<i>awful</i> film; poor plot & 'bad' actor -- of the a and",
    "plot<br\nclass='x'>twist",  # a tag spanning a newline
    "... !!! ??? -- good",
    "ÉCOLE École ÀB movie İstanbul ẞ",
    "<<<>>> good <> bad >< film",
    "good>bad",
    "tag at end <",
    "unclosed <b tag with good words",
    "  leading and trailing  ",
    "\t\n",
    "a" * 300,
    " ".join(WORDS * 3),
    "zzqx unknownword qqwertyzz bad xyzzy frobnicate",
]


# --- Fixture: two tiny exported streaming models ------------------------------------------


class Exported:
    """One exported model: its dir, classifier and SavedModel signatures."""

    def __init__(self, model_dir: str, num_classes: int):
        self.model_dir = model_dir
        self.num_classes = num_classes
        self.clf = StreamingClassifier.load(model_dir)
        self.sigs = export.load_exported(model_dir).signatures

    def graph_ids(self, texts: list[str]) -> list[list[int]]:
        out = self.sigs["tokenize"](text=tf.constant(texts))
        ids, lengths = out["token_ids"].numpy(), out["lengths"].numpy()
        return [row[:n].tolist() for row, n in zip(ids, lengths)]

    def serve(self, texts: list[str]) -> np.ndarray:
        return self.sigs["serving_default"](text=tf.constant(texts))["probabilities"].numpy()

    def classify_ids(self, rows: list[list[int]]) -> np.ndarray:
        width = max(1, max(len(r) for r in rows))
        dense = np.zeros((len(rows), width), np.int64)
        for i, r in enumerate(rows):
            dense[i, : len(r)] = r
        return self.sigs["classify_ids"](token_ids=tf.constant(dense))["probabilities"].numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Exported]:
    root = tmp_path_factory.mktemp("streaming")
    cfg_bin = preprocessing.PreprocessConfig(vocab_size=50, min_frequency=1, eval_fraction=0.25)
    cfg_multi = preprocessing.PreprocessConfig(
        vocab_size=10, min_frequency=1, num_oov_buckets=2, max_tokens=8,
        label_type=C.LABEL_TYPE_STRING, label_set=("neg", "neu", "pos"), eval_fraction=0.25,
    )
    out = {}
    small = dict(embedding_dim=8, units=6, dense_units=5)
    for name, cfg, labels, extra, seed in (
        ("lstm", cfg_bin, [0, 1], dict(), 1),
        ("gru3", cfg_multi, ["neg", "neu", "pos"], dict(num_classes=3, cell="gru", layers=2), 2),
    ):
        prep = str(root / f"prep_{name}")
        stats = _preprocess(prep, _docs(60, labels, seed), cfg)
        mcfg = models.ModelConfig(kind="lstm", vocab_size=stats["vocab_size_with_reserved"], seed=seed, **small, **extra)
        model = models.build_classifier(mcfg)
        _randomize(model, seed=10 + seed)
        model_dir = str(root / "models" / name)
        export.export_model(model, mcfg, prep, model_dir, {}, verify=False)
        shutil.rmtree(prep)
        out[name] = Exported(model_dir, mcfg.num_classes)
    return out


def _probs(predictions, num_classes):
    return np.array([p.probability for p in predictions], dtype=np.float64).reshape(len(predictions), -1)


def _chunks(text: str, rng: random.Random, max_len: int = 6) -> list[str]:
    out, i = [], 0
    while i < len(text):
        j = i + rng.randint(0, max_len)
        out.append(text[i:j])
        i = j
    return out


def _stream(clf: StreamingClassifier, chunks: list[str]):
    state = clf.start()
    predictions = []
    for chunk in chunks:
        p, state = clf.feed(state, chunk)
        predictions += p
    p, state = clf.finish(state)
    return predictions + p, state


# --- The tokenisation mirror ------------------------------------------------------------------


def test_graph_and_keras_export_read_the_one_spec():
    # Not copies that a test keeps equal: the TFT graph and the .keras rebuild use the spec's objects.
    from beam_rnn.train import keras_text

    for module in (preprocessing, keras_text):
        assert module.PUNCTUATION_REGEX is spec.PUNCTUATION_REGEX
        assert module.HTML_TAG_REGEX is spec.HTML_TAG_REGEX


def test_whitespace_is_what_tf_strings_split_splits_on():
    candidates = [chr(c) for c in range(0x80)] + [
        chr(c) for c in (0x85, 0xA0, 0x1680, 0x180E, *range(0x2000, 0x200C), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000, 0xFEFF)
    ]
    texts = [f"a{c}b" for c in candidates]
    tf_split = tf.strings.split(tf.constant(texts)).to_list()
    tf_ws = {c for c, parts in zip(candidates, tf_split) if len(parts) == 2}
    assert tf_ws == set(spec.WHITESPACE) == set(" \t\n\x0b\x0c\r")
    for text in texts:
        assert spec.split_whitespace(text) == [w.decode() for w in tf.strings.split(text).numpy()]
    # The reason str.split() is not used: it splits on 23 more of these characters.
    assert len({c for c in candidates if len(f"a{c}b".split()) == 2} - tf_ws) == 23


def test_tokenize_matches_the_tf_definition_token_for_token():
    graph = preprocessing.tokenize(tf.constant(ADVERSARIAL)).to_list()
    for text, tokens in zip(ADVERSARIAL, graph):
        assert spec.tokenize(text) == [t.decode("utf-8") for t in tokens], text


def test_fingerprint64_matches_tensorflow_hash_buckets():
    rng = random.Random(0)
    data = [bytes(rng.randrange(256) for _ in range(n)) for n in list(range(0, 150)) + [rng.randint(150, 700) for _ in range(60)]]
    data += [w.encode() for w in ("héllo", "zzqx", "unknownword", "xyzzy")]
    for k in (2, 3, 7, 1_000_003, 2**62 + 7):
        ref = tf.strings.to_hash_bucket_fast(tf.constant(data), k).numpy().tolist()
        assert [spec.fingerprint64(d) % k for d in data] == ref


@pytest.mark.parametrize("name", ["lstm", "gru3"])
def test_mirror_matches_tokenize_signature_on_adversarial_texts(exported, name):
    e = exported[name]
    graph = e.graph_ids(ADVERSARIAL)
    k = e.clf.vocabulary.num_oov_buckets
    for text, ids in zip(ADVERSARIAL, graph):
        assert e.clf.text_ids(text) == ids, text
        # Streamed with a chunk boundary at every position (inside words, tags, '<').
        for cut in range(len(text) + 1):
            got, _ = _stream(e.clf, [text[:cut], "", text[cut:]])
            assert [p.token_id for p in got] == ids, (text, cut)
    if k > 1:  # several OOV buckets really used
        used = {i for ids in graph for i in ids if 1 <= i <= k}
        assert used == set(range(1, k + 1))


@pytest.mark.parametrize("name", ["lstm", "gru3"])
def test_mirror_matches_tokenize_signature_on_random_texts_and_chunks(exported, name):
    e = exported[name]
    rng = random.Random(7)
    pieces = WORDS + ["Good", "MOVIE", "zzqx", "<br />", "<i>", "</i>", "<", ">", ".", ",", "'", " ", " ", "\n",
                      "\u00a0", "\u2003", "\x1c", "\x85", "É", "-", "\t", "<a href='x'>", "!!"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 30))) for _ in range(400)]
    graph = e.graph_ids(texts)
    for text, ids in zip(texts, graph):
        got, _ = _stream(e.clf, _chunks(text, rng))
        assert [p.token_id for p in got] == ids, text


def test_chunk_boundaries_inside_words_and_tags(exported):
    clf = exported["lstm"].clf
    chunks = ["The mo", "vie<b", "r /", ">GRE", "at", "", " a < b", " plot"]
    got, state = _stream(clf, chunks)
    assert [p.token for p in got] == spec.tokenize("".join(chunks)) == ["the", "movie", "great", "a", "b", "plot"]
    assert [p.tokens_seen for p in got] == list(range(1, 7))
    # A word stays pending until whitespace (or a tag) follows it; finish() flushes it.
    state = clf.start()
    p1, state = clf.feed(state, "good mov")
    assert [p.token for p in p1] == ["good"] and state.tokenizer.word == "mov"
    p2, state = clf.feed(state, "ie<i")
    assert p2 == [] and state.tokenizer.held == "<i" and state.tokenizer.word == "movie"
    p3, state = clf.feed(state, ">plot")
    assert [p.token for p in p3] == ["movie"]
    p4, state = clf.finish(state)
    assert [p.token for p in p4] == ["plot"] and state.tokenizer == TokenizerState()
    # '<' never closed: punctuation at the end of the stream ("a<b" is one word "ab").
    got, _ = _stream(clf, ["a<", "b c"])
    assert [p.token for p in got] == ["ab", "c"]


def test_pending_text_after_unclosed_tag_is_bounded():
    tok = StreamTokenizer(max_pending_chars=10)
    words, state = tok.feed(TokenizerState(), "good <b bad")
    assert words == ["good"] and state.held == "<b bad"
    words, state = tok.feed(state, " film plot")  # held would be 16 chars > 10: released
    assert words == ["b", "bad", "film"] and state.held == "" and state.forced_tag_releases == 1
    # Documented divergence: the graph would have deleted "<b bad film plot>" as one tag.
    words2, state = tok.feed(state, "> end")
    assert words2 + tok.finish(state)[0] == ["plot", "end"]
    assert spec.tokenize("good <b bad film plot> end") == ["good", "end"]
    # Without the bound the tag is held and the graph's answer is reproduced.
    exact = StreamTokenizer(max_pending_chars=1000)
    w1, s = exact.feed(TokenizerState(), "good <b bad film plot")
    w2, s = exact.feed(s, "> end")
    w3, _ = exact.finish(s)
    assert w1 + w2 + w3 == ["good", "end"]


def test_long_words_are_bounded_and_still_oov(exported):
    clf = StreamingClassifier.load(exported["lstm"].model_dir, max_word_chars=20)
    text = "good " + "x" * 500 + " film"
    got, state = _stream(clf, _chunks(text, random.Random(3), 40))
    assert [p.token_id for p in got] == exported["lstm"].graph_ids([text])[0]
    assert len(got[1].token) == 21 and state.tokenizer.truncated_words == 1


def test_streaming_module_does_not_import_tensorflow(exported):
    script = (
        "import sys, json\n"
        "from beam_rnn.stream import StreamingClassifier\n"
        "clf = StreamingClassifier.load(sys.argv[1])\n"
        "s = clf.start()\n"
        "p, s = clf.feed(s, 'Good movie, bad plot. ')\n"
        "print(json.dumps({'n': len(p), 'tf': [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'tensorflow_transform')]}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([PYTHON, "-c", script, exported["lstm"].model_dir], capture_output=True, text=True,
                          env=env, cwd=str(REPO_ROOT), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"n": 4, "tf": []}


# --- The golden file: every export carries its graph's ids, and load replays them ----------------------


def _golden(model_dir: str) -> dict:
    with open(os.path.join(model_dir, spec.GOLDEN_FILE), encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize("name", ["lstm", "gru3"])
def test_export_writes_a_golden_file_of_the_graphs_own_ids(exported, name):
    from beam_rnn.core.manifest import verify_manifest
    from beam_rnn.train.golden import ADVERSARIAL_TEXTS

    e = exported[name]
    golden = _golden(e.model_dir)
    texts = golden["texts"]
    assert set(ADVERSARIAL_TEXTS) <= set(texts) and len(texts) > len(ADVERSARIAL_TEXTS)  # + the model's own words
    # The ids are the exported graph's: recomputed here from the SavedModel in the final directory.
    assert golden["ids"] == e.graph_ids(texts)
    k = e.clf.vocabulary.num_oov_buckets
    used = {i for ids in golden["ids"] for i in ids}
    assert used & set(range(1, k + 1)) and max(used) > k  # OOV buckets and vocabulary words both exercised
    assert any(len(ids) == 0 for ids in golden["ids"])  # and empty texts
    # Covered by the manifest and the card, so a changed golden file is named by the manifest check.
    assert spec.GOLDEN_FILE in verify_manifest(e.model_dir)["files"]
    with open(os.path.join(e.model_dir, C.MODEL_CARD_FILE)) as f:
        assert json.load(f)["files"]["tokenizer_golden"] == spec.GOLDEN_FILE
    # The NumPy tokenizer agrees (load already replayed it; this is the same check, visible).
    assert [e.clf.text_ids(t) for t in texts] == golden["ids"]


def _resealed_copy(model_dir: str, dest: Path):
    from beam_rnn.core.manifest import write_manifest

    shutil.copytree(model_dir, dest)
    os.remove(dest / "manifest.json")
    return dest, lambda: write_manifest(str(dest))


def test_load_refuses_a_golden_file_its_tokenizer_does_not_reproduce(exported, tmp_path):
    e = exported["gru3"]
    golden = _golden(e.model_dir)
    i = golden["texts"].index("good\u00a0movie")
    # 1. The golden ids changed (and the manifest re-sealed, so only the replay can notice).
    d, seal = _resealed_copy(e.model_dir, tmp_path / "ids")
    golden_bad = dict(golden, ids=[list(ids) for ids in golden["ids"]])
    golden_bad["ids"][i] = golden_bad["ids"][i] + [1]
    (d / spec.GOLDEN_FILE).write_text(json.dumps(golden_bad))
    seal()
    with pytest.raises(streaming.ModelDirError, match=rf"{spec.GOLDEN_FILE}: .* text {i} 'good\\xa0movie'") as info:
        StreamingClassifier.load(str(d))
    assert "refusing to start" in str(info.value) and "\n" not in str(info.value)
    # 2. The vocabulary no longer matches the graph's (two words swapped): the first text using them is named.
    d, seal = _resealed_copy(e.model_dir, tmp_path / "vocab")
    words = (d / export.VOCAB_TEXT_FILE).read_text(encoding="utf-8").splitlines()
    words[0], words[1] = words[1], words[0]
    (d / export.VOCAB_TEXT_FILE).write_text("".join(w + "\n" for w in words), encoding="utf-8")
    seal()
    first = next(j for j, ids in enumerate(golden["ids"]) if {e.clf.vocabulary.id(words[0]), e.clf.vocabulary.id(words[1])} & set(ids))
    with pytest.raises(streaming.ModelDirError, match=rf"{spec.GOLDEN_FILE}: .* on text {first} "):
        StreamingClassifier.load(str(d))
    # 3. An unreadable golden file is damaged, not skipped.
    d, seal = _resealed_copy(e.model_dir, tmp_path / "json")
    (d / spec.GOLDEN_FILE).write_text('{"texts": ["a"]')
    seal()
    with pytest.raises(streaming.ModelDirError, match=f"{spec.GOLDEN_FILE} is damaged"):
        StreamingClassifier.load(str(d))
    # The untouched export loads.
    assert StreamingClassifier.load(e.model_dir).text_ids(golden["texts"][i]) == golden["ids"][i]


def test_load_refuses_when_the_numpy_tokenizer_drifts_from_the_spec(exported, monkeypatch):
    # A tokenizer bug (Python's notion of whitespace instead of TF's) in an otherwise intact export.
    import re

    monkeypatch.setattr(spec, "WHITESPACE_RE", re.compile(r"\s+"))
    with pytest.raises(streaming.ModelDirError, match=rf"{spec.GOLDEN_FILE}: the NumPy tokenizer disagrees"):
        StreamingClassifier.load(exported["lstm"].model_dir)


# --- Predictions equal the full pass -------------------------------------------------------------------

PREDICTION_TEXTS = [
    "Good movie, GREAT plot!<br /><br />The actor... was fine. Not bad, not awful: a film of the plot.",
    "<i>awful</i> film; poor plot & 'bad' actor -- of the a and zzqx unknownword good great",
    " ".join(WORDS * 2) + " xyzzy the end",
    "good",
    "",
]


@pytest.mark.parametrize("name", ["lstm", "gru3"])
def test_every_prefix_equals_serving_default(exported, name):
    e = exported[name]
    rng = random.Random(11)
    for text in PREDICTION_TEXTS:
        got, state = _stream(e.clf, _chunks(text, rng))
        tokens = [p.token for p in got]
        ids = e.graph_ids([text])[0]
        assert [p.token_id for p in got] == ids
        # serving_default on every token prefix (the prefix re-joined with spaces re-tokenises to itself).
        prefixes = [" ".join(tokens[:i]) for i in range(1, len(tokens) + 1)]
        if prefixes:
            served = e.serve(prefixes).reshape(len(prefixes), -1)
            np.testing.assert_allclose(_probs(got, e.num_classes), served, atol=TOL, rtol=0)
            by_ids = e.classify_ids([ids[:i] for i in range(1, len(ids) + 1)]).reshape(len(ids), -1)
            np.testing.assert_allclose(_probs(got, e.num_classes), by_ids, atol=TOL, rtol=0)
        # After the last token: the full-pass prediction of the raw text (max_tokens applied alike).
        full = e.serve([text]).reshape(1, -1)[0]
        current = e.clf.current(state)
        np.testing.assert_allclose(np.ravel(p_or_list(current)), full, atol=TOL, rtol=0)
        np.testing.assert_allclose(np.ravel(p_or_list(e.clf.predict_text(text))), full, atol=TOL, rtol=0)
        label = e.sigs["serving_default"](text=tf.constant([text]))["label"].numpy()[0]
        assert current["predicted_label"] == label


def test_max_tokens_truncates_like_the_graph(exported):
    e = exported["gru3"]
    assert e.clf.max_tokens == 8
    text = " ".join(WORDS)
    got, state = _stream(e.clf, [text])
    assert len(got) == 8 and state.tokens_dropped == len(WORDS) - 8


def test_step_and_step_many(exported):
    for e in exported.values():
        clf = e.clf
        words = ["good", "zzqx", "movie", "awful", "the"]
        state = clf.start()
        singles = []
        for w in words:
            p, state = clf.step(state, w)
            singles.append(p)
        # By id, too.
        s2 = clf.start()
        for w, p in zip(words, singles):
            q, s2 = clf.step(s2, clf.token_id(w))
            assert q.probability == p.probability and q.token is None
        # 5 streams, staggered: stream j gets words[j:] ... batched one token at a time.
        streams = [clf.start() for _ in range(4)]
        seqs = [words, words[::-1], ["Good"] * 3, words[:2]]
        step = 0
        batched = [[] for _ in streams]
        while any(step < len(s) for s in seqs):
            idx = [i for i, s in enumerate(seqs) if step < len(s)]
            preds, new = clf.step_many([streams[i] for i in idx], [streams_tok.lower() for streams_tok in (seqs[i][step] for i in idx)])
            for i, p, s in zip(idx, preds, new):
                streams[i] = s
                batched[i].append(p)
            step += 1
        np.testing.assert_allclose(_probs(batched[0], e.num_classes), _probs(singles, e.num_classes), atol=1e-6, rtol=0)
        for i, seq in enumerate(seqs):
            ref = e.classify_ids([[clf.token_id(w.lower()) for w in seq[: t + 1]] for t in range(len(seq))])
            np.testing.assert_allclose(_probs(batched[i], e.num_classes), ref.reshape(len(seq), -1), atol=TOL, rtol=0)
        with pytest.raises(ValueError):
            clf.step(clf.start(), "two words")
        with pytest.raises(ValueError):
            clf.step(clf.start(), 10**6)


def test_state_record_round_trip(exported):
    clf = exported["gru3"].clf
    _, state = _stream(clf, ["good movie <b"])
    state = clf.feed(clf.start(), "good movie <b")[1]
    back = streaming.StreamState.from_record(state.to_record(), clf.num_state_arrays)
    assert back.tokenizer == state.tokenizer and back.tokens_seen == state.tokens_seen
    for a, b in zip(back.rnn, state.rnn):
        np.testing.assert_array_equal(a, b)


# --- Beam: StreamPredictions on the DirectRunner (streaming, TestStream) ---------------------------


def _in_order(clf: StreamingClassifier, events: list[dict], *, ended: bool) -> list[dict]:
    """Per-token records of an in-order, duplicate-free pass over a stream's contiguous events."""
    by_seq = {}
    for ev in events:
        by_seq.setdefault(ev["seq"], ev)
    state = clf.start()
    out = []
    seq = 0
    while seq in by_seq:
        ev = by_seq[seq]
        chunk = ev.get("text", f" {ev['token']} " if "token" in ev else "")
        preds, state = clf.feed(state, chunk)
        if ev.get("end"):
            more, state = clf.finish(state)
            preds += more
        out += [dict(p.to_dict(), seq=seq) for p in preds]
        if ev.get("end"):
            return out
        seq += 1
    if not ended:
        preds, state = clf.finish(state)  # expiry flushes the pending word
        out += [dict(p.to_dict(), seq=seq - 1) for p in preds]
    return out


def _key(r):
    return (r["stream_id"], r["tokens_seen"], r.get("final", False))


def _run_test_stream(model_dir: str, steps: list, ttl: float, **policy) -> tuple[list[dict], list[dict], dict]:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.testing.test_stream import TestStream
    from apache_beam.transforms.window import TimestampedValue

    from beam_rnn.cli.runtime import counters

    ts = TestStream()
    for kind, value in steps:
        if kind == "events":
            ts = ts.add_elements([TimestampedValue(ev, t) for t, ev in value])
        else:
            ts = ts.advance_watermark_to(value)
    ts = ts.advance_watermark_to_infinity()
    options = PipelineOptions(["--runner=DirectRunner"])
    options.view_as(StandardOptions).streaming = True
    out_dir = tempfile.mkdtemp(prefix="stream_test_")
    p = beam.Pipeline(options=options)
    result = p | ts | streaming.StreamPredictions(model_dir, ttl_seconds=ttl, max_buffered_events=3, use_event_ts=False,
                                                  **policy)
    _ = result["predictions"] | "CollectP" >> beam.Map(_append_json, os.path.join(out_dir, "p.jsonl"))
    _ = result["dead_letter"] | "CollectD" >> beam.Map(_append_json, os.path.join(out_dir, "d.jsonl"))
    res = p.run()
    res.wait_until_finish()
    preds, dead = (_read_json_lines(os.path.join(out_dir, name)) for name in ("p.jsonl", "d.jsonl"))
    shutil.rmtree(out_dir)
    return preds, dead, counters(res, streaming.METRICS_NAMESPACE)


def _append_json(record: dict, path: str) -> None:
    # The DirectRunner runs in this process but may copy (pickle) DoFns, so collect through a file.
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _read_json_lines(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_stream_predictions_duplicates_reordering_gaps_and_expiry(exported):
    e = exported["lstm"]
    text_a = "The movie was GREAT, truly good.<br />But the plot was awful and the actor poor."
    chunks_a = ["The mo", "vie was GRE", "AT, truly go", "od.<b", "r />But the", " plot was awful", " and the actor poor."]
    a = [{"stream_id": "a", "seq": i, "text": c} for i, c in enumerate(chunks_a)]
    a[-1]["end"] = True
    b = [{"stream_id": "b", "seq": i, "token": w} for i, w in enumerate(["Good", "film", "bad", "plot"])]
    b[-1]["end"] = True
    c = [{"stream_id": "c", "seq": i, "text": t} for i, t in enumerate(["fine mo", "vie of the", " a"])]  # never ends
    d = [{"stream_id": "d", "seq": 0, "text": "good "}, {"stream_id": "d", "seq": 2, "text": "bad "}]  # gap at 1
    bad = ["{not json", json.dumps({"seq": 1, "text": "x"}), json.dumps({"stream_id": "z", "seq": "1"}),
           json.dumps([1, 2]), json.dumps({"stream_id": "z", "seq": 1.5})]
    steps = [
        ("events", [(1, a[1]), (1, a[0]), (1, b[0]), (1, c[0]), (1, d[0]), (1, d[1])] + [(1, x) for x in bad]),
        ("watermark", 2),
        ("events", [(3, a[0]), (3, a[3]), (3, a[2]), (3, a[2]), (3, b[2]), (3, b[1]), (3, c[1])]),  # dups + reorder
        ("watermark", 4),
        ("events", [(5, a[5]), (5, a[6]), (5, a[4]), (5, b[3]), (5, b[3]), (5, c[2])]),
        ("watermark", 6),
        # Redelivered after the end, within the tombstone's TTL: a duplicate and a dead letter.
        ("events", [(7, a[6]), (7, {"stream_id": "a", "seq": 7, "text": "late"})]),
        # ttl 10: d (idle since t=1) expires at 11, c (since t=5) at 15; tombstones go one TTL later.
        ("watermark", 30),
        # State of "a" was cleared: seq 0 starts a new stream.
        ("events", [(31, {"stream_id": "a", "seq": 0, "text": "good ", "end": True}),
                    (31, {"stream_id": "c", "seq": 0, "text": "bad", "end": True})]),
    ]
    preds, dead, counts = _run_test_stream(e.model_dir, steps, ttl=10.0)
    tokens = [r for r in preds if not r.get("final")]
    finals = {r["stream_id"] + ("2" if r["reason"] == "end" and r["seq"] == 0 else ""): r for r in preds if r.get("final")}
    assert len(finals) == 6

    expected = []
    for sid, evs, ended in (("a", a, True), ("b", b, True), ("c", c, False), ("d", d, False)):
        expected += [dict(r, stream_id=sid) for r in _in_order(e.clf, evs, ended=ended)]
    for sid, text in (("a", "good "), ("c", "bad")):  # the fresh streams after end / expiry
        expected += [dict(r, stream_id=sid) for r in _in_order(e.clf, [{"seq": 0, "text": text, "end": True}], ended=True)]
    got = sorted(tokens, key=lambda r: (r["stream_id"], r["seq"], r["tokens_seen"], r["token"]))
    want = sorted(expected, key=lambda r: (r["stream_id"], r["seq"], r["tokens_seen"], r["token"]))
    assert [(r["stream_id"], r["seq"], r["token"], r["token_id"], r["tokens_seen"]) for r in got] == [
        (r["stream_id"], r["seq"], r["token"], r["token_id"], r["tokens_seen"]) for r in want
    ]
    np.testing.assert_allclose([p_or_list(r) for r in got], [p_or_list(r) for r in want], atol=1e-7, rtol=0)

    # Stream a's tokens equal serving_default on every prefix of the whole text.
    a_tokens = [r for r in got if r["stream_id"] == "a" and r["tokens_seen"] <= len(spec.tokenize(text_a))]
    a_tokens = [r for r in a_tokens if not (r["seq"] == 0 and r["token"] == "good" and r["tokens_seen"] == 1)]
    words = spec.tokenize(text_a)
    assert [r["token"] for r in a_tokens] == words
    served = e.serve([" ".join(words[: i + 1]) for i in range(len(words))])
    np.testing.assert_allclose([p_or_list(r) for r in a_tokens], served, atol=TOL, rtol=0)

    # Final records: end (a, b, the new a), expiry (c, d) with reasons.
    assert finals["a"]["reason"] == "end" and finals["a"]["tokens_seen"] == len(words)
    np.testing.assert_allclose(p_or_list(finals["a"]), e.serve([text_a])[0], atol=TOL)
    assert finals["b"]["reason"] == "end" and finals["b"]["tokens_seen"] == 4
    assert finals["c"]["expired"] is True and "idle" in finals["c"]["reason"]
    assert finals["c"]["tokens_seen"] == 5  # the pending "a" is flushed on expiry
    assert finals["d"]["expired"] is True and "seq 1 never arrived" in finals["d"]["reason"]
    # State was cleared after end and after expiry: "a" and "c" start again from scratch.
    assert finals["a2"]["tokens_seen"] == 1 and finals["c2"]["tokens_seen"] == 1

    reasons = sorted(r["reason"].split(":")[0] for r in dead)
    assert reasons == sorted(["invalid_json", "missing_field", "bad_field", "not_an_object", "bad_field",
                              "gap_never_filled", "stream_closed"])
    # Metrics: the DirectRunner's streaming mode (TestStream) only reports the counters of
    # the first bundle (Beam 2.77), so state clean-up is checked through the outputs above
    # (fresh "a" and "c" streams after end / expiry; duplicates and a dead letter inside the
    # tombstone's TTL) and counter reconciliation in the batch replay test below.
    assert counts["events_in"] >= 1


# --- The driver -----------------------------------------------------------------------------------


def _cli(args: list[str], stdin: str | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([PYTHON, "-m", "pipelines.stream", *args], input=stdin, capture_output=True, text=True,
                          env=env, cwd=str(REPO_ROOT), timeout=timeout)


def test_decision_policy_fires_once_at_the_first_confident_token(exported):
    clf = exported["gru3"].clf
    preds, state = clf.feed(clf.start(), "good movie but a bad plot and awful acting, great music ")
    tops = [max(p.probabilities.values()) for p in preds]
    threshold = sorted(tops)[len(tops) // 2]  # fires somewhere inside the text
    first = next(p for p in preds if max(p.probabilities.values()) >= threshold)
    fired, decided = clf.decide(clf.start(), preds, threshold)
    assert fired == first and decided.decided_at == first.tokens_seen
    # Once per stream: a decided state never fires again.
    assert clf.decide(decided, preds, threshold) == (None, decided)
    # min_tokens holds it back; a threshold no prediction reaches never fires.
    assert clf.decide(clf.start(), preds, min(tops))[0] == preds[0]  # every token qualifies: the first fires
    assert clf.decide(clf.start(), preds, min(tops), min_tokens=5)[0] == preds[4]
    assert clf.decide(clf.start(), preds, 1.0 + 1e-9 if max(tops) < 1.0 else 2.0)[0] is None
    # The decision survives Beam state (and states written before it existed read as undecided).
    back = streaming.StreamState.from_record(decided.to_record(), clf.num_state_arrays)
    assert back.decided_at == first.tokens_seen
    old = {k: v for k, v in decided.to_record().items() if k != "decided"}
    assert streaming.StreamState.from_record(old, clf.num_state_arrays).decided_at == 0


def test_stream_predictions_emit_one_decision_per_stream(exported):
    e = exported["lstm"]
    texts = {"a": "The movie was GREAT, truly good. But the plot was awful and the actor poor.",
             "b": "bad bad plot, boring and weak; a waste of good actors"}
    expected_tokens = {k: _in_order(e.clf, [{"seq": 0, "text": t, "end": True}], ended=True) for k, t in texts.items()}
    tops = sorted(max(r["probabilities"].values()) for rows in expected_tokens.values() for r in rows)
    threshold = tops[len(tops) // 2]
    events = [(1, {"stream_id": k, "seq": 0, "text": t}) for k, t in texts.items()]
    events += [(2, {"stream_id": k, "seq": 1, "text": " again", "end": True}) for k in texts]
    preds, dead, counts = _run_test_stream(e.model_dir, [("events", events[:2]), ("watermark", 1),
                                                         ("events", events[2:])], ttl=10.0,
                                           decide_at=threshold, min_tokens=2)
    assert not dead
    decisions = {r["stream_id"]: r for r in preds if r.get("decision")}
    assert len([r for r in preds if r.get("decision")]) == len(decisions)  # at most one per stream
    finals = {r["stream_id"]: r for r in preds if r.get("final")}
    for k in texts:
        rows = [r for r in preds if r["stream_id"] == k and not r.get("final") and not r.get("decision")]
        rows.sort(key=lambda r: r["tokens_seen"])
        want = next((r for r in rows if r["tokens_seen"] >= 2 and max(r["probabilities"].values()) >= threshold), None)
        if want is None:
            assert k not in decisions and finals[k]["decision_position"] is None
            continue
        got = decisions[k]
        assert got["position"] == want["tokens_seen"] == finals[k]["decision_position"]
        assert got["predicted_label"] == want["predicted_label"] and got["token"] == want["token"]
        assert got["probabilities"] == want["probabilities"]
    assert decisions, "the median threshold fires in at least one stream"
    assert counts.get("decisions", 0) in (0, len(decisions))  # the streaming DirectRunner may not report counters


def test_stdin_mode_prints_a_line_per_token(exported):
    e = exported["lstm"]
    text = "The movie was GREAT,\ntruly go"
    proc = _cli(["--model", e.model_dir, "--json"], stdin=text + "od<br />bad")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    words = spec.tokenize(text + "od<br />bad")
    assert [r["token"] for r in lines[:-1]] == words
    assert lines[-1]["final"] is True and lines[-1]["tokens_seen"] == len(words)
    np.testing.assert_allclose([p_or_list(r) for r in lines[:-1]],
                               e.serve([" ".join(words[: i + 1]) for i in range(len(words))]), atol=TOL)
    # Table form, one text per line.
    proc = _cli(["--model", e.model_dir, "--per-line"], stdin="good movie\nbad plot!\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = proc.stdout.splitlines()
    assert len(rows) == 6 and rows[2].split()[0] == "final" and rows[3].split()[:2] == ["1", "bad"]


def test_stdin_mode_prints_the_decision_once_per_text(exported):
    e = exported["lstm"]
    text = "good movie but a bad plot and awful acting, great music and fine actors"
    plain = [json.loads(line) for line in _cli(["--model", e.model_dir, "--json"], stdin=text).stdout.splitlines()]
    tokens = plain[:-1]
    threshold = sorted(max(r["probabilities"].values()) for r in tokens)[len(tokens) // 2]
    want = next(r for r in tokens if r["tokens_seen"] >= 3 and max(r["probabilities"].values()) >= threshold)
    proc = _cli(["--model", e.model_dir, "--json", "--decide-at", repr(threshold), "--min-tokens", "3"], stdin=text)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    decisions = [r for r in lines if r.get("decision")]
    assert len(decisions) == 1 and decisions[0]["position"] == want["tokens_seen"]
    assert decisions[0]["predicted_label"] == want["predicted_label"]
    # The decision line follows its token's line; the rest is the plain output.
    at = lines.index(decisions[0])
    assert lines[at - 1]["tokens_seen"] == want["tokens_seen"]
    assert [r for r in lines if not r.get("decision")] == plain
    # Table form: a "decide" row per text.
    proc = _cli(["--model", e.model_dir, "--per-line", "--decide-at", "0.5"], stdin="good movie\nbad plot!\n")
    rows = proc.stdout.splitlines()
    assert [r.split()[0] for r in rows].count("decide") == 2 and rows[1].split()[:3] == ["decide", "at", "token"]


def test_missing_model_dir_exits_2_with_one_message(tmp_path):
    proc = _cli(["--model", str(tmp_path / "nope")])
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
    (tmp_path / "bilstm").mkdir()
    (tmp_path / "bilstm" / C.MODEL_CARD_FILE).write_text(json.dumps({"kind": "bilstm"}))
    proc = _cli(["--model", str(tmp_path / "bilstm")])
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "bilstm" in proc.stderr


def test_exported_model_is_verified_against_its_manifest(exported, tmp_path):
    from beam_rnn.core.manifest import ArtifactError, verify_manifest

    # export_model's manifest covers every file load reads ...
    manifest = verify_manifest(exported["lstm"].model_dir, required=streaming.MODEL_FILES + (C.MODEL_CARD_FILE,))
    assert set(streaming.MODEL_FILES) <= set(manifest["files"])
    # ... so a truncated step_weights.npz in a real export is named before NumPy sees it.
    damaged = tmp_path / "lstm"
    shutil.copytree(exported["lstm"].model_dir, damaged)
    data = (damaged / C.STEP_WEIGHTS_FILE).read_bytes()
    (damaged / C.STEP_WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match=f"{C.STEP_WEIGHTS_FILE} is damaged"):
        StreamingClassifier.load(str(damaged))


def test_json_lines_replay_writes_predictions_dead_letters_and_stats(exported, tmp_path):
    from pipelines import stream as driver

    e = exported["lstm"]
    events = [
        {"stream_id": "s1", "seq": 1, "text": "vie was great", "ts": 100},
        {"stream_id": "s1", "seq": 0, "text": "Good mo", "ts": 99},
        {"stream_id": "s1", "seq": 1, "text": "vie was great", "ts": 100},
        {"stream_id": "s1", "seq": 2, "end": True, "ts": 101},
        {"stream_id": 7, "seq": 0, "token": "bad", "ts": 100},
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join([json.dumps(ev) for ev in events] + ["", "oops"]) + "\n")
    stats = driver.run(["--model", e.model_dir, "--input-events", str(path), "--output", str(tmp_path / "out"),
                        "--runner=DirectRunner"])
    assert stats["reconciled"] and stats["events_in"] == 6 and stats["events_duplicate"] == 1
    assert stats["dead_lettered"] == 1
    rows = [json.loads(line) for f in tmp_path.glob("out-0*.jsonl") for line in f.read_text().splitlines()]
    s1 = sorted((r for r in rows if r["stream_id"] == "s1" and not r.get("final")), key=lambda r: r["tokens_seen"])
    assert [r["token"] for r in s1] == ["good", "movie", "was", "great"]
    finals = {r["stream_id"]: r for r in rows if r.get("final")}
    assert finals["s1"]["reason"] == "end"
    assert finals["7"]["expired"] is True  # never ended: expires when the bounded input ends
    dead = [json.loads(line) for f in tmp_path.glob("out-dead_letter-*.jsonl") for line in f.read_text().splitlines()]
    assert [d["reason"].split(":")[0] for d in dead] == ["invalid_json"]
    assert json.loads((tmp_path / "out-stats.json").read_text())["reconciled"] is True


# --- IMDB: the mirror on a whole real corpus ----------------------------------------------------------


def _imdb_model_dirs(exported) -> dict[str, str]:
    dirs = {name: e.model_dir for name, e in exported.items()}
    for candidate in (REPO_ROOT / "runs" / "imdb" / "models" / "lstm", Path("/tmp/stream_models/lstm")):
        if (candidate / C.STEP_WEIGHTS_FILE).exists() and (candidate / "saved_model").exists():
            dirs["imdb"] = str(candidate)
            break
    return dirs


@pytest.mark.data
def test_mirror_matches_graph_on_every_imdb_training_review(exported):
    """All 25k IMDB training reviews: graph tokens and ids == spec.tokenize, the chunked StreamTokenizer, the vocabulary.

    In the default suite whenever ../shared/data is present: the TF
    definition tokenises every review in ONE batched call; the exported ``tokenize``
    signature of each model gives its ids (batches sorted by length); the Python side
    is the whole-text spec and the incremental tokenizer fed in random chunks.
    """
    import csv

    from tests.conftest import shared_data_path

    path = shared_data_path("imdb", "train.csv")
    csv.field_size_limit(sys.maxsize)
    with open(path, newline="", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    assert len(texts) == 25000
    # Tokens never hold whitespace, so "\n".join is unambiguous: one string per review to compare.
    joined = tf.strings.reduce_join(preprocessing.tokenize(tf.constant(texts)), axis=1, separator="\n")
    graph = [t.decode("utf-8") for t in joined.numpy().tolist()]

    rng = np.random.default_rng(2024)
    tok = StreamTokenizer()  # the classifier's bounds (max_word_chars only grows with a longer vocabulary word)
    bound = tok.max_word_chars
    mismatches = []
    for i, text in enumerate(texts):
        if "\n".join(spec.tokenize(text)) != graph[i]:
            mismatches.append((i, "whole"))
        cuts = np.cumsum(rng.integers(0, 81, size=len(text) // 40 + 2)).tolist()  # random chunks of 0..80 chars
        while cuts[-1] < len(text):
            cuts.append(cuts[-1] + 80)
        words, state, start = [], TokenizerState(), 0
        for end in cuts:
            done, state = tok.feed(state, text[start:end])
            words += done
            start = end
            if start >= len(text):
                break
        words += tok.finish(state)[0]
        if "\n".join(words) != graph[i] and words != [
            w if len(w) <= bound else w[: bound + 1] for w in graph[i].split("\n")  # the documented word bound
        ]:
            mismatches.append((i, "chunked"))
    assert not mismatches, f"{len(mismatches)} mismatches, first {mismatches[:5]}"

    graph = [g.split("\n") if g else [] for g in graph]
    order = sorted(range(len(texts)), key=lambda i: len(graph[i]))
    for name, model_dir in _imdb_model_dirs(exported).items():
        clf = StreamingClassifier.load(model_dir)
        sig = export.load_exported(model_dir).signatures["tokenize"]
        for start in range(0, len(order), 1000):
            rows = order[start : start + 1000]
            out = sig(text=tf.constant([texts[i] for i in rows]))
            ids, lengths = out["token_ids"].numpy(), out["lengths"].numpy()
            for r, i in enumerate(rows):
                want = [clf.vocabulary.id(w) for w in graph[i][: clf.max_tokens]]
                if ids[r, : lengths[r]].tolist() != want:
                    mismatches.append((name, i))
        assert not mismatches, f"{name}: {len(mismatches)} mismatches, first {mismatches[:5]}"


@pytest.mark.parametrize(
    "kwargs", [{"ttl_seconds": 0}, {"max_buffered_events": -1}, {"max_buffered_chars": -1}, {"max_pending_chars": 0},
               {"decide_at": 1.5}, {"decide_at": 0.0}, {"min_tokens": 0}]
)
def test_stream_predictions_rejects_bad_limits_before_running(kwargs):
    # One validated config is shared by the transform and its DoFn: bad limits fail at construction.
    with pytest.raises(ValueError):
        streaming.StreamPredictions("/nonexistent-model", **kwargs)



def test_stream_flags_are_generated_from_stream_config():
    from beam_rnn.cli.flags import config_from_flags, parse_known_flags
    from pipelines import stream as driver

    parser = driver.build_parser()
    flags = {s for a in parser._actions for s in a.option_strings}
    assert {"--stream-ttl", "--first-seq", "--max-buffered-events", "--max-buffered-chars", "--max-pending-chars",
            "--max-event-chars", "--conflict-window"} <= flags
    known, rest = parse_known_flags(parser, ["--model", "m"])
    assert config_from_flags(streaming.StreamConfig, known) == streaming.StreamConfig() and rest == []
    assert streaming.StreamConfig() == streaming.StreamConfig(3600.0, 0, 64, 65536, 8192, 100_000, 256)  # today's
    known, rest = parse_known_flags(parser, ["--model", "m", "--stream_ttl", "5", "--conflict-window=0", "--runner=X"])
    assert config_from_flags(streaming.StreamConfig, known) == streaming.StreamConfig(ttl_seconds=5.0, conflict_window=0)
    assert rest == ["--runner=X"]
