"""`StreamPredictions`: the Beam transform from stream events to per-token predictions.

Events ``{stream_id, seq, text | token, end}`` are parsed (`beam_rnn.stream.events`),
keyed by stream id and applied by a stateful DoFn holding each stream's
`StreamState` (at-least-once and out-of-order delivery, idle-stream expiry, dead
letters); the predictions come from `beam_rnn.stream.classifier.StreamingClassifier`.
"""

import collections
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration, Timestamp

from beam_rnn.core import constants as C
from beam_rnn.core.threads import limit_blas_threads
from beam_rnn.stream.classifier import Prediction, StreamingClassifier, StreamState
from beam_rnn.stream.config import StreamConfig
from beam_rnn.stream.events import (
    END,
    EVENT_TS,
    HASH_BYTES,
    REASON_AFTER_END,
    REASON_BAD_FIELD,
    REASON_BUFFER_OVERFLOW,
    REASON_CONFLICTING_DUPLICATE,
    REASON_GAP_EXPIRED,
    REASON_INTERNAL,
    REASON_STREAM_CLOSED,
    REPLACED_CHARS,
    SEQ,
    STREAM_ID,
    content_hash,
    dead_letter,
    event_row,
    is_high,
    is_low,
    one_line,
    parse_event,
    raw_text,
)

METRICS_NAMESPACE = "beam_rnn.stream"
DEAD_LETTER_TAG = "dead_letter"
PREDICTIONS_TAG = "predictions"


def _counter(name: str) -> Any:
    return Metrics.counter(METRICS_NAMESPACE, name)


def _dead(source: str, row: Any, code: str, detail: str) -> beam.pvalue.TaggedOutput:
    """`events.dead_letter` on the dead-letter output."""
    return beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(source, row, code, detail))


class _ParseEventsFn(beam.DoFn):
    """Raw events -> (stream_id, event) keyed for the stateful step; bad ones -> dead letter."""

    def __init__(self, config: StreamConfig, use_event_ts: bool) -> None:
        self._cfg = config
        self._use_event_ts = use_event_ts
        self._in = _counter("events_in")
        self._bad = _counter("events_invalid")
        self._dead = _counter("dead_lettered")
        self._repaired = _counter("events_repaired")
        self._replaced = _counter("replaced_chars")
        self._internal = _counter("internal_errors")

    def process(self, element: Any) -> Iterable[Any]:
        self._in.inc()
        try:
            parsed, error = parse_event(element, max_event_chars=self._cfg.max_event_chars)
        except Exception as e:  # pylint: disable=broad-except
            # parse_event is total on every input we know of; should it ever raise,
            # one event must not stop the job (on Pub/Sub: a message retried for ever).
            logging.getLogger(__name__).exception("stream: parsing an event failed")
            self._internal.inc()
            parsed, error = None, (REASON_INTERNAL, f"{type(e).__name__}: {one_line(e)[:300]}")
        if error is not None:
            self._bad.inc()
            self._dead.inc()
            yield _dead("event", element, *error)
            return
        stream_id, event = parsed
        replaced = event.pop(REPLACED_CHARS, 0)
        if replaced:
            self._repaired.inc()
            self._replaced.inc(replaced)
        if self._use_event_ts and EVENT_TS in event:
            yield beam.window.TimestampedValue((stream_id, event), event[EVENT_TS])
        else:
            yield stream_id, event


# Stream record statuses.
_OPEN = "open"
_CLOSED = "closed"  # tombstone after end / expiry: remembers the last seq for duplicate detection

