"""The runner chosen when none is given: in-process, no Prism download, nothing listening."""

import apache_beam as beam
import psutil
import pytest
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.testing.test_stream import TestStream as _TestStream
from apache_beam.testing.util import assert_that, equal_to

from beam_rnn.cli import runtime


def test_default_runner_is_local_and_runner_flag_overrides():
    assert runtime.pipeline_options([]).view_as(StandardOptions).runner == runtime.LOCAL_RUNNER
    assert runtime.pipeline_options(["--runner", "DirectRunner"]).view_as(StandardOptions).runner == "DirectRunner"
    options = runtime.pipeline_options([], streaming=True).view_as(StandardOptions)
    assert options.streaming and options.runner == runtime.LOCAL_RUNNER


def test_runner_choice_is_logged_once(caplog, monkeypatch):
    monkeypatch.setattr(runtime, "_ANNOUNCED", set())
    with caplog.at_level("INFO", logger="beam_rnn"):
        runtime.pipeline_options([])
        runtime.pipeline_options([])  # run-all builds several pipelines: one line
    assert sum("Runner: LocalRunner" in r.getMessage() for r in caplog.records) == 1


class _ListeningSockets(beam.DoFn):
    def process(self, element):
        listening = [c for c in psutil.Process().net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        yield (element, len(listening))


@pytest.fixture
def no_prism(monkeypatch):
    """Records any attempt to start Prism (the DirectRunner swallows its errors, so record, not raise)."""
    from apache_beam.runners.portability import prism_runner

    tried = []

    def refuse(self, *args, **kwargs):
        tried.append(type(self).__name__)
        raise RuntimeError("PrismRunner was tried")

    monkeypatch.setattr(prism_runner.PrismRunner, "__init__", refuse)
    yield
    assert not tried, "the pipeline tried PrismRunner"


def test_batch_pipeline_never_tries_prism_and_listens_nowhere(no_prism):
    with beam.Pipeline(options=runtime.pipeline_options([])) as p:
        out = p | beam.Create([1, 2, 3]) | beam.ParDo(_ListeningSockets())
        assert_that(out, equal_to([(1, 0), (2, 0), (3, 0)]))


class _Sum(beam.DoFn):
    from apache_beam.transforms.userstate import CombiningValueStateSpec

    TOTAL = CombiningValueStateSpec("total", sum)

    def process(self, element, total=beam.DoFn.StateParam(TOTAL)):
        total.add(element[1])
        yield total.read()


def test_streaming_pipeline_runs_on_the_local_runner(no_prism):
    events = _TestStream().add_elements([("k", 1), ("k", 2)]).add_elements([("k", 3)]).advance_watermark_to_infinity()
    with beam.Pipeline(options=runtime.pipeline_options([], streaming=True)) as p:
        out = p | events | beam.ParDo(_Sum())
        assert_that(out, equal_to([1, 3, 6]))
