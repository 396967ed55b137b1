"""Physical lines of corpus files: bounded line reading, and byte ranges for parallel reads.

Every line format (text, labeled_lines, file_per_label, jsonl) and the CSV / TSV
record parser read through `physical_lines`, which never holds a line longer than
``CorpusConfig.max_line_bytes``.  `line_ranges` cuts a large uncompressed line file
into ranges at newlines that know their first line number, so a ranged read gives
the same ids and dead letters as a whole-file read.
"""

from collections.abc import Callable, Iterator
from typing import BinaryIO, NamedTuple

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_rnn.core.constants import (
    FORMAT_FILE_PER_LABEL,
    FORMAT_JSONL,
    FORMAT_LABELED_LINES,
    FORMAT_TEXT,
)
from beam_rnn.io.compressed import open_corpus_file
from beam_rnn.io.records import (
    DEAD_ROW_PREVIEW_CHARS,
    REASON_DOCUMENT_TOO_LARGE,
    SKIP_CHUNK_BYTES,
    CorpusConfig,
    RawRecord,
    make_reason,
    replace_lone_surrogates,
)

# Formats with one row per physical line: an uncompressed file of these can be cut
# into byte ranges at newlines and read in parallel.  CSV / TSV cannot (a quoted
# field may hold newlines), nor can compressed files (no random access).
SPLITTABLE_FORMATS = frozenset({FORMAT_TEXT, FORMAT_LABELED_LINES, FORMAT_FILE_PER_LABEL, FORMAT_JSONL})
DEFAULT_SPLIT_BYTES = 64 << 20
_SCAN_BLOCK_BYTES = 8 << 20


class Line(NamedTuple):
    """One physical line (end of line kept).

    `complete` is False for a line longer than the reading bound: `text` then
    holds only its start and `size` its full length in bytes.
    """

    number: int
    text: str
    replaced_chars: int
    size: int
    complete: bool = True


def _skip_rest_of_line(handle: BinaryIO, line: bytes) -> tuple[bytes, int]:
    """Reads and drops the rest of an over-long line whose start `line` was read.

    Returns:
      ``(preview, size)``: the line's first bytes and its full size; memory stays
      bounded by one chunk.
    """
    size = len(line)
    while True:
        chunk = handle.readline(SKIP_CHUNK_BYTES)
        size += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            break
    return line[: DEAD_ROW_PREVIEW_CHARS * 4], size


def physical_lines(
    handle: BinaryIO, config: CorpusConfig, limit: int | None = None, first_line: int = 1
) -> Iterator[Line]:
    """Yields the lines of `handle`, split on b"\n" (kept), numbered from `first_line`.

    With `limit`, stops after the line that reaches `limit` bytes (ranges from
    `line_ranges` end right after a newline, so no line is cut).  A line longer
    than ``config.max_line_bytes`` is not held in memory (see `Line`).
    """
    remaining = limit
    if remaining is not None and remaining <= 0:
        return
    max_bytes = config.max_line_bytes
    encoding = config.encoding
    readline = handle.readline
    number = first_line
    while True:
        raw_line = readline(max_bytes + 1)
        if not raw_line:
            return
        size = len(raw_line)
        if size <= max_bytes or raw_line.endswith(b"\n"):  # the usual case, inlined: this loop is hot
            text, replaced = replace_lone_surrogates(raw_line.decode(encoding, errors="surrogateescape"))
            yield Line(number, text, replaced, size)
        else:  # only a preview: cut characters are not counted as replaced
            raw_line, size = _skip_rest_of_line(handle, raw_line)
            yield Line(number, raw_line.decode(encoding, errors="replace"), 0, size, False)
        number += 1
        if remaining is not None:
            remaining -= size
            if remaining <= 0:
                return


def too_long_line_reason(line: Line, config: CorpusConfig) -> str:
    """The `document_too_large` reason of a line over ``config.max_line_bytes`` (not read)."""
    return make_reason(
        REASON_DOCUMENT_TOO_LARGE,
        f"line {line.number} has {line.size} bytes, more than the {config.max_line_bytes} read for "
        f"max_document_chars {config.max_document_chars}; not read",
    )


def strip_eol(line: str) -> str:
    """The line without its end-of-line characters."""
    return line.rstrip("\r\n")


def line_ranges(path: str, split_bytes: int) -> list[tuple[int, int | None, int]]:
    """Cuts an uncompressed line file into ranges of about `split_bytes` at newlines.

    One sequential scan counts newlines (bytes.count, no decoding) so that every
    range knows the 1-based number of its first line: ids derived from line
    numbers are the same as when the file is read whole.

    Args:
      path: The file (any Beam filesystem).
      split_bytes: Target range size (>= 1).

    Returns:
      ``[(start, end, first_line), ...]`` covering the file in order; each start
      is 0 or just after a newline; the last end is None (end of file).
    """
    if split_bytes < 1:
        raise ValueError(f"split_bytes must be >= 1, got {split_bytes}")
    ranges: list[tuple[int, int | None, int]] = []
    start, first_line = 0, 1
    target = split_bytes
    offset = newlines = 0  # file offset of the current block; newlines before it
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        for block in iter(lambda: handle.read(_SCAN_BLOCK_BYTES), b""):
            while target < offset + len(block):
                cut = block.find(b"\n", max(target - offset, 0))
                if cut < 0:
                    break  # the line crossing the target ends in a later block
                boundary = offset + cut + 1
                ranges.append((start, boundary, first_line))
                start, first_line = boundary, newlines + block.count(b"\n", 0, cut + 1) + 1
                target = boundary + split_bytes
            newlines += block.count(b"\n")
            offset += len(block)
    if ranges and start >= offset:  # the file ends exactly at the last cut
        start, _, first_line = ranges.pop()
    ranges.append((start, None, first_line))
    return ranges


def read_lines(
    path: str,
    config: CorpusConfig,
    make_record: Callable[[int, str, int], RawRecord],
    *,
    start: int = 0,
    end: int | None = None,
    first_line: int = 1,
) -> Iterator[RawRecord]:
    """Reads the lines of a one-document-a-line file (or of the byte range [start, end)).

    `make_record(line_number, line, replaced_chars)` turns a non-blank line
    (end-of-line stripped) into a RawRecord.
    """
    # A range exists only for uncompressed files: open them as such, so seek is cheap.
    compression = CompressionTypes.UNCOMPRESSED if (start or end is not None) else CompressionTypes.AUTO
    with open_corpus_file(path, compression) as handle:
        if start:
            handle.seek(start)
        limit = None if end is None else end - start
        for line in physical_lines(handle, config, limit, first_line):
            if not line.complete:
                yield RawRecord(line.number, line_preview(line), error=too_long_line_reason(line, config))
                continue
            text = strip_eol(line.text)
            if not text.strip():
                continue  # blank lines are layout, not rows
            yield make_record(line.number, text, line.replaced_chars)


def line_preview(line: Line) -> str:
    """The start of an over-long line and its size, for its dead letter."""
    return f"{line.text[:DEAD_ROW_PREVIEW_CHARS]}... [{line.size} bytes in all]"


def is_splittable(path: str, config: CorpusConfig) -> bool:
    """True when `path` can be read in byte ranges (line format, uncompressed)."""
    return (
        config.format in SPLITTABLE_FORMATS
        and CompressionTypes.detect_compression_type(path) == CompressionTypes.UNCOMPRESSED
    )

