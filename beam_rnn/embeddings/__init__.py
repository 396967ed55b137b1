"""Word2Vec CBOW word vectors from the TFT-tokenised corpus, their evaluation and warm start.

CBOW (Mikolov et al. 2013, "Efficient Estimation of Word Representations in
Vector Space") predicts a word from the average of its neighbours' vectors; it is
trained here with negative sampling (Mikolov et al. 2013, "Distributed
Representations of Words and Phrases and their Compositionality") exactly as the
word2vec C tool and gensim do, so the vectors are comparable with theirs
(benchmarks/embeddings.py measures both on the same corpus).

Stages::

    DIR/transformed/train-*.tfrecord.gz      (pipelines.preprocess; token_ids per document)
      │  MakeCbowExamples (Beam): per-document DoFn, counts from a combiner over ids
      ▼
    OUT/examples/pass-NNN-*.tfrecord.gz      one tf.Example per (document, pass): a block of n examples
                                             {context: int64[n*2*window], target: int64[n]}
    OUT/cbow.json                            token counts per id, examples per pass, settings
      │  train_cbow (tf.data + a seeded SGD loop over a tf_keras CbowModel)
      ▼
    OUT/vectors.txt                          word2vec text format ("<n> <dim>" then "word v1 ... vdim")
    OUT/vectors.tsv + metadata.tsv           TensorBoard projector
    OUT/metrics.json                         WordSim-353 / SimLex-999 Spearman, analogy accuracy

Modules (public names are re-exported here and imported on first use, so
``from beam_rnn.embeddings import CbowConfig`` loads neither Beam nor TensorFlow)::

    config       CbowConfig, EmbeddingsConfig: every default, and the flags of ``beam-rnn embeddings``
    layout       feature keys, output file names, layer names
    sampling     subsampling, rare-word removal, windows, per-document seeds, noise (NumPy)
    examples     MakeCbowExamples: the Beam stage, block records, cbow.json
    model        CbowModel (tf_keras) and its word2vec SGD step
    training     tf.data reading of the blocks, train_cbow
    gensim_backend  --backend gensim: gensim's CBOW on the same tokens (optional extra)
    vectors      trained words → word2vec text / projector TSV, and loading them
    evaluation   word-pair Spearman, 3CosAdd analogies
    warm_start   the classifiers' Embedding rows from pretrained vectors
    pipeline     run(EmbeddingsConfig): the whole command as one call

Decisions (documented once, here):

* Token ids follow `beam_rnn.preprocess.tft_graph`: 0 = padding, 1..k = OOV buckets, words
  from k + 1 in vocabulary-file order.  Padding and OOV ids are REMOVED from a
  document before subsampling and windowing, as word2vec removes words below
  min_count: they are never targets nor contexts, and the words on either side of
  them become neighbours.  Words seen fewer than `min_count` times in the corpus
  are removed the same way.  Context slot 0 is therefore always "no word".
* Token counts for subsampling and for the noise distribution are computed IN the
  pipeline (a CombineFn over ids, `IdCountsCombineFn`) on exactly the documents the
  examples are made from: the TFT vocabulary file carries no frequencies (it is
  written without `store_frequency`) and may have been built on another split.
* Subsampling uses the word2vec C code's formula (also gensim's): a word with count
  f in a corpus of `total` counted words is kept with probability
  ``min(1, (sqrt(f / (s * total)) + 1) * (s * total) / f)``, s = `sample`.
  It is applied before windowing (discarded tokens leave the sentence).
* Windows: the context of a kept token is the `window` kept tokens on each side,
  in POSITIONAL slots (slot j < window holds offset j - window, slot window + j
  holds offset j + 1), 0 where there is no word.  With `dynamic_window` (default in
  the pipeline, as in word2vec) the effective window of each target is drawn
  uniformly from 1..window.  Targets without any context word are skipped.
* Records are BLOCKS: one record holds all examples of one document in one pass
  (row i's context is context[i*2w:(i+1)*2w]).  One record per example made the
  Beam stage ~6x slower than the training it feeds (17M Python elements through
  the runner for 5 passes over IMDB); blocks are ~200x fewer elements.
* Determinism: each document's random stream is seeded from sha256(seed, pass,
  document id), so a rerun (any runner, any sharding) makes the same set of
  examples.  Each "pass" is an independent subsampling/window draw; the trainer
  trains epoch e on pass e % passes, so with passes == epochs every epoch sees a
  fresh draw like word2vec's.
* Training is word2vec's: zero-initialised output vectors, input vectors uniform in
  ±1/dim (gensim 4's range; word2vec.c's ±0.5/dim gave a higher loss and ~0.004
  lower WordSim-353 over three seeds on IMDB), unigram^0.75 noise, per-example negatives (a negative equal to the
  target is ignored), plain SGD on the summed loss with the learning rate decayed
  linearly from 0.025 to 0.025e-4 over all epochs, and the context error applied
  undivided to every context word (word2vec's/gensim's cbow_mean update).
"""

import importlib
from typing import Any

_EXPORTS = {
    "config": ("CbowConfig", "EmbeddingsConfig", "DEFAULT_EVAL_DATA"),
    "layout": (
        "CONTEXT_KEY", "TARGET_KEY", "EXAMPLES_DIR", "PASS_PREFIX_TEMPLATE", "EXAMPLES_SUFFIX", "META_FILE",
        "VECTORS_TXT", "VECTORS_TSV", "METADATA_TSV", "METRICS_FILE", "CONFIG_FILE", "WORDSIM_FILE", "SIMLEX_FILE",
        "ANALOGY_FILE", "EMBEDDING_LAYER", "OUTPUT_EMBEDDING_LAYER", "METRICS_NAMESPACE",
    ),
    "sampling": ("keep_probabilities", "trainable_counts", "cbow_windows", "document_seed", "noise_distribution"),
    "examples": (
        "MakeCbowExamples", "CbowExamples", "IdCountsCombineFn", "parse_transformed_example", "encode_cbow_block",
        "decode_cbow_block", "decode_cbow_examples", "pass_pattern", "read_meta",
    ),
    "model": ("CbowModel", "build_cbow_model"),
    "training": ("train_cbow", "make_cbow_dataset", "iter_cbow_chunks", "load_cbow_examples", "count_examples"),
    "vectors": ("model_vectors", "save_word2vec_text", "save_projector_tsv", "load_word2vec_text", "read_word2vec_dim"),
    "evaluation": (
        "WordVectors", "read_word_pairs", "evaluate_word_pairs", "read_analogies", "evaluate_analogies",
        "evaluate_embeddings",
    ),
    "warm_start": ("pretrained_embedding_matrix", "warm_start_embedding", "warm_start_from_file"),
    "pipeline": ("run", "check_transformed"),
    "gensim_backend": ("train_gensim", "require_gensim"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
