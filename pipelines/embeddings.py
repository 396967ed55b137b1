"""Train Word2Vec CBOW word vectors on a preprocessed corpus (Beam examples + tf_keras).

    python -m pipelines.embeddings --transformed out/prep --output out/vectors

Reads a `pipelines.preprocess` output (transformed/*.tfrecord.gz, the vocabulary,
stats.json), makes CBOW examples with Beam (OUTPUT/examples/, OUTPUT/cbow.json),
trains, and writes OUTPUT/vectors.txt (word2vec text), OUTPUT/vectors.tsv +
metadata.tsv (TensorBoard projector) and OUTPUT/metrics.json (WordSim-353 and
SimLex-999 Spearman, analogy accuracy when --eval-data is available).

Unknown flags go to Beam's PipelineOptions (e.g. --runner DataflowRunner ...).
The vectors warm-start the classifiers: pipelines.train --pretrained-embeddings
OUTPUT/vectors.txt (same --embedding-dim as --dim here).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any, Sequence

from beam_rnn.core import constants as C

DEFAULT_EVAL_DATA = os.path.join("..", "shared", "data", "embedding-eval")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="beam-rnn embeddings", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transformed", required=True, help="Preprocessing output dir (pipelines.preprocess --output).")
    parser.add_argument("--output", required=True, help="Output dir (examples, vectors, metrics).")
    parser.add_argument("--splits", nargs="+", choices=(C.TRAIN_PREFIX, C.EVAL_PREFIX), default=[C.TRAIN_PREFIX],
                        help="Transformed splits to train on (default: train).")
    parser.add_argument("--epochs", type=int, default=5, help="Training epochs (default 5).")
    parser.add_argument("--passes", type=int, default=None,
                        help="Independent subsampling/window draws made by Beam (default: = epochs).")
    parser.add_argument("--dim", type=int, default=100, help="Vector width (default 100).")
    parser.add_argument("--window", type=int, default=5, help="Context words on each side (default 5).")
    parser.add_argument("--negatives", type=int, default=5, help="Negative samples per example (default 5).")
    parser.add_argument("--sample", type=float, default=1e-3, help="Subsampling threshold, 0 = off (default 1e-3).")
    parser.add_argument("--min-count", type=int, default=5, help="Ignore words seen fewer times (default 5).")
    parser.add_argument("--fixed-window", action="store_true",
                        help="Always use the full window (default: word2vec's random 1..window).")
    parser.add_argument("--batch-size", type=int, default=256, help="Examples per SGD step (default 256).")
    parser.add_argument("--learning-rate", type=float, default=0.025, help="Initial SGD rate (default 0.025).")
    parser.add_argument("--max-examples-in-memory", type=int, default=20_000_000,
                        help="Train a larger pass in shuffled chunks of about this many examples "
                        "(44 bytes each with window 5; default 20,000,000).")
    parser.add_argument("--seed", type=int, default=1, help="Seed (default 1).")
    parser.add_argument("--eval-data", default=None,
                        help=f"Dir with wordsim353.tsv, simlex999.txt, questions-words.txt "
                        f"(default {DEFAULT_EVAL_DATA} if present).")
    parser.add_argument("--no-eval", action="store_true", help="Skip the evaluation.")
    parser.add_argument("--analogy-restrict-vocab", type=int, default=None,
                        help="Answer analogies among the top-N words only (default: all exported words).")
    parser.add_argument("--delete-examples", action="store_true", help="Delete OUTPUT/examples after training.")
    return parser


def validate_transformed(transformed: str, splits: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Return the shard files of `splits` and stats.json; raise ValueError with one clear message."""
    import tensorflow as tf

    from beam_rnn.preprocess.transform import vocabulary_path

    if not transformed or not tf.io.gfile.isdir(transformed):
        raise ValueError(f"--transformed {transformed!r} does not exist (run pipelines.preprocess first)")
    missing, files = [], []
    for split in splits:
        matched = tf.io.gfile.glob(os.path.join(transformed, C.TRANSFORMED_DIR, f"{split}-*"))
        if not matched:
            missing.append(f"{C.TRANSFORMED_DIR}/{split}-* shards")
        files.extend(sorted(matched))
    if not tf.io.gfile.exists(vocabulary_path(transformed)):
        missing.append(f"the vocabulary {os.path.relpath(vocabulary_path(transformed), transformed)}")
    stats: dict[str, Any] = {}
    stats_path = os.path.join(transformed, C.STATS_FILE)
    if tf.io.gfile.exists(stats_path):
        with tf.io.gfile.GFile(stats_path) as f:
            stats = json.loads(f.read())
    if missing:
        raise ValueError(f"--transformed {transformed!r} is incomplete (run pipelines.preprocess to completion); "
                         f"missing: {'; '.join(missing)}")
    from beam_rnn.core.manifest import verify_manifest

    # ArtifactError is a ValueError: one line naming the damaged file.
    verify_manifest(transformed, prefixes=[C.TRANSFORMED_DIR + "/", C.TRANSFORM_FN_DIR + "/assets/", C.STATS_FILE],
                    required=[C.STATS_FILE], what="preprocess output")
    return files, stats


def _config(known: argparse.Namespace):
    from beam_rnn.embeddings import CbowConfig

    return CbowConfig(
        dim=known.dim, window=known.window, negatives=known.negatives, sample=known.sample,
        min_count=known.min_count, epochs=known.epochs, passes=known.passes,
        dynamic_window=not known.fixed_window, batch_size=known.batch_size,
        learning_rate=known.learning_rate, max_examples_in_memory=known.max_examples_in_memory,
        seed=known.seed,
    )


