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

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from beam_rnn.cli.flags import add_config_flags, add_verbose_flag, config_from_flags, parse_known_flags
from beam_rnn.core.errors import InputError
from beam_rnn.core.manifest import ArtifactError
from beam_rnn.core.threads import limit_blas_threads
from beam_rnn.stream.classifier import StreamingClassifier
from beam_rnn.stream.config import StreamConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="beam-rnn stream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_verbose_flag(parser)
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
    add_config_flags(parser.add_argument_group("per-stream state"), StreamConfig)
    inter = parser.add_argument_group("interactive mode")
    inter.add_argument("--interactive", action="store_true",
                       help="Read text from stdin and print the prediction after every token (the default "
                       "when no Beam source is given).")
    inter.add_argument("--per-line", action="store_true", help="Each input line is a separate text, scored from a fresh state with its own final line; "
                       "without it all of stdin is ONE text (newlines are whitespace), e.g. a piped document.")
    inter.add_argument("--json", action="store_true", help="Print JSON lines instead of a table.")
    return parser


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


def _fail(message: str) -> None:
    raise InputError(" ".join(str(message).split()))


def _check(known: argparse.Namespace) -> tuple[StreamingClassifier, StreamConfig]:
    pubsub_in = known.input_topic or known.input_subscription
    if known.input_topic and known.input_subscription:
        _fail("give --input-topic or --input-subscription, not both")
    if known.input_events and pubsub_in:
        _fail("give --input-events or a Pub/Sub input, not both")
    if known.interactive and (known.input_events or pubsub_in):
        _fail("--interactive reads stdin; it cannot be combined with --input-events or Pub/Sub flags")
    if known.input_events and not known.output:
        _fail("--input-events needs --output PREFIX")
    if pubsub_in and not known.output_topic:
        _fail("a Pub/Sub input needs --output-topic")
    if known.output and not known.input_events:
        _fail("--output goes with --input-events")
    config = config_from_flags(StreamConfig, known)
    if known.input_events:
        problem = _input_events_problem(known.input_events)
        if problem:
            _fail(problem)
    try:
        # Verified against the model's manifest.json before anything is parsed.
        limit_blas_threads()  # the interactive mode steps in this process (beam_rnn.core.threads)
        classifier = StreamingClassifier.load(known.model, max_pending_chars=config.max_pending_chars)
    except ArtifactError as e:
        _fail(f"--model: {e}")
    return classifier, config


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
    known, pipeline_args = parse_known_flags(parser, argv)
    classifier, config = _check(known)
    if not (known.input_events or known.input_topic or known.input_subscription):
        if pipeline_args:
            parser.error(f"unrecognized arguments in interactive mode: {' '.join(pipeline_args)}")
        from beam_rnn.stream.interactive import interactive

        totals = interactive(classifier, per_line=known.per_line, as_json=known.json,
                             decide_at=config.decide_at, min_tokens=config.min_tokens)
        return {"mode": "interactive", **totals}

    from apache_beam.options.pipeline_options import SetupOptions

    from beam_rnn.cli.runtime import pipeline_options
    from beam_rnn.stream import jobs

    options = pipeline_options(pipeline_args, streaming=not known.input_events)
    options.view_as(SetupOptions).save_main_session = save_main_session
    if known.input_events:
        return jobs.run_replay(known.model, config, known.input_events, known.output, options)
    return jobs.run_pubsub(
        known.model,
        config,
        options,
        output_topic=known.output_topic,
        input_topic=known.input_topic,
        input_subscription=known.input_subscription,
        dead_letter_topic=known.dead_letter_topic,
        timestamp_attribute=known.timestamp_attribute,
    )


def main(argv: Sequence[str] | None = None) -> int:
    stats = run(argv)
    if stats.get("mode") == "interactive":
        return 0
    print(json.dumps({k: v for k, v in stats.items() if k != "counters"}, sort_keys=True))
    return 0 if stats.get("reconciled", True) else 1


if __name__ == "__main__":
    from beam_rnn.cli import run_command
    from beam_rnn.cli.runtime import hard_exit

    hard_exit(run_command("stream", sys.argv[1:]))
