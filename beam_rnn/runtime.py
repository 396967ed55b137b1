"""Process-level helpers shared by the drivers: metrics, clean exits, arg checks."""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence


def hard_exit(code: int) -> None:
    """Flush and leave the process without running interpreter teardown.

    A process that ran a TFT pipeline can segfault while Python tears down
    TensorFlow/Beam threads *after* the work finished correctly (rc 139).  The
    drivers' work is complete and flushed by the time they call this, so skipping
    teardown is safe and keeps a good run's exit code honest.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def counters(result: Any, namespace: str) -> dict[str, int]:
    """Committed (or attempted, where committed is unsupported) counter values of a run."""
    from apache_beam.metrics.metric import MetricsFilter

    out: dict[str, int] = {}
    try:
        query = result.metrics().query(MetricsFilter().with_namespace(namespace))
    except Exception:  # Some runners do not support metrics queries; stats then omit them.
        return out
    for counter in query.get("counters", []):
        value = counter.committed if counter.committed is not None else counter.attempted
        out[counter.key.metric.name] = out.get(counter.key.metric.name, 0) + int(value or 0)
    return out


def input_matches(patterns: Sequence[str]) -> list[str]:
    """Patterns (files, globs, directories) that match nothing, via Beam FileSystems."""
    from apache_beam.io.filesystems import FileSystems

    missing = []
    for pattern in patterns:
        if FileSystems.exists(pattern):
            continue
        try:
            [result] = FileSystems.match([pattern])
            if not result.metadata_list:
                missing.append(pattern)
        except Exception:
            missing.append(pattern)
    return missing

