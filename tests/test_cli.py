"""The `beam-rnn` console script: --help of every command works, --version, unknown commands."""

import subprocess
import sys

import pytest

from beam_rnn.cli import COMMANDS
from tests.conftest import ROOT


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "beam_rnn.cli", *args], capture_output=True, text=True,
                          cwd=str(ROOT), timeout=300)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_of_every_command_exits_0(command):
    proc = _cli(command, "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"usage: beam-rnn {command}"), proc.stdout[:300]
    assert "Traceback" not in proc.stderr


def test_version_and_usage():
    from importlib.metadata import version

    proc = _cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"beam-rnn {version('beam-rnn')}"
    proc = _cli()
    assert proc.returncode == 2 and "commands:" in proc.stdout
    # Each command says what it does (its driver's first docstring line), and where to start.
    assert "  run-all      The main job: corpus → preprocess → train both models" in proc.stdout
    assert "python -m pipelines" not in proc.stdout and "Start with: beam-rnn run-all" in proc.stdout
    proc = _cli("no-such-command")
    assert proc.returncode == 2 and "unknown command 'no-such-command'" in proc.stderr


def test_a_flag_nobody_knows_is_an_error_not_dropped(tmp_path):
    """A typo is refused (exit 2, a suggestion) before any work; --a_b spelling and Beam's flags pass."""
    corpus = tmp_path / "c.csv"
    corpus.write_text("text,label\ngood film,1\nbad film,0\n")
    base = ["score", "--model", str(tmp_path / "no_model"), "--input", str(corpus), "--output", str(tmp_path / "o")]
    proc = _cli(*base, "--sort-bufer", "5")
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert errors == ["beam-rnn score: error: unrecognized arguments: --sort-bufer 5 (did you mean --sort-buffer?)"]
    # The same command with the flag spelled Beam's way and a real Beam flag gets past flag parsing: the next
    # check (the model dir) is what stops it, with one line.
    proc = _cli(*base, "--sort_buffer", "5", "--direct_num_workers", "1")
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert proc.returncode == 2 and len(errors) == 1 and "no_model does not exist" in errors[0], proc.stderr[-2000:]


def test_project_value_errors_are_one_line_naming_the_flag(tmp_path):
    proc = _cli("train", "--transformed", str(tmp_path), "--output", str(tmp_path / "o"), "--epochs", "0")
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        "beam-rnn train: error: --epochs must be >= 1, got 0"]
    proc = _cli("train", "--transformed", str(tmp_path), "--output", str(tmp_path / "o"), "--epoch", "3")
    assert proc.returncode == 2 and "unrecognized arguments: --epoch 3" in proc.stderr


def test_verbose_takes_true_or_false_like_every_switch(monkeypatch, capsys):
    """``--verbose=true|false`` (as a Flex Template launcher would pass it) is taken out before the driver parses."""
    from beam_rnn import cli
    from beam_rnn.cli import runtime

    seen = {}
    quiet = runtime.console_output

    def console_output(verbose=False):
        seen["verbose"] = verbose
        return quiet(verbose=False)

    monkeypatch.setattr(runtime, "console_output", console_output)
    for flag, verbose in (("--verbose", True), ("--verbose=true", True), ("--verbose=False", False),
                          ("--verbose=0", False)):
        code = cli.run_command("preprocess", [flag, "--help"])  # argparse's --help exit, caught
        assert code == 0 and seen["verbose"] is verbose, flag
    code = cli.run_command("preprocess", ["--verbose=maybe", "--output", "o"])
    assert code == 2 and "argument --verbose: expected true or false, got 'maybe'" in capsys.readouterr().err
