"""The preprocessing graph and the AnalyzeAndTransform stage, on small data made here."""

from __future__ import annotations

import collections
import glob
import json
import os
import shutil
import subprocess
import sys

import apache_beam as beam
import pytest
import tensorflow as tf

from beam_rnn.core import constants as C
from beam_rnn.preprocess.config import PreprocessConfig
from beam_rnn.preprocess.tft_graph import standardize, tokenize
from beam_rnn.preprocess.transform import (
    SPLIT_EVAL,
    SPLIT_TRAIN,
    documents_to_record_batch,
    histogram_percentiles,
    raw_arrow_schema,
    read_vocabulary,
    split_for_id,
)
from tests.conftest import ROOT


def _texts(t: tf.Tensor) -> list[str]:
    return [x.decode() for x in t.numpy()]


def test_standardize_matches_tutorial_plus_html():
    out = standardize(tf.constant(["Hello, World!<br /><br />It's GREAT.", "a-b_c (d) <i>x</i>y"]))
    assert _texts(out) == ["hello world  its great", "abc d  x y"]


def test_tokenize_splits_on_whitespace_and_truncates():
    toks = tokenize(tf.constant(["One two\tthree\nfour", "  "]), max_tokens=3)
    assert toks.to_list() == [[b"one", b"two", b"three"], []]


def test_config_validation_and_round_trip():
    cfg = PreprocessConfig(vocab_size=10, label_type="string", label_set=["neg", "pos"], max_tokens=5)
    assert PreprocessConfig.from_dict(json.loads(cfg.to_json())) == cfg
    for bad in ({"vocab_size": 0}, {"min_frequency": 0}, {"num_oov_buckets": 0}, {"label_type": "float"},
                {"eval_fraction": 1.0}, {"max_tokens": 0}):
        with pytest.raises(ValueError):
            PreprocessConfig(**bad)


def test_class_names_name_int_ids_and_declare_them():
    from beam_rnn.core.errors import InputError

    cfg = PreprocessConfig(class_names=("negative", "positive"))
    assert cfg.label_set == ("0", "1")  # naming K classes declares the ids 0..K-1
    assert PreprocessConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert PreprocessConfig(class_names=("a", "b", "c"), label_set=("0", "02")).label_set == ("0", "02")
    assert PreprocessConfig(class_names=("a", "b", "c"), label_set=("c", "0")).label_set == ("2", "0")  # by name
    for bad, message in (({"label_type": "string"}, "string labels are their own names"),
                         ({"labelled": False}, "labelled corpus"),
                         ({"class_names": ("only",)}, "two or more distinct"),
                         ({"class_names": ("a", "a")}, "two or more distinct"),
                         ({"class_names": ("a", "")}, "two or more distinct"),
                         ({"class_names": ("bad", "1")}, "--class-names 1: a class name cannot be a number"),
                         ({"label_set": ("0", "2")}, "--labels 2: 2 --class-names name the ids 0..1")):
        with pytest.raises(InputError, match=message):
            PreprocessConfig(**{"class_names": ("negative", "positive"), **bad})


def test_class_names_reach_the_stats_even_for_a_class_without_rows(tmp_path):
    cfg = PreprocessConfig(vocab_size=10, min_frequency=1, class_names=("neg", "neu", "pos"), eval_fraction=0.0)
    stats = run_transform(_docs(["a b", "c d", "e", "f g"], labels=[0, 2, 2, 0]), str(tmp_path), cfg)
    assert stats["label_names"] == ["neg", "neu", "pos"] and stats["num_classes"] == 3
    assert stats["label_counts"] == {"0": 2, "2": 2}
    rows = read_examples(str(tmp_path), C.TRAIN_PREFIX)
    assert [rows[f"doc{i}"][1][0] for i in range(4)] == [0, 2, 2, 0]  # the ids stay the labels


def test_split_is_deterministic_and_close_to_fraction():
    ids = [f"doc-{i}" for i in range(20000)]
    splits = [split_for_id(i, 0.2) for i in ids]
    assert splits == [split_for_id(i, 0.2) for i in ids]
    frac = splits.count(SPLIT_EVAL) / len(splits)
    assert 0.19 < frac < 0.21
    assert all(split_for_id(i, 0.0) == SPLIT_TRAIN for i in ids[:100])


def test_histogram_percentiles_nearest_rank():
    hist = collections.Counter([1] * 50 + [2] * 40 + [10] * 9 + [100])
    assert histogram_percentiles(hist, (50, 90, 95, 99, 100)) == {"p50": 1, "p90": 2, "p95": 10, "p99": 10, "p100": 100}
    assert histogram_percentiles({}, (50,)) == {"p50": 0}


def test_documents_to_record_batch_types():
    cfg = PreprocessConfig(label_type="string")
    rb = documents_to_record_batch([{"id": "a", "text": "x é", "label": "pos"}], raw_arrow_schema(cfg))
    assert rb.to_pydict() == {"id": [[b"a"]], "text": [["x é".encode()]], "label": [[b"pos"]]}


