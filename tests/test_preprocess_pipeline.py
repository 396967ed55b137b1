"""The preprocess driver end to end: outputs, dead-letter reconciliation, CLI errors."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from beam_rnn import constants as C
from tests.conftest import ROOT

GOOD = [
    ("g1", "1", "A great, fun movie.<br />Loved it"),
    ("g2", "0", 'Terrible, "boring" film'),
    ("g3", "1", "Great cast\nand a great\tscore"),
    ("g4", "0", "Boring plot, boring acting"),
    ("g5", "1", "fun fun fun"),
    ("g6", "0", "awful"),
]


def write_corpus(path) -> None:
    lines = ["id,label,text"]
    for i, label, text in GOOD:
        lines.append(f'{i},{label},"{text.replace(chr(34), chr(34) * 2)}"')
    lines += [
        "b1,1,",  # empty text
        'b2,,"no label here"',  # missing label
        'b3,7x,"bad label"',  # unparseable int label
        "b4,1",  # too few fields
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'g7,1,"caf\xe9 is bad utf-8"\n')


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=str(cwd), timeout=600)


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    from pipelines import preprocess

    tmp = tmp_path_factory.mktemp("prep")
    corpus = tmp / "corpus.csv"
    write_corpus(corpus)
    out = tmp / "out"
    stats = preprocess.run(["--input", str(corpus), "--format", "csv", "--id-column", "id", "--output", str(out),
                            "--vocab-size", "50", "--min-frequency", "1", "--eval-fraction", "0.3",
                            "--runner", "DirectRunner"])
    return out, stats


def test_outputs_exist_and_temp_removed(preprocessed):
    out, _ = preprocessed
    for rel in ("transform_fn/saved_model.pb", "transform_fn/assets/vocab", "transformed_metadata/schema.pbtxt",
                C.STATS_FILE, C.PREPROCESS_CONFIG_FILE):
        assert (out / rel).exists(), rel
    assert glob.glob(str(out / C.TRANSFORMED_DIR / "train-*.tfrecord.gz"))
    assert glob.glob(str(out / C.TRANSFORMED_DIR / "eval-*.tfrecord.gz"))
    assert not (out / C.TMP_DIR).exists()


def test_counts_reconcile_with_dead_letters(preprocessed):
    out, stats = preprocessed
    dead = [json.loads(line) for f in glob.glob(str(out / C.DEAD_LETTER_DIR / "*.jsonl")) for line in open(f)]
    assert stats["rows_in"] == 11
    assert stats["documents_out"] == 7
    assert stats["dead_lettered"] == len(dead) == 4
    assert stats["reconciled"] is True
    assert stats["dead_letter_by_reason"] == {"empty_text": 1, "invalid_label": 1, "missing_label": 1,
                                              "unparseable_row": 1}
    assert all(d["source"] and d["reason"] and "row" in d for d in dead)
    assert stats["replaced_undecodable_chars"] == 1
    splits = stats["splits"]
    assert splits["train"]["documents"] + splits["eval"]["documents"] == 7


def test_vocabulary_is_built_from_train_split_with_html_stripped(preprocessed):
    out, _ = preprocessed
    vocab = (out / "transform_fn/assets/vocab").read_text().split("\n")
    assert "br" not in vocab and "" not in vocab[:-1]
    assert all(w == w.lower() and w.isalnum() or "\ufffd" in w for w in vocab if w)


def test_cli_missing_input_exits_2_with_one_message(tmp_path):
    proc = run_cli("pipelines.preprocess", "--input", str(tmp_path / "nope-*.csv"), "--format", "csv",
                   "--output", str(tmp_path / "o"))
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "matches no files" in errors[0]
    assert not (tmp_path / "o").exists()


def test_cli_unknown_format_exits_2(tmp_path):
    proc = run_cli("beam_rnn.cli", "preprocess", "--input", str(tmp_path), "--format", "xml", "--output",
                   str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "invalid choice: 'xml'" in proc.stderr


def test_cli_unknown_command_exits_2():
    proc = run_cli("beam_rnn.cli", "fly")
    assert proc.returncode == 2 and "unknown command 'fly'" in proc.stderr


def test_cli_imdb_offline_message(tmp_path):
    env = dict(os.environ, BEAM_RNN_CACHE=str(tmp_path / "cache"))
    env.pop(C.IMDB_ENV_VAR, None)
    proc = subprocess.run([sys.executable, "-m", "pipelines.preprocess", "--output", str(tmp_path / "o"),
                           "--imdb", str(tmp_path / "missing.csv")], capture_output=True, text=True,
                          cwd=str(ROOT), env=env, timeout=120)
    assert proc.returncode == 2
    assert "--imdb" in proc.stderr


def test_cli_run_exits_zero_in_subprocess(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t, "label": i % 2}) for i, t in enumerate(
        ["good film", "bad film", "good good", "bad bad", "fine"])) + "\n{broken\n")
    proc = run_cli("beam_rnn.cli", "preprocess", "--input", str(corpus), "--format", "jsonl", "--output",
                   str(tmp_path / "o"), "--min-frequency", "1", "--runner", "DirectRunner")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary == {"rows_in": 6, "documents_out": 5, "dead_lettered": 1, "reconciled": True,
                       "vocabulary_words": summary["vocabulary_words"]}
    assert summary["vocabulary_words"] >= 2


def test_second_read_for_the_vocabulary_is_not_counted_twice(tmp_path):
    # preprocess reads the corpus twice (the vocabulary from one read, the transform streams the
    # other: memory stays flat); rows, dead letters and sampled-out documents are counted once.
    from beam_rnn.transform import in_sample
    from pipelines import preprocess

    corpus = tmp_path / "corpus.csv"
    write_corpus(corpus)
    out = tmp_path / "out"
    stats = preprocess.run(["--input", str(corpus), "--format", "csv", "--id-column", "id", "--output", str(out),
                            "--vocab-size", "50", "--min-frequency", "1", "--sample-fraction", "0.5",
                            "--runner", "DirectRunner"])
    kept = [i for i in [g[0] for g in GOOD] + ["g7"] if in_sample(i, 0.5)]
    assert 0 < len(kept) < 7  # the sample keeps some and drops some
    assert stats["rows_in"] == 11 and stats["dead_lettered"] == 4
    assert stats["sampled_out"] == 7 - len(kept) and stats["documents_out"] == len(kept)
    assert stats["reconciled"] is True
    dead = [line for f in glob.glob(str(out / C.DEAD_LETTER_DIR / "*.jsonl")) for line in open(f)]
    assert len(dead) == 4
