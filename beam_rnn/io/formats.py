"""One reader per corpus format: ``path, config -> Iterator[RawRecord]``.

Hand-written rather than Beam's ReadFromText / ReadFromTFRecord / ReadFromParquet
or TFX's example gen: a row that cannot be parsed is a dead letter of its own
(source, row, reason), and a damaged file ends in one, after its good rows.
CSV / TSV live in `beam_rnn.io.delimited`.
"""

import functools
import json
import re
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any, BinaryIO

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_rnn.core import constants as C
from beam_rnn.core.constants import LABEL_KEY, TEXT_KEY
from beam_rnn.io.compressed import CorruptFileError, open_corpus_file
from beam_rnn.io.delimited import read_delimited
from beam_rnn.io.lines import read_lines
from beam_rnn.io.records import (
    DEAD_ROW_PREVIEW_CHARS,
    REASON_DOCUMENT_TOO_LARGE,
    REASON_INVALID_JSON,
    REASON_TRUNCATED_FILE,
    REASON_UNPARSEABLE_ROW,
    SKIP_CHUNK_BYTES,
    CorpusConfig,
    RawRecord,
    decode_bytes,
    make_reason,
    select_fields,
)

_TFRECORD_ROW_REPR_CHARS = 1000
_PARQUET_BATCH_ROWS = 1024


def _fields_reader(parse: Callable[[str], Mapping[str, Any]]) -> Callable[[int, str, int], RawRecord]:
    return lambda number, line, replaced: RawRecord(number, line, fields=parse(line), replaced_chars=replaced)


def read_text(path: str, config: CorpusConfig, **line_range: int | None) -> Iterator[RawRecord]:
    """Reads format ``text``: one unlabelled document per line."""
    return read_lines(path, config, _fields_reader(lambda line: {TEXT_KEY: line}), **line_range)


def split_labeled_line(line: str) -> dict[str, str]:
    """Splits ``"<label> <text>"`` at the first whitespace run; the text is kept as is."""
    parts = line.lstrip().split(None, 1)
    return {LABEL_KEY: parts[0], TEXT_KEY: parts[1] if len(parts) > 1 else ""}


def read_labeled_lines(path: str, config: CorpusConfig, **line_range: int | None) -> Iterator[RawRecord]:
    """Reads format ``labeled_lines``: ``<label> <text>`` per line."""
    return read_lines(path, config, _fields_reader(split_labeled_line), **line_range)


def label_from_file_name(path: str) -> str | None:
    """Returns the label encoded as a file name extension (``rt-polarity.pos``)."""
    name = FileSystems.split(path)[1]
    if CompressionTypes.detect_compression_type(name) != CompressionTypes.UNCOMPRESSED:
        name = name.rsplit(".", 1)[0]  # rt-polarity.pos.gz -> rt-polarity.pos
    stem, dot, extension = name.rpartition(".")
    return extension if dot and stem and extension else None


def read_file_per_label(path: str, config: CorpusConfig, **line_range: int | None) -> Iterator[RawRecord]:
    """Reads format ``file_per_label``: one document per line, label = extension."""
    label = label_from_file_name(path)
    extra = {} if label is None else {LABEL_KEY: label}
    return read_lines(path, config, _fields_reader(lambda line: {TEXT_KEY: line, **extra}), **line_range)


def parse_json_line(line: str) -> tuple[Mapping[str, Any] | None, str | None]:
    """Parses one JSONL line into an object, or returns an `invalid_json` reason."""
    try:
        value = json.loads(line)
    except ValueError as e:
        return None, make_reason(REASON_INVALID_JSON, str(e))
    if not isinstance(value, dict):
        return None, make_reason(REASON_INVALID_JSON, f"line holds a JSON {type(value).__name__}, not an object")
    return value, None


def read_jsonl(path: str, config: CorpusConfig, **line_range: int | None) -> Iterator[RawRecord]:
    """Reads format ``jsonl``: one JSON object per line, fields by name."""

    def record(line_number: int, line: str, replaced: int) -> RawRecord:
        row, error = parse_json_line(line)
        if error is not None:
            return RawRecord(line_number, line, error=error, replaced_chars=replaced)
        fields, escaped = select_fields(row, config)
        return RawRecord(line_number, line, fields=fields, replaced_chars=replaced + escaped)

    return read_lines(path, config, record, **line_range)


