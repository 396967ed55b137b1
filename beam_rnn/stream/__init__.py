"""beam_rnn.stream: per-token predictions of the streaming model (see docs/ARCHITECTURE.md).

    tokenizer    chunked text -> words -> ids (the streaming side of `beam_rnn.core.spec`)
    step         the recurrent step in NumPy (`StepWeights`)
    classifier   `StreamingClassifier`: load a model dir, feed text, get a prediction per token
    config       `StreamConfig`: per-stream state limits (the flags of ``beam-rnn stream``)
    events       event fields, `parse_event`, dead-letter records, JSON output
    transform    `StreamPredictions`: the Beam transform (stateful DoFn keyed by stream id)
    jobs         the Beam jobs of ``beam-rnn stream`` (JSON Lines replay, Pub/Sub)
    interactive  stdin mode of ``beam-rnn stream``

The public names below are imported on first use, so ``from beam_rnn.stream import
StreamingClassifier`` loads neither Beam nor TensorFlow.
"""

from beam_rnn.core.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "classifier": ("StreamingClassifier", "Prediction", "StreamState", "ModelDirError", "MODEL_FILES"),
        "tokenizer": ("StreamTokenizer", "TokenizerState", "Vocabulary"),
        "config": ("StreamConfig",),
        "events": ("parse_event", "repair_text", "to_json_line", "to_json_bytes"),
        "transform": ("StreamPredictions", "reconcile", "METRICS_NAMESPACE", "PREDICTIONS_TAG", "DEAD_LETTER_TAG"),
    },
)
