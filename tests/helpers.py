"""Builders shared by the tests: synthetic corpora, the real preprocessing stage, random weights."""

from __future__ import annotations

import json
import os
import random
from typing import Any

import numpy as np

from beam_rnn.core import constants as C

WORDS = "good great fine bad awful poor movie film plot actor the a and of".split()


def synthetic_docs(n: int, labels: list, seed: int, words: list[str] = WORDS) -> list[dict]:
    """`n` documents of 0-12 random words (with HTML and punctuation), labels cycling through `labels`."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
        docs.append({"id": f"doc{i}", "text": text.capitalize() + ".<br />", "label": labels[i % len(labels)]})
    return docs


def preprocess_docs(out: str, docs: list[dict], cfg: Any, *, keep_tmp: bool = False) -> dict:
    """Run the real AnalyzeAndTransform stage on in-memory documents, then what run_preprocess does
    after its pipeline (`finish_preprocess`: stats.json, preprocess_config.json, manifest.json last).

    Returns:
        The stats.json contents.
    """
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam

    from beam_rnn.preprocess.pipeline import finish_preprocess
    from beam_rnn.preprocess.transform import AnalyzeAndTransform, partial_stats, write_partial

    tmp = os.path.join(out, C.TMP_DIR)
    with beam.Pipeline(argv=["--runner=DirectRunner"]) as p, tft_beam.Context(temp_dir=tmp):
        result = p | beam.Create(docs) | AnalyzeAndTransform(config=cfg, output_dir=out, batch_size=64)
        write_partial(partial_stats(result.stats, p | "NoDeadLetters" >> beam.Create([{}])), tmp)
    return finish_preprocess(out, cfg, {}, keep_tmp=keep_tmp)


def build_streaming_model_dir(
    model_dir: str,
    words: list[str] = WORDS,
    *,
    seed: int = 0,
    cell: str = "lstm",
    units: int = 6,
    embedding_dim: int = 8,
    dense_units: int = 5,
    num_classes: int = 2,
    num_oov_buckets: int = 1,
    max_tokens: int | None = None,
) -> str:
    """A streaming model directory built by hand (no TensorFlow): random step weights,
    ``vocab.txt``, ``preprocess_config.json``, ``model_card.json`` and, last, the
    ``manifest.json`` every exported model has.  Returns `model_dir`."""
    from beam_rnn.stream import step as rnn_step
    from beam_rnn.core.manifest import write_manifest

    rng = np.random.default_rng(seed)
    gates = {"lstm": 4, "gru": 3, "simple_rnn": 1}[cell]
    vocab = len(words) + num_oov_buckets + 1
    outputs = 1 if num_classes == 2 else num_classes

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * (1.5 / np.sqrt(shape[0]))).astype(np.float32)

    weights = {
        rnn_step.META_FORMAT_VERSION: np.asarray(rnn_step.FORMAT_VERSION, np.int64),
        rnn_step.META_CELL: np.asarray(cell),
        rnn_step.META_NUM_LAYERS: np.asarray(1, np.int64),
        rnn_step.META_UNITS: np.asarray(units, np.int64),
        rnn_step.META_NUM_CLASSES: np.asarray(num_classes, np.int64),
        rnn_step.EMBEDDING: rand(vocab, embedding_dim),
        rnn_step.layer_key(0, "kernel"): rand(embedding_dim, gates * units),
        rnn_step.layer_key(0, "recurrent_kernel"): rand(units, gates * units),
        rnn_step.layer_key(0, "bias"): rand(*((2, gates * units) if cell == "gru" else (gates * units,))),
        rnn_step.DENSE_HIDDEN_KERNEL: rand(units, dense_units),
        rnn_step.DENSE_HIDDEN_BIAS: rand(dense_units),
        rnn_step.LOGITS_KERNEL: rand(dense_units, outputs),
        rnn_step.LOGITS_BIAS: rand(outputs),
    }
    os.makedirs(model_dir, exist_ok=True)
    np.savez(os.path.join(model_dir, C.STEP_WEIGHTS_FILE), **weights)
    with open(os.path.join(model_dir, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("".join(w + "\n" for w in words))
    with open(os.path.join(model_dir, C.PREPROCESS_CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump({"num_oov_buckets": num_oov_buckets, "max_tokens": max_tokens}, f)
    with open(os.path.join(model_dir, C.MODEL_CARD_FILE), "w", encoding="utf-8") as f:
        json.dump({"kind": C.MODEL_LSTM, "num_classes": num_classes, "label_names": None}, f)
    write_manifest(model_dir)
    return model_dir


def randomize_weights(model, seed: int) -> None:
    """Larger random weights so probabilities spread over (0, 1) and move from token to token."""
    rng = np.random.default_rng(seed)
    model.set_weights([
        (rng.standard_normal(w.shape) * (1.5 / np.sqrt(w.shape[0]) if w.ndim == 2 else 0.5)).astype(np.float32)
        for w in model.get_weights()
    ])


def p_or_list(record: dict, prefix: str = ""):
    """P(class 1) of a binary model's output record, the list of class probabilities otherwise."""
    values = list(record[prefix + "probabilities"].values())
    return values[1] if len(values) == 2 else values
