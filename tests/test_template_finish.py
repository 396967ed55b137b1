"""The pipelines finish their outputs as their last stage, so a job nobody waits for (a Flex Template
launch: `--template_location`) still ends complete, or failed.

A template launch itself cannot run here (`--template_location` is Dataflow's); what can is tested:
the decision to wait, `PreprocessCorpus` on the DirectRunner with no driver code after it, and the
drivers' no-wait path with `--no_wait_until_finish`, under which the DirectRunner's run() still runs
the whole job before returning (so its outputs can be checked).
"""

from __future__ import annotations

import dataclasses
import json

import apache_beam as beam
import pytest

from beam_rnn.core import constants as C
from beam_rnn.core.manifest import MANIFEST_FILE
from tests.test_preprocess_pipeline import write_corpus


@pytest.mark.parametrize("flags, waits", [
    ([], True),
    (["--runner", "DirectRunner"], True),
    (["--runner", "DataflowRunner", "--project", "p", "--region", "r", "--temp_location", "gs://b/tmp"], True),
    (["--runner", "DataflowRunner", "--template_location", "gs://b/templates/t.json"], False),
    (["--template_location=gs://b/templates/t.json"], False),
    (["--runner", "DirectRunner", "--no_wait_until_finish"], False),
])
def test_driver_waits_unless_the_job_is_staged_or_left_running(flags, waits):
    from beam_rnn.cli.runtime import driver_waits, pipeline_options, staged_message

    options = pipeline_options(flags)
    assert driver_waits(options) is waits
    line = staged_message(options, "OUT")
    assert "\n" not in line and line.endswith("when it has run: OUT")
    if "template_location" in " ".join(flags):
        assert "staged as a template at gs://b/templates/t.json" in line


@pytest.mark.parametrize("driver", ["preprocess", "score"])
def test_the_launchers_command_line_makes_the_driver_return_without_waiting(driver):
    import importlib

    from beam_rnn.cli.flags import parse_known_flags
    from beam_rnn.cli.runtime import driver_waits, pipeline_options
    from tests.test_containers import LAUNCHER_FLAGS

    module = importlib.import_module(f"pipelines.{driver}")
    required = ["--input=gs://b/c/*.csv", "--output=gs://b/out"] + (["--model=gs://b/m"] if driver == "score" else [])
    _, beam_flags = parse_known_flags(module.build_parser(), required + LAUNCHER_FLAGS)
    assert beam_flags == LAUNCHER_FLAGS and driver_waits(pipeline_options(beam_flags)) is False


def _corpus(path, fmt: str = "csv", **settings):
    from beam_rnn.io import CorpusConfig
    from beam_rnn.preprocess.config import Corpus

    return Corpus((str(path),), CorpusConfig(format=fmt, **settings))


def _run_preprocess_corpus(corpus, out, **kwargs):
    """`PreprocessCorpus` alone on the DirectRunner: no driver code before or after it."""
    from beam_rnn.preprocess.config import PreprocessConfig
    from beam_rnn.preprocess.pipeline import PreprocessCorpus

    config = PreprocessConfig(vocab_size=50, min_frequency=1, **corpus.label_settings())
    with beam.Pipeline(argv=["--runner=DirectRunner"]) as p:
        _ = p | PreprocessCorpus(corpus, config, str(out), batch_size=4, **kwargs)
    return config


def test_preprocess_corpus_finishes_its_output_in_the_pipeline(tmp_path):
    from beam_rnn.train.checks import check_transformed_dir

    corpus_file = tmp_path / "corpus.csv"
    write_corpus(corpus_file)  # 11 rows: 7 documents (one with an undecodable byte), 4 dead letters
    out = tmp_path / "out"
    config = _run_preprocess_corpus(_corpus(corpus_file, id_column="id"), out)
    for rel in (C.STATS_FILE, C.PREPROCESS_CONFIG_FILE, MANIFEST_FILE, "transform_fn/saved_model.pb"):
        assert (out / rel).exists(), rel
    assert not (out / C.TMP_DIR).exists()
    stats = json.loads((out / C.STATS_FILE).read_text())
    # The counts come from the pipeline itself: rows counted where they are read, not docs + dead.
    assert (stats["rows_in"], stats["documents_out"], stats["dead_lettered"]) == (11, 7, 4)
    assert stats["reconciled"] is True and stats["replaced_undecodable_chars"] == 1
    assert stats["files_truncated"] == stats["files_unreadable"] == 0
    assert json.loads((out / C.PREPROCESS_CONFIG_FILE).read_text()) == config.to_dict()
    check_transformed_dir(str(out))  # train's check of the manifest accepts the output


