"""The one definition of how text becomes token ids: the TFT `preprocessing_fn`.

Training reads the ids this graph produced, serving runs the same graph inside
the exported SavedModel, and streaming mirrors it (tested against it).  The module
can also be used as a TFX Transform module file (`preprocessing_fn` with defaults).

Id layout (ready for `Embedding(mask_zero=True)`):
    0                       padding
    1 .. num_oov_buckets    out-of-vocabulary buckets
    num_oov_buckets + 1 ..  words, most frequent first
"""

from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf
import tensorflow_transform as tft

from beam_rnn.core import constants as C
from beam_rnn.preprocess.config import PreprocessConfig

# The tokenisation spec (patterns, whitespace, id layout) is defined once, TF-free, in
# beam_rnn.core.spec; this graph, the .keras rebuild and the streaming tokenizer read it.
from beam_rnn.core.spec import HTML_TAG_REGEX, PUNCTUATION_REGEX


def raw_feature_spec(config: PreprocessConfig) -> dict[str, tf.io.FixedLenFeature]:
    """The raw document features the preprocessing graph expects."""
    spec = {
        C.ID_KEY: tf.io.FixedLenFeature([], tf.string),
        C.TEXT_KEY: tf.io.FixedLenFeature([], tf.string),
    }
    if config.group_column is not None:
        spec[C.GROUP_KEY] = tf.io.FixedLenFeature([], tf.string)
    if config.labelled:
        dtype = tf.int64 if config.label_type == C.LABEL_TYPE_INT else tf.string
        spec[C.LABEL_KEY] = tf.io.FixedLenFeature([], dtype)
    return spec


def standardize(text: tf.Tensor) -> tf.Tensor:
    """Lower-case (ASCII, like TextVectorization), drop HTML tags and punctuation."""
    text = tf.strings.lower(text)
    # A tag becomes a space: "end.<br />Next" must split into two words.
    text = tf.strings.regex_replace(text, HTML_TAG_REGEX, " ")
    return tf.strings.regex_replace(text, PUNCTUATION_REGEX, "")


def tokenize(text: tf.Tensor, max_tokens: int | None = None) -> tf.RaggedTensor:
    """Standardise and split on whitespace; optionally keep the first `max_tokens`."""
    tokens = tf.strings.split(standardize(text))
    if max_tokens is not None:
        tokens = tokens[:, :max_tokens]
    return tokens


def _to_reserved_layout(ids: tf.SparseTensor, num_words: tf.Tensor, num_oov_buckets: int) -> tf.SparseTensor:
    """Move TFT's ids (words 0..V-1, OOV V..V+k-1) to 0=pad, 1..k=OOV, words from k+1."""
    values = ids.values
    num_words = tf.cast(num_words, values.dtype)
    values = tf.where(values >= num_words, values - num_words + 1, values + num_oov_buckets + 1)
    return tf.SparseTensor(ids.indices, values, ids.dense_shape)


def unit_weights(tokens: tf.SparseTensor) -> tf.Tensor:
    """Weight 1.0 per token, so TFT counts tokens with a weighted (per-batch) analyzer.

    With weights, TFT's vocabulary analyzer sums counts per unique token inside
    the TF graph for each batch, and only (token, count) pairs of a batch reach
    Beam; without them it flattens *every token* into a Python element before
    counting.  The counts, thresholds and frequency order are the same (integer
    sums are exact in float32 per batch and summed in float64 across batches);
    benchmarks/preprocess.py checks the vocabularies are byte-identical.
    """
    # TFT flattens a sparse x to its values and the weights alike, so the weights
    # are the dense values-shaped tensor.
    return tf.ones_like(tokens.values, dtype=tf.float32)


def make_preprocessing_fn(config: PreprocessConfig, *, weighted_counts: bool = True) -> Callable[[dict], dict]:
    """Build the TFT preprocessing_fn for `config`.

    Args:
        config: The tokenisation and vocabulary settings.
        weighted_counts: Count token frequencies through TFT's weighted analyzer
            (see `unit_weights`); False gives the plain, per-token Python path,
            used as the benchmark baseline.

    Returns:
        A function mapping raw features `{id, text[, group][, label]}` to
        `{token_ids (sparse int64), id[, group][, label (int64)]}`.
    """

    def preprocessing_fn(inputs: dict) -> dict:
        tokens = tokenize(inputs[C.TEXT_KEY], config.max_tokens).to_sparse()
        ids = tft.compute_and_apply_vocabulary(
            tokens,
            top_k=config.vocab_size,
            weights=unit_weights(tokens) if weighted_counts else None,
            # TFT warns that a threshold <= 1 is a no-op and asks for None (same vocabulary).
            frequency_threshold=config.min_frequency if config.min_frequency > 1 else None,
            num_oov_buckets=config.num_oov_buckets,
            vocab_filename=C.VOCAB_FILENAME,
        )
        num_words = tft.experimental.get_vocabulary_size_by_name(C.VOCAB_FILENAME)
        outputs = {
            C.TOKEN_IDS_KEY: _to_reserved_layout(ids, num_words, config.num_oov_buckets),
            C.TRANSFORMED_ID_KEY: tf.identity(inputs[C.ID_KEY]),
        }
        if C.GROUP_KEY in inputs:  # the split key (group, else id), for the trainer's folds
            outputs[C.GROUP_KEY] = tf.identity(inputs[C.GROUP_KEY])
        if config.labelled and C.LABEL_KEY in inputs:
            outputs[C.TRANSFORMED_LABEL_KEY] = _transform_label(inputs[C.LABEL_KEY], config)
        return outputs

    return preprocessing_fn


def _transform_label(label: tf.Tensor, config: PreprocessConfig) -> tf.Tensor:
    if config.label_type == C.LABEL_TYPE_INT:
        return tf.cast(label, tf.int64)
    if config.label_set is not None:
        # Declared labels: their order is the id order, so ids do not depend on counts.
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(config.label_set)), tf.range(len(config.label_set), dtype=tf.int64)
            ),
            default_value=-1,
        )
        return table.lookup(label)
    return tft.compute_and_apply_vocabulary(label, num_oov_buckets=0, vocab_filename=C.LABEL_VOCAB_FILENAME)


# A TFX Transform module file needs a module-level `preprocessing_fn`.
preprocessing_fn = make_preprocessing_fn(PreprocessConfig())


def label_names(config: PreprocessConfig, label_vocab: Sequence[str] | None = None) -> list[str] | None:
    """Names of label ids 0..K-1: string labels' (declared set or built vocabulary), int labels' --class-names."""
    if config.label_type != C.LABEL_TYPE_STRING:
        return list(config.class_names) if config.class_names is not None else None
    if config.label_set is not None:
        return list(config.label_set)
    return list(label_vocab) if label_vocab is not None else None
