"""Per-token predictions of the streaming classifier: Beam job or interactive stdin.

    # Interactive: type (or pipe) text, see the prediction after every word.
    python -m pipelines.stream --model out/models/lstm

    # Replay / batch: JSON Lines events -> JSON Lines predictions.
    python -m pipelines.stream --model out/models/lstm --input-events 'events/*.jsonl' --output out/preds

    # Dataflow streaming job: Pub/Sub in, Pub/Sub out.
    python -m pipelines.stream --model gs://B/models/lstm --input-subscription projects/P/subscriptions/S \\
        --output-topic projects/P/topics/T --runner DataflowRunner --project P --region R \\
        --temp_location gs://B/tmp --setup_file ./setup.py

Events: {"stream_id": "s1", "seq": 0, "text": "a raw chunk"} ("token": "word" for a whole
word; "end": true closes the stream; optional "ts" = event time in seconds for replays).
Unknown flags go to Beam's PipelineOptions untouched.
"""

from __future__ import annotations

import argparse
import codecs
import json
import logging
import os
import sys
from typing import Any, Sequence, TextIO

from beam_rnn.stream import classifier as S
from beam_rnn.core.manifest import ArtifactError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="beam-rnn stream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="Exported streaming model dir (OUTPUT/lstm of pipelines.train; local or gs://).")
    src = parser.add_argument_group("Beam sources and sinks (none given: interactive stdin mode)")
    src.add_argument("--input-events", metavar="PATTERN", help="JSON Lines event files (batch / replay).")
    src.add_argument("--output", metavar="PREFIX",
                     help="With --input-events: PREFIX-SSSSS-of-NNNNN.jsonl predictions, "
                     "PREFIX-dead_letter-*.jsonl, PREFIX-stats.json.")
    src.add_argument("--input-topic", help="Pub/Sub topic to read events from (streaming job).")
    src.add_argument("--input-subscription", help="Pub/Sub subscription to read events from (streaming job).")
    src.add_argument("--output-topic", help="Pub/Sub topic for predictions (required with Pub/Sub input).")
    src.add_argument("--dead-letter-topic", help="Pub/Sub topic for dead letters (default: logged only).")
    src.add_argument("--timestamp-attribute", default=None,
                     help="Pub/Sub attribute holding the event time (default: publish time).")
    state = parser.add_argument_group("per-stream state")
    state.add_argument("--stream-ttl", type=float, default=S.DEFAULT_TTL_SECONDS,
                       help=f"Expire a stream idle for this many seconds of event time (default {S.DEFAULT_TTL_SECONDS:g}).")
    state.add_argument("--first-seq", type=int, default=0, help="Sequence number of a stream's first event (default 0).")
    state.add_argument("--max-buffered-events", type=int, default=S.DEFAULT_MAX_BUFFERED_EVENTS,
                       help=f"Out-of-order events kept per stream (default {S.DEFAULT_MAX_BUFFERED_EVENTS}); "
                       "more go to the dead letters.")
    state.add_argument("--max-buffered-chars", type=int, default=S.DEFAULT_MAX_BUFFERED_CHARS,
                       help=f"Text kept in those events per stream (default {S.DEFAULT_MAX_BUFFERED_CHARS}).")
    state.add_argument("--max-pending-chars", type=int, default=S.DEFAULT_MAX_PENDING_CHARS,
                       help=f"Text held after an unclosed '<' before it is taken as punctuation "
                       f"(default {S.DEFAULT_MAX_PENDING_CHARS}).")
    state.add_argument("--max-event-chars", type=int, default=S.DEFAULT_MAX_EVENT_CHARS,
                       help=f"Longest text/token of one event (default {S.DEFAULT_MAX_EVENT_CHARS}); longer "
                       "events go to the dead letters (event_too_large).")
    state.add_argument("--conflict-window", type=int, default=S.DEFAULT_CONFLICT_WINDOW,
                       help=f"Applied events per stream whose content hash is kept to tell a redelivery from a "
                       f"conflicting duplicate (default {S.DEFAULT_CONFLICT_WINDOW}; 8 bytes each).")
    inter = parser.add_argument_group("interactive mode")
    inter.add_argument("--interactive", action="store_true",
                       help="Read text from stdin and print the prediction after every token (the default "
                       "when no Beam source is given).")
    inter.add_argument("--per-line", action="store_true", help="Each input line is a separate text.")
    inter.add_argument("--json", action="store_true", help="Print JSON lines instead of a table.")
    return parser


def _fail(parser: argparse.ArgumentParser, message: str) -> None:
    """One line on stderr, exit status 2 (argparse's error, without the usage block)."""
    parser.exit(2, f"{parser.prog}: error: {' '.join(str(message).split())}\n")


def _input_events_problem(pattern: str) -> str | None:
    """Why `pattern` cannot be read as event files (None: it matches readable files)."""
    from apache_beam.io.filesystems import FileSystems

    remote = "://" in pattern
    if not remote and os.path.isdir(pattern) and not pattern.endswith(("/", os.sep)):
        return f"--input-events {pattern} is a directory; give files or a glob (e.g. {pattern.rstrip('/')}/*.jsonl)"
    try:
        [result] = FileSystems.match([pattern])
        paths = [m.path for m in result.metadata_list]
    except Exception as e:  # pylint: disable=broad-except  (Beam raises BeamIOError and others)
        return f"--input-events {pattern}: {type(e).__name__}: {e}"
    if not remote:
        paths = [path for path in paths if not os.path.isdir(path)]
        unreadable = [path for path in paths if not os.access(path, os.R_OK)]
        if unreadable:
            return f"--input-events: {unreadable[0]} is not readable"
    if not paths:
        return f"--input-events matches no files: {pattern}"
    return None


def _check(known: argparse.Namespace, parser: argparse.ArgumentParser) -> S.StreamingClassifier:
    pubsub_in = known.input_topic or known.input_subscription
    if known.input_topic and known.input_subscription:
        _fail(parser, "give --input-topic or --input-subscription, not both")
    if known.input_events and pubsub_in:
        _fail(parser, "give --input-events or a Pub/Sub input, not both")
    if known.interactive and (known.input_events or pubsub_in):
        _fail(parser, "--interactive reads stdin; it cannot be combined with --input-events or Pub/Sub flags")
    if known.input_events and not known.output:
        _fail(parser, "--input-events needs --output PREFIX")
    if pubsub_in and not known.output_topic:
        _fail(parser, "a Pub/Sub input needs --output-topic")
    if known.output and not known.input_events:
        _fail(parser, "--output goes with --input-events")
    if not known.stream_ttl > 0:
        _fail(parser, f"--stream-ttl must be > 0, got {known.stream_ttl}")
    for name in ("max_buffered_events", "max_buffered_chars"):
        if getattr(known, name) < 0:
            _fail(parser, f"--{name.replace('_', '-')} must be >= 0")
    if known.max_pending_chars < 1:
        _fail(parser, "--max-pending-chars must be >= 1")
    if known.max_event_chars < 1:
        _fail(parser, "--max-event-chars must be >= 1")
    if known.conflict_window < 0:
        _fail(parser, "--conflict-window must be >= 0")
    try:
        S.StreamConfig(ttl_seconds=known.stream_ttl, first_seq=known.first_seq)
    except ValueError as e:
        _fail(parser, str(e).replace("ttl_seconds", "--stream-ttl").replace("first_seq", "--first-seq"))
    if known.input_events:
        problem = _input_events_problem(known.input_events)
        if problem:
            _fail(parser, problem)
    try:
        # Verified against the model's manifest.json before anything is parsed.
        classifier = S.StreamingClassifier.load(known.model, max_pending_chars=known.max_pending_chars)
    except ArtifactError as e:
        _fail(parser, f"--model: {e}")
    return classifier


# --- Interactive mode ---------------------------------------------------------------------


def _format(classifier: S.StreamingClassifier, record: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(record, ensure_ascii=False)
    probability = record["probability"]
    shown = f"p={probability:.4f}" if isinstance(probability, float) else "p=[" + ", ".join(f"{p:.3f}" for p in probability) + "]"
    label = record["label"]
    if classifier.label_names and 0 <= label < len(classifier.label_names):
        label = f"{label} ({classifier.label_names[label]})"
    if record.get("final"):
        return f"{'final':>6}  {'(' + str(record['tokens_seen']) + ' tokens)':<24} {shown}  label={label}"
    return f"{record['tokens_seen']:>6}  {str(record['token'])[:24]:<24} {shown}  label={label}"


class _Terminal:
    """Non-canonical input on a TTY (echo kept) so words are scored as they are typed."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved = None

    def __enter__(self) -> _Terminal:
        try:
            import termios

            if os.isatty(self.fd):
                self.saved = termios.tcgetattr(self.fd)
                mode = termios.tcgetattr(self.fd)
                mode[3] &= ~termios.ICANON
                mode[6][termios.VMIN] = 1
                mode[6][termios.VTIME] = 0
                termios.tcsetattr(self.fd, termios.TCSANOW, mode)
        except (ImportError, OSError):
            self.saved = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSANOW, self.saved)


def interactive(
    classifier: S.StreamingClassifier,
    *,
    stdin_fd: int | None = None,
    out: TextIO | None = None,
    per_line: bool = False,
    as_json: bool = False,
) -> dict[str, int]:
    """Reads raw text from stdin as it arrives; prints one line per token and a final line per text."""
    out = out or sys.stdout
    fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    state = classifier.start()
    totals = {"texts": 0, "tokens": 0}

    def emit(predictions: list[S.Prediction]) -> None:
        for p in predictions:
            out.write(_format(classifier, p.to_dict(), as_json) + "\n")
        totals["tokens"] += len(predictions)
        if predictions:
            out.flush()

    def close(state: S.StreamState) -> S.StreamState:
        predictions, state = classifier.finish(state)
        emit(predictions)
        out.write(_format(classifier, {"final": True, **classifier.current(state)}, as_json) + "\n")
        out.flush()
        totals["texts"] += 1
        return classifier.start()

    with _Terminal(fd) as terminal:
        while True:
            data = os.read(fd, 65536)
            text = decoder.decode(data, final=not data)
            if terminal.saved is not None and text:
                # Backspace on a raw terminal: un-type the pending (not yet scored) word.
                kept = []
                for ch in text:
                    if ch in "\x7f\x08":
                        if kept:
                            kept.pop()
                        elif state.tokenizer.word and not state.tokenizer.held:
                            import dataclasses

                            tok = dataclasses.replace(state.tokenizer, word=state.tokenizer.word[:-1])
                            state = dataclasses.replace(state, tokenizer=tok)
                    else:
                        kept.append(ch)
                text = "".join(kept)
            if per_line:
                *lines, rest = text.split("\n")
                for line in lines:
                    predictions, state = classifier.feed(state, line)
                    emit(predictions)
                    state = close(state)
                text = rest
            if text:
                predictions, state = classifier.feed(state, text)
                emit(predictions)
            if not data:
                break
    if not per_line or state.tokens_seen or state.tokenizer.word or state.tokenizer.held:
        close(state)
    return totals


# --- Beam modes ------------------------------------------------------------------------------


def _transform(known: argparse.Namespace, *, use_event_ts: bool) -> Any:
    return S.StreamPredictions(
        known.model,
        ttl_seconds=known.stream_ttl,
        first_seq=known.first_seq,
        max_buffered_events=known.max_buffered_events,
        max_buffered_chars=known.max_buffered_chars,
        max_pending_chars=known.max_pending_chars,
        max_event_chars=known.max_event_chars,
        conflict_window=known.conflict_window,
        use_event_ts=use_event_ts,
    )


def run(argv: Sequence[str] | None = None, save_main_session: bool = True) -> dict[str, Any]:
    """Runs the interactive mode or builds and runs the Beam job.

    Args:
        argv: Command-line arguments (default sys.argv[1:]); unknown flags are Beam options.
        save_main_session: Pickle the main session for remote workers.

    Returns:
        Interactive: ``{"mode": "interactive", "texts", "tokens"}``.  Files: the
        reconciled counters (also written to PREFIX-stats.json).  Pub/Sub: the job state.
    """
    parser = build_parser()
    known, pipeline_args = parser.parse_known_args(argv)
    classifier = _check(known, parser)
    if not (known.input_events or known.input_topic or known.input_subscription):
        if pipeline_args:
            _fail(parser, f"unrecognized arguments in interactive mode: {' '.join(pipeline_args)}")
        totals = interactive(classifier, per_line=known.per_line, as_json=known.json)
        return {"mode": "interactive", **totals}

    import apache_beam as beam
    from apache_beam.coders import BytesCoder
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import SetupOptions, StandardOptions

    from beam_rnn.cli.runtime import counters, pipeline_options

    def write_json_lines(prefix: str) -> beam.PTransform:
        # S.to_json_line: every record encodes as UTF-8, whatever an event carried.
        return beam.Map(S.to_json_line) | beam.io.WriteToText(prefix, file_name_suffix=".jsonl")

    options = pipeline_options(pipeline_args, streaming=not known.input_events)
    options.view_as(SetupOptions).save_main_session = save_main_session
    if known.input_events:
        p = beam.Pipeline(options=options)
        events = (
            p
            # Bytes, not str: a line that is not UTF-8 is a dead letter, not a failed read.
            | "ReadEvents" >> beam.io.ReadFromText(known.input_events, coder=BytesCoder())
            | "SkipBlank" >> beam.Filter(lambda line: line.strip() != b"")
        )
        result = events | "StreamPredictions" >> _transform(known, use_event_ts=True)
        _ = result[S.PREDICTIONS_TAG] | "WritePredictions" >> write_json_lines(known.output)
        _ = result[S.DEAD_LETTER_TAG] | "WriteDeadLetter" >> write_json_lines(known.output + "-dead_letter")
        pipeline_result = p.run()
        pipeline_result.wait_until_finish()
        found = counters(pipeline_result, S.METRICS_NAMESPACE)
        stats = {"mode": "files", **S.reconcile(found), "counters": found}
        with FileSystems.create(known.output + "-stats.json") as f:
            f.write((json.dumps(stats, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        return stats

    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(options=options)
    read = beam.io.ReadFromPubSub(
        topic=known.input_topic,
        subscription=known.input_subscription,
        timestamp_attribute=known.timestamp_attribute,
    )
    result = p | "ReadPubSub" >> read | "StreamPredictions" >> _transform(known, use_event_ts=False)
    to_bytes = S.to_json_bytes  # always valid UTF-8, whatever an event carried
    _ = (
        result[S.PREDICTIONS_TAG]
        | "PredictionsToBytes" >> beam.Map(to_bytes)
        | "WritePredictions" >> beam.io.WriteToPubSub(known.output_topic)
    )
    if known.dead_letter_topic:
        _ = (
            result[S.DEAD_LETTER_TAG]
            | "DeadToBytes" >> beam.Map(to_bytes)
            | "WriteDeadLetter" >> beam.io.WriteToPubSub(known.dead_letter_topic)
        )
    else:
        _ = result[S.DEAD_LETTER_TAG] | "LogDeadLetter" >> beam.Map(
            lambda r: logging.warning("dead letter: %s", S.to_json_line(r))
        )
    pipeline_result = p.run()
    return {"mode": "pubsub", "state": str(pipeline_result.state)}


def main(argv: Sequence[str] | None = None) -> int:
    logging.getLogger().setLevel(logging.INFO if "--input-events" in (argv or sys.argv) else logging.WARNING)
    stats = run(argv)
    if stats.get("mode") == "interactive":
        return 0
    print(json.dumps({k: v for k, v in stats.items() if k != "counters"}, sort_keys=True))
    return 0 if stats.get("reconciled", True) else 1


if __name__ == "__main__":
    from beam_rnn.cli.runtime import hard_exit

    hard_exit(main(sys.argv[1:]))
