"""What a corpus row becomes: reader settings, raw rows, documents and dead letters.

The vocabulary every reader shares: reason codes and counter names, the reading
bounds derived from ``max_document_chars``, `CorpusConfig` (whose fields are also
the corpus command-line flags), `RawRecord` (one parsed row), `build_document`
(validation) and `dead_letter` (the one dead-letter record builder of the project).
"""

import codecs
import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from beam_rnn.cli.flags import check_options, option
from beam_rnn.core.constants import (
    ACLIMDB_GROUP_COLUMN,
    DEAD_REASON_KEY,
    DEAD_ROW_KEY,
    DEAD_SOURCE_KEY,
    DEAD_STAGE_KEY,
    FORMAT_ACLIMDB,
    FORMAT_CSV,
    FORMAT_FILE_PER_LABEL,
    FORMAT_JSONL,
    FORMAT_PARQUET,
    FORMAT_TEXT,
    FORMAT_TFRECORD,
    FORMAT_TSV,
    FORMATS,
    GROUP_KEY,
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
COUNTER_DOCUMENTS_WITHOUT_GROUP = "documents_without_group"

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
# Reading bounds derived from max_document_chars: at most 4 UTF-8 bytes a character
# for a physical line, 2 characters a character (doubled quotes) for a CSV record,
# plus room for the other fields.
_LINE_BYTES_PER_CHAR = 4
_RECORD_CHARS_PER_CHAR = 2
_BOUND_SLACK = 1 << 20
# Rows over the bounds are skipped in chunks of this many bytes, never held whole.
SKIP_CHUNK_BYTES = 1 << 20
# Dead letters of oversized rows hold only the start of the row.
DEAD_ROW_PREVIEW_CHARS = 1000


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


def make_reason(code: str, detail: str) -> str:
    """``"<code>: <detail>"``, the reason string of a dead letter."""
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
    from apache_beam.io.filesystems import FileSystems  # here: the corpus flags import this module before Beam

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


def parse_label(value: Any, label_type: str, *, accept_polarity: bool = False,
                class_names: tuple[str, ...] | None = None) -> int | str:
    """Parses one raw label value.

    Args:
      value: The raw value: a str from text formats, or an int / float / str from
        JSON, Parquet and tf.Example.
      label_type: `LABEL_TYPE_INT` or `LABEL_TYPE_STRING`.
      accept_polarity: Map ``"pos"`` -> 1 and ``"neg"`` -> 0 (case-insensitive) for
        int labels.
      class_names: Names of the int labels 0..K-1: a label equal to one (after
        stripping) reads as its id (digits stay ids, before names and "pos"/"neg").

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
        # A regex rather than bare int(): int() also accepts "1_000" and non-ASCII
        # digits, which are not labels anyone meant to write.
        if _INT_RE.fullmatch(stripped):  # digits are ids, even where a class is named "1"
            return _class_id(int(stripped))
        if class_names is not None and stripped in class_names:
            return class_names.index(stripped)
        if accept_polarity and stripped.lower() in POLARITY_LABELS:
            return POLARITY_LABELS[stripped.lower()]
        if class_names is not None:
            raise ValueError(f"label {value!r} is neither a class id nor one of the class names {list(class_names)}")
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
      group_column: Column / field / feature whose value groups documents (kept as
        the document's ``group``; the preprocessing split keeps a group on one side),
        or None.  For aclimdb the one group column is ``movie``: the film, read from
        the tree's ``urls_{pos,neg}.txt``.  Documents without a value have no ``group``.
      labelled: Whether documents carry a label.
      label_type: `LABEL_TYPE_INT` or `LABEL_TYPE_STRING`.
      label_set: Declared labels (already parsed to `label_type`), or None.
      class_names: Names of the int labels 0..K-1 (the preprocessing's
        ``--class-names``, or the model card's when scoring): a label equal to a
        name reads as its id, so ``positive`` and ``1`` are the same class.
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
    # Set by the preprocessing job from its --group-column (`PreprocessConfig.group_column`).
    group_column: str | None = option(None, cli=False)
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
    # Set from PreprocessConfig.class_names, or from the model card by score / evaluate.
    class_names: tuple[str, ...] | None = option(None, cli=False)
    encoding: str = option("utf-8", "ASCII-compatible text encoding of the corpus files.")
    max_document_chars: int = option(
        DEFAULT_MAX_DOCUMENT_CHARS,
        "Longest document text accepted, in characters, in every format; longer documents are dead "
        "letters (document_too_large).",
        metavar="N",
        minimum=1,
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
        if not self.text_column or not self.label_column or self.id_column == "" or self.group_column == "":
            raise ValueError("text_column, label_column, id_column and group_column must be non-empty names.")
        if self.group_column is not None and self.format not in _COLUMN_FORMATS:
            if self.format != FORMAT_ACLIMDB:
                raise ValueError(f"a group column needs a column format {_COLUMN_FORMATS} or aclimdb, "
                                 f"not {self.format!r}")
            if self.group_column != ACLIMDB_GROUP_COLUMN:
                raise ValueError(f"the aclimdb format has one group column, {ACLIMDB_GROUP_COLUMN!r} (the film, "
                                 f"from urls_pos.txt / urls_neg.txt), not {self.group_column!r}")
        try:
            codecs.lookup(self.encoding)
        except LookupError as e:
            raise ValueError(f"Unknown encoding {self.encoding!r}.") from e
        # Files are split into lines on b"\n" before decoding; that is only sound
        # for encodings in which "\n" is the single byte 0x0A (not UTF-16/32).
        if "\n".encode(self.encoding) != b"\n":
            raise ValueError(f"Encoding {self.encoding!r} is not ASCII-compatible; re-encode the corpus.")
        if isinstance(self.max_document_chars, bool) or not isinstance(self.max_document_chars, int):
            raise ValueError(f"max_document_chars must be a positive integer, got {self.max_document_chars!r}.")
        check_options(self)
        if self.class_names is not None:
            names = tuple(str(n) for n in self.class_names)
            if self.label_type != LABEL_TYPE_INT or len(set(names)) != len(names):
                raise ValueError(f"class_names {list(names)}: distinct names of int labels only")
            object.__setattr__(self, "class_names", names)
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
                normalised.add(parse_label(label, self.label_type, accept_polarity=self.accepts_polarity,
                                           class_names=self.class_names))
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

    def wanted_columns(self) -> dict[str, str]:
        """The columns / fields / features to read: `TEXT_KEY`, `LABEL_KEY` (if labelled), `ID_KEY` and `GROUP_KEY` (if set)."""
        wanted = {TEXT_KEY: self.text_column}
        if self.labelled:
            wanted[LABEL_KEY] = self.label_column
        if self.id_column is not None:
            wanted[ID_KEY] = self.id_column
        if self.group_column is not None:
            wanted[GROUP_KEY] = self.group_column
        return wanted

    def field_name(self, key: str) -> str:
        """Returns how the field for `key` is called in messages about this format."""
        if self.format not in _COLUMN_FORMATS:
            return key
        names = {TEXT_KEY: self.text_column, LABEL_KEY: self.label_column, GROUP_KEY: self.group_column}
        return names.get(key) or self.id_column or key


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
        return None, make_reason(REASON_MISSING_TEXT, f"no value for {config.field_name(TEXT_KEY)!r}")
    text = fields[TEXT_KEY]
    if not isinstance(text, str):
        return None, make_reason(
            REASON_UNPARSEABLE_ROW,
            f"{config.field_name(TEXT_KEY)!r} holds a {type(text).__name__}, not a string",
        )
    if len(text) > config.max_document_chars:
        return None, make_reason(
            REASON_DOCUMENT_TOO_LARGE, f"{len(text)} chars > limit {config.max_document_chars} (max_document_chars)"
        )
    if not text.strip():
        return None, make_reason(REASON_EMPTY_TEXT, f"{config.field_name(TEXT_KEY)!r} is empty or whitespace")
    document: dict[str, Any] = {ID_KEY: _normalise_id(fields.get(ID_KEY)) or default_id, TEXT_KEY: text}
    group = _normalise_id(fields.get(GROUP_KEY)) if config.group_column is not None else None
    if group is not None:  # a document without one is split by its id (counted by the reader)
        document[GROUP_KEY] = group
    if not config.labelled:
        return document, None

    raw_label = fields.get(LABEL_KEY)
    if raw_label is None or (isinstance(raw_label, str) and not raw_label.strip()):
        return None, make_reason(REASON_MISSING_LABEL, f"no value for {config.field_name(LABEL_KEY)!r}")
    try:
        label = parse_label(raw_label, config.label_type, accept_polarity=config.accepts_polarity,
                            class_names=config.class_names)
    except ValueError as e:
        return None, make_reason(REASON_INVALID_LABEL, str(e))
    if config.label_set is not None and label not in config.label_set:
        declared = sorted(config.label_set, key=str)
        return None, make_reason(REASON_LABEL_NOT_IN_SET, f"label {label!r} not in {declared}")
    document[LABEL_KEY] = label
    return document, None


def select_fields(row: Mapping[str, Any], config: CorpusConfig) -> tuple[dict[str, Any], int]:
    """Picks id / text / label from a named row, replacing lone surrogates in strings."""
    wanted = config.wanted_columns()
    fields, replaced = {}, 0
    for key, column in wanted.items():
        if column in row:
            value = row[column]
            if isinstance(value, str):
                value, count = replace_lone_surrogates(value)
                replaced += count
            fields[key] = value
    return fields, replaced



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
    if len(raw) <= DEAD_ROW_PREVIEW_CHARS:
        return raw
    return f"{raw[:DEAD_ROW_PREVIEW_CHARS]}... [{len(raw) - DEAD_ROW_PREVIEW_CHARS} more chars]"

