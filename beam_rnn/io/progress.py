"""`Progress`: a pass-through step that counts what flows through it and shows it on the console.

    docs = docs | "ProgressRead" >> Progress("read")        # same elements out

Every element increments the Beam counter ``beam_rnn.progress/<label>`` (visible in the
runner's metrics on any runner).  When the step runs in the process that built the
pipeline — the default in-process `beam_rnn.cli.runtime.LocalRunner` — it also feeds
`beam_rnn.core.progress`, which shows a live line (documents done, rate, elapsed) while
the command line has enabled it.  On workers elsewhere (Dataflow, a multi-process local
runner) it only counts.
"""

import os
import socket

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_rnn.core import progress

NAMESPACE = "beam_rnn.progress"


class _CountFn(beam.DoFn):
    """Counts elements (Beam counter; and the console board in the constructing process) and re-emits them."""

    def __init__(self, label: str, unit: str) -> None:
        self._label = label
        self._unit = unit
        self._origin = (socket.gethostname(), os.getpid())  # where the pipeline was built
        self._counter = Metrics.counter(NAMESPACE, label)
        self._local = False

    def setup(self):
        self._local = (socket.gethostname(), os.getpid()) == self._origin

    def process(self, element):
        self._counter.inc()
        if self._local:
            progress.count(self._label, unit=self._unit)
        yield element


class Progress(beam.PTransform):
    """Counts the elements of a PCollection under `label` and passes them on unchanged.

    Args:
      label: What the count is, as shown (``read``, ``transformed``, ``scored``).
      unit: What is counted (``documents``, ``examples``...).
    """

    def __init__(self, label: str, unit: str = "documents") -> None:
        super().__init__()
        self._count_label = label
        self._unit = unit

    def expand(self, pcoll):
        count = beam.ParDo(_CountFn(self._count_label, self._unit))
        if pcoll.element_type is not None:  # the same elements: keep their type (and so their coder)
            count = count.with_output_types(pcoll.element_type)
        return pcoll | "Count" >> count
