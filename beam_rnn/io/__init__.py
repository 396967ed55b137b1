"""Reading labelled text corpora into documents, and writing dead letters.

`ReadCorpus` turns corpus files (local or any Beam filesystem such as gs://) into
one dict per document::

    {"id": str, "text": str, "label": int | str}   # "label" absent when unlabelled

plus a dead-letter PCollection holding every row that could not become a document::

    {"source": "<path>:<n>", "row": str, "reason": "<code>: <detail>", "stage": "read"}

Nothing disappears: every raw row (line, CSV record, JSON line, TFRecord, Parquet
row, aclImdb file) is counted once in the ``rows_in`` counter and ends up either as a
document or as a dead letter, so ``rows_in == documents_out + dead_letter``.

Formats (`beam_rnn.core.constants.FORMATS`):

* ``csv`` / ``tsv``: header row, columns chosen by name, RFC-4180 quoting (the
  ``excel`` / ``excel-tab`` dialects of the csv module, strict mode).
* ``jsonl``: one JSON object per line.
* ``text``: one unlabelled document per line.
* ``labeled_lines``: ``<label> <text>`` per line (SST files).
* ``file_per_label``: one document per line, label = file name extension
  (``rt-polarity.pos`` -> ``pos``).
* ``aclimdb``: the IMDB tree ``{train,test}/{pos,neg}/*.txt``, one document per file.
* ``tfrecord``: tf.Example records (uncompressed or GZIP).
* ``parquet``: columns chosen by name.

Every file is opened through `apache_beam.io.filesystems.FileSystems` and streamed,
never read whole (except aclImdb files, each of which is one document).  Files
with a compression extension (``.gz``, ``.bz2``...) are decompressed transparently.

Decisions worth knowing:

* A CSV / TSV / JSONL / Parquet / tf.Example source without the text (or label)
  column is not an error at construction or read time: each of its rows becomes a
  ``missing_text`` (``missing_label``) dead letter naming the column.
* A file that cannot be parsed at all (corrupt gzip, TFRecord, Parquet, or a
  broken CSV header) yields one ``unreadable_file`` dead letter (counted as one
  row) after whatever rows were read before the damage.  A file that ends early
  (a compressed stream cut before its end-of-stream marker, even on a line
  boundary, or a TFRecord cut inside a record) yields one ``truncated_file`` dead
  letter instead.  Both name the rows read and the byte offset, are logged as a
  warning and counted (``files_truncated`` / ``files_unreadable``).  I/O errors
  are not caught, so the runner retries the bundle.
* A malformed CSV / TSV record never swallows the lines after it: when a record
  that spans several physical lines fails to parse (broken quoting, wrong field
  count, or it runs past the record bound), only its first line is dead-lettered
  and parsing resumes at the next physical line.
* One size limit for every format: a document whose text is longer than
  ``max_document_chars`` (default `DEFAULT_MAX_DOCUMENT_CHARS`, 10 million) is a
  ``document_too_large`` dead letter.  Nothing larger is held in memory: a line is
  read up to ``4 * max_document_chars + 1 MiB`` bytes, a CSV record up to
  ``2 * max_document_chars + 1 MiB`` characters.  There is no other parser limit
  (the csv module's field size limit is raised to match).
* Int labels are class ids ``0..K-1``: a negative one is an ``invalid_label``
  dead letter, and a declared int label set must be exactly ``{0, ..., K-1}``.
* Every pattern must match at least one file; otherwise the pipeline fails.
* Undecodable bytes become U+FFFD, one per byte, counted in ``replaced_chars``.
"""

from __future__ import annotations

import bz2
import codecs
import collections
import contextlib
import csv
import dataclasses
import gzip
import io
import json
import logging
import lzma
import re
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO, NamedTuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beam_rnn.cli.flags import option
from beam_rnn.core.constants import (
    DEAD_REASON_KEY,
    DEAD_ROW_KEY,
    DEAD_SOURCE_KEY,
    DEAD_STAGE_KEY,
    FORMAT_ACLIMDB,
    FORMAT_CSV,
    FORMAT_FILE_PER_LABEL,
    FORMAT_JSONL,
    FORMAT_LABELED_LINES,
    FORMAT_PARQUET,
    FORMAT_TEXT,
    FORMAT_TFRECORD,
    FORMAT_TSV,
    FORMATS,
    ID_KEY,
    LABEL_KEY,
    LABEL_TYPE_INT,
    LABEL_TYPE_STRING,
    LABEL_TYPES,
    TEXT_KEY,
)

# --- Dead-letter reason codes ---------------------------------------------------
REASON_UNPARSEABLE_ROW = "unparseable_row"
REASON_INVALID_JSON = "invalid_json"
REASON_MISSING_TEXT = "missing_text"
REASON_EMPTY_TEXT = "empty_text"
REASON_MISSING_LABEL = "missing_label"
REASON_INVALID_LABEL = "invalid_label"
REASON_LABEL_NOT_IN_SET = "label_not_in_set"
REASON_UNREADABLE_FILE = "unreadable_file"
REASON_TRUNCATED_FILE = "truncated_file"
REASON_DOCUMENT_TOO_LARGE = "document_too_large"
REASON_CODES = (
    REASON_UNPARSEABLE_ROW,
    REASON_INVALID_JSON,
    REASON_MISSING_TEXT,
    REASON_EMPTY_TEXT,
    REASON_MISSING_LABEL,
    REASON_INVALID_LABEL,
    REASON_LABEL_NOT_IN_SET,
    REASON_UNREADABLE_FILE,
    REASON_TRUNCATED_FILE,
    REASON_DOCUMENT_TOO_LARGE,
)

# The one document-size limit of every format (characters of text); see CorpusConfig.
DEFAULT_MAX_DOCUMENT_CHARS = 10_000_000

READ_STAGE = "read"
DEAD_LETTER_TAG = "dead_letter"

# --- Counters -------------------------------------------------------------------
METRICS_NAMESPACE = "beam_rnn.io"
COUNTER_FILES_IN = "files_in"
COUNTER_FILE_RANGES = "file_ranges"
COUNTER_ROWS_IN = "rows_in"
COUNTER_DOCUMENTS_OUT = "documents_out"
COUNTER_DEAD_LETTER = "dead_letter"
COUNTER_REPLACED_CHARS = "replaced_chars"
COUNTER_ROWS_WITH_REPLACED_BYTES = "rows_with_replaced_bytes"
COUNTER_FILES_TRUNCATED = "files_truncated"
COUNTER_FILES_UNREADABLE = "files_unreadable"

# Polarity directory / extension names of the IMDB and MR corpora, accepted as int
# labels only for the formats whose label *is* such a name.
POLARITY_LABELS: Mapping[str, int] = {"pos": 1, "neg": 0}
_POLARITY_FORMATS = (FORMAT_FILE_PER_LABEL, FORMAT_ACLIMDB)

# Formats whose fields are addressed by column / feature name.
_COLUMN_FORMATS = (FORMAT_CSV, FORMAT_TSV, FORMAT_JSONL, FORMAT_TFRECORD, FORMAT_PARQUET)

