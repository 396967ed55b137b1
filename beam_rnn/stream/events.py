"""Stream events: their fields, validation (`parse_event`), repair, dead-letter records, JSON output.

Pure Python (no Beam, no TF): `beam_rnn.stream.transform` keys and applies the
events; everything here is total on any input (it never raises on what a client
sends) and every record it builds encodes as UTF-8 JSON.
"""

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from beam_rnn.core import constants as C
from beam_rnn.stream.config import DEFAULT_MAX_EVENT_CHARS, MAX_SEQ, max_raw_event_chars

STREAM_STAGE = "stream"

# Event fields.
STREAM_ID = "stream_id"
SEQ = "seq"
TEXT = "text"
TOKEN = "token"
END = "end"
EVENT_TS = "ts"
# Set by `parse_event` on an event whose strings had lone surrogates replaced (how many).
REPLACED_CHARS = "replaced_chars"
# Set by `parse_event` when `text` starts with a lone low / ends with a lone high surrogate
# (code point, an int): half of a character cut between two chunks, joined by the stateful step.
LEAD_SURROGATE = "lead_surrogate"
TRAIL_SURROGATE = "trail_surrogate"

# Dead-letter reason codes ("<code>: <detail>").
REASON_INVALID_JSON = "invalid_json"
REASON_NOT_OBJECT = "not_an_object"
REASON_MISSING_FIELD = "missing_field"
REASON_BAD_FIELD = "bad_field"
REASON_TOO_LARGE = "event_too_large"
REASON_CONFLICTING_DUPLICATE = "conflicting_duplicate"
REASON_BUFFER_OVERFLOW = "buffer_overflow"
REASON_STREAM_CLOSED = "stream_closed"
REASON_AFTER_END = "after_end"
REASON_GAP_EXPIRED = "gap_never_filled"
REASON_INTERNAL = "internal_error"

# Fixed limits on event fields (a bad value is a `bad_field` dead letter).
MAX_STREAM_ID_CHARS = 256
MIN_EVENT_TS = -62135596800.0  # 0001-01-01T00:00:00Z (RFC 3339's range; Beam's is wider)
MAX_EVENT_TS = 253402300799.0  # 9999-12-31T23:59:59Z
HASH_BYTES = 8  # content hash per remembered applied event

_MAX_DEAD_ROW_CHARS = 4000
_MAX_DEAD_TEXT_CHARS = 1000
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def repair_text(text: str) -> tuple[str, int]:
    """Replaces lone UTF-16 surrogates by U+FFFD; returns ``(text, how many were replaced)``.

    JSON can spell a lone surrogate (``"\\ud83d"``: an emoji cut in half by a
    client); Python then holds a str that cannot be encoded as UTF-8, so it could
    not be keyed, stored, hashed or written.  A valid pair held as two code
    points is joined into its character and not counted.
    """
    if text.isascii() or _SURROGATE_RE.search(text) is None:
        return text, 0
    surrogates = len(_SURROGATE_RE.findall(text))
    fixed = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    joined_pairs = len(text) - len(fixed)
    return fixed, surrogates - 2 * joined_pairs


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "an array"
    return f"a {type(value).__name__}"


def _describe(value: Any) -> str:
    """A short, always-encodable rendering of a bad field value for a dead-letter reason."""
    try:
        shown = json.dumps(value, ensure_ascii=True, default=repr)  # ASCII: never a lone surrogate
    except (TypeError, ValueError, RecursionError):
        shown = f"<{type(value).__name__}>"
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"{_json_type(value)} ({shown})"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _safe(text: str, limit: int) -> str:
    return repair_text(text[:limit])[0]


def one_line(error: BaseException | str) -> str:
    """An error message on one line (messages from zipfile / NumPy / json may hold newlines)."""
    return " ".join(str(error).split())


