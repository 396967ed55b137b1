"""The optional gensim backend of ``beam-rnn embeddings`` (``--backend gensim``).

The tf_keras CBOW (`model`, `training`) stays the reference; this backend trains
gensim's Cython Word2Vec CBOW (``sg=0, cbow_mean=1``, negative sampling) on exactly
the tokens the reference sees: the transformed documents' ids with padding and OOV
ids removed, mapped back to words with the vocabulary, and the same dim, window,
negatives, sample, min_count, epochs, alpha (learning_rate → min_learning_rate),
noise exponent, dynamic window and seed.  gensim does its own subsampling, window
draws and negatives on every epoch (like passes == epochs); batch_size, passes and
max_examples_in_memory do not apply.  The Beam example stage is skipped (gensim reads
the sentences, held in memory, one list of words per document); token counts come
from the same documents.  Output: the same vectors.txt / vectors.tsv / metadata.tsv,
words in the same (vocabulary) order.

gensim is imported only here, only when the backend is chosen
(`require_gensim` gives the one-line error when it is missing).
"""

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from beam_rnn.core import progress
from beam_rnn.core.errors import InputError
from beam_rnn.embeddings.config import CbowConfig

GENSIM_MAX_WORDS = 10_000  # gensim truncates longer sentences; documents are cut into pieces of this size


def require_gensim() -> None:
    """Raises InputError (exit 2) naming the extra when gensim cannot be imported."""
    try:
        import gensim.models  # noqa: F401
    except ImportError as e:
        raise InputError(f"--backend gensim needs gensim, which cannot be imported ({e}): "
                         "pip install 'beam-rnn[gensim]'") from None


def read_token_ids(files: Sequence[str], *, batch: int = 512) -> list[np.ndarray]:
    """The token ids (int64) of every transformed document in `files`, in file order."""
    import tensorflow as tf

    from beam_rnn.core import constants as C

    spec = {C.TOKEN_IDS_KEY: tf.io.RaggedFeature(tf.int64)}
    ds = tf.data.TFRecordDataset(sorted(files), compression_type="GZIP", buffer_size=8 << 20).batch(batch)
    ds = ds.map(lambda s: tf.io.parse_example(s, spec)[C.TOKEN_IDS_KEY], num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True).prefetch(2)
    docs: list[np.ndarray] = []
    for ragged in ds:
        values, splits = ragged.flat_values.numpy(), ragged.row_splits.numpy()
        docs.extend(np.split(values, splits[1:-1]))
    return docs


def id_sentences(docs: Sequence[np.ndarray], num_oov_buckets: int) -> tuple[list[np.ndarray], np.ndarray]:
    """(documents without padding/OOV ids, cut into pieces of <= GENSIM_MAX_WORDS; counts per id of all docs)."""
    counts = np.bincount(np.concatenate(docs), minlength=num_oov_buckets + 1) if docs else \
        np.zeros(num_oov_buckets + 1, np.int64)
    out = []
    for ids in docs:
        ids = ids[ids > num_oov_buckets]
        out.extend(ids[i:i + GENSIM_MAX_WORDS] for i in range(0, ids.size, GENSIM_MAX_WORDS))
    return out, counts


def train_gensim(sentences: Sequence[Sequence[str]], config: CbowConfig) -> tuple[Any, dict[str, Any]]:
    """gensim Word2Vec CBOW with `config`'s settings; returns (model, training figures).

    Figures: "examples" (words trained after subsampling, gensim's effective words),
    "raw_words", "vocab_seconds" (gensim's build_vocab), "train_seconds",
    "examples_per_second", "final_learning_rate", "epoch_losses" ([]: gensim's loss
    tally is not computed, it slows training), "workers".
    """
    from gensim.models import Word2Vec

    workers = config.workers or os.cpu_count() or 1
    model = Word2Vec(vector_size=config.dim, window=config.window, negative=config.negatives, sample=config.sample,
                     min_count=config.min_count, sg=0, cbow_mean=1, hs=0, alpha=config.learning_rate,
                     min_alpha=config.min_learning_rate, ns_exponent=config.noise_power,
                     shrink_windows=config.dynamic_window, workers=workers, seed=config.seed, epochs=config.epochs)
    gensim_logger = logging.getLogger("gensim")
    level = gensim_logger.level
    gensim_logger.setLevel(max(logging.WARNING, level))  # gensim logs progress at INFO every second
    try:
        t0 = time.time()
        model.build_vocab(sentences)
        t1 = time.time()
        with progress.task("CBOW training (gensim)"):
            effective, raw = model.train(sentences, total_examples=model.corpus_count, epochs=config.epochs)
        t2 = time.time()
    finally:
        gensim_logger.setLevel(level)
    seconds = t2 - t1
    return model, {
        "epoch_losses": [],
        "examples": int(effective),
        "raw_words": int(raw),
        "vocab_seconds": round(t1 - t0, 3),
        "train_seconds": round(seconds, 3),
        "examples_per_second": round(effective / seconds, 1) if seconds > 0 else None,
        "final_learning_rate": float(model.min_alpha_yet_reached),
        "workers": workers,
    }


def train_and_export_gensim(files: Sequence[str], cbow: CbowConfig, vocab: Sequence[str], num_oov: int,
                            output: str) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, Any]]:
    """Reads the documents, trains with gensim, writes the vectors; returns (words, vectors, counts, training).

    `counts` are `trainable_counts` of the documents (what the reference computes in Beam);
    the exported words are those with a non-zero count, in vocabulary order, as `model_vectors`.
    """
    from beam_rnn.embeddings.sampling import trainable_counts
    from beam_rnn.embeddings.vectors import save_projector_tsv, save_word2vec_text
    from beam_rnn.embeddings.layout import VECTORS_TXT

    t0 = time.time()
    with progress.task("CBOW documents"):
        docs = read_token_ids(files)
        progress.count("read", len(docs))
    id_docs, raw_counts = id_sentences(docs, num_oov)
    del docs
    counts = trainable_counts(raw_counts, min_count=cbow.min_count, num_oov_buckets=num_oov)
    first = num_oov + 1
    too_big = [i for i in (np.flatnonzero(raw_counts[first:]) + first) if i - first >= len(vocab)]
    if too_big:
        raise InputError(f"token id {too_big[0]} is beyond the vocabulary ({len(vocab)} words)")
    words_of = np.asarray(vocab, dtype=object)
    sentences = [words_of[ids - first].tolist() for ids in id_docs if ids.size]
    del id_docs
    read_seconds = time.time() - t0
    model, training = train_gensim(sentences, cbow)
    del sentences
    ids = np.flatnonzero(counts)
    words = [vocab[i - first] for i in ids]
    vectors = np.stack([model.wv[w] for w in words]) if words else np.zeros((0, cbow.dim), np.float32)
    save_word2vec_text(os.path.join(output, VECTORS_TXT), words, vectors)
    save_projector_tsv(output, words, vectors)
    training["read_seconds"] = round(read_seconds, 3)
    return words, vectors, counts, training
