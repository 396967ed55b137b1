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
    proc = _cli("no-such-command")
    assert proc.returncode == 2 and "unknown command 'no-such-command'" in proc.stderr
