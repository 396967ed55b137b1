"""`StreamConfig`: the per-stream state limits of `StreamPredictions`, and the one home of their defaults.

Each field is also a flag of ``beam-rnn stream`` (`beam_rnn.cli.flags.option`), so the
command line, its ``--help`` and the library cannot disagree.  No Beam, no TF.
"""

import dataclasses

from beam_rnn.cli.flags import check_options, option
from beam_rnn.stream.tokenizer import DEFAULT_MAX_PENDING_CHARS

DEFAULT_TTL_SECONDS = 3600.0
DEFAULT_MAX_BUFFERED_EVENTS = 64
DEFAULT_MAX_BUFFERED_CHARS = 65536
DEFAULT_MAX_EVENT_CHARS = 100_000
DEFAULT_CONFLICT_WINDOW = 256

MAX_SEQ = 2**63 - 1  # seq and integer stream ids fit an int64
MAX_TTL_SECONDS = 100 * 366 * 86400.0  # timers at ts + 2 TTL stay far inside Beam's timestamp range


def max_raw_event_chars(max_event_chars: int) -> int:
    """Longest raw event (bytes or characters) parsed at all: 12 x max_event_chars + 64 KiB.

    12 is the longest JSON spelling of one character (an escaped surrogate pair);
    64 KiB leaves room for the other fields.
    """
    return 12 * max_event_chars + 65536


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    """Per-stream state limits of `StreamPredictions` (validated once, shared with its DoFns).

    Attributes:
        ttl_seconds: Expire a stream idle for this many seconds of event time.
        first_seq: Sequence number of each stream's first event.
        max_buffered_events: Out-of-order events kept per stream.
        max_buffered_chars: Text kept in those events per stream.
        max_pending_chars: Characters held after an unclosed ``<`` per stream.
        max_event_chars: Longest ``text`` / ``token`` of one event; a longer one is
            dead-lettered (``event_too_large``), as is a raw message longer than
            `max_raw_event_chars`.
        conflict_window: Applied events per stream whose content hash is kept
            (8 bytes each) to tell a redelivery from a conflicting duplicate.
        decide_at: The decision policy's probability threshold (None: no decisions;
            `StreamingClassifier.decide`).
        min_tokens: The policy's earliest token position.
    """

    ttl_seconds: float = option(
        DEFAULT_TTL_SECONDS,
        "Expire a stream idle for this many seconds of event time.",
        flag="stream-ttl",
        show_default=f"{DEFAULT_TTL_SECONDS:g}",
        greater_than=0.0,
        maximum=MAX_TTL_SECONDS,
    )
    first_seq: int = option(0, "Sequence number of a stream's first event.", minimum=0, maximum=MAX_SEQ)
    max_buffered_events: int = option(
        DEFAULT_MAX_BUFFERED_EVENTS, "Out-of-order events kept per stream; more go to the dead letters.", minimum=0
    )
    max_buffered_chars: int = option(DEFAULT_MAX_BUFFERED_CHARS, "Text kept in those events per stream.", minimum=0)
    max_pending_chars: int = option(
        DEFAULT_MAX_PENDING_CHARS, "Text held after an unclosed '<' before it is taken as punctuation.", minimum=1
    )
    max_event_chars: int = option(
        DEFAULT_MAX_EVENT_CHARS,
        "Longest text/token of one event; longer events go to the dead letters (event_too_large).",
        minimum=1,
    )
    conflict_window: int = option(
        DEFAULT_CONFLICT_WINDOW,
        "Applied events per stream whose content hash is kept to tell a redelivery from a "
        "conflicting duplicate (8 bytes each).",
        minimum=0,
    )

    decide_at: float | None = option(
        None, "Decision policy: emit one decision record per stream when the top class probability first "
        "reaches P (with the token position), besides the per-token predictions.", metavar="P",
        show_default="no decision", greater_than=0.0, maximum=1.0)
    min_tokens: int = option(1, "With --decide-at: no decision before this many tokens.", minimum=1)

    def __post_init__(self) -> None:
        check_options(self)

    @property
    def max_raw_event_chars(self) -> int:
        """Longest raw event parsed at all (see the module function)."""
        return max_raw_event_chars(self.max_event_chars)