def read_aclimdb_file(path: str, config: CorpusConfig) -> Iterator[RawRecord]:
    """Reads one aclImdb review file: the whole file is the document."""
    with open_corpus_file(path) as handle:
        data = handle.read(config.max_line_bytes + 1)
        if len(data) > config.max_line_bytes:  # not read further: far over max_document_chars
            size = len(data) + sum(len(chunk) for chunk in iter(lambda: handle.read(SKIP_CHUNK_BYTES), b""))
            preview = data[:DEAD_ROW_PREVIEW_CHARS].decode(config.encoding, errors="replace")
            detail = (f"file has {size} bytes, more than the {config.max_line_bytes} read for "
                      f"max_document_chars {config.max_document_chars}; not read")
            yield RawRecord(None, f"{preview}... [{size} bytes in all]",
                            error=make_reason(REASON_DOCUMENT_TOO_LARGE, detail))
            return
        text, replaced = decode_bytes(data, config.encoding)
    label = FileSystems.split(FileSystems.split(path)[0])[1]  # .../pos/0_9.txt -> pos
    fields = {TEXT_KEY: text, LABEL_KEY: label}
    if config.group_column is not None:
        fields[C.GROUP_KEY] = aclimdb_film(path)
    yield RawRecord(None, text, fields=fields, replaced_chars=replaced)


_FILM_IN_URL = re.compile(r"/title/(tt\d+)")