class _StreamFn(beam.DoFn):
    """Stateful per-stream predictor (keyed by stream_id).

    State (one ReadModifyWriteState, pickled dict, bounded):
      open stream:  status, next_seq, the StreamState record (float32 bytes, tokenizer
                    state), early events {seq: (text, end)} (<= max_buffered_events,
                    <= max_buffered_chars), last event time, "hi": the high surrogate
                    that ended the last applied text (half a character cut between
                    two chunks; absent normally), and "hashes": the
                    8-byte content hashes of the last <= conflict_window applied
                    events (seqs next_seq - k .. next_seq - 1, oldest first).
      tombstone:    status "closed", next_seq, reason, hashes — kept one TTL after
                    end/expiry so that redelivered events are recognised as
                    duplicates (or conflicting ones); then cleared.
    Timer (event time): last event time + TTL.

    Counters of one event are gathered first and added only once the event is
    handled, so a failure in between (an internal error, dead-lettered) leaves
    the counters reconciled and the stream's state as it was.
    """

    STATE = ReadModifyWriteStateSpec("stream", PickleCoder())
    EXPIRY = TimerSpec("expiry", TimeDomain.WATERMARK)
    COUNTERS = (
        "replaced_chars",
        "surrogates_joined",
        "events_applied",
        "events_duplicate",
        "events_conflicting",
        "duplicates_unchecked",
        "events_buffered",
        "dead_lettered",
        "internal_errors",
        "tokens",
        "streams_started",
        "streams_ended",
        "streams_expired",
        "state_cleared",
        "tombstones_cleared",
        "tag_lookahead_exceeded",
        "events_after_close",
        "decisions",
    )

    def __init__(self, model_dir: str, config: StreamConfig, classifier: StreamingClassifier | None = None) -> None:
        self._model_dir = model_dir
        self._cfg = config
        self._ttl = Duration(micros=int(round(config.ttl_seconds * 1e6)))
        self._clf = classifier
        self._c = {name: _counter(name) for name in self.COUNTERS}

    def setup(self) -> None:
        limit_blas_threads()  # a step per event is small matrix products (beam_rnn.core.threads)
        if self._clf is None:
            self._clf = StreamingClassifier.load(self._model_dir, max_pending_chars=self._cfg.max_pending_chars)

    def _flush(self, counts: Mapping[str, int]) -> None:
        for name, value in counts.items():
            if value:
                self._c[name].inc(value)

    # --- helpers ------------------------------------------------------------------
    @staticmethod
    def _reject(stream_id: str, seq: int, row: dict[str, Any], code: str, detail: str, out: list, n: collections.Counter) -> None:
        """Dead-letters one event of a stream (counted in ``dead_lettered``)."""
        n["dead_lettered"] += 1
        out.append(_dead(f"{stream_id}:{seq}", row, code, detail))

    def _new_record(self, n: collections.Counter) -> dict[str, Any]:
        n["streams_started"] += 1
        return {
            "status": _OPEN,
            "next_seq": self._cfg.first_seq,
            "stream": self._clf.start().to_record(),
            "early": {},
            "early_chars": 0,
            "last_ts": None,
            "hashes": b"",
        }

    def _token_records(
        self, stream_id: str, seq: int | None, predictions: list[Prediction], n: collections.Counter
    ) -> list[dict[str, Any]]:
        n["tokens"] += len(predictions)
        return [
            {
                STREAM_ID: stream_id,
                SEQ: seq,
                "token": p.token,
                "token_id": p.token_id,
                C.PREDICTED_LABEL_KEY: p.predicted_label,
                C.PREDICTED_LABEL_NAME_KEY: p.predicted_label_name,
                C.PROBABILITIES_KEY: p.probabilities,
                "tokens_seen": p.tokens_seen,
            }
            for p in predictions
        ]

    def _decision(self, stream_id: str, seq: int | None, predictions: list[Prediction], state: StreamState,
                  out: list, n: collections.Counter) -> StreamState:
        """With a decision policy: the stream's one decision record, when it fires among `predictions`."""
        if self._cfg.decide_at is None:
            return state
        fired, state = self._clf.decide(state, predictions, self._cfg.decide_at, self._cfg.min_tokens)
        if fired is not None:
            n["decisions"] += 1
            out.append({STREAM_ID: stream_id, SEQ: seq, "decision": True, "position": fired.tokens_seen,
                        "token": fired.token, C.PREDICTED_LABEL_KEY: fired.predicted_label,
                        C.PREDICTED_LABEL_NAME_KEY: fired.predicted_label_name,
                        C.PROBABILITIES_KEY: fired.probabilities})
        return state

    def _final_record(self, stream_id: str, seq: int | None, state: StreamState, **extra: Any) -> dict[str, Any]:
        current = self._clf.current(state)
        record = {STREAM_ID: stream_id, SEQ: seq, "final": True, **current}
        if self._cfg.decide_at is not None:  # where the decision fired (None: it never did)
            record["decision_position"] = state.decided_at or None
        if state.tokens_dropped:
            record["tokens_dropped"] = state.tokens_dropped
        record.update(extra)
        return record

    def _remember(self, record: dict[str, Any], text: str, end: bool) -> None:
        """Appends the content hash of the event just applied (the last conflict_window kept)."""
        if self._cfg.conflict_window:
            hashes = record.get("hashes", b"") + content_hash(text, end)
            record["hashes"] = hashes[-self._cfg.conflict_window * HASH_BYTES :]

    @staticmethod
    def _applied_hash(record: Mapping[str, Any], seq: int) -> bytes | None:
        """The remembered content hash of applied event `seq`, or None when it is out of the window."""
        hashes = record.get("hashes", b"")
        count = len(hashes) // HASH_BYTES
        back = record["next_seq"] - seq  # 1: the last applied event
        if not 1 <= back <= count:
            return None
        start = (count - back) * HASH_BYTES
        return hashes[start : start + HASH_BYTES]

    def _duplicate(
        self,
        stream_id: str,
        record: Mapping[str, Any],
        event: Mapping[str, Any],
        text: str,
        n: collections.Counter,
        out: list,
    ) -> None:
        """`seq` was applied or is buffered: the same content changes nothing, other content is dead-lettered."""
        seq, end = event[SEQ], event[END]
        if seq in record.get("early", {}):
            first = record["early"][seq]
            same, where = first[0] == text and first[1] == end, "buffered"
        else:
            known = self._applied_hash(record, seq)
            if known is None:  # older than the conflict window: cannot be compared
                n["events_duplicate"] += 1
                n["duplicates_unchecked"] += 1
                return
            same, where = known == content_hash(text, end), "applied"
        if same:
            n["events_duplicate"] += 1
            return
        n["events_conflicting"] += 1
        self._reject(
            stream_id, seq, event_row(stream_id, seq, text, end, event), REASON_CONFLICTING_DUPLICATE,
            f"seq {seq} was already {where} with a different text/token or end; the first version stands", out, n,
        )

    def _apply(
        self, stream_id: str, record: dict[str, Any], seq: int, text: str, end: bool, out: list, n: collections.Counter
    ) -> bool:
        """Applies the in-order event `seq`; returns True when it ended the stream."""
        state = StreamState.from_record(record["stream"], self._clf.num_state_arrays)
        forced_before = state.tokenizer.forced_tag_releases
        predictions, state = self._clf.feed(state, self._join_surrogates(record, text, end, n))
        if end:
            more, state = self._clf.finish(state)
            predictions += more
        n["tag_lookahead_exceeded"] += state.tokenizer.forced_tag_releases - forced_before
        out.extend(self._token_records(stream_id, seq, predictions, n))
        state = self._decision(stream_id, seq, predictions, state, out, n)
        n["events_applied"] += 1
        record["next_seq"] = seq + 1
        record["stream"] = state.to_record()
        self._remember(record, text, end)
        if end:
            out.append(self._final_record(stream_id, seq, state, reason="end"))
            n["streams_ended"] += 1
        return end

    @staticmethod
    def _join_surrogates(record: dict[str, Any], text: str, end: bool, n: collections.Counter) -> str:
        """The chunk to feed: a character cut between the previous event and this one is joined.

        `text` may start with a lone low surrogate and end with a lone high one (see
        `parse_event`); a high one waits in ``record["hi"]`` for the next event.
        Halves that cannot be joined become U+FFFD (counted in ``replaced_chars``).
        """
        pending = record.pop("hi", None)
        lead = ""
        if text and is_low(text[0]):
            if pending is not None:
                lead = chr(0x10000 + ((ord(pending) - 0xD800) << 10) + (ord(text[0]) - 0xDC00))
                n["surrogates_joined"] += 1
                pending = None
            else:
                lead = "\ufffd"
                n["replaced_chars"] += 1
            text = text[1:]
        if pending is not None:  # the previous event's half found no partner
            lead = "\ufffd" + lead
            n["replaced_chars"] += 1
        if text and is_high(text[-1]):
            if end:
                text = text[:-1] + "\ufffd"
                n["replaced_chars"] += 1
            else:
                record["hi"] = text[-1]
                text = text[:-1]
        return lead + text

    def _close(self, stream_id: str, record: dict[str, Any], reason: str, out: list, n: collections.Counter) -> dict[str, Any]:
        """Dead-letters buffered events that can no longer apply; returns the tombstone."""
        for seq in sorted(record["early"]):
            text, end = record["early"][seq][:2]
            code = REASON_AFTER_END if reason == "end" else REASON_GAP_EXPIRED
            detail = (
                f"seq {seq} is after the end of the stream (seq {record['next_seq'] - 1})"
                if reason == "end"
                else f"stream expired while waiting for seq {record['next_seq']}"
            )
            self._reject(stream_id, seq, event_row(stream_id, seq, text, end), code, detail, out, n)
        n["state_cleared"] += 1
        return {
            "status": _CLOSED,
            "next_seq": record["next_seq"],
            "reason": reason,
            "last_ts": record["last_ts"],
            "hashes": record.get("hashes", b""),
        }

    def _handle(
        self,
        stream_id: str,
        event: Mapping[str, Any],
        ts_micros: int,
        record: dict[str, Any] | None,
        out: list,
        n: collections.Counter,
    ) -> dict[str, Any] | None:
        """One event against the stream's record; returns the record to store (None: store nothing)."""
        seq, text, end = event[SEQ], raw_text(event), event[END]

        def reject(code: str, detail: str) -> None:
            self._reject(stream_id, seq, event_row(stream_id, seq, text, end, event), code, detail, out, n)

        if seq < self._cfg.first_seq:
            reject(REASON_BAD_FIELD, f"seq {seq} is below the first seq ({self._cfg.first_seq})")
            return None
        if record is not None and record["status"] == _CLOSED:
            if seq < record["next_seq"]:
                self._duplicate(stream_id, record, event, text, n, out)
            else:
                n["events_after_close"] += 1
                reject(REASON_STREAM_CLOSED, f"stream {record['reason']} before this event (last seq {record['next_seq'] - 1})")
            return None  # a tombstone's timer is not extended
        if record is None:
            record = self._new_record(n)
        else:
            # Work on a copy: state.read() may hand out the cached object itself, and an
            # event that fails half-way must leave the stored state as it was.
            record = dict(record, early=dict(record["early"]))
        record["last_ts"] = ts_micros if record["last_ts"] is None else max(record["last_ts"], ts_micros)

        if seq < record["next_seq"] or seq in record["early"]:
            self._duplicate(stream_id, record, event, text, n, out)
        elif seq > record["next_seq"]:
            if len(record["early"]) >= self._cfg.max_buffered_events or record["early_chars"] + len(text) > self._cfg.max_buffered_chars:
                reject(
                    REASON_BUFFER_OVERFLOW,
                    f"waiting for seq {record['next_seq']}; early-event buffer full "
                    f"({len(record['early'])} events / {record['early_chars']} chars; limits "
                    f"{self._cfg.max_buffered_events} / {self._cfg.max_buffered_chars})",
                )
            else:
                record["early"][seq] = (text, end)
                record["early_chars"] += len(text)
                n["events_buffered"] += 1
        else:
            ended = self._apply(stream_id, record, seq, text, end, out, n)
            while not ended and record["next_seq"] in record["early"]:
                nxt = record["next_seq"]
                text_n, end_n = record["early"].pop(nxt)[:2]
                record["early_chars"] -= len(text_n)
                ended = self._apply(stream_id, record, nxt, text_n, end_n, out, n)
            if ended:
                record = self._close(stream_id, record, "end", out, n)
        return record

    # --- process ----------------------------------------------------------------------
    def process(
        self,
        element: tuple[str, dict[str, Any]],
        timestamp: Any = beam.DoFn.TimestampParam,
        state: Any = beam.DoFn.StateParam(STATE),
        expiry: Any = beam.DoFn.TimerParam(EXPIRY),
    ) -> Iterable[Any]:
        stream_id, event = element
        out: list[Any] = []
        n: collections.Counter = collections.Counter()
        try:
            record = self._handle(stream_id, event, Timestamp.of(timestamp).micros, state.read(), out, n)
            fire_at = None if record is None else Timestamp(micros=record["last_ts"]) + self._ttl
        except Exception as e:  # pylint: disable=broad-except
            # Events are validated by parse_event, so this is a bug; still, one event
            # must not stop every stream (on Pub/Sub it would be retried for ever).
            # The stream's stored state is left as it was.
            logging.getLogger(__name__).exception("stream %s: handling seq %s failed", stream_id, event.get(SEQ))
            record, out = None, [
                _dead(f"{stream_id}:{event.get(SEQ)}", {STREAM_ID: stream_id, **event}, REASON_INTERNAL,
                      f"{type(e).__name__}: {one_line(e)[:300]}")
            ]
            n = collections.Counter(dead_lettered=1, internal_errors=1)
        if record is not None:
            state.write(record)
            expiry.set(fire_at)
        self._flush(n)
        return out

    @on_timer(EXPIRY)
    def on_expiry(
        self,
        key: Any = beam.DoFn.KeyParam,
        state: Any = beam.DoFn.StateParam(STATE),
        expiry: Any = beam.DoFn.TimerParam(EXPIRY),
    ) -> Iterable[Any]:
        record = state.read()
        if record is None:
            return []
        n: collections.Counter = collections.Counter()
        if record["status"] == _CLOSED:
            # The tombstone has lived one TTL: forget the stream entirely.
            state.clear()
            self._flush({"tombstones_cleared": 1})
            return []
        out: list[Any] = []
        stream = StreamState.from_record(record["stream"], self._clf.num_state_arrays)
        predictions: list[Prediction] = []
        if record.get("hi") is not None:  # half a character that never got its other half
            predictions, stream = self._clf.feed(stream, "\ufffd")
            n["replaced_chars"] += 1
        more, stream = self._clf.finish(stream)
        predictions += more
        last_seq = record["next_seq"] - 1 if record["next_seq"] > self._cfg.first_seq else None
        out.extend(self._token_records(key, last_seq, predictions, n))
        stream = self._decision(key, last_seq, predictions, stream, out, n)
        reason = f"idle: no event for {self._cfg.ttl_seconds:g} s (stream-ttl)"
        if record["early"]:
            reason += f"; seq {record['next_seq']} never arrived ({len(record['early'])} later events dead-lettered)"
        out.append(self._final_record(key, last_seq, stream, expired=True, reason=reason))
        n["streams_expired"] += 1
        tombstone = self._close(key, record, "expired", out, n)
        state.write(tombstone)
        expiry.set(Timestamp(micros=record["last_ts"]) + self._ttl + self._ttl)
        self._flush(n)
        return out


