"""The console of a command: --help before heavy imports, quiet by default, --verbose, progress, no warnings of ours."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What a default run must not print (TensorFlow's C++ logging, CUDA probing, Beam's and
# TensorFlow's INFO logging, type-hint chatter).
NOISE = ("cuInit", "graph_constructor", "Converting string literal", "oneDNN", "cudart_stub",
         "absl::InitializeLog", "INFO:", "output type hint will be ignored")


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_help_of_every_command_imports_neither_tensorflow_nor_beam():
    """Each command's --help in a fresh process: argparse answers before TensorFlow, TFT or Beam load (< 0.5 s)."""
    code = """
import contextlib, io, sys
from beam_rnn.cli import COMMANDS, run_command
command = sys.argv[1]
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = run_command(command, ["--help"])
heavy = sorted(m for m in ("tensorflow", "tensorflow_transform", "tf_keras", "apache_beam") if m in sys.modules)
print(code, out.getvalue().startswith("usage: beam-rnn " + command), ",".join(heavy) or "-")
"""
    from beam_rnn.cli import COMMANDS

    procs = {command: subprocess.Popen([sys.executable, "-c", code, command], cwd=ROOT, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE) for command in COMMANDS}
    for command, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert stdout.split() == ["0", "True", "-"], f"{command}: {stdout} {stderr[-2000:]}"


def _corpus(tmp_path: Path) -> str:
    from tests.helpers import synthetic_docs

    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in synthetic_docs(40, [0, 1], seed=5)))
    return str(path)


@pytest.fixture(scope="module")
def preprocess_runs(tmp_path_factory):
    """One quiet and one --verbose `beam-rnn preprocess` of the same small corpus, run side by side."""
    tmp = tmp_path_factory.mktemp("quiet")
    corpus = _corpus(tmp)
    args = ["-m", "beam_rnn.cli", "preprocess", "--input", corpus, "--format", "jsonl"]
    procs = {
        mode: subprocess.Popen([sys.executable, *args, "--output", str(tmp / mode), *extra], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for mode, extra in (("quiet", []), ("verbose", ["--verbose"]))
    }
    outputs = {mode: proc.communicate(timeout=600) for mode, proc in procs.items()}
    return {mode: (procs[mode].returncode, *outputs[mode]) for mode in procs}


def test_default_run_prints_the_project_lines_only(preprocess_runs):
    code, stdout, stderr = preprocess_runs["quiet"]
    assert code == 0, stderr[-3000:]
    noisy = [line for line in stderr.splitlines() if any(noise in line for noise in NOISE)]
    assert not noisy, noisy[:5]
    assert json.loads(stdout.strip().splitlines()[-1])["documents_out"] == 40
    lines = stderr.strip().splitlines()
    # Off a terminal progress comes as plain lines; the task's summary names what it counted.
    assert "preprocess done in " in lines[-1] and "tokenised 40 documents" in lines[-1], stderr[-3000:]
    assert len(lines) <= 5, stderr


def test_verbose_brings_the_libraries_logging_back(preprocess_runs):
    code, stdout, stderr = preprocess_runs["verbose"]
    assert code == 0, stderr[-3000:]
    assert any(line.startswith("INFO:apache_beam") for line in stderr.splitlines()), stderr[-3000:]
    assert "--verbose" not in stdout and json.loads(stdout.strip().splitlines()[-1])["documents_out"] == 40


def test_importing_the_package_warns_nothing_of_ours():
    """Every module of beam_rnn and pipelines imported with all warnings on: none is raised from our files."""
    code = """
import importlib, os, pkgutil, warnings
import beam_rnn, pipelines
roots = tuple(os.path.dirname(p.__file__) + os.sep for p in (beam_rnn, pipelines))
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for package in (beam_rnn, pipelines):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not info.name.endswith(".__main__"):  # that one runs the command line
                importlib.import_module(info.name)
ours = [f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}" for w in caught
        if os.path.abspath(w.filename).startswith(roots)]
print("\\n".join(ours) or "none")
"""
    proc = _run("-c", code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "none", proc.stdout[-3000:]
