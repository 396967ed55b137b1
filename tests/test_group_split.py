"""Splitting by group (`preprocess --group-column`): documents sharing a value stay on one side."""

import collections
import glob
import json
import subprocess
import sys

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_rnn.core import constants as C
from beam_rnn.io import CorpusConfig, ReadCorpus
from beam_rnn.io.formats import aclimdb_film
from beam_rnn.preprocess.transform import SPLIT_EVAL, SPLIT_TRAIN, split_for_id, split_of
from tests.conftest import ROOT
from tests.io_fixtures import counters, write_bytes


def test_split_of_uses_the_group_and_falls_back_to_the_id():
    same_film = [{"id": f"r{i}", "text": "t", "group": "tt001"} for i in range(200)]
    assert len({split_of(d, 0.5) for d in same_film}) == 1
    alone = {"id": "r7", "text": "t"}
    assert split_of(alone, 0.5) == split_for_id("r7", 0.5)
    # Over many groups the held-out share of groups is close to the fraction.
    held = sum(split_of({"id": "x", "group": f"tt{g}"}, 0.2) == SPLIT_EVAL for g in range(5000))
    assert 0.18 < held / 5000 < 0.22
    assert {split_of({"id": "x", "group": "g"}, 0.0), split_of({"id": "x"}, 0.0)} == {SPLIT_TRAIN}


@pytest.mark.parametrize("settings, message", [
    ({"format": "text", "labelled": False}, "a group column needs a column format"),
    ({"format": "labeled_lines"}, "a group column needs a column format"),
    ({"format": "aclimdb", "group_column": "film"}, "one group column, 'movie'"),
    ({"format": "csv", "group_column": ""}, "must be non-empty names"),
])
def test_group_column_is_refused_where_it_cannot_be_read(settings, message):
    with pytest.raises(ValueError, match=message):
        CorpusConfig(**{"group_column": "movie", **settings})


