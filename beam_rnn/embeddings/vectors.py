"""Word vectors in and out: the trained words of a model, word2vec text, the TensorBoard projector TSV."""

import os
from collections.abc import Sequence

import numpy as np

from beam_rnn.core import constants as C
from beam_rnn.embeddings.layout import EMBEDDING_LAYER, METADATA_TSV, VECTORS_TSV


def model_vectors(
    model,
    vocab: Sequence[str],
    counts: Sequence[int] | np.ndarray | None = None,
    *,
    num_oov_buckets: int = C.DEFAULT_NUM_OOV_BUCKETS,
) -> tuple[list[str], np.ndarray]:
    """(words, vectors) of the trained words, in vocabulary (frequency) order.

    A word is exported iff its `trainable_counts` entry is non-zero (all words when
    counts is None).  Word i of `vocab` has id i + num_oov_buckets + 1.
    """
    weights = np.asarray(model.get_layer(EMBEDDING_LAYER).get_weights()[0])
    ids = np.arange(len(vocab)) + num_oov_buckets + 1
    ids = ids[ids < weights.shape[0]]
    if counts is not None:
        c = np.asarray(counts)
        ids = ids[(ids < c.size) & (c[np.minimum(ids, c.size - 1)] > 0)]
    words = [vocab[i - num_oov_buckets - 1] for i in ids]
    return words, weights[ids]


def save_word2vec_text(path: str, words: Sequence[str], vectors: np.ndarray) -> None:
    """word2vec text format: "<n> <dim>" then "word v1 ... vdim" per line (float32 exact: %.9g)."""
    import tensorflow as tf

    vectors = np.asarray(vectors, dtype=np.float32)
    if len(words) != vectors.shape[0]:
        raise ValueError(f"{len(words)} words but {vectors.shape[0]} vectors")
    _check_words(words)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(f"{vectors.shape[0]} {vectors.shape[1]}\n")
        for word, vec in zip(words, vectors):
            f.write(word + " " + " ".join("%.9g" % x for x in vec) + "\n")


def save_projector_tsv(output_dir: str, words: Sequence[str], vectors: np.ndarray) -> tuple[str, str]:
    """vectors.tsv (tab-separated floats) + metadata.tsv (one word per line, no header: one column)."""
    import tensorflow as tf

    _check_words(words)
    vpath, mpath = os.path.join(output_dir, VECTORS_TSV), os.path.join(output_dir, METADATA_TSV)
    with tf.io.gfile.GFile(vpath, "w") as f:
        for vec in np.asarray(vectors, dtype=np.float32):
            f.write("\t".join("%.9g" % x for x in vec) + "\n")
    with tf.io.gfile.GFile(mpath, "w") as f:
        for word in words:
            f.write(word + "\n")
    return vpath, mpath


# The characters the text formats split on (the vocabulary never contains them:
# tokens are split on ASCII whitespace; other Unicode spaces such as U+0085 may occur in words).
_SEPARATORS = frozenset(" \t\n\r\x0b\x0c")


def _check_words(words: Sequence[str]) -> None:
    for w in words:
        if not w or any(ch in _SEPARATORS for ch in w):
            raise ValueError(f"word {w!r} is empty or contains a space, tab or newline; it cannot be written in text formats")


def load_word2vec_text(path: str) -> dict[str, np.ndarray]:
    """Read word2vec text vectors (also header-less GloVe text) → {word: float32 vector}, file order.

    The "<n> <dim>" header is optional; every vector must have the same width.
    The first occurrence of a duplicated word wins.
    """
    import tensorflow as tf

    out: dict[str, np.ndarray] = {}
    dim = None
    with tf.io.gfile.GFile(path, "rb") as f:
        for lineno, raw in enumerate(f):
            parts = raw.decode("utf-8", "replace").rstrip("\r\n").split(" ")
            parts = [p for p in parts if p != ""]
            if not parts:
                continue
            if lineno == 0 and len(parts) == 2 and all(p.isdigit() for p in parts):
                dim = int(parts[1])
                continue
            vec = np.asarray(parts[1:], dtype=np.float32)
            if dim is None:
                dim = vec.size
            if vec.size != dim:
                raise ValueError(f"{path}:{lineno + 1}: expected {dim} values, got {vec.size}")
            out.setdefault(parts[0], vec)
    return out


def read_word2vec_dim(path: str) -> int:
    """Vector width of a word2vec/GloVe text file from its first line (cheap check before training)."""
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "rb") as f:
        parts = [p for p in f.readline().decode("utf-8", "replace").rstrip("\r\n").split(" ") if p]
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return int(parts[1])
    if len(parts) < 2:
        raise ValueError(f"{path} is not a word2vec/GloVe text file")
    return len(parts) - 1