# --- The TFT stage on a corpus with known frequencies --------------------------

# Word frequencies in the corpus: alpha 9, bravo 7, charlie 5, delta 3, echo 1.
FREQ_DOCS = (
    ["Alpha bravo charlie delta"] * 3
    + ["alpha, BRAVO! charlie"] * 2
    + ["alpha bravo<br />"] * 2
    + ["alpha alpha echo"]
)


def _docs(texts, labels=None):
    return [
        {C.ID_KEY: f"doc{i}", C.TEXT_KEY: t, C.LABEL_KEY: (labels[i] if labels else i % 2)} for i, t in enumerate(texts)
    ]


def run_transform(docs, out_dir, config):
    import tensorflow_transform.beam as tft_beam

    from beam_rnn.preprocess.transform import AnalyzeAndTransform, finalize_stats, partial_stats, write_partial

    tmp = os.path.join(out_dir, C.TMP_DIR)
    with beam.Pipeline(argv=["--runner=DirectRunner"]) as p, tft_beam.Context(temp_dir=tmp):
        result = p | beam.Create(docs) | AnalyzeAndTransform(config=config, output_dir=out_dir, batch_size=4)
        write_partial(partial_stats(result.stats, p | "NoDeadLetters" >> beam.Create([{}])), tmp)
    return finalize_stats(out_dir, config=config, counters={})


def read_examples(out_dir, split):
    files = sorted(glob.glob(os.path.join(out_dir, C.TRANSFORMED_DIR, f"{split}-*")))
    assert files, f"no {split} shards"
    rows = {}
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        ex = tf.train.Example.FromString(record.numpy())
        f = ex.features.feature
        rows[f[C.ID_KEY].bytes_list.value[0].decode()] = (
            list(f[C.TOKEN_IDS_KEY].int64_list.value),
            list(f[C.LABEL_KEY].int64_list.value),
        )
    return rows


@pytest.fixture(scope="module")
def freq_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("freq"))
    stats = run_transform(_docs(FREQ_DOCS), out, PreprocessConfig(vocab_size=3, min_frequency=1, eval_fraction=0.0))
    return out, stats


def test_vocabulary_frequency_order_and_top_k(freq_run):
    out, stats = freq_run
    assert read_vocabulary(out) == ["alpha", "bravo", "charlie"]
    assert stats["vocabulary_words"] == 3 and stats["vocab_size_with_reserved"] == 5


def test_reserved_ids_padding_and_oov(freq_run):
    out, _ = freq_run
    rows = read_examples(out, C.TRAIN_PREFIX)
    assert len(rows) == len(FREQ_DOCS)
    # alpha=2, bravo=3, charlie=4; delta and echo are OOV (1); 0 is never emitted.
    assert rows["doc0"] == ([2, 3, 4, 1], [0])
    assert rows["doc5"] == ([2, 3], [1])
    assert rows["doc7"] == ([2, 2, 1], [1])
    assert all(0 not in ids for ids, _ in rows.values())


def test_min_frequency_and_oov_buckets(tmp_path):
    cfg = PreprocessConfig(vocab_size=100, min_frequency=3, num_oov_buckets=2, eval_fraction=0.0)
    stats = run_transform(_docs(FREQ_DOCS), str(tmp_path), cfg)
    assert read_vocabulary(str(tmp_path)) == ["alpha", "bravo", "charlie", "delta"]
    ids = read_examples(str(tmp_path), C.TRAIN_PREFIX)["doc7"][0]
    # Words start after padding (0) and the two OOV buckets (1, 2).
    assert ids[:2] == [3, 3] and ids[2] in (1, 2)
    assert stats["splits"]["train"]["oov_tokens"] == 1
    assert stats["splits"]["train"]["tokens"] == 3 * 4 + 2 * 3 + 2 * 2 + 3


def test_stats_percentiles_labels_and_truncation(tmp_path):
    texts = [" ".join(["w"] * n) for n in range(1, 21)]
    cfg = PreprocessConfig(vocab_size=10, min_frequency=1, max_tokens=15, eval_fraction=0.0)
    stats = run_transform(_docs(texts, labels=[i % 3 for i in range(20)]), str(tmp_path), cfg)
    train = stats["splits"]["train"]
    assert train["token_length_percentiles"]["p100"] == 15
    assert train["token_length_percentiles"]["p50"] == 10
    assert stats["label_counts"] == {"0": 7, "1": 7, "2": 6}
    assert stats["num_classes"] == 3


