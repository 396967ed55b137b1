"""Shared fixtures, and a clean exit for test processes that ran TFT pipelines."""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("BEAM_RNN_SHARED_DATA", ROOT.parent / "shared" / "data"))

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_exit_status = {"code": None}


def pytest_sessionfinish(session, exitstatus):
    _exit_status["code"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Exit with pytest's own status, skipping interpreter teardown.

    A process that ran a TFT pipeline can segfault (rc 139) while TensorFlow's and
    Beam's threads are torn down after every test has already passed.  By the time
    pytest unconfigures, the summary is printed and all reporting plugins (junit
    xml, etc.) have written their files, so leaving with os._exit keeps the real
    result.  Set BEAM_RNN_NO_HARD_EXIT=1 to disable (e.g. for coverage tools).
    """
    code = _exit_status["code"]
    if code is None or os.environ.get("BEAM_RNN_NO_HARD_EXIT"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def shared_data_path(*parts: str) -> pathlib.Path:
    """Path into ../shared/data; the calling test is skipped with a clear message if absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs the shared data at {path} (absent on this machine)")
    return path


@pytest.fixture
def beam_options():
    """Pipeline options for in-process Beam tests (DirectRunner, no network)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(["--runner=DirectRunner"])
