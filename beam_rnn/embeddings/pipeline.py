"""``beam-rnn embeddings`` as one library call: check the inputs, make the examples with Beam,
train, write the vectors, evaluate (with ``backend="gensim"``: no Beam stage, gensim trains on
the same tokens, see `beam_rnn.embeddings.gensim_backend`).

    from beam_rnn.embeddings import CbowConfig, EmbeddingsConfig, run
    metrics = run(EmbeddingsConfig("out/prep", "out/vectors", cbow=CbowConfig(epochs=5)))
"""

import json
import os
import time
from collections.abc import Sequence
from typing import Any

from beam_rnn.core import constants as C
from beam_rnn.core.errors import InputError, RunFailed
from beam_rnn.embeddings.config import CbowConfig, EmbeddingsConfig
from beam_rnn.embeddings.layout import (
    CONFIG_FILE,
    EXAMPLES_DIR,
    META_FILE,
    METRICS_FILE,
    VECTORS_TXT,
)


def check_transformed(transformed: str, splits: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """The shard files of `splits` and stats.json of a preprocess output.

    Raises:
        InputError: The directory is missing or incomplete (one line naming what is missing).
        ArtifactError: A file was altered after preprocessing (one line naming it).
    """
    from beam_rnn.preprocess.check import check_preprocess_output
    from beam_rnn.preprocess.transform import vocabulary_path

    vocab = vocabulary_path("")  # relative to the output dir
    shards, stats = check_preprocess_output(
        transformed, splits=splits, need=[(vocab, f"the vocabulary {vocab}")],
        verify=[C.TRANSFORMED_DIR + "/", C.TRANSFORM_FN_DIR + "/assets/", C.STATS_FILE])
    files = [path for split in splits for path in shards[split]]
    return files, stats


def run(config: EmbeddingsConfig, pipeline_args: Sequence[str] = (), *, save_main_session: bool = True) -> dict[str, Any]:
    """Makes the examples, trains, exports and evaluates; returns what it writes to OUTPUT/metrics.json.

    Args:
        config: The run (input, output, evaluation, CBOW settings).
        pipeline_args: Beam's flags (--runner ...); none: the in-process LocalRunner.
        save_main_session: Pickle the main session for the workers (Beam's SetupOptions).

    Raises:
        InputError: Unusable inputs, found before any work.
        RunFailed: The corpus gave no CBOW example.
    """
    if config.cbow.backend == "gensim":
        from beam_rnn.embeddings.gensim_backend import require_gensim

        require_gensim()
    files, stats = check_transformed(config.transformed, config.splits)
    eval_dir = config.eval_dir()
    if eval_dir is not None and not os.path.isdir(eval_dir):
        raise InputError(f"--eval-data {eval_dir!r} is not a directory")

    import tensorflow as tf

    from beam_rnn.preprocess.transform import read_vocabulary

    cbow, output = config.cbow, config.output
    num_oov = int(stats.get("num_oov_buckets", C.DEFAULT_NUM_OOV_BUCKETS))
    vocab = read_vocabulary(config.transformed)
    vocab_size = int(stats.get("vocab_size_with_reserved", len(vocab) + num_oov + 1))
    _prepare_output(config)
    examples_dir = os.path.join(output, EXAMPLES_DIR)
    if cbow.backend == "gensim":
        from beam_rnn.embeddings.gensim_backend import train_and_export_gensim

        words, vectors, counts, training = train_and_export_gensim(files, cbow, vocab, num_oov, output)
        if training["examples"] == 0:
            raise RunFailed(f"gensim trained no word of {config.transformed} (corpus too small?)")
        stage: dict[str, Any] = {"beam_seconds": 0.0}  # no Beam example stage
    else:
        t0 = time.time()
        _make_examples(files, cbow, num_oov, output, pipeline_args, save_main_session)
        beam_seconds = time.time() - t0

        from beam_rnn.embeddings.examples import pass_pattern, read_meta
        from beam_rnn.embeddings.sampling import trainable_counts

        meta = read_meta(output)
        counts = trainable_counts(meta["counts"], min_count=cbow.min_count, num_oov_buckets=num_oov)
        epoch_files = [tf.io.gfile.glob(pass_pattern(examples_dir, p)) for p in range(cbow.effective_passes)]
        if sum(meta["examples_per_pass"]) == 0:
            raise RunFailed(f"no CBOW examples were made from {config.transformed} (corpus too small?)")
        words, vectors, training = _train_and_export(cbow, vocab, vocab_size, counts, num_oov, epoch_files, meta,
                                                     output)
        stage = {"examples_per_pass": meta["examples_per_pass"], "beam_seconds": round(beam_seconds, 3)}
    corpus_words = int(counts.sum())
    metrics: dict[str, Any] = {
        "config": cbow.to_dict(),
        "transformed": config.transformed,
        "splits": list(config.splits),
        "vocabulary_words": len(vocab),
        "exported_words": len(words),
        "corpus_words": corpus_words,
        **stage,
        **training,
        "words_per_second": round(corpus_words * cbow.epochs / training["train_seconds"], 1)
        if training["train_seconds"] > 0 else None,
    }
    if eval_dir is not None:
        from beam_rnn.embeddings.evaluation import evaluate_embeddings

        metrics["eval_data"] = eval_dir
        metrics["evaluation"] = evaluate_embeddings((words, vectors), eval_dir,
                                                    restrict_vocab=config.analogy_restrict_vocab)
    with tf.io.gfile.GFile(os.path.join(output, METRICS_FILE), "w") as f:
        f.write(json.dumps(metrics, indent=2))
    if config.delete_examples and tf.io.gfile.exists(examples_dir):
        tf.io.gfile.rmtree(examples_dir)
    return metrics


def _prepare_output(config: EmbeddingsConfig) -> None:
    """Removes a previous run's examples (they would be mixed into this run's) and writes cbow_config.json."""
    import tensorflow as tf

    output = config.output
    for stale in (os.path.join(output, EXAMPLES_DIR), os.path.join(output, META_FILE)):
        if tf.io.gfile.exists(stale):
            (tf.io.gfile.rmtree if tf.io.gfile.isdir(stale) else tf.io.gfile.remove)(stale)
    tf.io.gfile.makedirs(output)
    with tf.io.gfile.GFile(os.path.join(output, CONFIG_FILE), "w") as f:
        f.write(json.dumps({**config.cbow.to_dict(), "transformed": config.transformed, "splits": list(config.splits)},
                           indent=2))


def _make_examples(files: Sequence[str], cbow: CbowConfig, num_oov: int, output: str,
                   pipeline_args: Sequence[str], save_main_session: bool) -> None:
    """The Beam pipeline: read the transformed shards, write OUTPUT/examples/ and OUTPUT/cbow.json."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import SetupOptions

    from beam_rnn.cli.runtime import pipeline_options
    from beam_rnn.core import progress
    from beam_rnn.embeddings.examples import MakeCbowExamples
    from beam_rnn.io.progress import Progress

    options = pipeline_options(pipeline_args)
    options.view_as(SetupOptions).save_main_session = save_main_session
    with progress.task("CBOW examples"), beam.Pipeline(options=options) as p:
        docs = p | "ReadTransformed" >> beam.Create(files) | "ReadShards" >> beam.io.ReadAllFromTFRecord(
            compression_type=beam.io.filesystem.CompressionTypes.GZIP
        ) | "Progress" >> Progress("read")
        _ = docs | "MakeCbowExamples" >> MakeCbowExamples(config=cbow, num_oov_buckets=num_oov, output_dir=output)


def _train_and_export(cbow: CbowConfig, vocab: Sequence[str], vocab_size: int, counts, num_oov: int,
                      epoch_files: Sequence[Sequence[str]], meta: dict[str, Any], output: str):
    """Trains the CBOW model and writes vectors.txt, vectors.tsv and metadata.tsv; returns (words, vectors, training)."""
    import tf_keras as keras

    from beam_rnn.embeddings.model import build_cbow_model
    from beam_rnn.embeddings.training import train_cbow
    from beam_rnn.embeddings.vectors import (
        model_vectors,
        save_projector_tsv,
        save_word2vec_text,
    )

    keras.utils.set_random_seed(cbow.seed)
    model = build_cbow_model(max(vocab_size, counts.size), cbow.dim, window=cbow.window, seed=cbow.seed)
    training = train_cbow(model, epoch_files, counts, cbow, examples_per_pass=meta["examples_per_pass"])
    words, vectors = model_vectors(model, vocab, counts, num_oov_buckets=num_oov)
    save_word2vec_text(os.path.join(output, VECTORS_TXT), words, vectors)
    save_projector_tsv(output, words, vectors)
    return words, vectors, training