def test_string_labels_with_declared_set(tmp_path):
    labels = ["pos", "neg", "neu", "pos"]
    cfg = PreprocessConfig(vocab_size=10, min_frequency=1, label_type="string", label_set=("neg", "neu", "pos"),
                           eval_fraction=0.0)
    stats = run_transform(_docs(["a b", "c d", "e", "f g"], labels=labels), str(tmp_path), cfg)
    rows = read_examples(str(tmp_path), C.TRAIN_PREFIX)
    assert [rows[f"doc{i}"][1][0] for i in range(4)] == [2, 0, 1, 2]
    assert stats["label_names"] == ["neg", "neu", "pos"]


def test_string_labels_vocabulary_built(tmp_path):
    labels = ["spam", "ham", "ham", "ham", "spam", "eggs"]
    cfg = PreprocessConfig(vocab_size=10, min_frequency=1, label_type="string", eval_fraction=0.0)
    stats = run_transform(_docs(["x"] * 6, labels=labels), str(tmp_path), cfg)
    names = stats["label_names"]
    assert names == ["ham", "spam", "eggs"]  # by frequency
    rows = read_examples(str(tmp_path), C.TRAIN_PREFIX)
    assert [names[rows[f"doc{i}"][1][0]] for i in range(6)] == labels


def test_rerun_is_byte_identical_and_split_stable(tmp_path):
    texts = [f"word{i % 7} word{i % 11} common text {i}" for i in range(300)]
    cfg = PreprocessConfig(vocab_size=15, min_frequency=1, eval_fraction=0.3)
    outs = []
    for run in ("a", "b"):
        out = str(tmp_path / run)
        run_transform(_docs(texts), out, cfg)
        outs.append(out)
    vocabs = [open(os.path.join(o, C.TRANSFORM_FN_DIR, "assets", C.VOCAB_FILENAME), "rb").read() for o in outs]
    assert vocabs[0] == vocabs[1]
    for split in (C.TRAIN_PREFIX, C.EVAL_PREFIX):
        assert read_examples(outs[0], split) == read_examples(outs[1], split)
    eval_ids = set(read_examples(outs[0], C.EVAL_PREFIX))
    assert eval_ids == {f"doc{i}" for i in range(300) if split_for_id(f"doc{i}", 0.3) == SPLIT_EVAL}
    assert 60 < len(eval_ids) < 120
    # The vocabulary is analysed on the train split only.
    train_only = collections.Counter(
        w for i, t in enumerate(texts) if f"doc{i}" not in eval_ids for w in t.split()
    )
    assert set(read_vocabulary(outs[0])) <= set(train_only)


def test_examples_are_what_the_transformed_metadata_describes(freq_run):
    """tft_beam.EncodeTransformedDataset writes the features of transformed_metadata/, nothing else."""
    import tensorflow_transform as tft

    out, _ = freq_run
    spec = tft.TFTransformOutput(out).transformed_feature_spec()
    assert set(spec) == {C.TOKEN_IDS_KEY, C.TRANSFORMED_ID_KEY, C.TRANSFORMED_LABEL_KEY}
    files = sorted(glob.glob(os.path.join(out, C.TRANSFORMED_DIR, f"{C.TRAIN_PREFIX}-*")))
    expected = read_examples(out, C.TRAIN_PREFIX)
    seen = {}
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        assert set(tf.train.Example.FromString(record.numpy()).features.feature) == set(spec)
        parsed = tf.io.parse_single_example(record, spec)
        ids = parsed[C.TOKEN_IDS_KEY]
        ids = ids.values if isinstance(ids, tf.SparseTensor) else ids
        seen[parsed[C.TRANSFORMED_ID_KEY].numpy().decode()] = (
            ids.numpy().tolist(), [int(parsed[C.TRANSFORMED_LABEL_KEY].numpy())])
    assert seen == expected and len(seen) == len(FREQ_DOCS)


HERMETIC_SCRIPT = r"""
import json, sys
import tensorflow as tf
import tensorflow_transform as tft
out = tft.TFTransformOutput(sys.argv[1])
res = out.transform_raw_features({"text": tf.constant(["Alpha, charlie<br />ZULU bravo!", ""])},
                                 drop_unused_features=True)
print(json.dumps(tf.sparse.to_dense(res["token_ids"]).numpy().tolist()))
"""


def test_transform_fn_is_hermetic_in_fresh_process(freq_run, tmp_path):
    out, _ = freq_run
    moved = tmp_path / "moved"
    # Only the transform_fn and metadata travel; temp dirs and transformed data are gone.
    shutil.copytree(os.path.join(out, C.TRANSFORM_FN_DIR), moved / C.TRANSFORM_FN_DIR)
    shutil.copytree(os.path.join(out, C.TRANSFORMED_METADATA_DIR), moved / C.TRANSFORMED_METADATA_DIR)
    assert not (moved / C.TMP_DIR).exists()
    proc = subprocess.run([sys.executable, "-c", HERMETIC_SCRIPT, str(moved)], capture_output=True, text=True,
                          cwd=str(ROOT), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [[2, 4, 1, 3], [0, 0, 0, 0]]
