"""Small corpus files for tests/test_io.py, written into a test's tmp_path.

The writers use independent implementations (tf.io.TFRecordWriter, pyarrow) so that
the readers in beam_rnn.io are checked against the real formats, not against
themselves.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from apache_beam.metrics.metric import MetricsFilter

from beam_rnn.io import METRICS_NAMESPACE


def write_bytes(path: pathlib.Path, data: bytes) -> pathlib.Path:
    """Writes `data` to `path`, creating parent directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def counters(result: Any) -> dict[str, int]:
    """Returns the committed beam_rnn.io counters of a finished pipeline by name."""
    query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    totals: dict[str, int] = {}
    for counter in query["counters"]:
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + counter.committed
    return totals


def make_example(features: Mapping[str, Any]) -> bytes:
    """Serialises a tf.train.Example: bytes -> bytes_list, int -> int64_list,
    float -> float_list, a list -> a list of several values of that kind."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    feature = {}
    for name, value in features.items():
        values = value if isinstance(value, list) else [value]
        if all(isinstance(v, bytes) for v in values):
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        elif all(isinstance(v, int) for v in values):
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        else:
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_tfrecord(path: pathlib.Path, records: Sequence[bytes], *, gzip: bool = False) -> pathlib.Path:
    """Writes raw records with TensorFlow's own writer (optionally GZIP)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path), options="GZIP" if gzip else None) as writer:
        for record in records:
            writer.write(record)
    return path


def write_parquet(path: pathlib.Path, columns: Mapping[str, list], *, row_group_size: int = 2) -> pathlib.Path:
    """Writes a Parquet file with small row groups so reads span several batches."""
    import pyarrow as pa  # pylint: disable=import-outside-toplevel
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(dict(columns)), str(path), row_group_size=row_group_size)
    return path


def make_aclimdb(root: pathlib.Path) -> pathlib.Path:
    """Builds a tiny aclImdb tree (train and test, pos / neg / unsup) under `root`."""
    files = {
        "train/pos/0_9.txt": b"A great film.<br /><br />Loved it.",
        "train/pos/1_7.txt": b"Good, \"quoted\" fun.\nSecond line.",
        "train/neg/0_3.txt": b"Dull.",
        "train/neg/1_1.txt": b"Awful \xff\xfe acting.",  # two invalid UTF-8 bytes
        "train/unsup/0_0.txt": b"Unlabelled, must be skipped.",
        "train/urls_pos.txt": b"http://example.com/not-a-review",
        "test/pos/0_10.txt": b"Superb.",
        "test/neg/0_2.txt": b"   ",  # whitespace only -> empty_text
        "README": b"not a review",
    }
    for relpath, data in files.items():
        write_bytes(root / relpath, data)
    return root