def test_rows_in_are_counted_by_the_reader_and_the_sample_in_the_pipeline(tmp_path):
    import gzip

    from beam_rnn.preprocess.transform import in_sample

    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    write_corpus(corpus_dir / "a.csv")
    payload = b"id,label,text\n" + b"".join(f"z{i},{i % 2},gz row {i}\n".encode() for i in range(20))
    (corpus_dir / "b.csv.gz").write_bytes(gzip.compress(payload)[:-8])  # 20 rows, then truncated_file
    out = tmp_path / "out"
    corpus = _corpus(corpus_dir / "*", id_column="id")
    _run_preprocess_corpus(dataclasses.replace(corpus, sample_fraction=0.5), out)
    stats = json.loads((out / C.STATS_FILE).read_text())
    ids = ["g1", "g2", "g3", "g4", "g5", "g6", "g7"] + [f"z{i}" for i in range(20)]
    kept = [i for i in ids if in_sample(i, 0.5)]
    assert (stats["rows_in"], stats["dead_lettered"], stats["files_truncated"]) == (32, 5, 1)
    assert (stats["sampled_out"], stats["documents_out"]) == (27 - len(kept), len(kept))
    assert stats["reconciled"] is True and (out / MANIFEST_FILE).exists()


def _mostly_dead(tmp_path):
    corpus_file = tmp_path / "mostly_dead.jsonl"
    corpus_file.write_text('{"text": "a good film", "label": 1}\n{"text": "", "label": 0}\nnot json\n'
                           '{"label": 1}\n')
    return _corpus(corpus_file, fmt="jsonl")  # Corpus.max_dead_letter_fraction: 0.5


def test_an_unusable_output_fails_the_pipeline_and_gets_no_manifest(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(Exception, match=r"3 of 4 rows \(75%\) were dead-lettered.*no manifest.json written"):
        _run_preprocess_corpus(_mostly_dead(tmp_path), out)
    stats = json.loads((out / C.STATS_FILE).read_text())  # written before the last stage raised
    assert (stats["rows_in"], stats["dead_lettered"]) == (4, 3)
    assert not (out / MANIFEST_FILE).exists() and not (out / C.TMP_DIR).exists()


def test_a_waiting_driver_reports_the_problem_itself(tmp_path):
    # fail_on_problem=False (run_preprocess's choice when it waits): the job succeeds, the output has no
    # manifest, and the driver's check of the written stats.json gives the one line.
    from beam_rnn.preprocess.pipeline import PreprocessError, check_finished

    out = tmp_path / "out"
    corpus = _mostly_dead(tmp_path)
    config = _run_preprocess_corpus(corpus, out, fail_on_problem=False)
    assert not (out / MANIFEST_FILE).exists()
    stats = json.loads((out / C.STATS_FILE).read_text())
    with pytest.raises(PreprocessError, match=r"^3 of 4 rows \(75%\) were dead-lettered"):
        check_finished(str(out), stats, config, corpus.max_dead_letter_fraction)


def test_the_preprocess_driver_that_does_not_wait_prints_one_line_and_exits_0(tmp_path, capsys):
    from pipelines import preprocess

    corpus_file = tmp_path / "corpus.csv"
    write_corpus(corpus_file)
    out = tmp_path / "out"
    code = preprocess.main(["--input", str(corpus_file), "--format", "csv", "--id-column", "id", "--output", str(out),
                            "--min-frequency", "1", "--runner", "DirectRunner", "--no_wait_until_finish"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"Job submitted, not waited for; when it has run: {out}/{C.STATS_FILE}, and "
                     f"{out}/{MANIFEST_FILE} if the output is usable (else the job fails)"]
    # The DirectRunner ran the job inside run(): its last stage, not the driver, finished the output.
    assert (out / MANIFEST_FILE).exists() and json.loads((out / C.STATS_FILE).read_text())["rows_in"] == 11


def test_run_all_refuses_to_be_staged(tmp_path, capsys):
    from beam_rnn.cli import run_command

    corpus_file = tmp_path / "corpus.csv"
    write_corpus(corpus_file)
    code = run_command("run-all", ["--input", str(corpus_file), "--format", "csv", "--output", str(tmp_path / "o"),
                                   "--runner", "DirectRunner", "--no_wait_until_finish"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and "cannot be staged" in errors[0], errors
    assert not (tmp_path / "o").exists()
