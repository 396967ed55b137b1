"""Builders shared by the tests: synthetic corpora, the real preprocessing stage, random weights."""

from __future__ import annotations

import os
import random
import shutil
from typing import Any

import numpy as np

from beam_rnn import constants as C

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
    """Run the real AnalyzeAndTransform stage on in-memory documents, as pipelines.preprocess does.

    Returns:
        The stats.json contents.
    """
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam

    from beam_rnn.transform import AnalyzeAndTransform, finalize_stats, write_partial_stats

    tmp = os.path.join(out, C.TMP_DIR)
    with beam.Pipeline(argv=["--runner=DirectRunner"]) as p, tft_beam.Context(temp_dir=tmp):
        result = p | beam.Create(docs) | AnalyzeAndTransform(config=cfg, output_dir=out, batch_size=64)
        write_partial_stats(result.stats, p | "NoDeadLetters" >> beam.Create([{}]), tmp)
    stats = finalize_stats(out, config=cfg, counters={})
    with open(os.path.join(out, C.PREPROCESS_CONFIG_FILE), "w") as f:
        f.write(cfg.to_json())
    if not keep_tmp:
        shutil.rmtree(tmp)
    return stats


def randomize_weights(model, seed: int) -> None:
    """Larger random weights so probabilities spread over (0, 1) and move from token to token."""
    rng = np.random.default_rng(seed)
    model.set_weights([
        (rng.standard_normal(w.shape) * (1.5 / np.sqrt(w.shape[0]) if w.ndim == 2 else 0.5)).astype(np.float32)
        for w in model.get_weights()
    ])