def run(argv: Sequence[str] | None = None, save_main_session: bool = True) -> dict[str, Any]:
    """Make examples, train, export and evaluate; returns the metrics written to OUTPUT/metrics.json."""
    parser = build_parser()
    known, pipeline_args = parser.parse_known_args(argv)
    try:
        config = _config(known)
        files, stats = validate_transformed(known.transformed, known.splits)
    except ValueError as e:
        parser.error(str(e))
    eval_dir = known.eval_data
    if eval_dir is None and os.path.isdir(DEFAULT_EVAL_DATA):
        eval_dir = DEFAULT_EVAL_DATA
    if eval_dir is not None and not known.no_eval and not os.path.isdir(eval_dir):
        parser.error(f"--eval-data {eval_dir!r} is not a directory")

    import apache_beam as beam
    import tensorflow as tf
    from apache_beam.options.pipeline_options import SetupOptions

    from beam_rnn import embeddings as E
    from beam_rnn.preprocess.transform import read_vocabulary

    output = known.output
    num_oov = int(stats.get("num_oov_buckets", C.DEFAULT_NUM_OOV_BUCKETS))
    vocab = read_vocabulary(known.transformed)
    vocab_size = int(stats.get("vocab_size_with_reserved", len(vocab) + num_oov + 1))
    examples_dir = os.path.join(output, E.EXAMPLES_DIR)
    for stale in (examples_dir, os.path.join(output, E.META_FILE)):
        if tf.io.gfile.exists(stale):  # Old shards would be mixed into this run's examples.
            (tf.io.gfile.rmtree if tf.io.gfile.isdir(stale) else tf.io.gfile.remove)(stale)
    tf.io.gfile.makedirs(output)
    with tf.io.gfile.GFile(os.path.join(output, E.CONFIG_FILE), "w") as f:
        f.write(json.dumps({**config.to_dict(), "transformed": known.transformed, "splits": known.splits}, indent=2))

    from beam_rnn.cli.runtime import pipeline_options

    options = pipeline_options(pipeline_args)
    options.view_as(SetupOptions).save_main_session = save_main_session
    t0 = time.time()
    with beam.Pipeline(options=options) as p:
        docs = p | "ReadTransformed" >> beam.Create(files) | "ReadShards" >> beam.io.ReadAllFromTFRecord(
            compression_type=beam.io.filesystem.CompressionTypes.GZIP
        )
        _ = docs | "MakeCbowExamples" >> E.MakeCbowExamples(
            window=config.window, sample=config.sample, seed=config.seed, passes=config.effective_passes,
            min_count=config.min_count, num_oov_buckets=num_oov, dynamic_window=config.dynamic_window,
            output_dir=output,
        )
    beam_seconds = time.time() - t0
    meta = E.read_meta(output)
    counts = E.trainable_counts(meta["counts"], min_count=config.min_count, num_oov_buckets=num_oov)
    epoch_files = [tf.io.gfile.glob(E.pass_pattern(examples_dir, p)) for p in range(config.effective_passes)]
    if sum(meta["examples_per_pass"]) == 0:
        raise SystemExit(f"error: no CBOW examples were made from {known.transformed} (corpus too small?)")

    import tf_keras as keras

    keras.utils.set_random_seed(config.seed)
    model = E.build_cbow_model(max(vocab_size, counts.size), config.dim, window=config.window, seed=config.seed)
    training = E.train_cbow(model, epoch_files, counts, config, examples_per_pass=meta["examples_per_pass"])
    words, vectors = E.model_vectors(model, vocab, counts, num_oov_buckets=num_oov)
    E.save_word2vec_text(os.path.join(output, E.VECTORS_TXT), words, vectors)
    E.save_projector_tsv(output, words, vectors)
    corpus_words = int(counts.sum())
    metrics: dict[str, Any] = {
        "config": config.to_dict(),
        "transformed": known.transformed,
        "splits": known.splits,
        "vocabulary_words": len(vocab),
        "exported_words": len(words),
        "corpus_words": corpus_words,
        "examples_per_pass": meta["examples_per_pass"],
        "beam_seconds": round(beam_seconds, 3),
        **training,
        "words_per_second": round(corpus_words * config.epochs / training["train_seconds"], 1)
        if training["train_seconds"] > 0 else None,
    }
    if eval_dir is not None and not known.no_eval:
        metrics["eval_data"] = eval_dir
        metrics["evaluation"] = E.evaluate_embeddings(
            (words, vectors), eval_dir, restrict_vocab=known.analogy_restrict_vocab
        )
    with tf.io.gfile.GFile(os.path.join(output, E.METRICS_FILE), "w") as f:
        f.write(json.dumps(metrics, indent=2))
    if known.delete_examples:
        tf.io.gfile.rmtree(examples_dir)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    logging.getLogger().setLevel(logging.INFO)
    metrics = run(argv)
    ev = metrics.get("evaluation", {})
    print(json.dumps({
        "exported_words": metrics["exported_words"],
        "epoch_losses": [round(x, 4) for x in metrics["epoch_losses"]],
        "words_per_second": metrics["words_per_second"],
        "wordsim353_spearman": ev.get("wordsim353", {}).get("spearman"),
        "simlex999_spearman": ev.get("simlex999", {}).get("spearman"),
        "analogy_accuracy": ev.get("analogy", {}).get("accuracy"),
    }))
    return 0


if __name__ == "__main__":
    from beam_rnn.cli.runtime import hard_exit

    hard_exit(main(sys.argv[1:]))
