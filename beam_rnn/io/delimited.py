"""CSV / TSV records, with resynchronisation after a broken record.

A hand-written loop around the csv module rather than Beam's or TFX's CSV
sources: every bad record must become its own dead letter (with its line
numbers) and must not swallow the good rows after it.
"""

import collections
import csv
from collections.abc import Iterator, Sequence

from beam_rnn.core.constants import FORMAT_TSV
from beam_rnn.io.compressed import open_corpus_file
from beam_rnn.io.lines import (
    Line,
    line_preview,
    physical_lines,
    strip_eol,
    too_long_line_reason,
)
from beam_rnn.io.records import (
    REASON_UNPARSEABLE_ROW,
    CorpusConfig,
    RawRecord,
    make_reason,
    select_fields,
)


class _RecordTooLong(Exception):
    """A CSV record runs past `CorpusConfig.max_record_chars`, or into an over-long line."""


class _RecordFeed:
    """Feeds physical lines to csv.reader, remembering those of the current record.

    Lines given back with `push_back` are fed again before the file's next ones:
    after a broken multi-line record, parsing resumes at its second line.
    """

    def __init__(self, lines: Iterator[Line], max_record_chars: int):
        self._lines = lines
        self._pending: collections.deque[Line] = collections.deque()
        self._max_record_chars = max_record_chars
        self.record: list[Line] = []
        self._chars = 0

    def __iter__(self) -> "_RecordFeed":
        return self

    def __next__(self) -> str:
        line = self._pending.popleft() if self._pending else next(self._lines)
        self.record.append(line)
        self._chars += len(line.text)
        if not line.complete or (len(self.record) > 1 and self._chars > self._max_record_chars):
            raise _RecordTooLong()
        return line.text

    def take(self) -> list[Line]:
        """Returns the lines of the record just read and starts a new record."""
        record, self.record, self._chars = self.record, [], 0
        return record

    def push_back(self, lines: Sequence[Line]) -> None:
        self._pending.extendleft(reversed(lines))


def _is_blank_row(row: Sequence[str]) -> bool:
    return len(row) <= 1 and not "".join(row).strip()


def _ensure_csv_field_limit(chars: int) -> None:
    """Raises the csv module's (process-wide) field size limit to at least `chars`.

    Its default, 131,072 characters, would otherwise be a hidden document-size
    limit; ours (max_document_chars) is checked per document instead.
    """
    if csv.field_size_limit() < chars:
        csv.field_size_limit(chars)


def read_delimited(path: str, config: CorpusConfig) -> Iterator[RawRecord]:
    """Reads formats ``csv`` / ``tsv``: header row, then one record per row.

    Rows are numbered from 1 after the header (blank lines are not rows).  A row
    with the wrong number of fields or broken quoting is an `unparseable_row`; a
    header without the text (or label) column makes every row a `missing_text`
    (`missing_label`) dead letter naming the column, so nothing disappears.

    A broken record never takes good rows with it: when a record that spans
    several physical lines cannot be parsed (a csv error such as an unterminated
    quote, the wrong number of fields, or running past
    ``config.max_record_chars``), only its first physical line is dead-lettered
    and parsing resumes at the next physical line.  Legitimately quoted
    multi-line fields parse as one record.  A physical line longer than
    ``config.max_line_bytes`` is a `document_too_large` row of its own.
    """
    dialect = "excel-tab" if config.format == FORMAT_TSV else "excel"
    _ensure_csv_field_limit(config.max_record_chars + config.max_line_bytes)
    with open_corpus_file(path) as handle:
        feed = _RecordFeed(physical_lines(handle, config), config.max_record_chars)
        reader = csv.reader(feed, dialect=dialect, strict=True)
        header: list[str] | None = None
        position = 0
        while True:
            error = None
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                row, error = None, str(e)
            except _RecordTooLong:
                row = None
            record = feed.take()
            if not record:
                return
            first = record[0]
            if row is not None and _is_blank_row(row):
                continue
            if header is None:
                if row is None:
                    raise ValueError(f"unparseable header row (line {first.number}): {error or 'too long'}")
                # A UTF-8 byte-order mark would otherwise stick to the first name.
                header = [name.lstrip("\ufeff").strip() for name in row]
                continue
            position += 1
            if row is not None and len(row) == len(header):
                yield _good_record(position, record, dict(zip(header, row)), config)
            else:
                yield _broken_record(position, record, row, error, len(header), feed, config)


def _good_record(position: int, record: list[Line], row: dict[str, str], config: CorpusConfig) -> RawRecord:
    """The RawRecord of a record that parsed with as many fields as the header."""
    first = record[0]
    if len(record) == 1:
        raw, replaced = strip_eol(first.text), first.replaced_chars
    else:
        raw = strip_eol("".join(line.text for line in record))
        replaced = sum(line.replaced_chars for line in record)
    fields, _ = select_fields(row, config)
    return RawRecord(position, raw, fields=fields, replaced_chars=replaced)


def _broken_record(
    position: int,
    record: list[Line],
    row: list[str] | None,
    error: str | None,
    header_fields: int,
    feed: _RecordFeed,
    config: CorpusConfig,
) -> RawRecord:
    """The dead row of a record that did not parse; a multi-line one gives back all but its first line."""
    first, last = record[0], record[-1]
    if len(record) == 1 and not first.complete:
        return RawRecord(position, line_preview(first), error=too_long_line_reason(first, config))
    if row is not None:
        problem = f"{len(row)} fields, header has {header_fields}"
    elif error is not None:
        problem = error
    elif last.complete:
        problem = (f"the record runs past {config.max_record_chars} characters (an unterminated quote, "
                   f"or a field far over max_document_chars {config.max_document_chars})")
    else:
        problem = f"the record runs into line {last.number} of {last.size} bytes"
    if len(record) == 1:
        detail = f"{problem} (line {first.number})"
    else:
        # Dead-letter only the record's first line; its other lines are read
        # again as rows of their own, so a broken quote swallows no good row.
        feed.push_back(record[1:])
        detail = (f"{problem} (record from line {first.number} to {last.number}; "
                  f"line {first.number} dead-lettered, reading resumes at line {first.number + 1})")
    raw = strip_eol(first.text) if first.complete else line_preview(first)
    return RawRecord(position, raw, error=make_reason(REASON_UNPARSEABLE_ROW, detail),
                     replaced_chars=first.replaced_chars)
