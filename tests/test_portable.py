"""Runs beyond one machine: Beam's PortableRunner with SDK workers in separate processes,
and the sdist that Beam's stager builds for ``--setup_file``.

The portable runs use the embedded (in-process) job service, ``--job_endpoint=embed``,
with ``--environment_type=beam:env:harness_subprocess_python:v1``: the job service
starts every SDK worker as a separate OS process (a boot-like script that records its
pid and runs ``apache_beam.runners.worker.sdk_worker_main``), talking to it over the
Fn API (gRPC), so every DoFn, coder and model load happens in another process, from
pickled transforms, exactly as on a cluster.  (Beam 2.77's embedded job service has no
handler for ``--environment_type=PROCESS`` — that is for the Flink/Spark job servers —
and LOOPBACK would run the workers inside this process.)

The preprocessing and scoring pipelines must produce the same results on the
PortableRunner as on the DirectRunner: identical vocabulary file, identical
transformed examples, identical statistics, the same scores and summary.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from beam_rnn.core import constants as C

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
WORDS = "good great fine bad awful poor movie film plot actor the a and of".split()

_BOOT = textwrap.dedent(
    """
    # Boot-like entry point of a portable SDK worker: record the pid, run the SDK harness.
    import os, runpy, sys
    with open({marker!r}, "a") as f:
        f.write(f"{{os.getpid()}}\\n")
    sys.argv = ["sdk_worker_main"]
    runpy.run_module("apache_beam.runners.worker.sdk_worker_main", run_name="__main__", alter_sys=True)
    """
)


def portable_flags(tmp: Path) -> tuple[list[str], Path]:
    """PortableRunner flags with subprocess SDK workers; returns (flags, pid marker file)."""
    marker = tmp / "worker_pids.txt"
    boot = tmp / "sdk_worker_boot.py"
    boot.write_text(_BOOT.format(marker=str(marker)))
    command = (
        f"PYTHONPATH={shlex.quote(str(REPO_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}} "
        f"TF_CPP_MIN_LOG_LEVEL=2 exec {shlex.quote(PYTHON)} {shlex.quote(str(boot))}"
    )
    flags = [
        "--runner=PortableRunner",
        "--job_endpoint=embed",
        "--environment_type=beam:env:harness_subprocess_python:v1",
        f"--environment_config={command}",
    ]
    return flags, marker


def _corpus(path: Path) -> int:
    rng = random.Random(7)
    rows = 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label"])
        for i in range(80):
            n = rng.choice([0, 2, 5, 12, 30]) + 1
            w.writerow([f"d{i:03d}", " ".join(rng.choice(WORDS) for _ in range(n)) + ".<br />", i % 2])
            rows += 1
        w.writerow(["bad1", "no label here", "x"])
        w.writerow(["bad2", "", "1"])
    return rows + 2


def _examples(prep: str) -> dict[str, dict[str, tuple]]:
    """{split: {id: (token_ids, label)}} from the gzipped tf.Example shards."""
    import tensorflow as tf

    out: dict[str, dict[str, tuple]] = {}
    for split in (C.TRAIN_PREFIX, C.EVAL_PREFIX):
        rows = {}
        for path in sorted(glob.glob(os.path.join(prep, C.TRANSFORMED_DIR, f"{split}-*"))):
            for raw in tf.data.TFRecordDataset(path, compression_type="GZIP"):
                f = tf.train.Example.FromString(raw.numpy()).features.feature
                doc_id = f[C.TRANSFORMED_ID_KEY].bytes_list.value[0].decode()
                assert doc_id not in rows
                rows[doc_id] = (tuple(f[C.TOKEN_IDS_KEY].int64_list.value), tuple(f[C.LABEL_KEY].int64_list.value))
        out[split] = rows
    return out


def _scores(prefix: str) -> dict[str, dict]:
    records = {}
    for path in sorted(glob.glob(f"{prefix}-[0-9][0-9][0-9][0-9][0-9]-of-*.jsonl")):
        for line in open(path, encoding="utf-8"):
            record = json.loads(line)
            records[record["id"]] = record
    return records


def _dead(prefix: str) -> list[dict]:
    lines = [line for path in sorted(glob.glob(f"{prefix}-dead_letter-*.jsonl")) for line in open(path)]
    return sorted((json.loads(line) for line in lines), key=lambda d: d["source"])


def _export_small_model(prep: str, model_dir: str) -> None:
    from beam_rnn.train import export
    from beam_rnn.train import models

    with open(os.path.join(prep, C.STATS_FILE)) as f:
        vocab_size = json.load(f)["vocab_size_with_reserved"]
    config = models.ModelConfig(kind="lstm", vocab_size=vocab_size, embedding_dim=8, units=6, dense_units=5, seed=4)
    model = models.build_classifier(config)
    rng = np.random.default_rng(4)
    model.set_weights(
        [(rng.standard_normal(w.shape) * (1.5 / np.sqrt(w.shape[0]) if w.ndim == 2 else 0.5)).astype(np.float32)
         for w in model.get_weights()]
    )
    export.export_model(model, config, prep, model_dir, {}, verify=False)


def test_portable_runner_with_separate_worker_processes_matches_direct_runner(tmp_path):
    from pipelines import preprocess, score

    corpus = tmp_path / "corpus.csv"
    rows = _corpus(corpus)
    flags, marker = portable_flags(tmp_path)
    common = ["--input", str(corpus), "--format", "csv", "--id-column", "id", "--vocab-size", "40",
              "--min-frequency", "1", "--eval-fraction", "0.25", "--batch-size", "16"]
    prep = {"direct": str(tmp_path / "prep_direct"), "portable": str(tmp_path / "prep_portable")}
    stats = {
        "direct": preprocess.run(common + ["--output", prep["direct"], "--runner=DirectRunner"], save_main_session=False),
        "portable": preprocess.run(common + ["--output", prep["portable"], *flags], save_main_session=False),
    }

    # The SDK workers really were other processes.
    pids = {int(p) for p in marker.read_text().split()}
    assert pids and os.getpid() not in pids

    vocab = [Path(p, C.TRANSFORM_FN_DIR, "assets", C.VOCAB_FILENAME).read_bytes() for p in prep.values()]
    assert vocab[0] == vocab[1] and len(vocab[0].splitlines()) > 5
    examples = {name: _examples(p) for name, p in prep.items()}
    assert examples["direct"] == examples["portable"]
    assert sum(len(v) for v in examples["direct"].values()) == rows - 2
    for key in ("documents_out", "vocabulary_words", "label_counts", "dead_letter_by_reason", "splits"):
        assert stats["direct"][key] == stats["portable"][key], key
    if "rows_in" in stats["portable"]:  # counters, where the runner reports them
        assert stats["portable"]["rows_in"] == stats["direct"]["rows_in"] == rows

    model_dir = str(tmp_path / "model" / "lstm")
    _export_small_model(prep["direct"], model_dir)
    score_args = ["--model", model_dir, "--input", str(corpus), "--format", "csv", "--id-column", "id",
                  "--min-batch-size", "4", "--max-batch-size", "8", "--sort-buffer", "16"]
    out = {"direct": str(tmp_path / "scores_direct" / "s"), "portable": str(tmp_path / "scores_portable" / "s")}
    before = len(pids)
    reports = {
        "direct": score.run(score_args + ["--output", out["direct"], "--runner=DirectRunner"]),
        "portable": score.run(score_args + ["--output", out["portable"], *flags]),
    }
    assert len({int(p) for p in marker.read_text().split()}) > before, "scoring ran in new worker processes"

    direct, portable = _scores(out["direct"]), _scores(out["portable"])
    assert sorted(direct) == sorted(portable) and len(direct) == rows - 2
    for doc_id, record in direct.items():
        other = portable[doc_id]
        assert other["predicted_label"] == record["predicted_label"] and other["true_label"] == record["true_label"]
        assert abs(other["probabilities"]["1"] - record["probabilities"]["1"]) <= 1e-6
    assert _dead(out["direct"]) == _dead(out["portable"]) and len(_dead(out["direct"])) == 2
    summaries = {k: json.loads(Path(v + "-summary.json").read_text()) for k, v in out.items()}
    for key in ("documents", "labelled", "rows_in", "dead_lettered", "dead_letter_by_stage_and_reason"):
        assert summaries["direct"][key] == summaries["portable"][key], key
    m_direct, m_portable = summaries["direct"]["models"]["lstm"], summaries["portable"]["models"]["lstm"]
    assert m_direct["confusion"] == m_portable["confusion"]
    assert m_direct["accuracy"] == m_portable["accuracy"]
    assert m_direct["auc"] == pytest.approx(m_portable["auc"], abs=1e-6)
    assert reports["direct"]["reconciled"] is True
    assert reports["portable"]["reconciled"] in (True, None)  # None: runner without metrics


# --- Staging: the sdist that --setup_file ships to remote workers ---------------------------

_PROJECT_FILES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "MANIFEST.in", "setup.cfg")


def _copy_project(dst: Path) -> Path:
    """A copy of the project's packaging inputs (building in place would leave *.egg-info behind)."""
    src = dst / "src"
    src.mkdir()
    for name in _PROJECT_FILES:
        if (REPO_ROOT / name).exists():
            shutil.copy2(REPO_ROOT / name, src / name)
    for package in ("beam_rnn", "pipelines"):
        shutil.copytree(REPO_ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    return src


def _check_sdist(tarball: Path) -> None:
    with tarfile.open(tarball) as tar:
        names = {Path(*Path(n).parts[1:]).as_posix() for n in tar.getnames() if len(Path(n).parts) > 1}
    for package in ("beam_rnn", "pipelines"):
        modules = sorted(p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / package).glob("*.py"))
        assert modules, package
        missing = [m for m in modules if m not in names]
        assert not missing, f"sdist {tarball.name} lacks {missing}"
    assert "setup.py" in names and "pyproject.toml" in names


