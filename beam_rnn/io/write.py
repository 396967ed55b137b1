"""`WriteJsonLines`: one JSON object a line, the format of every dead-letter and prediction file."""

import json
from collections.abc import Callable
from typing import Any

import apache_beam as beam


def to_json_line(element: Any) -> str:
    """The default line of `WriteJsonLines`: sorted keys, non-ASCII characters as themselves."""
    return json.dumps(element, ensure_ascii=False, sort_keys=True)


class WriteJsonLines(beam.PTransform):
    """Writes each element as one JSON line to ``<prefix>-SSSSS-of-NNNNN.jsonl``."""

    def __init__(
        self, file_path_prefix: str, *, num_shards: int = 0, encode: Callable[[Any], str] = to_json_line
    ):
        """Configures the writer.

        Args:
          file_path_prefix: Output path prefix (any Beam filesystem).
          num_shards: Number of shards; 0 lets the runner choose.
          encode: element -> one line of JSON without its newline (default `to_json_line`).
        """
        super().__init__()
        self._prefix = file_path_prefix
        self._num_shards = num_shards
        self._encode = encode

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return (
            pcoll
            | "ToJson" >> beam.Map(self._encode)
            | "Write"
            >> beam.io.WriteToText(self._prefix, file_name_suffix=".jsonl", num_shards=self._num_shards)
        )