def dead_letter(source: str, row: Any, code: str, detail: str) -> dict[str, str]:
    """A dead letter ``{source, row, reason, stage}`` that can always be encoded as UTF-8 JSON."""
    if isinstance(row, (bytes, bytearray, memoryview)):
        row = bytes(row[: 4 * _MAX_DEAD_ROW_CHARS]).decode("utf-8", "replace")
    elif not isinstance(row, str):
        try:
            row = json.dumps(row, ensure_ascii=False, sort_keys=True, default=str)
        except (TypeError, ValueError, RecursionError):  # mixed key types, cycles, deep nesting
            row = f"<unprintable {type(row).__name__}>"
    return {
        C.DEAD_SOURCE_KEY: _safe(str(source), _MAX_DEAD_TEXT_CHARS),
        C.DEAD_ROW_KEY: _safe(row, _MAX_DEAD_ROW_CHARS),
        C.DEAD_REASON_KEY: _safe(f"{code}: {detail}", _MAX_DEAD_TEXT_CHARS),
        C.DEAD_STAGE_KEY: STREAM_STAGE,
    }


def to_json_line(record: Any) -> str:
    """One output record as a JSON line that always encodes as UTF-8 (the writers' form)."""
    line = json.dumps(record, ensure_ascii=False, sort_keys=True, default=str)
    return line if line.isascii() else repair_text(line)[0]


def to_json_bytes(record: Any) -> bytes:
    """`to_json_line` as UTF-8 bytes (a Pub/Sub message)."""
    return to_json_line(record).encode("utf-8")


def parse_event(
    element: Any, *, max_event_chars: int = DEFAULT_MAX_EVENT_CHARS
) -> tuple[tuple[str, dict[str, Any]] | None, tuple[str, str] | None]:
    """Validates one raw event (JSON bytes/str or a dict); total: never raises on input.

    Lone surrogates in ``stream_id``, ``text`` or ``token`` are replaced by U+FFFD
    (the count is in the event as ``replaced_chars``), except a low one at the very
    start or a high one at the very end of ``text``: those are half a character cut
    between two chunks, returned as ``lead_surrogate`` / ``trail_surrogate`` (code
    points) for the stateful step to join with the neighbouring event's half.
    Everything else that is not a valid event is an error ``(code, detail)``.

    Returns:
        ``((stream_id, event), None)`` with event ``{seq, text, end[, ts][,
        replaced_chars][, lead_surrogate][, trail_surrogate]}`` (``text`` is the
        chunk to apply: a ``token`` becomes ``" token "``), or ``(None, (code, detail))``.
    """
    raw_limit = max_raw_event_chars(max_event_chars)
    if isinstance(element, (bytes, bytearray, memoryview)):
        data = bytes(element)
        if len(data) > raw_limit:
            return None, (REASON_TOO_LARGE, f"{len(data)} bytes; the limit is {raw_limit} (max event chars {max_event_chars})")
        if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark (first line of some files)
            data = data[3:]
        try:
            element = data.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, (REASON_INVALID_JSON, f"not UTF-8: byte 0x{data[e.start]:02x} at offset {e.start}")
    if isinstance(element, str):
        if len(element) > raw_limit:
            return None, (REASON_TOO_LARGE, f"{len(element)} characters; the limit is {raw_limit} (max event chars {max_event_chars})")
        if element.startswith("\ufeff"):
            element = element[1:]
        try:
            element = json.loads(element, parse_constant=_reject_constant)
        except RecursionError:
            return None, (REASON_INVALID_JSON, "nested too deeply")
        except ValueError as e:  # JSONDecodeError, NaN / Infinity, integers of over 4300 digits
            return None, (REASON_INVALID_JSON, one_line(e)[:300])
    if not isinstance(element, Mapping):
        return None, (REASON_NOT_OBJECT, f"expected a JSON object, got {_json_type(element)}")
    replaced = 0
    for field in (STREAM_ID, SEQ):
        if element.get(field) is None:
            return None, (REASON_MISSING_FIELD, f"no {field!r}")

    stream_id = element[STREAM_ID]
    if isinstance(stream_id, str):
        stream_id, n = repair_text(stream_id)
        replaced += n
        if not stream_id or len(stream_id) > MAX_STREAM_ID_CHARS:
            return None, (REASON_BAD_FIELD, f"{STREAM_ID!r} must have 1 to {MAX_STREAM_ID_CHARS} characters, got {len(stream_id)}")
    elif isinstance(stream_id, int) and not isinstance(stream_id, bool) and -MAX_SEQ - 1 <= stream_id <= MAX_SEQ:
        stream_id = str(stream_id)
    else:
        return None, (REASON_BAD_FIELD, f"{STREAM_ID!r} must be a non-empty string or an int64, got {_describe(stream_id)}")

    seq = element[SEQ]
    if isinstance(seq, bool) or not isinstance(seq, int):
        return None, (REASON_BAD_FIELD, f"{SEQ!r} must be an integer, got {_describe(seq)}")
    if not 0 <= seq <= MAX_SEQ:
        return None, (REASON_BAD_FIELD, f"{SEQ!r} must be in [0, 2**63), got {_describe(seq)}")

    text, token = element.get(TEXT), element.get(TOKEN)
    if text is not None and token is not None:
        return None, (REASON_BAD_FIELD, f"give {TEXT!r} (a raw chunk) or {TOKEN!r} (a whole word), not both")
    chunk, lead, trail = "", "", ""
    for field, value in ((TEXT, text), (TOKEN, token)):
        if value is None:
            continue
        if not isinstance(value, str):
            return None, (REASON_BAD_FIELD, f"{field!r} must be a string, got {_describe(value)}")
        if len(value) > max_event_chars:
            return None, (REASON_TOO_LARGE, f"{field!r} has {len(value)} characters; the limit is {max_event_chars}")
        if field == TEXT:
            # A character cut between two chunks (a client slicing UTF-16) leaves a lone
            # high surrogate at the end of one text and a lone low one at the start of the
            # next: kept aside for the stateful step to join (or replace).
            lead = value[0] if value and "\udc00" <= value[0] <= "\udfff" else ""
            trail = value[-1] if len(value) > len(lead) and "\ud800" <= value[-1] <= "\udbff" else ""
            value = value[len(lead) : len(value) - len(trail)]
        value, n = repair_text(value)
        replaced += n
        # A token is a whole word: whitespace on both sides keeps it from joining its neighbours.
        chunk = value if field == TEXT else f" {value} "

    end = element.get(END)
    if end is None:
        end = False
    elif not isinstance(end, bool):
        return None, (REASON_BAD_FIELD, f"{END!r} must be true or false, got {_describe(end)}")

    event: dict[str, Any] = {SEQ: seq, TEXT: chunk, END: end}
    if lead:
        event[LEAD_SURROGATE] = ord(lead)
    if trail:
        event[TRAIL_SURROGATE] = ord(trail)
    ts = element.get(EVENT_TS)
    if ts is not None:
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not MIN_EVENT_TS <= ts <= MAX_EVENT_TS:
            # (NaN fails the range test too)
            return None, (
                REASON_BAD_FIELD,
                f"{EVENT_TS!r} must be seconds since the epoch (years 1 to 9999), got {_describe(ts)}",
            )
        event[EVENT_TS] = float(ts)
    if replaced:
        event[REPLACED_CHARS] = replaced
    return (stream_id, event), None


