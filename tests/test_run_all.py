"""The main job end to end: `run_all --quick` on a corpus made here, in a fresh process."""

from __future__ import annotations

import json
import random
import subprocess
import sys

from tests.conftest import ROOT


def test_run_all_quick_completes_end_to_end(tmp_path):
    rng = random.Random(1)
    good, bad = ["great", "superb", "loved"], ["awful", "boring", "hated"]
    lines = ["id,label,text"]
    for i in range(1500):
        label = i % 2
        words = [f"w{rng.randrange(40)}" for _ in range(rng.randint(3, 40))]
        words.insert(rng.randrange(len(words)), rng.choice(good if label else bad))
        lines.append(f"d{i},{label},{' '.join(words)}")
    lines.append("broken,1,")
    corpus = tmp_path / "corpus.csv"
    corpus.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "beam_rnn.cli", "run-all", "--input", str(corpus), "--format", "csv",
         "--id-column", "id", "--output", str(out), "--quick", "--runner", "DirectRunner"],
        capture_output=True, text=True, cwd=str(ROOT), timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    for stage in ("[1/4] preprocess done", "[2/4] train", "[3/4] score", "[4/4] evaluate"):
        assert any(line.startswith(stage) for line in lines), proc.stdout
    assert lines[-1] == f"Report: {out / 'report' / 'report.html'}"
    stats = json.loads((out / "prep" / "stats.json").read_text())
    assert stats["reconciled"] and stats["dead_lettered"] == 1 and stats["sampled_out"] > 1000
    for kind in ("bilstm", "lstm"):
        assert (out / "models" / kind / "saved_model" / "saved_model.pb").exists()
    summary = json.loads((out / "scores" / "scores-summary.json").read_text())
    assert summary["counters"]["reconciled"] is True and summary["counters"]["scored"] == 1500
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"bilstm", "lstm"} and metrics["split"] == "eval"
    assert (out / "report" / "report.html").stat().st_size > 10000


def test_run_all_stops_with_one_line_when_preprocessing_fails(tmp_path):
    """Int labels {0, 1, 7} are not class ids: run-all stops after preprocess, exit 1, one error line."""
    lines = ["id,label,text"] + [f"d{i},{[0, 1, 7][i % 3]},some words here {i}" for i in range(60)]
    corpus = tmp_path / "corpus.csv"
    corpus.write_text("\n".join(lines) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "beam_rnn.cli", "run-all", "--input", str(corpus), "--format", "csv",
         "--id-column", "id", "--output", str(tmp_path / "run"), "--max-document-chars", "5000"],
        capture_output=True, text=True, cwd=str(ROOT), timeout=600)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("beam-rnn run-all: error:")]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert len(errors) == 1 and "7" in errors[0] and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "run" / "models").exists()