def test_csv_group_column_becomes_the_documents_group(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("id,label,text,movie\na,1,good,tt1\nb,0,bad, tt2 \nc,1,fine,\n")
    with BeamPipeline(options=beam.options.pipeline_options.PipelineOptions(["--runner=DirectRunner"])) as p:
        docs, _ = p | ReadCorpus(str(path), format="csv", id_column="id", group_column="movie")
        assert_that(docs | beam.Map(lambda d: (d["id"], d.get("group"))),
                    equal_to([("a", "tt1"), ("b", "tt2"), ("c", None)]))
    assert counters(p.result)["documents_without_group"] == 1


def _acl_tree(root):
    write_bytes(root / "train/pos/0_9.txt", b"A great film.")
    write_bytes(root / "train/pos/1_7.txt", b"Good fun.")
    write_bytes(root / "train/pos/5_8.txt", b"No url line for me.")
    write_bytes(root / "train/neg/0_3.txt", b"Dull.")
    write_bytes(root / "train/urls_pos.txt",
                b"http://www.imdb.com/title/tt0453418/usercomments\nhttp://www.imdb.com/title/tt0000042/usercomments\n")
    write_bytes(root / "train/urls_neg.txt", b"http://www.imdb.com/title/tt0453418/usercomments\n")
    return root


def test_aclimdb_reader_takes_the_film_from_the_urls_files(tmp_path):
    root = _acl_tree(tmp_path / "aclImdb")
    assert aclimdb_film(str(root / "train/pos/1_7.txt")) == "tt0000042"
    assert aclimdb_film(str(root / "train/neg/0_3.txt")) == "tt0453418"
    assert aclimdb_film(str(root / "train/pos/5_8.txt")) is None  # past the end of urls_pos.txt
    with BeamPipeline(options=beam.options.pipeline_options.PipelineOptions(["--runner=DirectRunner"])) as p:
        docs, _ = p | ReadCorpus(str(root), format="aclimdb", group_column="movie")
        assert_that(docs | beam.Map(lambda d: (d["id"], d.get("group"))), equal_to([
            ("train/pos/0_9.txt", "tt0453418"), ("train/pos/1_7.txt", "tt0000042"),
            ("train/pos/5_8.txt", None), ("train/neg/0_3.txt", "tt0453418")]))


def test_imdb_copies_offer_their_film_column(tmp_path):
    from beam_rnn.preprocess.datasets import resolve_imdb

    with_movie = tmp_path / "a.csv"
    with_movie.write_text("id,label,text,movie\n1,1,good,tt1\n")
    without = tmp_path / "b.csv"
    without.write_text("id,label,text\n1,1,good\n")
    assert resolve_imdb(str(with_movie)).group_column == "movie"
    assert resolve_imdb(str(without)).group_column is None
    assert resolve_imdb(str(_acl_tree(tmp_path / "aclImdb"))).group_column == "movie"


def _grouped_corpus(path, groups=40, per_group=6):
    lines = ["id,label,text,movie"]
    words = ["good", "bad", "film", "plot", "fine", "awful"]
    for g in range(groups):
        for r in range(per_group):
            lines.append(f"r{g}_{r},{(g + r) % 2},{words[g % 6]} {words[r % 6]} {words[(g + r) % 6]},tt{g:04d}")
    path.write_text("\n".join(lines) + "\n")


def _examples(out, split):
    import tensorflow as tf

    files = glob.glob(str(out / C.TRANSFORMED_DIR / f"{split}-*.tfrecord.gz"))
    found = []
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        found.append((feature["id"].bytes_list.value[0].decode(), feature["group"].bytes_list.value[0].decode()))
    return found


def test_preprocess_group_column_keeps_each_group_on_one_side(tmp_path):
    corpus = tmp_path / "c.csv"
    _grouped_corpus(corpus)
    out = tmp_path / "prep"
    proc = subprocess.run([sys.executable, "-m", "beam_rnn.cli", "preprocess", "--input", str(corpus),
                           "--id-column", "id", "--group-column", "movie", "--eval-fraction", "0.3",
                           "--min-frequency", "1", "--output", str(out), "--runner", "DirectRunner"],
                          capture_output=True, text=True, cwd=str(ROOT), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["split_by"] == "movie" and summary["documents_without_group"] == 0
    train, held = _examples(out, "train"), _examples(out, "eval")
    assert len(train) + len(held) == 240
    sides = collections.defaultdict(set)
    for side, rows in (("train", train), ("eval", held)):
        for doc_id, group in rows:
            assert group == f"tt{int(doc_id[1:].split('_')[0]):04d}"
            sides[group].add(side)
    assert all(len(s) == 1 for s in sides.values()), "a film on both sides of the split"
    assert {"train", "eval"} == set().union(*sides.values())
    config = json.loads((out / C.PREPROCESS_CONFIG_FILE).read_text())
    assert config["group_column"] == "movie"


def test_preprocess_group_column_that_no_row_has_fails(tmp_path):
    corpus = tmp_path / "c.csv"
    _grouped_corpus(corpus, groups=4)
    out = tmp_path / "prep"
    proc = subprocess.run([sys.executable, "-m", "beam_rnn.cli", "preprocess", "--input", str(corpus),
                           "--group-column", "film", "--min-frequency", "1", "--output", str(out),
                           "--runner", "DirectRunner"], capture_output=True, text=True, cwd=str(ROOT), timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "no document had a value in the group column 'film'" in errors[0], errors
    assert not (out / "manifest.json").exists()


def test_preprocess_group_column_on_a_format_without_columns_exits_2_before_work(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("1 good film\n0 bad film\n")
    proc = subprocess.run([sys.executable, "-m", "beam_rnn.cli", "preprocess", "--input", str(corpus),
                           "--format", "labeled_lines", "--group-column", "movie", "--output", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=str(ROOT), timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--group-column movie" in errors[0] and "column format" in errors[0], errors
    assert not (tmp_path / "o").exists()


def test_evaluate_draws_the_models_split_again_by_group():
    from beam_rnn.serve.run import model_split

    card = {"preprocess_config": {"eval_fraction": 0.3, "group_column": "movie"}}
    docs = [{"id": f"r{i}", "group": f"tt{i % 50}"} for i in range(500)]
    keep_eval, group = model_split(card, "eval")
    keep_train, _ = model_split(card, "train")
    assert group == "movie"
    assert all(keep_eval(d) == (split_of(d, 0.3) == SPLIT_EVAL) != keep_train(d) for d in docs)
    held = {d["group"] for d in docs if keep_eval(d)}
    assert held and not held & {d["group"] for d in docs if keep_train(d)}
    assert model_split(card, "all") == (None, None)
    by_id, no_group = model_split({"preprocess_config": {"eval_fraction": 0.3}}, "eval")
    assert no_group is None and [by_id({"id": f"r{i}"}) for i in range(50)] == [
        split_for_id(f"r{i}", 0.3) == SPLIT_EVAL for i in range(50)]