_GLOB_CHARS = "*?["
_INT_RE = re.compile(r"[+-]?[0-9]+")
# Undecodable bytes are decoded with "surrogateescape" (one lone surrogate per bad
# byte) and then swapped for U+FFFD here, which gives an exact count of the
# replacements; any other lone surrogate (e.g. a JSON "\udc80" escape) cannot be
# written as UTF-8 downstream either, so it is replaced and counted the same way.
_LONE_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_REPLACEMENT_CHAR = "\ufffd"
_TFRECORD_ROW_REPR_CHARS = 1000
_PARQUET_BATCH_ROWS = 1024
# Every pattern must match: a typo in a path is an error, not an empty corpus.
_DISALLOW_EMPTY = fileio.EmptyMatchTreatment.DISALLOW
# Contents that cannot be parsed at all.  OSError (other than a corrupt gzip
# stream) is deliberately absent: an I/O failure should fail the bundle so that the
# runner retries it, not silently turn a whole file into one dead letter.
_CORRUPT_FILE_ERRORS = (ValueError, EOFError, zlib.error, gzip.BadGzipFile, csv.Error)
# Reading bounds derived from max_document_chars: at most 4 UTF-8 bytes a character
# for a physical line, 2 characters a character (doubled quotes) for a CSV record,
# plus room for the other fields.
_LINE_BYTES_PER_CHAR = 4
_RECORD_CHARS_PER_CHAR = 2
_BOUND_SLACK = 1 << 20
_SKIP_CHUNK_BYTES = 1 << 20
# Dead letters of oversized rows hold only the start of the row.
_DEAD_ROW_PREVIEW_CHARS = 1000
_DECOMPRESS_CHUNK_BYTES = 64 << 10
# Formats with one row per physical line: an uncompressed file of these can be cut
# into byte ranges at newlines and read in parallel.  CSV / TSV cannot (a quoted
# field may hold newlines), nor can compressed files (no random access).
SPLITTABLE_FORMATS = frozenset({FORMAT_TEXT, FORMAT_LABELED_LINES, FORMAT_FILE_PER_LABEL, FORMAT_JSONL})
_UNSPLITTABLE_FORMATS = frozenset({FORMAT_CSV, FORMAT_TSV, FORMAT_TFRECORD, FORMAT_PARQUET})
DEFAULT_SPLIT_BYTES = 64 << 20
_SCAN_BLOCK_BYTES = 8 << 20


# --- Pure helpers ---------------------------------------------------------------------
def dead_letter(source: str, row: str, reason: str, *, stage: str = READ_STAGE) -> dict[str, str]:
    """Builds a dead-letter record.

    Args:
      source: Where the row came from, ``"<path>:<n>"`` or ``"<path>"``.
      row: The original row as text (raw CSV lines, the JSON line, a short repr...).
      reason: ``"<code>: <detail>"`` with a code from `REASON_CODES`.
      stage: The pipeline stage that rejected the row.

    Returns:
      A dict with the `DEAD_*_KEY` keys.
    """
    return {
        DEAD_SOURCE_KEY: source,
        DEAD_ROW_KEY: row,
        DEAD_REASON_KEY: reason,
        DEAD_STAGE_KEY: stage,
    }


def reason_code(reason: str) -> str:
    """Returns the code part of a ``"<code>: <detail>"`` reason string."""
    return reason.split(":", 1)[0].strip()


def _reason(code: str, detail: str) -> str:
    return f"{code}: {detail}"


def glob_root(pattern: str) -> str:
    """Returns the longest directory prefix of `pattern` that holds no glob character.

    Document ids are derived relative to this directory, so moving the corpus root
    (or reading it from gs:// instead of a local copy) does not change them.

    Args:
      pattern: A file path or Beam glob (``*``, ``**``, ``?``, ``[...]``).

    Returns:
      The directory without a trailing slash; ``""`` for a relative pattern whose
      first component already holds a glob.
    """
    positions = [pattern.find(c) for c in _GLOB_CHARS if c in pattern]
    prefix = pattern[: min(positions)] if positions else pattern
    slash = prefix.rfind("/")
    return prefix[:slash] if slash >= 0 else ""


def relative_path(path: str, root: str) -> str:
    """Returns `path` relative to the directory `root`.

    Args:
      path: A matched file path (Beam returns it with the pattern's own prefix).
      root: A directory from `glob_root`.

    Returns:
      The path below `root`; the base name if `path` is not below `root`.
    """
    if not root:
        return path.lstrip("/") if "://" not in path else FileSystems.split(path)[1]
    prefix = root.rstrip("/") + "/"
    if path.startswith(prefix):
        return path[len(prefix):].lstrip("/")
    return FileSystems.split(path)[1]


def derive_id(relpath: str, position: int | None = None) -> str:
    """Returns a stable document id from the file's relative path and row number.

    Args:
      relpath: Path relative to the corpus root (see `glob_root`).
      position: 1-based row / line / record number; None when the file is the
        document (aclImdb).

    Returns:
      ``"<relpath>:<position>"`` or ``"<relpath>"``.
    """
    return relpath if position is None else f"{relpath}:{position}"


def replace_lone_surrogates(text: str) -> tuple[str, int]:
    """Replaces lone surrogates (escaped undecodable bytes) with U+FFFD.

    Args:
      text: Text decoded with ``errors="surrogateescape"``.

    Returns:
      The cleaned text and the number of characters replaced.
    """
    return _LONE_SURROGATE_RE.subn(_REPLACEMENT_CHAR, text)


def decode_bytes(data: bytes, encoding: str) -> tuple[str, int]:
    """Decodes bytes, replacing each undecodable byte with U+FFFD.

    Args:
      data: Raw bytes.
      encoding: An ASCII-compatible codec name.

    Returns:
      The text and the number of replaced characters.
    """
    return replace_lone_surrogates(data.decode(encoding, errors="surrogateescape"))


def _class_id(label: int) -> int:
    if label < 0:
        raise ValueError(f"negative label {label}: int labels are class ids 0..K-1")
    return label


def parse_label(value: Any, label_type: str, *, accept_polarity: bool = False) -> int | str:
    """Parses one raw label value.

    Args:
      value: The raw value: a str from text formats, or an int / float / str from
        JSON, Parquet and tf.Example.
      label_type: `LABEL_TYPE_INT` or `LABEL_TYPE_STRING`.
      accept_polarity: Map ``"pos"`` -> 1 and ``"neg"`` -> 0 (case-insensitive) for
        int labels.

    Returns:
      A python int (int labels) or a stripped str (string labels).

    Raises:
      ValueError: The value is not a valid label of that type (a negative int
        label included: int labels are class ids 0..K-1).
    """
    if isinstance(value, bool):
        # bool is an int subclass; True/False as a class id is almost surely a
        # schema mistake, so it is rejected rather than read as 1/0.
        raise ValueError(f"boolean label {value!r}")
    if label_type == LABEL_TYPE_STRING:
        if isinstance(value, str):
            return value.strip()
        if isinstance(value, int):
            return str(value)
        raise ValueError(f"label of type {type(value).__name__} is not a string")
    if isinstance(value, int):
        return _class_id(value)
    if isinstance(value, float):
        # Integral floats come from CSV->DataFrame->Parquet round trips with NaNs.
        if value.is_integer():
            return _class_id(int(value))
        raise ValueError(f"label {value!r} is not an integer")
    if isinstance(value, str):
        stripped = value.strip()
        if accept_polarity and stripped.lower() in POLARITY_LABELS:
            return POLARITY_LABELS[stripped.lower()]
        # A regex rather than bare int(): int() also accepts "1_000" and non-ASCII
        # digits, which are not labels anyone meant to write.
        if _INT_RE.fullmatch(stripped):
            return _class_id(int(stripped))
        raise ValueError(f"label {value!r} is not an integer")
    raise ValueError(f"label of type {type(value).__name__} is not an integer")