def _require_build() -> None:
    try:
        import build  # noqa: F401
    except ImportError:
        pytest.skip("needs the `build` package (pip install build; add it to the test extra)")


def test_sdist_holds_every_module(tmp_path):
    """`python -m build --sdist` (isolated build env) packs beam_rnn/ and pipelines/."""
    _require_build()
    src = _copy_project(tmp_path)
    proc = subprocess.run([PYTHON, "-m", "build", "--sdist", "--outdir", str(tmp_path / "dist"), str(src)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and ("No matching distribution" in proc.stdout + proc.stderr
                                 or "Could not fetch" in proc.stdout + proc.stderr):
        pytest.skip("isolated build needs the package index for setuptools: " + proc.stderr[-300:])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    [tarball] = list((tmp_path / "dist").glob("*.tar.gz"))
    _check_sdist(tarball)


def _setuptools_too_old_for_pyproject() -> str | None:
    """Why Beam's no-isolation build must fail here, if it must (else None)."""
    import re
    from importlib import metadata

    text = (REPO_ROOT / "pyproject.toml").read_text()
    match = re.search(r"setuptools\s*>=\s*([0-9]+)", text)
    try:
        installed = int(metadata.version("setuptools").split(".")[0])
    except metadata.PackageNotFoundError:
        return "setuptools is not installed"
    if match and installed < int(match.group(1)):
        return (f"pyproject.toml needs setuptools>={match.group(1)} (PEP 639 `license = \"...\"`), the launcher "
                f"environment has setuptools {metadata.version('setuptools')}: Beam's stager "
                "(`python -m build --no-isolation`, then `setup.py sdist`) cannot build the package")
    return None


def test_beam_stager_builds_the_setup_file_package(tmp_path):
    """Exactly what `--setup_file ./setup.py` does on the launcher (Stager._build_setup_package)."""
    _require_build()
    from apache_beam.runners.portability.stager import Stager

    src = _copy_project(tmp_path)
    reason = _setuptools_too_old_for_pyproject()
    out = tmp_path / "staged"
    out.mkdir()
    cwd = os.getcwd()
    try:
        tarball = Stager._build_setup_package(str(src / "setup.py"), str(out))
    except RuntimeError as e:
        if reason:
            pytest.xfail(reason)
        raise AssertionError(f"Beam's stager could not build the package: {e}") from e
    finally:
        os.chdir(cwd)
    _check_sdist(Path(tarball))
