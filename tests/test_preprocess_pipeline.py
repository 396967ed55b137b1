"""The preprocess driver end to end: outputs, dead-letter reconciliation, CLI errors."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from beam_rnn.core import constants as C
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
                       "vocabulary_words": summary["vocabulary_words"], "split_by": "id"}
    assert summary["vocabulary_words"] >= 2


def test_second_read_for_the_vocabulary_is_not_counted_twice(tmp_path):
    # preprocess reads the corpus twice (the vocabulary from one read, the transform streams the
    # other: memory stays flat); rows, dead letters and sampled-out documents are counted once.
    from beam_rnn.preprocess.transform import in_sample
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


# --------------------------------------------------------------------------
# Issue 11: hostile corpora are refused before work, or fail without a manifest
# --------------------------------------------------------------------------
def _run_in_process(argv, capsys):
    """`beam-rnn preprocess` in-process, expected to stop at argument checking: (exit code, error lines)."""
    from beam_rnn.cli import run_command

    code = run_command("preprocess", argv)
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    return code, errors


@pytest.mark.parametrize("case, message", [
    ("directory", "is a directory; give files or a glob such as"),
    ("broken_link", "cannot be read (not a regular file, or a broken link)"),
    ("fifo", "fifo.csv cannot be read (not a regular file)"),
    ("dangling_glob", "matches no files"),
    ("all_empty", "every matched file is empty (2 files)"),
    ("labels_not_class_ids", "--labels: declared int labels [0, 2] are not 0..1"),
    ("negative_declared_label", "negative label -1"),
    ("max_document_chars", "--max-document-chars must be >= 1, got 0"),
    ("class_names_of_strings", "--class-names names int labels; string labels are their own names"),
    ("class_names_beyond_labels", "--labels 2: 2 --class-names name the ids 0..1"),
])
def test_bad_inputs_exit_2_before_any_work(tmp_path, capsys, case, message):
    good = tmp_path / "good.csv"
    write_corpus(good)
    extra = []
    if case == "directory":
        inputs = [str(tmp_path)]
    elif case == "broken_link":
        (tmp_path / "gone.csv").symlink_to(tmp_path / "nowhere.csv")
        inputs = [str(good), str(tmp_path / "gone.csv")]
    elif case == "fifo":  # opening it to check it would block: it is refused unopened
        os.mkfifo(tmp_path / "fifo.csv")
        inputs = [str(good), str(tmp_path / "fifo.csv")]
    elif case == "dangling_glob":
        inputs = [str(good), str(tmp_path / "typo-*.csv")]
    elif case == "all_empty":
        (tmp_path / "e1.csv").write_bytes(b"")
        (tmp_path / "e2.csv").write_bytes(b"")
        inputs = [str(tmp_path / "e*.csv")]
    else:
        inputs = [str(good)]
        extra = {"labels_not_class_ids": ["--labels", "0,2"], "negative_declared_label": ["--labels=-1,0"],
                 "max_document_chars": ["--max-document-chars", "0"],
                 "class_names_of_strings": ["--class-names", "neg,pos", "--label-type", "string"],
                 "class_names_beyond_labels": ["--class-names", "neg,pos", "--labels", "0,1,2"]}[case]
    code, errors = _run_in_process(["--input", *inputs, "--format", "csv", "--output", str(tmp_path / "o"),
                                    *extra], capsys)
    assert code == 2
    assert len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "o").exists()


def test_cli_directory_input_exits_2_at_once(tmp_path):
    # The audit's case: a directory started the pipeline and died 110 s later with tracebacks.
    write_corpus(tmp_path / "c.csv")
    proc = run_cli("beam_rnn.cli", "preprocess", "--input", str(tmp_path), "--output", str(tmp_path / "o"))
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"{tmp_path} is a directory" in errors[0]
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()


def test_cli_int_labels_that_are_not_class_ids_fail_without_a_manifest(tmp_path):
    from beam_rnn.core.manifest import MANIFEST_FILE

    corpus = tmp_path / "c.csv"
    rows = [f"{text},{label}" for text, label in [("good film", 0), ("bad film", 1), ("fine film", 0),
                                                   ("great film", 1), ("odd one", 7), ("negative one", -1)]]
    corpus.write_text("text,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "o"
    proc = run_cli("beam_rnn.cli", "preprocess", "--input", str(corpus), "--output", str(out),
                   "--min-frequency", "1", "--runner", "DirectRunner")
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("beam-rnn preprocess: error:")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr[-3000:]
    assert "int labels must be class ids 0..K-1, but the labels seen are [0, 1, 7]" in errors[0]
    assert "--labels 0,1" in errors[0] and "--label-type string" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (out / MANIFEST_FILE).exists()
    stats = json.loads((out / C.STATS_FILE).read_text())
    # The negative label is a dead letter, not a class.
    assert stats["dead_letter_by_reason"] == {"invalid_label": 1}
    assert stats["reconciled"] is True


def test_corpus_without_documents_fails_without_a_manifest(tmp_path):
    from beam_rnn.core.errors import RunFailed, exit_code
    from beam_rnn.core.manifest import MANIFEST_FILE
    from beam_rnn.preprocess.pipeline import PreprocessError
    from pipelines import preprocess

    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "", "label": 0}\nnot json\n{"label": 1}\n')
    out = tmp_path / "o"
    with pytest.raises(PreprocessError, match=r"^no documents: 3 rows read, 3 dead-lettered") as exc:
        preprocess.run(["--input", str(corpus), "--format", "jsonl", "--output", str(out), "--runner", "DirectRunner"])
    assert isinstance(exc.value, RunFailed) and exit_code(exc.value) == 1
    assert not (out / MANIFEST_FILE).exists()


def test_hostile_corpus_counts_every_row_and_damaged_file(tmp_path):
    """Broken quote, negative label, oversized document and a truncated .csv.gz in one corpus."""
    import gzip

    from beam_rnn.core.manifest import MANIFEST_FILE
    from pipelines import preprocess

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.csv").write_text(
        "text,label\n"
        "a good film,1\n"
        '"an unterminated quote,0\n'  # must not swallow the rows below
        "a bad film,0\n"
        "still counted,1\n"
        "negative,-1\n"
        f"{'long ' * 100},1\n"  # 500 chars > --max-document-chars 200
        "last row,0\n"
    )
    payload = b"text,label\n" + b"".join(f"gz row {i},{i % 2}\n".encode() for i in range(40))
    complete = gzip.compress(payload)
    (corpus / "b.csv.gz").write_bytes(complete[:-8])  # every row there, the gzip trailer missing
    out = tmp_path / "o"
    stats = preprocess.run(["--input", str(corpus / "*"), "--format", "csv", "--output", str(out),
                            "--max-document-chars", "200", "--min-frequency", "1", "--runner", "DirectRunner"])
    assert stats["files_truncated"] == 1 and stats["files_unreadable"] == 0
    assert stats["dead_letter_by_reason"] == {"document_too_large": 1, "invalid_label": 1, "truncated_file": 1,
                                              "unparseable_row": 1}
    # a.csv: 7 records (4 documents, 3 dead letters); b.csv.gz: 40 documents + 1 truncated_file.
    assert (stats["rows_in"], stats["documents_out"], stats["dead_lettered"]) == (48, 44, 4)
    assert stats["reconciled"] is True and stats["num_classes"] == 2
    assert (out / MANIFEST_FILE).exists()


# --------------------------------------------------------------------------
# Flags generated from the config dataclasses
# --------------------------------------------------------------------------
def test_preprocess_flags_come_from_the_configs_with_the_documented_defaults(tmp_path):
    from beam_rnn.cli.corpus import resolve_corpus
    from beam_rnn.cli.flags import config_from_flags, parse_known_flags
    from beam_rnn.preprocess.config import PreprocessConfig, PreprocessJob
    from pipelines import preprocess

    corpus_file = tmp_path / "c.csv"
    write_corpus(corpus_file)
    parser = preprocess.build_parser()
    known, beam_args = parse_known_flags(parser, ["--input", str(corpus_file), "--output", "o", "--runner=X"])
    assert beam_args == ["--runner=X"]
    corpus = resolve_corpus(known)
    config = config_from_flags(PreprocessConfig, known, **corpus.label_settings())
    # The README table's defaults.
    assert (config.vocab_size, config.min_frequency, config.num_oov_buckets, config.max_tokens,
            config.eval_fraction) == (20000, 2, 1, None, 0.2)
    assert config == PreprocessConfig()
    assert config_from_flags(PreprocessJob, known) == PreprocessJob(batch_size=1000, keep_tmp=False)
    assert corpus.config.format == "csv" and corpus.config.max_document_chars == 10_000_000
    assert corpus.sample_fraction == 1.0 and corpus.labels is None and corpus.patterns == (str(corpus_file),)

    known, _ = parse_known_flags(parser, [
        "--input", str(corpus_file), "--output", "o", "--vocab_size", "7", "--max-tokens", "9",
        "--keep-tmp", "--batch-size", "5", "--label-type", "string", "--labels", "b,a", "--sample-fraction", "0.5"])
    corpus = resolve_corpus(known)
    config = config_from_flags(PreprocessConfig, known, **corpus.label_settings())
    assert (config.vocab_size, config.max_tokens, config.label_type, config.label_set) == (7, 9, "string", ("b", "a"))
    assert config_from_flags(PreprocessJob, known) == PreprocessJob(batch_size=5, keep_tmp=True)
    assert corpus.sample_fraction == 0.5 and corpus.labels == ("b", "a")


def test_a_corpus_labelled_by_name_is_told_how_to_read_it():
    """Kaggle's IMDB CSV labels rows "positive"/"negative": read as int ids every row is a dead letter; the one
    line says which flag reads them (and with --class-names, which labels it accepts)."""
    from beam_rnn.preprocess.config import PreprocessConfig
    from beam_rnn.preprocess.transform import output_problem

    stats = {"rows_in": 300, "documents_out": 0, "dead_lettered": 300, "sampled_out": 0,
             "dead_letter_by_reason": {"invalid_label": 300}, "label_counts": {}}
    problem = output_problem(stats, PreprocessConfig())
    assert problem.startswith("no documents: 300 rows read, 300 dead-lettered (invalid_label: 300)")
    assert problem.endswith("pass --class-names with them in id order (negative,positive), or --label-type string")
    mostly = dict(stats, documents_out=100, dead_lettered=200, dead_letter_by_reason={"invalid_label": 150, "empty_text": 50})
    named = output_problem(mostly, PreprocessConfig(class_names=("neg", "pos")), max_dead_letter_fraction=0.5)
    assert named.startswith("200 of 300 rows (67%) were dead-lettered")
    assert named.endswith("labels must be class ids 0..1 or one of --class-names neg,pos")
    other = dict(mostly, dead_letter_by_reason={"invalid_label": 50, "empty_text": 150})  # not mostly labels: no hint
    assert output_problem(other, PreprocessConfig(), max_dead_letter_fraction=0.5).endswith("--max-dead-letter-fraction 0.5")
    assert "--label-type" not in output_problem(dict(stats), PreprocessConfig(label_type="string"))
