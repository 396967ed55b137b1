"""The two Beam jobs of ``beam-rnn stream``: a JSON Lines replay and a Pub/Sub streaming job.

Both apply `StreamPredictions`; every record written is UTF-8 JSON (`to_json_line`),
whatever an event carried.
"""

import json
import logging
from typing import Any

import apache_beam as beam
from apache_beam.coders import BytesCoder
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from beam_rnn.stream.config import StreamConfig
from beam_rnn.stream.events import to_json_bytes, to_json_line
from beam_rnn.stream.transform import (
    DEAD_LETTER_TAG,
    METRICS_NAMESPACE,
    PREDICTIONS_TAG,
    StreamPredictions,
    reconcile,
)


def _write_json_lines(prefix: str) -> beam.PTransform:
    return beam.Map(to_json_line) | beam.io.WriteToText(prefix, file_name_suffix=".jsonl")


def run_replay(
    model_dir: str, config: StreamConfig, input_events: str, output: str, options: PipelineOptions
) -> dict[str, Any]:
    """JSON Lines events -> PREFIX-*.jsonl predictions, PREFIX-dead_letter-*.jsonl, PREFIX-stats.json.

    Event times come from the events' ``ts``.  Returns the reconciled counters
    (``{"mode": "files", ..., "reconciled", "counters"}``), also written to PREFIX-stats.json.
    """
    from beam_rnn.cli.runtime import counters

    p = beam.Pipeline(options=options)
    events = (
        p
        # Bytes, not str: a line that is not UTF-8 is a dead letter, not a failed read.
        | "ReadEvents" >> beam.io.ReadFromText(input_events, coder=BytesCoder())
        | "SkipBlank" >> beam.Filter(lambda line: line.strip() != b"")
    )
    result = events | "StreamPredictions" >> StreamPredictions(model_dir, config, use_event_ts=True)
    _ = result[PREDICTIONS_TAG] | "WritePredictions" >> _write_json_lines(output)
    _ = result[DEAD_LETTER_TAG] | "WriteDeadLetter" >> _write_json_lines(output + "-dead_letter")
    pipeline_result = p.run()
    pipeline_result.wait_until_finish()
    found = counters(pipeline_result, METRICS_NAMESPACE)
    stats = {"mode": "files", **reconcile(found), "counters": found}
    with FileSystems.create(output + "-stats.json") as f:
        f.write((json.dumps(stats, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return stats


def run_pubsub(
    model_dir: str,
    config: StreamConfig,
    options: PipelineOptions,
    *,
    output_topic: str,
    input_topic: str | None = None,
    input_subscription: str | None = None,
    dead_letter_topic: str | None = None,
    timestamp_attribute: str | None = None,
) -> dict[str, Any]:
    """Pub/Sub events -> Pub/Sub predictions (dead letters to a topic, or logged); returns the job state."""
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(options=options)
    read = beam.io.ReadFromPubSub(topic=input_topic, subscription=input_subscription, timestamp_attribute=timestamp_attribute)
    result = p | "ReadPubSub" >> read | "StreamPredictions" >> StreamPredictions(model_dir, config, use_event_ts=False)
    _ = (
        result[PREDICTIONS_TAG]
        | "PredictionsToBytes" >> beam.Map(to_json_bytes)
        | "WritePredictions" >> beam.io.WriteToPubSub(output_topic)
    )
    if dead_letter_topic:
        _ = (
            result[DEAD_LETTER_TAG]
            | "DeadToBytes" >> beam.Map(to_json_bytes)
            | "WriteDeadLetter" >> beam.io.WriteToPubSub(dead_letter_topic)
        )
    else:
        _ = result[DEAD_LETTER_TAG] | "LogDeadLetter" >> beam.Map(
            lambda r: logging.warning("dead letter: %s", to_json_line(r))
        )
    pipeline_result = p.run()
    return {"mode": "pubsub", "state": str(pipeline_result.state)}