def parse_label_list(text: str) -> tuple[str, ...] | None:
    """The ``--labels`` value: comma-separated raw labels (each parsed by `CorpusConfig`), or None if empty."""
    return tuple(text.split(",")) if text else None


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    """Validated, normalised `ReadCorpus` settings (picklable, shipped to workers).

    Attributes:
      format: One of `FORMATS`.
      text_column: Column / field / feature holding the text.
      label_column: Column / field / feature holding the label.
      id_column: Column / field / feature holding the id, or None to derive ids.
      labelled: Whether documents carry a label.
      label_type: `LABEL_TYPE_INT` or `LABEL_TYPE_STRING`.
      label_set: Declared labels (already parsed to `label_type`), or None.
      encoding: ASCII-compatible text encoding of the files.
      max_document_chars: Longest accepted text, in characters; longer documents
        are `document_too_large` dead letters.  It also bounds what is held in
        memory (`max_line_bytes`, `max_record_chars`).
    """

    # Each default lives here only; `beam_rnn.cli.flags.add_config_flags` makes the
    # corpus flags from these fields.  `format` has no library default: a driver
    # passes ``defaults={"format": None}`` and resolves it (csv, or the IMDB copy's
    # format).  `labelled` is the inverse of the drivers' ``--unlabelled`` switch.
    format: str = option(
        help="Corpus format.", choices=FORMATS, show_default="csv, or what --imdb resolves to"
    )
    text_column: str = option(TEXT_KEY, "Text column/field (csv, tsv, jsonl, tfrecord, parquet).")
    label_column: str = option(LABEL_KEY, "Label column/field.")
    id_column: str | None = option(None, "Id column/field.", show_default="derived from file and position")
    labelled: bool = option(True, "Whether documents carry a label.", cli=False)
    label_type: str = option(
        LABEL_TYPE_INT,
        "int: labels are class ids 0..K-1 (negative ones are dead letters; pos/neg names accepted for "
        "file_per_label and aclimdb); string: a label vocabulary is built.",
        choices=LABEL_TYPES,
    )
    # A frozenset of parsed labels once constructed.
    label_set: Iterable[Any] | None = option(
        None,
        "Comma-separated declared label set; rows with other labels are dead-lettered. Int labels must be "
        "0..K-1. For string labels the order defines the ids.",
        flag="labels",
        parse=parse_label_list,
        metavar="LABELS",
    )
    encoding: str = option("utf-8", "ASCII-compatible text encoding of the corpus files.")
    max_document_chars: int = option(
        DEFAULT_MAX_DOCUMENT_CHARS,
        "Longest document text accepted, in characters, in every format; longer documents are dead "
        "letters (document_too_large).",
        metavar="N",
    )

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"Unknown corpus format {self.format!r}; expected one of {FORMATS}.")
        if self.label_type not in LABEL_TYPES:
            raise ValueError(f"Unknown label_type {self.label_type!r}; expected one of {LABEL_TYPES}.")
        if self.format == FORMAT_TEXT and self.labelled:
            raise ValueError(
                "Format 'text' holds one unlabelled document per line: pass labelled=False "
                "(or use 'labeled_lines' for '<label> <text>' lines)."
            )
        if self.id_column is not None and self.format not in _COLUMN_FORMATS:
            raise ValueError(
                f"id_column is only meaningful for the column formats {_COLUMN_FORMATS}, "
                f"not {self.format!r} (its ids are derived from file and line)."
            )
        if not self.text_column or not self.label_column or self.id_column == "":
            raise ValueError("text_column, label_column and id_column must be non-empty names.")
        try:
            codecs.lookup(self.encoding)
        except LookupError as e:
            raise ValueError(f"Unknown encoding {self.encoding!r}.") from e
        # Files are split into lines on b"\n" before decoding; that is only sound
        # for encodings in which "\n" is the single byte 0x0A (not UTF-16/32).
        if "\n".encode(self.encoding) != b"\n":
            raise ValueError(f"Encoding {self.encoding!r} is not ASCII-compatible; re-encode the corpus.")
        if isinstance(self.max_document_chars, bool) or not isinstance(self.max_document_chars, int) \
                or self.max_document_chars < 1:
            raise ValueError(f"max_document_chars must be a positive integer, got {self.max_document_chars!r}.")
        if self.label_set is not None:
            object.__setattr__(self, "label_set", self._normalise_label_set(self.label_set))

    @property
    def max_line_bytes(self) -> int:
        """Longest physical line read into memory; a longer one is skipped as `document_too_large`."""
        return _LINE_BYTES_PER_CHAR * self.max_document_chars + _BOUND_SLACK

    @property
    def max_record_chars(self) -> int:
        """How far a CSV / TSV record may span (characters) before it counts as broken."""
        return _RECORD_CHARS_PER_CHAR * self.max_document_chars + _BOUND_SLACK

    @property
    def accepts_polarity(self) -> bool:
        """Whether "pos"/"neg" are accepted as int labels for this format."""
        return self.format in _POLARITY_FORMATS

    def _normalise_label_set(self, labels: Iterable[Any]) -> frozenset[int | str]:
        if isinstance(labels, (str, bytes)):
            raise ValueError("label_set must be a sequence of labels, not a single string.")
        normalised = set()
        for label in labels:
            try:
                normalised.add(parse_label(label, self.label_type, accept_polarity=self.accepts_polarity))
            except ValueError as e:
                raise ValueError(f"Invalid entry {label!r} in label_set: {e}") from e
        if not normalised:
            raise ValueError("label_set must not be empty.")
        if self.label_type == LABEL_TYPE_INT and normalised != set(range(len(normalised))):
            raise ValueError(
                f"declared int labels {sorted(normalised)} are not 0..{len(normalised) - 1}: int labels are "
                "class ids 0..K-1 (use label_type 'string' for other label values)."
            )
        return frozenset(normalised)

    def field_name(self, key: str) -> str:
        """Returns how the field for `key` is called in messages about this format."""
        if self.format not in _COLUMN_FORMATS:
            return key
        return {TEXT_KEY: self.text_column, LABEL_KEY: self.label_column}.get(key, self.id_column or key)


