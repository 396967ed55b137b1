"""Writing score records (jsonl, csv, parquet, tfrecord) and the summary JSON.

Files under an output prefix (see `output_patterns`)::

    PREFIX-SSSSS-of-NNNNN.<jsonl|csv|parquet|tfrecord>   one score record per document
    PREFIX-dead_letter-SSSSS-of-NNNNN.jsonl              malformed rows and inference failures
    PREFIX-summary.json                                  metrics, dead letters by reason, counts
"""

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import apache_beam as beam

from beam_rnn.io import WriteJsonLines
from beam_rnn.serve.config import (
    OUTPUT_CSV,
    OUTPUT_FORMATS,
    OUTPUT_JSONL,
    OUTPUT_PARQUET,
)
from beam_rnn.core.outputs import flat_record
from beam_rnn.serve.records import BOOL, FLOAT, INT, STR


def _csv_value(value: Any, kind: str) -> Any:
    if value is None:
        return ""
    if kind == BOOL:
        return "true" if value else "false"
    return value


def _csv_header(columns: Sequence[tuple[str, str]]) -> str:
    return _csv_line([name for name, _ in columns])


def _csv_line(values: Sequence[Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(values)
    return out.getvalue()


def _to_csv(record: Mapping[str, Any], columns: Sequence[tuple[str, str]]) -> str:
    record = flat_record(record)
    return _csv_line([_csv_value(record.get(name), kind) for name, kind in columns])


def _arrow_schema(columns: Sequence[tuple[str, str]]):
    import pyarrow as pa  # pylint: disable=import-outside-toplevel

    types = {STR: pa.string(), INT: pa.int64(), FLOAT: pa.float64(), BOOL: pa.bool_()}
    return pa.schema([(name, types[kind]) for name, kind in columns])


def _to_row(record: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    record = flat_record(record)
    return {name: record.get(name) for name in names}


def _to_example(record: Mapping[str, Any], columns: Sequence[tuple[str, str]]) -> bytes:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    feature = {}
    record = flat_record(record)
    for name, kind in columns:
        value = record.get(name)
        if value is None:
            continue
        if kind == STR:
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode("utf-8")]))
        elif kind in (INT, BOOL):
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
        else:
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


class WriteScores(beam.PTransform):
    """Writes score records to ``<prefix>-SSSSS-of-NNNNN.<format>`` (jsonl, csv, parquet, tfrecord).

    jsonl: the records as they are (``probabilities`` a {class: probability} object).
    csv, parquet, tfrecord: the `columns` (one ``probability_<class>`` column per
    class).  csv: a header row per shard, booleans as true/false, None empty.
    parquet: typed columns.  tfrecord: tf.Example (booleans as int64 0/1, None omitted).
    """

    def __init__(
        self,
        file_path_prefix: str,
        *,
        output_format: str,
        columns: Sequence[tuple[str, str]],
        num_shards: int = 0,
    ):
        super().__init__()
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"Unknown output format {output_format!r}; expected one of {OUTPUT_FORMATS}.")
        self._prefix = file_path_prefix
        self._format = output_format
        self._columns = list(columns)
        self._num_shards = num_shards

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        columns, shards = self._columns, self._num_shards
        if self._format == OUTPUT_JSONL:
            return records | "WriteJsonl" >> WriteJsonLines(self._prefix, num_shards=shards)
        if self._format == OUTPUT_CSV:
            return (
                records
                | "ToCsv" >> beam.Map(_to_csv, columns)
                | "WriteCsv"
                >> beam.io.WriteToText(
                    self._prefix, file_name_suffix=".csv", num_shards=shards, header=_csv_header(columns)
                )
            )
        if self._format == OUTPUT_PARQUET:
            names = [name for name, _ in columns]
            return (
                records
                | "ToRows" >> beam.Map(_to_row, names)
                | "WriteParquet"
                >> beam.io.WriteToParquet(
                    self._prefix, _arrow_schema(columns), file_name_suffix=".parquet", num_shards=shards
                )
            )
        return (
            records
            | "ToExamples" >> beam.Map(_to_example, columns)
            | "WriteTfrecord" >> beam.io.WriteToTFRecord(self._prefix, file_name_suffix=".tfrecord", num_shards=shards)
        )


def output_patterns(prefix: str, output_format: str) -> dict[str, str]:
    """Globs of what the score pipeline writes under `prefix` (scores, dead letters, summary)."""
    return {
        "scores": f"{prefix}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9]*.{output_format}",
        "dead_letter": f"{prefix}-dead_letter-[0-9][0-9][0-9][0-9][0-9]-of-[0-9]*.jsonl",
        "summary": f"{prefix}-summary.json",
    }


def summary_json(summary: Mapping[str, Any]) -> str:
    return json.dumps(_finite(summary), indent=2, sort_keys=True)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def read_summary(path: str) -> dict[str, Any]:
    """A written ``PREFIX-summary.json``."""
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel

    with FileSystems.open(path) as f:
        return json.loads(f.read().decode("utf-8"))


def write_summary(summary: beam.PCollection, prefix: str) -> beam.PCollection:
    """Writes the one summary dict to ``<prefix>-summary.json``."""
    return (
        summary
        | "SummaryJson" >> beam.Map(summary_json)
        | "WriteSummary"
        >> beam.io.WriteToText(prefix + "-summary", file_name_suffix=".json", num_shards=1, shard_name_template="")
    )


def delete_stale_outputs(prefix: str, output_format: str) -> None:
    """Removes earlier outputs of this prefix, so that old shards are not mixed in."""
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel

    paths = []
    for result in FileSystems.match(list(output_patterns(prefix, output_format).values())):
        paths += [m.path for m in result.metadata_list]
    if paths:
        FileSystems.delete(paths)
