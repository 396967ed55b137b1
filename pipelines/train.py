"""Train the bidirectional (bilstm) and/or streaming (lstm) classifiers.

    python -m pipelines.train --transformed out/prep --output out/models --model both

Reads a `pipelines.preprocess` output (transform_fn/, transformed/, stats.json),
checked against its manifest.json (and the TFT graph loaded) before any model is
built, and writes OUTPUT/<kind>/ (weights/, checkpoints/, logs/, metrics.json, ...;
see beam_rnn.train.trainer).  Rerunning the same command after the process was killed
resumes at the start of the first unfinished epoch and ends with the same weights
as an uninterrupted run.  After each model is trained it is handed to
`beam_rnn.train.export.export_model` (unless --skip-export).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Sequence

from beam_rnn.core import constants as C

MODEL_BOTH = "both"


def build_parser() -> argparse.ArgumentParser:
    from beam_rnn.train.models import CELLS
    from beam_rnn.train.trainer import DEFAULT_LEARNING_RATES, MONITORS, TrainConfig

    d = TrainConfig()
    parser = argparse.ArgumentParser(prog="beam-rnn train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transformed", required=True,
                        help="Preprocessing output dir (pipelines.preprocess --output).")
    parser.add_argument("--output", required=True, help="Output dir; each model goes to OUTPUT/<kind>/.")
    parser.add_argument("--model", choices=(*C.MODEL_NAMES, MODEL_BOTH), default=MODEL_BOTH,
                        help="Model(s) to train (default both).")
    parser.add_argument("--epochs", type=int, default=d.epochs, help=f"Maximum epochs (default {d.epochs}).")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help=f"Batch size (default {d.batch_size}).")
    parser.add_argument("--max-length", type=int, default=d.max_length,
                        help="Keep the first N token ids of each document (default: all).")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="Adam learning rate (default: "
                        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LEARNING_RATES.items()) + ").")
    parser.add_argument("--units", type=int, default=d.units, help=f"Recurrent units (default {d.units}).")
    parser.add_argument("--embedding-dim", type=int, default=d.embedding_dim,
                        help=f"Embedding width (default {d.embedding_dim}).")
    parser.add_argument("--dense-units", type=int, default=d.dense_units,
                        help=f"Hidden dense width (default {d.dense_units}).")
    parser.add_argument("--layers", type=int, default=d.layers, help=f"Recurrent layers (default {d.layers}).")
    parser.add_argument("--cell", choices=CELLS, default=d.cell,
                        help=f"Recurrent cell (default {d.cell}).")
    parser.add_argument("--dropout", type=float, default=d.dropout, help=f"Dropout before the logits (default {d.dropout}).")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"Seed (default {d.seed}).")
    parser.add_argument("--stacked", action="store_true",
                        help="bilstm: the tutorial's stacked two-layer variant.")
    parser.add_argument("--patience", type=int, default=d.early_stopping_patience,
                        help=f"Early-stopping patience in epochs (default {d.early_stopping_patience}).")
    parser.add_argument("--monitor", choices=MONITORS, default=d.monitor,
                        help=f"Early stopping / kept epoch metric (default {d.monitor}).")
    parser.add_argument("--num-buckets", type=int, default=d.num_buckets,
                        help=f"Length buckets from training-length quantiles (default {d.num_buckets}).")
    parser.add_argument("--bucket-boundaries", default=None,
                        help="Comma-separated fixed length-bucket boundaries (overrides --num-buckets).")
    parser.add_argument("--pretrained-embeddings", default=None, metavar="PATH",
                        help="word2vec/GloVe text vectors (e.g. pipelines.embeddings OUTPUT/vectors.txt) that "
                        "initialise the Embedding; --embedding-dim must equal their width.")
    parser.add_argument("--freeze-embeddings", action="store_true", help="Keep the pretrained embedding fixed.")
    parser.add_argument("--rescale-pretrained", action=argparse.BooleanOptionalAction, default=True,
                        help="Scale pretrained vectors to Keras' initial embedding size, similarities unchanged "
                        "(default on: unscaled word2vec vectors lowered SST-2 dev accuracy, see benchmarks/RESULTS.md).")
    parser.add_argument("--skip-export", action="store_true", help="Train only; do not call the export step.")
    return parser


def _config(known: argparse.Namespace, kinds: tuple[str, ...]):
    from beam_rnn.train.trainer import TrainConfig

    boundaries = None
    if known.bucket_boundaries:
        boundaries = tuple(int(x) for x in known.bucket_boundaries.split(",") if x.strip())
    return TrainConfig(
        kinds=kinds,
        epochs=known.epochs,
        batch_size=known.batch_size,
        learning_rate=known.learning_rate,
        max_length=known.max_length,
        bucket_boundaries=boundaries,
        num_buckets=known.num_buckets,
        early_stopping_patience=known.patience,
        monitor=known.monitor,
        seed=known.seed,
        embedding_dim=known.embedding_dim,
        units=known.units,
        layers=known.layers,
        cell=known.cell,
        dense_units=known.dense_units,
        dropout=known.dropout,
        stacked_tutorial=known.stacked,
        pretrained_embeddings=known.pretrained_embeddings,
        freeze_embeddings=known.freeze_embeddings,
        rescale_pretrained=known.rescale_pretrained,
    )


def _check_pretrained(known: argparse.Namespace) -> None:
    """Raise ValueError (→ exit 2) for unusable warm-start flags, before any training.

    The vectors file is read whole here (every line parses, every vector has the
    same width, and as many vectors as its "<count> <dim>" header announces), so a
    truncated or damaged file stops the run before any work instead of after the
    model is built.
    """
    import tensorflow as tf

    if known.freeze_embeddings and not known.pretrained_embeddings:
        raise ValueError("--freeze-embeddings needs --pretrained-embeddings")
    path = known.pretrained_embeddings
    if not path:
        return
    if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
        raise ValueError(f"--pretrained-embeddings {path!r} does not exist or is not a file")
    from beam_rnn.embeddings import load_word2vec_text, read_word2vec_dim

    try:
        dim = read_word2vec_dim(path)
        vectors = load_word2vec_text(path)
        with tf.io.gfile.GFile(path, "rb") as f:
            header = f.readline().split()
            lines = sum(1 for line in f if line.strip())
    except (ValueError, OSError) as e:
        raise ValueError(f"--pretrained-embeddings {path} is damaged or not word2vec/GloVe text: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    if not vectors:
        raise ValueError(f"--pretrained-embeddings {path} holds no vectors")
    if len(header) == 2 and all(p.isdigit() for p in header) and int(header[0]) != lines:
        raise ValueError(f"--pretrained-embeddings {path} is damaged: its header announces {int(header[0])} "
                         f"vectors, it holds {lines} (a truncated file?)")
    if dim != known.embedding_dim:
        raise ValueError(f"--pretrained-embeddings has {dim}-dimensional vectors but --embedding-dim is "
                         f"{known.embedding_dim}; pass --embedding-dim {dim}")


def run(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Train (and export) the requested model(s).

    Args:
        argv: Command-line arguments (default: sys.argv[1:]). Unrecognised flags
            are ignored with a warning (Beam drivers' convention).

    Returns:
        {kind: metrics} — the contents of each OUTPUT/<kind>/metrics.json.
    """
    from beam_rnn.train import trainer

    parser = build_parser()
    known, unknown = parser.parse_known_args(argv)
    if unknown:
        logging.warning("Ignoring unrecognised arguments: %s", " ".join(unknown))
    kinds = C.MODEL_NAMES if known.model == MODEL_BOTH else (known.model,)
    try:
        config = _config(known, kinds)
        for kind in kinds:  # Validates the model fields before any training starts.
            config.model_config(kind, vocab_size=3, num_classes=2)
        # Complete, intact (manifest sizes + sha256) and loadable, before any model is built.
        trainer.check_transformed_dir(known.transformed)
        _check_pretrained(known)
    except ValueError as e:  # TrainerInputError, beam_rnn.core.manifest.ArtifactError, bad flags
        parser.error(str(e))

    from beam_rnn.train.export import export_model
    results: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        result = trainer.train(known.transformed, known.output, config, kind=kind)
        metrics = result["metrics"]
        if not known.skip_export:
            export_model(result["model"], result["model_config"], known.transformed, result["model_dir"], metrics)
        trainer.write_metrics(result["model_dir"], metrics)
        results[kind] = metrics
    return results


def main(argv: Sequence[str] | None = None) -> int:
    logging.getLogger().setLevel(logging.INFO)
    results = run(argv)
    keys = ("accuracy", "auc", "loss", "epochs_run", "best_epoch", "train_seconds", "examples_per_second")
    print(json.dumps({kind: {k: m.get(k) for k in keys} for kind, m in results.items()}))
    return 0


if __name__ == "__main__":
    from beam_rnn.cli.runtime import hard_exit

    hard_exit(main(sys.argv[1:]))