def raw_text(event: Mapping[str, Any]) -> str:
    """The event's chunk with its cut-off surrogate halves back at the edges (lone surrogates:
    fine inside the DoFn and its pickled state, never written out unrepaired)."""
    text = event[TEXT]
    if LEAD_SURROGATE in event:
        text = chr(event[LEAD_SURROGATE]) + text
    if TRAIL_SURROGATE in event:
        text += chr(event[TRAIL_SURROGATE])
    return text


def event_row(stream_id: str, seq: int, raw: str, end: bool, event: Mapping[str, Any] | None = None) -> dict[str, Any]:
    row = {STREAM_ID: stream_id, SEQ: seq, TEXT: raw, END: end}
    if event is not None and EVENT_TS in event:
        row[EVENT_TS] = event[EVENT_TS]
    return row


def is_low(ch: str) -> bool:
    return "\udc00" <= ch <= "\udfff"


def is_high(ch: str) -> bool:
    return "\ud800" <= ch <= "\udbff"


def content_hash(text: str, end: bool) -> bytes:
    """What makes two deliveries of one seq "the same": the chunk applied and the end flag."""
    data = text.encode("utf-8", "surrogatepass") + (b"\x01" if end else b"\x00")
    return hashlib.blake2b(data, digest_size=HASH_BYTES).digest()
