"""Warm start of the classifiers' Embedding layer from pretrained word vectors (ours, word2vec, GloVe).

Rescaling is on by default here as in ``beam-rnn train`` (`TrainConfig.rescale_pretrained`):
raw CBOW vectors are ~50x larger than Keras' initial embeddings; one global factor
brings them to the initial rows' RMS and keeps every cosine.
"""

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from beam_rnn.core import constants as C
from beam_rnn.embeddings.vectors import load_word2vec_text

logger = logging.getLogger(__name__)


def pretrained_embedding_matrix(
    vectors: Mapping[str, np.ndarray] | str,
    vocab: Sequence[str],
    num_oov_buckets: int,
    embedding_dim: int,
    seed: int = 42,
    *,
    initial: np.ndarray | None = None,
    rescale: bool = True,
) -> tuple[np.ndarray, int]:
    """Embedding matrix [len(vocab) + num_oov_buckets + 1, dim] with pretrained rows.

    Row num_oov_buckets + 1 + i (word vocab[i]) is the pretrained vector of
    vocab[i] when it has one (exact match first, then a case-insensitive match);
    every other row (padding, OOV buckets, unmatched words) is the row of
    `initial` — pass the model's current embedding weights — or, when `initial`
    is None, a seeded uniform(-0.05, 0.05) draw (Keras' Embedding default).

    Args:
        vectors: {word: vector} or a word2vec/GloVe text file path.
        vocab: Vocabulary words in id order (`beam_rnn.preprocess.transform.read_vocabulary`).
        num_oov_buckets: k of the id layout.
        embedding_dim: Width; pretrained vectors must have it.
        seed: Seed of the default initial rows.
        initial: The matrix to start from (shape [vocab + k + 1, dim]).
        rescale: Multiply all matched vectors by ONE factor so their RMS equals the
            RMS of the initial matrix (word2vec vectors are ~50x larger than Keras'
            initial embeddings; one global factor keeps every cosine unchanged).
            False places the vectors as they are.

    Returns:
        (matrix float32, number of vocabulary words that got a pretrained vector).
    """
    if isinstance(vectors, (str, os.PathLike)):
        vectors = load_word2vec_text(os.fspath(vectors))
    rows = len(vocab) + num_oov_buckets + 1
    if initial is None:
        rng = np.random.default_rng(seed)
        matrix = rng.uniform(-0.05, 0.05, size=(rows, embedding_dim)).astype(np.float32)
    else:
        matrix = np.array(initial, dtype=np.float32, copy=True)
        if matrix.shape != (rows, embedding_dim):
            raise ValueError(f"initial matrix has shape {matrix.shape}, expected {(rows, embedding_dim)}")
    lowered: dict[str, np.ndarray] = {}
    for word, vec in vectors.items():
        lowered.setdefault(word.lower(), vec)
    rows_matched, found = [], []
    for i, word in enumerate(vocab):
        vec = vectors.get(word)
        if vec is None:
            vec = lowered.get(word.lower())
        if vec is None:
            continue
        vec = np.asarray(vec, dtype=np.float32)
        if vec.shape != (embedding_dim,):
            raise ValueError(f"pretrained vector of {word!r} has shape {vec.shape}, the model needs ({embedding_dim},)")
        rows_matched.append(num_oov_buckets + 1 + i)
        found.append(vec)
    if found:
        pretrained = np.stack(found)
        if rescale:
            rms = float(np.sqrt(np.mean(np.square(pretrained))))
            pretrained = pretrained * (float(np.sqrt(np.mean(np.square(matrix)))) / rms if rms > 0 else 1.0)
        matrix[np.asarray(rows_matched)] = pretrained
    return matrix, len(found)


def warm_start_embedding(model, matrix: np.ndarray, freeze: bool = False):
    """Set the weights of the classifier's Embedding layer (`beam_rnn.train.models.EMBEDDING_LAYER`); optionally freeze it.

    Call BEFORE `model.compile` (Keras reads `trainable` when it compiles /
    traces the train step).  Freezing does not change the order of
    `model.get_weights()`.

    Returns:
        The embedding layer.
    """
    from beam_rnn.train.models import EMBEDDING_LAYER

    layer = model.get_layer(EMBEDDING_LAYER)
    [current] = layer.get_weights()
    matrix = np.asarray(matrix, dtype=current.dtype)
    if matrix.shape != current.shape:
        raise ValueError(f"embedding matrix has shape {matrix.shape}, the layer needs {current.shape}")
    layer.set_weights([matrix])
    layer.trainable = not freeze
    return layer


def warm_start_from_file(
    model, vectors_path: str, transformed_dir: str, *, freeze: bool = False, rescale: bool = True,
    vectors: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Warm-start a classifier built for a preprocessing output from pretrained vectors.

    Reads the vocabulary and num_oov_buckets of `transformed_dir`, keeps the
    model's current rows for unmatched ids (see `pretrained_embedding_matrix` for
    `rescale`), and calls `warm_start_embedding`.  `vectors`: the file's vectors
    when the caller already read it (training's input checks do), else it is read here.

    Returns:
        {"matched": words with a pretrained vector, "vocabulary_words", "coverage", "frozen"}.
    """
    from beam_rnn.preprocess.transform import read_vocabulary
    from beam_rnn.train.models import EMBEDDING_LAYER

    vocab = read_vocabulary(transformed_dir)
    num_oov = _num_oov_buckets(transformed_dir)
    layer = model.get_layer(EMBEDDING_LAYER)
    [current] = layer.get_weights()
    matrix, matched = pretrained_embedding_matrix(
        vectors_path if vectors is None else vectors, vocab, num_oov, current.shape[1], initial=current,
        rescale=rescale
    )
    warm_start_embedding(model, matrix, freeze)
    info = {"matched": matched, "vocabulary_words": len(vocab),
            "coverage": matched / len(vocab) if vocab else 0.0, "frozen": bool(freeze), "rescaled": bool(rescale)}
    logger.info("Warm start from %s: %s", vectors_path, info)
    return info


def _num_oov_buckets(transformed_dir: str) -> int:
    import tensorflow as tf

    for name in (C.STATS_FILE, C.PREPROCESS_CONFIG_FILE):
        path = os.path.join(transformed_dir, name)
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path) as f:
                d = json.loads(f.read())
            if "num_oov_buckets" in d:
                return int(d["num_oov_buckets"])
    return C.DEFAULT_NUM_OOV_BUCKETS