def _normalise_id(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    text = value.strip() if isinstance(value, str) else str(value).strip()
    return text or None


def build_document(
    fields: Mapping[str, Any], default_id: str, config: CorpusConfig
) -> tuple[dict[str, Any] | None, str | None]:
    """Validates the fields of one parsed row and builds the document.

    Args:
      fields: Values found in the row under `ID_KEY`, `TEXT_KEY` and `LABEL_KEY`; a
        key is absent when the row (or file) has no such column / field.
      default_id: The derived id, used when the row has no non-empty id.
      config: The reader settings.

    Returns:
      ``(document, None)`` or ``(None, reason)``.
    """
    if TEXT_KEY not in fields or fields[TEXT_KEY] is None:
        return None, _reason(REASON_MISSING_TEXT, f"no value for {config.field_name(TEXT_KEY)!r}")
    text = fields[TEXT_KEY]
    if not isinstance(text, str):
        return None, _reason(
            REASON_UNPARSEABLE_ROW,
            f"{config.field_name(TEXT_KEY)!r} holds a {type(text).__name__}, not a string",
        )
    if len(text) > config.max_document_chars:
        return None, _reason(
            REASON_DOCUMENT_TOO_LARGE, f"{len(text)} chars > limit {config.max_document_chars} (max_document_chars)"
        )
    if not text.strip():
        return None, _reason(REASON_EMPTY_TEXT, f"{config.field_name(TEXT_KEY)!r} is empty or whitespace")
    document: dict[str, Any] = {ID_KEY: _normalise_id(fields.get(ID_KEY)) or default_id, TEXT_KEY: text}
    if not config.labelled:
        return document, None

    raw_label = fields.get(LABEL_KEY)
    if raw_label is None or (isinstance(raw_label, str) and not raw_label.strip()):
        return None, _reason(REASON_MISSING_LABEL, f"no value for {config.field_name(LABEL_KEY)!r}")
    try:
        label = parse_label(raw_label, config.label_type, accept_polarity=config.accepts_polarity)
    except ValueError as e:
        return None, _reason(REASON_INVALID_LABEL, str(e))
    if config.label_set is not None and label not in config.label_set:
        declared = sorted(config.label_set, key=str)
        return None, _reason(REASON_LABEL_NOT_IN_SET, f"label {label!r} not in {declared}")
    document[LABEL_KEY] = label
    return document, None


# --- Raw rows ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RawRecord:
    """One raw row of a corpus file, before validation.

    Attributes:
      position: 1-based row / line / record number, None when the file is the row.
      raw: The original row as text, for dead letters.
      fields: Values under `ID_KEY` / `TEXT_KEY` / `LABEL_KEY` (keys absent when
        the row has no such value); None when the row could not be parsed.
      error: The ``"<code>: <detail>"`` reason when the row could not be parsed.
      replaced_chars: Undecodable bytes replaced with U+FFFD in this row.
    """

    position: int | None
    raw: str
    fields: Mapping[str, Any] | None = None
    error: str | None = None
    replaced_chars: int = 0


class Outcome(NamedTuple):
    """What one raw row became: exactly one of `document` / `dead_letter` is set.

    `file_error` is the reason code (`truncated_file` / `unreadable_file`) when
    the dead letter stands for the damaged rest of a file.
    """

    document: dict[str, Any] | None
    dead_letter: dict[str, str] | None
    replaced_chars: int
    file_error: str | None = None


def record_outcome(record: RawRecord, path: str, id_root: str, config: CorpusConfig) -> Outcome:
    """Turns a raw row into a document or a dead letter.

    Args:
      record: The raw row.
      path: The file it came from.
      id_root: Directory that ids are relative to.
      config: The reader settings.

    Returns:
      The `Outcome`.
    """
    source = derive_id(path, record.position)
    if record.error is not None:
        return Outcome(None, dead_letter(source, record.raw, record.error), record.replaced_chars)
    default_id = derive_id(relative_path(path, id_root), record.position)
    document, reason = build_document(record.fields or {}, default_id, config)
    if document is None:
        raw = record.raw
        if reason_code(reason) == REASON_DOCUMENT_TOO_LARGE:
            raw = row_preview(raw)
        return Outcome(None, dead_letter(source, raw, reason), record.replaced_chars)
    return Outcome(document, None, record.replaced_chars)


def row_preview(raw: str) -> str:
    """The start of an oversized row, for its dead letter (the source names the whole row)."""
    if len(raw) <= _DEAD_ROW_PREVIEW_CHARS:
        return raw
    return f"{raw[:_DEAD_ROW_PREVIEW_CHARS]}... [{len(raw) - _DEAD_ROW_PREVIEW_CHARS} more chars]"


# --- Opening files ----------------------------------------------------------------------
class CorruptFileError(Exception):
    """A file's contents end early or cannot be decoded (not an I/O failure).

    Attributes:
      code: `REASON_TRUNCATED_FILE` or `REASON_UNREADABLE_FILE`.
      detail: What was found and where (byte offsets).
    """

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class _SourceBytes(io.RawIOBase):
    """The bytes of a file as its filesystem returns them: counted, I/O errors remembered.

    A decompressor raises OSError both for corrupt data and (passing it on) for a
    failed read; `io_error` tells the two apart, so that only the first becomes a
    dead letter and the second still fails the bundle for the runner to retry.
    """

    def __init__(self, handle: BinaryIO):
        super().__init__()
        self._handle = handle
        self.offset = 0
        self.io_error: OSError | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._handle.read(len(buffer))
        except OSError as e:
            self.io_error = e
            raise
        buffer[: len(data)] = data
        self.offset += len(data)
        return len(data)


class _DecompressedStream(io.RawIOBase):
    """Decompresses a stream of concatenated frames with a ``decompressobj``-like object.

    Used for DEFLATE and ZSTD (gzip, bzip2 and xz use the standard library's
    readers); raises EOFError when the input ends inside a frame.
    """

    def __init__(self, source: io.RawIOBase, new_decompressor: Callable[[], Any]):
        super().__init__()
        self._source = source
        self._new_decompressor = new_decompressor
        self._decompressor = new_decompressor()
        self._output = memoryview(b"")
        self._position = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer: Any) -> int:
        while not len(self._output):
            if self._decompressor.eof:
                data = self._decompressor.unused_data or self._source.read(_DECOMPRESS_CHUNK_BYTES)
                if not data:
                    return 0
                self._decompressor = self._new_decompressor()  # the next concatenated frame
            else:
                data = self._source.read(_DECOMPRESS_CHUNK_BYTES)
                if not data:
                    raise EOFError("Compressed file ended before the end-of-stream marker was reached")
            self._output = memoryview(self._decompressor.decompress(data))
        size = min(len(buffer), len(self._output))
        buffer[:size] = self._output[:size]
        self._output = self._output[size:]
        self._position += size
        return size


def _decompressing_reader(source: io.RawIOBase, compression_type: str) -> BinaryIO:
    if compression_type == CompressionTypes.GZIP:
        return gzip.GzipFile(fileobj=source, mode="rb")
    if compression_type == CompressionTypes.BZIP2:
        return bz2.BZ2File(source, mode="rb")
    if compression_type == CompressionTypes.LZMA:
        return lzma.LZMAFile(source, mode="rb")
    if compression_type == CompressionTypes.DEFLATE:
        return io.BufferedReader(_DecompressedStream(source, zlib.decompressobj))
    if compression_type == CompressionTypes.ZSTD:
        import zstandard  # pylint: disable=import-outside-toplevel

        # The window bound Beam uses too (memory of huge-window frames).
        new = lambda: zstandard.ZstdDecompressor(max_window_size=2147483648).decompressobj()  # noqa: E731
        return io.BufferedReader(_DecompressedStream(source, new))
    raise ValueError(f"unsupported compression type {compression_type!r}")