@functools.lru_cache(maxsize=16)  # one urls file per split and polarity: 12,500 short strings each
def _aclimdb_films(urls_path: str) -> tuple[str, ...]:
    """The film of each line of an aclImdb ``urls_{pos,neg}.txt`` (its IMDb title id); () if unreadable."""
    try:
        with FileSystems.open(urls_path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            lines = handle.read().decode("utf-8", errors="replace").splitlines()
    except Exception:  # pylint: disable=broad-except  # absent or unreadable (any filesystem): no films
        return ()
    return tuple(match.group(1) if (match := _FILM_IN_URL.search(line)) else line.strip() for line in lines)


def aclimdb_film(path: str) -> str | None:
    """The film of the aclImdb review at `path` (``.../train/pos/200_8.txt``): line 200 of ``train/urls_pos.txt``.

    None when the urls file or its line is missing (the document is then split by its id).
    """
    directory, name = FileSystems.split(path)
    split_dir, polarity = FileSystems.split(directory)
    number = name.split("_", 1)[0]
    if not number.isdigit():
        return None
    films = _aclimdb_films(FileSystems.join(split_dir, f"urls_{polarity}.txt"))
    index = int(number)
    return (films[index] or None) if index < len(films) else None


def _masked_crc32c(data: bytes) -> int:
    import google_crc32c  # pylint: disable=import-outside-toplevel

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _is_tfrecord_header(header: bytes) -> bool:
    if len(header) < 12:
        return False
    length_bytes, (length_crc,) = header[:8], struct.unpack("<I", header[8:12])
    return _masked_crc32c(length_bytes) == length_crc


def _tfrecord_compression(path: str) -> str:
    """Picks the compression of a TFRecord file from its first bytes, then its name."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        head = handle.read(12)
    if not head or _is_tfrecord_header(head):
        return CompressionTypes.UNCOMPRESSED
    if head[:2] == b"\x1f\x8b":
        return CompressionTypes.GZIP
    return CompressionTypes.AUTO


def iter_tfrecords(handle: BinaryIO) -> Iterator[bytes]:
    """Yields the payloads of a TFRecord stream, checking both CRCs.

    Raises:
      CorruptFileError: The stream ends inside a record (`truncated_file`).
      ValueError: A length header or checksum does not match.
    """
    for payload, _ in _tfrecord_payloads(handle, None):
        yield payload


def _tfrecord_payloads(handle: BinaryIO, max_bytes: int | None) -> Iterator[tuple[bytes | None, int]]:
    """Yields ``(payload, length)`` per record; payload None (skipped unread) when longer than `max_bytes`."""
    offset = 0
    number = 0
    while True:
        header = handle.read(12)
        if not header:
            return
        number += 1
        if len(header) == 12 and not _is_tfrecord_header(header):
            raise ValueError(f"corrupt TFRecord length header at byte {offset}")
        length = struct.unpack("<Q", header[:8])[0] if len(header) == 12 else None
        if length is not None and max_bytes is not None and length > max_bytes:
            skipped = _skip_bytes(handle, length)
            payload, footer = None, handle.read(4) if skipped == length else b""
            complete = skipped == length and len(footer) == 4
        else:
            payload = handle.read(length) if length is not None else b""
            footer = handle.read(4) if length is not None else b""
            complete = length is not None and len(payload) == length and len(footer) == 4
        if not complete:
            raise CorruptFileError(
                REASON_TRUNCATED_FILE, f"the TFRecord stream ends inside record {number} (which starts at byte {offset})"
            )
        if payload is not None and _masked_crc32c(payload) != struct.unpack("<I", footer)[0]:
            raise ValueError(f"TFRecord data checksum mismatch in record {number} at byte {offset}")
        offset += 12 + length + 4
        yield payload, length


def _skip_bytes(handle: BinaryIO, count: int) -> int:
    """Reads and drops up to `count` bytes in bounded chunks; returns how many there were."""
    skipped = 0
    while skipped < count:
        chunk = handle.read(min(SKIP_CHUNK_BYTES, count - skipped))
        if not chunk:
            break
        skipped += len(chunk)
    return skipped


def example_fields(example: Any, config: CorpusConfig) -> tuple[dict[str, Any] | None, str | None, int]:
    """Extracts id / text / label from a tf.train.Example.

    Text and id come from bytes features (an int64 id is accepted too); the label
    from an int64 or bytes feature (or an integral float).  A feature with no
    values counts as absent; one with several values is an `unparseable_row`.

    Returns:
      ``(fields, None, replaced_chars)`` or ``(None, reason, 0)``.
    """
    wanted = config.wanted_columns()
    feature_map = example.features.feature
    fields, replaced = {}, 0
    for key, name in wanted.items():
        if name not in feature_map:
            continue
        feature = feature_map[name]
        kind = feature.WhichOneof("kind")
        values = list(getattr(feature, kind).value) if kind else []
        if len(values) > 1:
            detail = f"feature {name!r} has {len(values)} values, expected 1"
            return None, make_reason(REASON_UNPARSEABLE_ROW, detail), 0
        if not values:
            continue
        value = values[0]
        if isinstance(value, bytes):
            value, count = decode_bytes(value, config.encoding)
            replaced += count
        fields[key] = value
    return fields, None, replaced


def read_tfrecord(path: str, config: CorpusConfig) -> Iterator[RawRecord]:
    """Reads format ``tfrecord``: tf.Example records, uncompressed or GZIP."""
    # Imported here so that importing beam_rnn.io (e.g. on the launcher) stays cheap.
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from google.protobuf.message import DecodeError  # pylint: disable=import-outside-toplevel

    with open_corpus_file(path, _tfrecord_compression(path)) as handle:
        for position, (payload, length) in enumerate(_tfrecord_payloads(handle, config.max_line_bytes), start=1):
            if payload is None:
                detail = (f"record of {length} bytes, more than the {config.max_line_bytes} read for "
                          f"max_document_chars {config.max_document_chars}; not read")
                yield RawRecord(position, f"[{length} bytes]", error=make_reason(REASON_DOCUMENT_TOO_LARGE, detail))
                continue
            try:
                example = tf.train.Example.FromString(payload)
            except DecodeError as e:
                row = repr(payload[:_TFRECORD_ROW_REPR_CHARS])
                error = make_reason(REASON_UNPARSEABLE_ROW, f"not a tf.Example: {e}")
                yield RawRecord(position, row, error=error)
                continue
            row = str(example)[:_TFRECORD_ROW_REPR_CHARS]
            fields, error, replaced = example_fields(example, config)
            yield RawRecord(position, row, fields=fields, error=error, replaced_chars=replaced)


def _json_row(row: Mapping[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, default=repr)


def read_parquet(path: str, config: CorpusConfig) -> Iterator[RawRecord]:
    """Reads format ``parquet``, one record batch at a time, columns by name."""
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel

    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        parquet_file = pq.ParquetFile(handle)
        present = set(parquet_file.schema_arrow.names)
        wanted = config.wanted_columns().values()
        # Absent columns are left out rather than failing the file: their rows then
        # become missing_text / missing_label dead letters, like CSV rows do.
        # (With no column at all, iter_batches still yields one {} per row.)
        columns = [c for c in dict.fromkeys(wanted) if c in present]
        position = 0
        for batch in parquet_file.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
            for row in batch.to_pylist():
                position += 1
                decoded, replaced = {}, 0
                for column, value in row.items():
                    if isinstance(value, bytes):  # binary (not string) columns
                        value, count = decode_bytes(value, config.encoding)
                        replaced += count
                    decoded[column] = value
                fields, escaped = select_fields(decoded, config)
                raw = _json_row(decoded)
                yield RawRecord(position, raw, fields=fields, replaced_chars=replaced + escaped)


# The reader of each format: ``reader(path, config, **line_range) -> Iterator[RawRecord]``.
READERS: Mapping[str, Callable[..., Iterator[RawRecord]]] = {
    C.FORMAT_CSV: read_delimited,
    C.FORMAT_TSV: read_delimited,
    C.FORMAT_JSONL: read_jsonl,
    C.FORMAT_TEXT: read_text,
    C.FORMAT_LABELED_LINES: read_labeled_lines,
    C.FORMAT_FILE_PER_LABEL: read_file_per_label,
    C.FORMAT_ACLIMDB: read_aclimdb_file,
    C.FORMAT_TFRECORD: read_tfrecord,
    C.FORMAT_PARQUET: read_parquet,
}