class StreamPredictions(beam.PTransform):
    """Events -> per-token predictions (+ a final record per stream) and dead letters.

    Input: a PCollection of events — JSON bytes (Pub/Sub), JSON strings (JSON Lines)
    or dicts — ``{"stream_id": str|int, "seq": int >= 0, "text": "raw chunk"}`` (or
    ``"token": "word"``, a whole word), ``"end": true`` closes the stream, optional
    ``"ts"`` (seconds since the epoch) sets the event time when `use_event_ts`.

    Output (``expand`` returns a dict):
      ``predictions``: ``{stream_id, seq, token, token_id, predicted_label,
      predicted_label_name, probabilities, tokens_seen}`` per token (the names of
      `beam_rnn.core.outputs`), and per stream one ``{stream_id, seq, final: true,
      predicted_label, predicted_label_name, probabilities, tokens_seen, reason}`` record (``expired: true`` when
      the stream was idle for `ttl_seconds`).
      ``dead_letter``: ``{source, row, reason, stage}``.

    No event can fail the pipeline: lone surrogates are replaced by U+FFFD
    (counted), anything else invalid is dead-lettered with a reason, and every
    output is encodable UTF-8 JSON (`to_json_line`).

    Delivery: duplicates (same stream_id and seq, applied or buffered, same text
    and end) change nothing; the same seq with a different text or end is
    dead-lettered as ``conflicting_duplicate`` (checked for the last
    `conflict_window` applied events of a stream and every buffered one).
    Out-of-order events wait (bounded buffer) for the gap to fill.  Expiry uses
    an event-time timer at (latest event time of the stream + TTL): it fires when
    the watermark passes it (TestStream's advance_watermark_to; Pub/Sub's
    watermark follows publish time; in a bounded run every open stream expires
    when the input ends).  Counters in namespace ``beam_rnn.stream`` reconcile:
    events_in = events_applied + events_duplicate + dead_lettered.
    """

    def __init__(
        self, model_dir: str, config: StreamConfig | None = None, *, use_event_ts: bool = True, **limits: Any
    ) -> None:
        """`config`, or its fields as keyword arguments (`limits`: ttl_seconds=..., ...)."""
        super().__init__()
        if config is not None and limits:
            raise TypeError("give a StreamConfig or its fields as keyword arguments, not both")
        self._model_dir = model_dir
        self._config = config if config is not None else StreamConfig(**limits)
        self._use_event_ts = use_event_ts

    def expand(self, events: beam.PCollection):  # -> {tag: PCollection}; a dict hint makes Beam warn
        parsed = events | "Parse" >> beam.ParDo(_ParseEventsFn(self._config, self._use_event_ts)).with_output_types(
            tuple[str, dict[str, Any]]
        ).with_outputs(
            DEAD_LETTER_TAG, main=PREDICTIONS_TAG
        )
        keyed = parsed[PREDICTIONS_TAG]
        predicted = keyed | "Predict" >> beam.ParDo(_StreamFn(self._model_dir, self._config)).with_input_types(
            tuple[str, dict[str, Any]]
        ).with_outputs(
            DEAD_LETTER_TAG, main=PREDICTIONS_TAG
        )
        dead = (parsed[DEAD_LETTER_TAG], predicted[DEAD_LETTER_TAG]) | "DeadLetters" >> beam.Flatten()
        return {PREDICTIONS_TAG: predicted[PREDICTIONS_TAG], DEAD_LETTER_TAG: dead}


def reconcile(counters: Mapping[str, int]) -> dict[str, Any]:
    """Checks events_in = applied + duplicate + dead_lettered from a run's counters."""
    get = lambda k: int(counters.get(k, 0))  # noqa: E731
    accounted = get("events_applied") + get("events_duplicate") + get("dead_lettered")
    return {
        "events_in": get("events_in"),
        "events_applied": get("events_applied"),
        "events_duplicate": get("events_duplicate"),
        "events_conflicting": get("events_conflicting"),
        "events_repaired": get("events_repaired"),
        "replaced_chars": get("replaced_chars"),
        "dead_lettered": get("dead_lettered"),
        "reconciled": get("events_in") == accounted,
    }