def _decompression_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, zlib.error, lzma.LZMAError]
    try:
        import zstandard  # pylint: disable=import-outside-toplevel

        errors.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errors)


@contextlib.contextmanager
def open_corpus_file(path: str, compression_type: str = CompressionTypes.AUTO) -> Iterator[BinaryIO]:
    """Opens a corpus file for reading, decompressing it by its extension.

    Unlike Beam's CompressedFile, a compressed stream that ends before its
    end-of-stream marker (a partial download, even one cut on a line boundary) is
    detected, and so is corrupt compressed data: reading raises `CorruptFileError`
    (`truncated_file` / `unreadable_file`) with the byte offsets, after every byte
    before the damage was returned.  I/O errors propagate unchanged.  Any Beam
    filesystem (gs:// included): the file is opened through `FileSystems`.

    Args:
      path: The file.
      compression_type: A `CompressionTypes` value; AUTO picks it from the extension.

    Yields:
      A binary file object with ``read`` and ``readline(size)``.
    """
    if compression_type == CompressionTypes.AUTO:
        compression_type = CompressionTypes.detect_compression_type(path)
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        if compression_type == CompressionTypes.UNCOMPRESSED:
            yield handle
            return
        source = _SourceBytes(handle)
        stream = _decompressing_reader(source, compression_type)

        def where() -> str:
            try:
                decompressed = f"decompressed byte {stream.tell()}, "
            except (OSError, ValueError):
                decompressed = ""
            return f"{decompressed}compressed byte {source.offset}"

        try:
            yield stream
        except EOFError as e:
            detail = f"{compression_type} data ends before its end-of-stream marker ({where()}, the end of the file)"
            raise CorruptFileError(REASON_TRUNCATED_FILE, detail) from e
        except _decompression_errors() as e:
            if source.io_error is not None:
                raise
            detail = f"corrupt {compression_type} data ({type(e).__name__}: {e}) at {where()}"
            raise CorruptFileError(REASON_UNREADABLE_FILE, detail) from e


# --- Format readers: path -> Iterator[RawRecord] ------------------------------------
class _Line(NamedTuple):
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
        chunk = handle.readline(_SKIP_CHUNK_BYTES)
        size += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            break
    return line[: _DEAD_ROW_PREVIEW_CHARS * 4], size


def _physical_lines(
    handle: BinaryIO, config: CorpusConfig, limit: int | None = None, first_line: int = 1
) -> Iterator[_Line]:
    """Yields the lines of `handle`, split on b"\n" (kept), numbered from `first_line`.

    With `limit`, stops after the line that reaches `limit` bytes (ranges from
    `line_ranges` end right after a newline, so no line is cut).  A line longer
    than ``config.max_line_bytes`` is not held in memory (see `_Line`).
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
            yield _Line(number, text, replaced, size)
        else:  # only a preview: cut characters are not counted as replaced
            raw_line, size = _skip_rest_of_line(handle, raw_line)
            yield _Line(number, raw_line.decode(encoding, errors="replace"), 0, size, False)
        number += 1
        if remaining is not None:
            remaining -= size
            if remaining <= 0:
                return


def _too_long_line_reason(line: _Line, config: CorpusConfig) -> str:
    return _reason(
        REASON_DOCUMENT_TOO_LARGE,
        f"line {line.number} has {line.size} bytes, more than the {config.max_line_bytes} read for "
        f"max_document_chars {config.max_document_chars}; not read",
    )


def _strip_eol(line: str) -> str:
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


def _read_lines(
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
        for line in _physical_lines(handle, config, limit, first_line):
            if not line.complete:
                yield RawRecord(line.number, _line_preview(line), error=_too_long_line_reason(line, config))
                continue
            text = _strip_eol(line.text)
            if not text.strip():
                continue  # blank lines are layout, not rows
            yield make_record(line.number, text, line.replaced_chars)


def _line_preview(line: _Line) -> str:
    return f"{line.text[:_DEAD_ROW_PREVIEW_CHARS]}... [{line.size} bytes in all]"


def _fields_reader(parse: Callable[[str], Mapping[str, Any]]) -> Callable[[int, str, int], RawRecord]:
    return lambda number, line, replaced: RawRecord(number, line, fields=parse(line), replaced_chars=replaced)


def read_text(path: str, config: CorpusConfig, **line_range: int | None) -> Iterator[RawRecord]:
    """Reads format ``text``: one unlabelled document per line."""
    return _read_lines(path, config, _fields_reader(lambda line: {TEXT_KEY: line}), **line_range)


def split_labeled_line(line: str) -> dict[str, str]:
    """Splits ``"<label> <text>"`` at the first whitespace run; the text is kept as is."""
    parts = line.lstrip().split(None, 1)
    return {LABEL_KEY: parts[0], TEXT_KEY: parts[1] if len(parts) > 1 else ""}


def read_labeled_lines(path: str, config: CorpusConfig, **line_range: int | None) -> Iterator[RawRecord]:
    """Reads format ``labeled_lines``: ``<label> <text>`` per line."""
    return _read_lines(path, config, _fields_reader(split_labeled_line), **line_range)


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
    return _read_lines(path, config, _fields_reader(lambda line: {TEXT_KEY: line, **extra}), **line_range)


def parse_json_line(line: str) -> tuple[Mapping[str, Any] | None, str | None]:
    """Parses one JSONL line into an object, or returns an `invalid_json` reason."""
    try:
        value = json.loads(line)
    except ValueError as e:
        return None, _reason(REASON_INVALID_JSON, str(e))
    if not isinstance(value, dict):
        return None, _reason(REASON_INVALID_JSON, f"line holds a JSON {type(value).__name__}, not an object")
    return value, None


def _select_fields(row: Mapping[str, Any], config: CorpusConfig) -> tuple[dict[str, Any], int]:
    """Picks id / text / label from a named row, replacing lone surrogates in strings."""
    wanted = {TEXT_KEY: config.text_column}
    if config.labelled:
        wanted[LABEL_KEY] = config.label_column
    if config.id_column is not None:
        wanted[ID_KEY] = config.id_column
    fields, replaced = {}, 0
    for key, column in wanted.items():
        if column in row:
            value = row[column]
            if isinstance(value, str):
                value, count = replace_lone_surrogates(value)
                replaced += count
            fields[key] = value
    return fields, replaced


def read_jsonl(path: str, config: CorpusConfig, **line_range: int | None) -> Iterator[RawRecord]:
    """Reads format ``jsonl``: one JSON object per line, fields by name."""

    def record(line_number: int, line: str, replaced: int) -> RawRecord:
        row, error = parse_json_line(line)
        if error is not None:
            return RawRecord(line_number, line, error=error, replaced_chars=replaced)
        fields, escaped = _select_fields(row, config)
        return RawRecord(line_number, line, fields=fields, replaced_chars=replaced + escaped)

    return _read_lines(path, config, record, **line_range)


class _RecordTooLong(Exception):
    """A CSV record runs past `CorpusConfig.max_record_chars`, or into an over-long line."""


class _RecordFeed:
    """Feeds physical lines to csv.reader, remembering those of the current record.

    Lines given back with `push_back` are fed again before the file's next ones:
    after a broken multi-line record, parsing resumes at its second line.
    """

    def __init__(self, lines: Iterator[_Line], max_record_chars: int):
        self._lines = lines
        self._pending: collections.deque[_Line] = collections.deque()
        self._max_record_chars = max_record_chars
        self.record: list[_Line] = []
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

    def take(self) -> list[_Line]:
        """Returns the lines of the record just read and starts a new record."""
        record, self.record, self._chars = self.record, [], 0
        return record

    def push_back(self, lines: Sequence[_Line]) -> None:
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
        feed = _RecordFeed(_physical_lines(handle, config), config.max_record_chars)
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
            first, last = record[0], record[-1]
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
                if len(record) == 1:
                    raw, replaced = _strip_eol(first.text), first.replaced_chars
                else:
                    raw = _strip_eol("".join(line.text for line in record))
                    replaced = sum(line.replaced_chars for line in record)
                fields, _ = _select_fields(dict(zip(header, row)), config)
                yield RawRecord(position, raw, fields=fields, replaced_chars=replaced)
                continue
            if len(record) == 1 and not first.complete:
                yield RawRecord(position, _line_preview(first), error=_too_long_line_reason(first, config))
                continue
            if row is not None:
                problem = f"{len(row)} fields, header has {len(header)}"
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
            raw = _strip_eol(first.text) if first.complete else _line_preview(first)
            yield RawRecord(position, raw, error=_reason(REASON_UNPARSEABLE_ROW, detail),
                            replaced_chars=first.replaced_chars)


def read_aclimdb_file(path: str, config: CorpusConfig) -> Iterator[RawRecord]:
    """Reads one aclImdb review file: the whole file is the document."""
    with open_corpus_file(path) as handle:
        data = handle.read(config.max_line_bytes + 1)
        if len(data) > config.max_line_bytes:  # not read further: far over max_document_chars
            size = len(data) + sum(len(chunk) for chunk in iter(lambda: handle.read(_SKIP_CHUNK_BYTES), b""))
            preview = data[:_DEAD_ROW_PREVIEW_CHARS].decode(config.encoding, errors="replace")
            detail = (f"file has {size} bytes, more than the {config.max_line_bytes} read for "
                      f"max_document_chars {config.max_document_chars}; not read")
            yield RawRecord(None, f"{preview}... [{size} bytes in all]",
                            error=_reason(REASON_DOCUMENT_TOO_LARGE, detail))
            return
        text, replaced = decode_bytes(data, config.encoding)
    label = FileSystems.split(FileSystems.split(path)[0])[1]  # .../pos/0_9.txt -> pos
    yield RawRecord(None, text, fields={TEXT_KEY: text, LABEL_KEY: label}, replaced_chars=replaced)


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
        chunk = handle.read(min(_SKIP_CHUNK_BYTES, count - skipped))
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
    wanted = {TEXT_KEY: config.text_column}
    if config.labelled:
        wanted[LABEL_KEY] = config.label_column
    if config.id_column is not None:
        wanted[ID_KEY] = config.id_column
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
            return None, _reason(REASON_UNPARSEABLE_ROW, detail), 0
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
                yield RawRecord(position, f"[{length} bytes]", error=_reason(REASON_DOCUMENT_TOO_LARGE, detail))
                continue
            try:
                example = tf.train.Example.FromString(payload)
            except DecodeError as e:
                row = repr(payload[:_TFRECORD_ROW_REPR_CHARS])
                error = _reason(REASON_UNPARSEABLE_ROW, f"not a tf.Example: {e}")
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
        wanted = [config.text_column] + ([config.label_column] if config.labelled else [])
        wanted += [config.id_column] if config.id_column is not None else []
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
                fields, escaped = _select_fields(decoded, config)
                raw = _json_row(decoded)
                yield RawRecord(position, raw, fields=fields, replaced_chars=replaced + escaped)


_READERS: Mapping[str, Callable[..., Iterator[RawRecord]]] = {
    FORMAT_CSV: read_delimited,
    FORMAT_TSV: read_delimited,
    FORMAT_JSONL: read_jsonl,
    FORMAT_TEXT: read_text,
    FORMAT_LABELED_LINES: read_labeled_lines,
    FORMAT_FILE_PER_LABEL: read_file_per_label,
    FORMAT_ACLIMDB: read_aclimdb_file,
    FORMAT_TFRECORD: read_tfrecord,
    FORMAT_PARQUET: read_parquet,
}


def is_splittable(path: str, config: CorpusConfig) -> bool:
    """True when `path` can be read in byte ranges (line format, uncompressed)."""
    return (
        config.format in SPLITTABLE_FORMATS
        and CompressionTypes.detect_compression_type(path) == CompressionTypes.UNCOMPRESSED
    )


def read_corpus_file(
    path: str, id_root: str, config: CorpusConfig, *, start: int = 0, end: int | None = None, first_line: int = 1
) -> Iterator[Outcome]:
    """Reads one corpus file (or one `line_ranges` range of it), one `Outcome` per raw row.

    A file whose contents cannot be parsed at all (corrupt gzip / TFRecord /
    Parquet, CSV header broken) ends in one `unreadable_file` dead letter, and a
    file that ends early (compressed stream without its end-of-stream marker,
    TFRecord cut inside a record) in one `truncated_file` dead letter, after the
    rows read before the damage; the reason names how many and the byte offset,
    and a warning is logged.  I/O errors propagate so the runner can retry.

    Args:
      path: The file.
      id_root: Directory that derived ids are relative to.
      config: The reader settings.
      start, end, first_line: A range from `line_ranges` (splittable files only);
        the defaults read the whole file.

    Yields:
      One `Outcome` per raw row.
    """
    whole = start == 0 and end is None and first_line == 1
    if not whole and not is_splittable(path, config):
        raise ValueError(f"{path!r} ({config.format}) cannot be read in byte ranges")
    line_range = {} if whole else {"start": start, "end": end, "first_line": first_line}
    rows = 0
    try:
        for record in _READERS[config.format](path, config, **line_range):
            rows += 1
            yield record_outcome(record, path, id_root, config)
    except CorruptFileError as e:
        code, detail = e.code, e.detail
    except EOFError as e:
        code, detail = REASON_TRUNCATED_FILE, f"{type(e).__name__}: {e}"
    except _CORRUPT_FILE_ERRORS as e:
        code, detail = REASON_UNREADABLE_FILE, f"{type(e).__name__}: {e}"
    else:
        return
    where = "" if whole else f" (byte range from {start})"
    reason = _reason(code, f"{detail}; rows read before it: {rows}{where}")
    logging.warning("Corpus file %s: %s", path, reason)
    yield Outcome(None, dead_letter(path, "", reason), 0, file_error=code)


# --- File matching -------------------------------------------------------------------------
def match_aclimdb(root: str) -> list[tuple[str, str]]:
    """Lists the review files of an aclImdb tree.

    `root` is either the tree (``.../aclImdb``: reads every split's ``pos`` and
    ``neg``) or one split (``.../aclImdb/train``).  ``unsup`` is never read.  Ids
    are relative to the tree in both cases (``train/pos/0_9.txt``), so they do
    not depend on which form was given.

    Args:
      root: The aclImdb directory or one split directory.

    Returns:
      ``(id_root, path)`` pairs, sorted by path.

    Raises:
      FileNotFoundError: No review file was found.
    """
    root = root.rstrip("/")
    parent = FileSystems.split(root)[0]
    patterns = {
        FileSystems.join(root, "*", "pos", "*.txt"): root,
        FileSystems.join(root, "*", "neg", "*.txt"): root,
        FileSystems.join(root, "pos", "*.txt"): parent,
        FileSystems.join(root, "neg", "*.txt"): parent,
    }
    files = []
    for pattern, result in zip(patterns, FileSystems.match(list(patterns))):
        files += [(patterns[pattern], metadata.path) for metadata in result.metadata_list]
    if not files:
        raise FileNotFoundError(
            f"No aclImdb review files ({{split}}/{{pos,neg}}/*.txt or {{pos,neg}}/*.txt) under {root!r}."
        )
    return sorted(files, key=lambda pair: pair[1])


# --- Beam transforms ------------------------------------------------------------------------
class FileRange(NamedTuple):
    """A unit of reading: a whole file, or a byte range of a splittable one."""

    id_root: str
    path: str
    start: int = 0
    end: int | None = None
    first_line: int = 1


class _SplitFileFn(beam.DoFn):
    """``(id_root, path, size)`` -> FileRanges: large splittable files in ~split_bytes pieces."""

    def __init__(self, config: CorpusConfig, split_bytes: int):
        super().__init__()
        self._config = config
        self._split_bytes = split_bytes
        self._files_in = Metrics.counter(METRICS_NAMESPACE, COUNTER_FILES_IN)
        self._ranges = Metrics.counter(METRICS_NAMESPACE, COUNTER_FILE_RANGES)

    def process(self, element: tuple[str, str, int]) -> Iterator[FileRange]:
        id_root, path, size = element
        self._files_in.inc()
        if self._split_bytes and size > self._split_bytes and is_splittable(path, self._config):
            ranges = [FileRange(id_root, path, *r) for r in line_ranges(path, self._split_bytes)]
        else:
            ranges = [FileRange(id_root, path)]
        self._ranges.inc(len(ranges))
        yield from ranges


class _ReadFileFn(beam.DoFn):
    """Reads one `FileRange` into documents and dead letters."""

    def __init__(self, config: CorpusConfig):
        super().__init__()
        self._config = config
        self._rows_in = Metrics.counter(METRICS_NAMESPACE, COUNTER_ROWS_IN)
        self._documents_out = Metrics.counter(METRICS_NAMESPACE, COUNTER_DOCUMENTS_OUT)
        self._dead_letter = Metrics.counter(METRICS_NAMESPACE, COUNTER_DEAD_LETTER)
        self._replaced_chars = Metrics.counter(METRICS_NAMESPACE, COUNTER_REPLACED_CHARS)
        self._rows_with_replaced = Metrics.counter(METRICS_NAMESPACE, COUNTER_ROWS_WITH_REPLACED_BYTES)
        self._files_truncated = Metrics.counter(METRICS_NAMESPACE, COUNTER_FILES_TRUNCATED)
        self._files_unreadable = Metrics.counter(METRICS_NAMESPACE, COUNTER_FILES_UNREADABLE)

    def process(self, element: FileRange) -> Iterator[Any]:
        id_root, path, start, end, first_line = element
        for outcome in read_corpus_file(path, id_root, self._config, start=start, end=end, first_line=first_line):
            self._rows_in.inc()
            if outcome.file_error == REASON_TRUNCATED_FILE:
                self._files_truncated.inc()
            elif outcome.file_error is not None:
                self._files_unreadable.inc()
            if outcome.replaced_chars:
                self._replaced_chars.inc(outcome.replaced_chars)
                self._rows_with_replaced.inc()
            if outcome.document is not None:
                self._documents_out.inc()
                yield outcome.document
            else:
                self._dead_letter.inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, outcome.dead_letter)


# Runners that run a pipeline inside this machine's memory: a GroupByKey / Reshuffle
# there holds every element until its stage has finished (matched by class name
# anywhere in the runner's MRO, so subclasses such as beam_rnn.cli.runtime.LocalRunner count).
_LOCAL_RUNNER_CLASSES = frozenset({
    "SwitchingDirectRunner", "DirectRunner", "BundleBasedDirectRunner", "TestDirectRunner",
    "FnApiRunner", "PrismRunner",
})


def is_local_runner(pipeline: beam.Pipeline) -> bool:
    """True when `pipeline` runs on a local in-process runner (Direct, FnApi, Prism, embedded portable).

    Dataflow, Flink, Spark, a remote portable job service and unknown runners are
    not local.  An InteractiveRunner is judged by the runner it wraps.
    """
    runner = getattr(pipeline, "runner", None)
    while runner is not None and getattr(runner, "_underlying_runner", None) is not None:
        runner = runner._underlying_runner  # InteractiveRunner  pylint: disable=protected-access
    names = {cls.__name__ for cls in type(runner).__mro__}
    if names & _LOCAL_RUNNER_CLASSES:
        return True
    if "PortableRunner" in names and not names & {"FlinkRunner", "SparkRunner"}:
        from apache_beam.options.pipeline_options import PortableOptions  # pylint: disable=import-outside-toplevel

        return pipeline.options.view_as(PortableOptions).job_endpoint == "embed"
    return False


def reshuffle_documents_default(format: str, pipeline: beam.Pipeline) -> bool:  # pylint: disable=redefined-builtin
    """Whether `ReadCorpus` redistributes documents after the read when not told.

    Only for the formats read whole by one worker (csv, tsv, tfrecord, parquet),
    and only on distributed runners, where the fusion break lets one large file
    use many workers.  Memory: on a local runner the Reshuffle would hold the
    whole corpus (peak RSS grew ~1 KB a document), with no worker to spread to.
    """
    return format in _UNSPLITTABLE_FORMATS and not is_local_runner(pipeline)


class ReadCorpusResult(NamedTuple):
    """The outputs of `ReadCorpus`: unpack it or use the attributes."""

    documents: beam.PCollection
    dead_letter: beam.PCollection


class ReadCorpus(beam.PTransform):
    """Reads a text corpus into ``{"id", "text", "label"}`` documents and dead letters.

    Example::

        docs, dead = p | "ReadImdb" >> ReadCorpus("gs://b/imdb/*.csv", format="csv")

    Ids: the `id_column` value when given and non-empty, else
    ``"<relpath>:<n>"`` where relpath is the file path relative to the longest
    glob-free directory of the pattern (`glob_root`) and n the 1-based row number:
    the physical line number for line formats (text, labeled_lines,
    file_per_label, jsonl; blank lines keep their numbers but are not rows), the
    record number after the header for csv / tsv, the record number for tfrecord
    / parquet.  aclImdb ids are ``"<split>/<pos|neg>/<file>.txt"``.

    Labels: ``label_type="int"`` parses integers (``" 1 "`` ok); for the
    file_per_label and aclimdb formats the polarity names ``pos`` -> 1 and
    ``neg`` -> 0 are accepted as well (also in `label_set`).
    ``label_type="string"`` keeps the stripped string.

    Int labels are class ids: negative ones are `invalid_label` dead letters and
    a declared int `label_set` must be exactly ``0..K-1``.  Texts longer than
    `max_document_chars` are `document_too_large` dead letters.

    Undecodable bytes are replaced with U+FFFD (one per byte) and counted, never
    dropped.  Files matching several patterns are read once per pattern.
    """

    def __init__(
        self,
        file_pattern: str | Sequence[str],
        *,
        format: str,  # pylint: disable=redefined-builtin
        text_column: str = TEXT_KEY,
        label_column: str = LABEL_KEY,
        id_column: str | None = None,
        labelled: bool = True,
        label_type: str = LABEL_TYPE_INT,
        label_set: Sequence[str] | None = None,
        encoding: str = "utf-8",
        reshuffle_documents: bool | None = None,
        split_bytes: int = DEFAULT_SPLIT_BYTES,
        max_document_chars: int = DEFAULT_MAX_DOCUMENT_CHARS,
    ):
        """Validates the settings.

        Args:
          file_pattern: A file pattern (glob) or several; for ``aclimdb`` the tree
            root(s) instead.
          format: One of `beam_rnn.core.constants.FORMATS`.
          text_column: Column / JSON field / feature with the text.
          label_column: Column / JSON field / feature with the label.
          id_column: Column / JSON field / feature with the id (column formats only).
          labelled: False for unlabelled corpora (documents get no label key).
          label_type: ``"int"`` or ``"string"``.
          label_set: Declared labels; other labels are dead-lettered.
          encoding: ASCII-compatible encoding of the files.
          reshuffle_documents: Redistribute the documents after reading (a fusion
            break).  A file (or byte range) is read by one worker, and without
            the break every fused step after the read (tokenising, scoring) would
            also run on that worker: one large CSV would never use more than one
            Dataflow worker.  None (default) = `reshuffle_documents_default`: on
            for the formats that are always read whole (csv, tsv, tfrecord,
            parquet) on distributed runners (Dataflow, Flink, Spark, a remote
            portable job service); off on the local in-process runners (Direct,
            FnApi, Prism, an embedded portable job service), which hold every
            element of a Reshuffle in memory until the stage ends (peak RSS grew
            with the corpus, benchmarks/memory.py) and have no other workers to
            spread to.  Always off for the line formats, which are split into
            byte ranges instead, and for aclimdb (many small files).  Pass True
            for large compressed line files on Dataflow.  The break also costs a
            shuffle of the corpus: on the DirectRunner it more than doubled the
            time of a read-only pipeline (benchmarks/read.py).
          split_bytes: Uncompressed files of the line formats (text,
            labeled_lines, file_per_label, jsonl) larger than this are read as
            byte ranges of about this size, in parallel, after one newline-counting
            scan (ids and dead letters are exactly those of a whole-file read).
            0 reads every file whole.  CSV / TSV (quoted newlines), TFRecord,
            Parquet and compressed files are always read whole.
          max_document_chars: The one document-size limit of every format: a
            document whose text has more characters is a `document_too_large`
            dead letter.  It also bounds memory: lines longer than
            ``4 * max_document_chars + 1 MiB`` bytes and CSV records longer than
            ``2 * max_document_chars + 1 MiB`` characters are not held.

        Raises:
          ValueError: Invalid settings.
        """
        super().__init__()
        patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise ValueError(
                f"file_pattern must be a non-empty pattern or list of patterns, got {file_pattern!r}."
            )
        self._patterns = patterns
        # None: decided in expand(), where the runner is known (see reshuffle_documents_default).
        self._reshuffle_documents = None if reshuffle_documents is None else bool(reshuffle_documents)
        if split_bytes < 0:
            raise ValueError(f"split_bytes must be >= 0, got {split_bytes}.")
        self._split_bytes = int(split_bytes)
        self._config = CorpusConfig(
            format=format,
            text_column=text_column,
            label_column=label_column,
            id_column=id_column,
            labelled=labelled,
            label_type=label_type,
            label_set=label_set,  # normalised (and type-checked) by CorpusConfig
            encoding=encoding,
            max_document_chars=max_document_chars,
        )

    @property
    def config(self) -> CorpusConfig:
        """The validated settings."""
        return self._config

    def expand(self, pbegin: beam.pvalue.PBegin) -> ReadCorpusResult:
        if self._config.format == FORMAT_ACLIMDB:
            files = (
                pbegin
                | "Roots" >> beam.Create(self._patterns)
                | "MatchAclImdb" >> beam.FlatMap(match_aclimdb)
                | "NoSize" >> beam.Map(lambda root_path: (*root_path, 0))  # small files: never split
            )
        else:
            matched = []
            for i, pattern in enumerate(self._patterns):
                root = glob_root(pattern)
                matched.append(
                    pbegin
                    | f"Match[{i}]" >> fileio.MatchFiles(pattern, empty_match_treatment=_DISALLOW_EMPTY)
                    | f"WithRoot[{i}]"
                    >> beam.Map(lambda metadata, root=root: (root, metadata.path, metadata.size_in_bytes))
                )
            files = tuple(matched) | "Files" >> beam.Flatten()
        outputs = (
            files
            | "SplitFiles" >> beam.ParDo(_SplitFileFn(self._config, self._split_bytes))
            # Spread files / ranges over workers: the match step emits them all from one bundle.
            | "Reshuffle" >> beam.Reshuffle()
            | "ReadFiles"
            >> beam.ParDo(_ReadFileFn(self._config)).with_outputs(DEAD_LETTER_TAG, main="documents")
        )
        documents = outputs.documents
        reshuffle = self._reshuffle_documents
        if reshuffle is None:
            reshuffle = reshuffle_documents_default(self._config.format, pbegin.pipeline)
        if reshuffle:
            documents = documents | "RedistributeDocuments" >> beam.Reshuffle()
        return ReadCorpusResult(documents, outputs[DEAD_LETTER_TAG])


def _to_json_line(element: Any) -> str:
    return json.dumps(element, ensure_ascii=False, sort_keys=True)


class WriteJsonLines(beam.PTransform):
    """Writes each element as one JSON line to ``<prefix>-SSSSS-of-NNNNN.jsonl``."""

    def __init__(self, file_path_prefix: str, *, num_shards: int = 0):
        """Configures the writer.

        Args:
          file_path_prefix: Output path prefix (any Beam filesystem).
          num_shards: Number of shards; 0 lets the runner choose.
        """
        super().__init__()
        self._prefix = file_path_prefix
        self._num_shards = num_shards

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return (
            pcoll
            | "ToJson" >> beam.Map(_to_json_line)
            | "Write"
            >> beam.io.WriteToText(self._prefix, file_name_suffix=".jsonl", num_shards=self._num_shards)
        )
