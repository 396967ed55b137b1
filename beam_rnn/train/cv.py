"""K-fold cross-validation on the train split (``beam-rnn train --folds K``).

Small corpora (MR, SST, TREC: a few thousand sentences) give validation numbers
that move by a point or more with the split; the way Kim (2014) reported MR is
10-fold cross-validation.  `cross_validate` trains one model per fold with the
run's settings, each on the train split without fold i and validated (early
stopping, kept epoch) on fold i, and reports every fold and the mean ± sd::

    OUTPUT/cv/fold_01/<kind>/   the fold's model dir (metrics.json, history.jsonl, weights/)
    OUTPUT/cv/<kind>.json       the summary (`summarize_folds`)

Folds are drawn by hash of each example's group (``preprocess --group-column``),
else its id (`beam_rnn.train.data.Fold`): a film never spans two folds.  The
vocabulary was built on the whole train split, held-out folds included (as Kim's
was); labels never cross.  A fold whose metrics.json is already written for the
same settings and the same training data (`FOLD_RUN_FILE`) is not trained again, so a
killed cross-validation resumes at its first unfinished fold.
"""

import json
import logging
import os
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf

from beam_rnn.train import data
from beam_rnn.train.checks import TrainingInputs
from beam_rnn.train.config import TrainConfig
from beam_rnn.train.errors import TrainerInputError

CV_DIR = "cv"
FOLD_RUN_FILE = "fold_run.json"  # in a fold's model dir: what it was trained for (reused only for the same)
FIGURES = ("accuracy", "auc", "loss")

logger = logging.getLogger(__name__)


def fold_dir(output_dir: str, index: int) -> str:
    """Where fold `index` (0-based) trains: OUTPUT/cv/fold_01, fold_02, ..."""
    return os.path.join(output_dir, CV_DIR, f"fold_{index + 1:02d}")


def check_folds(transformed_dir: str, folds: int) -> list[int]:
    """Raises TrainerInputError (before any model is built) unless every fold has documents; returns the sizes."""
    sizes = [int(n) for n in data.fold_sizes(data.train_pattern(transformed_dir), folds)]
    total = sum(sizes)
    if min(sizes) == 0 or total - max(sizes) == 0:
        raise TrainerInputError(f"--folds {folds}: the train split ({total:,} documents, fold sizes {sizes}) "
                                "cannot be cut into that many non-empty folds; use fewer folds")
    return sizes


def summarize_folds(folds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean, sample standard deviation, min and max of each figure over the folds, and the folds themselves."""
    summary: dict[str, Any] = {"folds": len(folds)}
    for name in FIGURES:
        values = [float(f[name]) for f in folds if f.get(name) is not None]
        if values:
            summary[name] = {"mean": statistics.fmean(values),
                             "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                             "min": min(values), "max": max(values)}
    summary["best_epochs"] = [f.get("best_epoch") for f in folds]
    summary["per_fold"] = [{k: f.get(k) for k in ("fold", "accuracy", "auc", "loss", "best_epoch", "epochs_run",
                                                  "train_examples", "eval_examples")} for f in folds]
    return summary


def _finished_fold(model_dir: str, run: Mapping[str, Any]) -> dict[str, Any] | None:
    """The metrics of a fold already trained for `run` (settings and data, `FOLD_RUN_FILE`); None: train it."""
    from beam_rnn.train.trainer import BACKUP_DIR, METRICS_FILE

    paths = [os.path.join(model_dir, name) for name in (METRICS_FILE, FOLD_RUN_FILE)]
    if not all(tf.io.gfile.exists(p) for p in paths) or tf.io.gfile.exists(os.path.join(model_dir, BACKUP_DIR)):
        return None
    metrics, trained_for = (json.loads(tf.io.gfile.GFile(p).read()) for p in paths)
    return metrics if trained_for == run else None


def cross_validate(transformed_dir: str, output_dir: str, config: TrainConfig, *, kind: str,
                   inputs: TrainingInputs) -> dict[str, Any]:
    """Trains `config.folds` models of `kind` (see the module docstring); returns and writes the summary."""
    from beam_rnn.train.trainer import CHECKPOINTS_DIR, run_signature, train

    count = int(config.folds)
    stats = inputs.stats
    model_config = config.model_config(kind, vocab_size=int(stats["vocab_size_with_reserved"]),
                                       num_classes=int(stats["num_classes"]))
    train_files = data.shard_files(data.train_pattern(transformed_dir))
    results = []
    for index in range(count):
        model_dir = os.path.join(fold_dir(output_dir, index), kind)
        # The trainer's resume signature (model, settings, the train shards, the fold) and every setting.
        run = json.loads(json.dumps({"signature": run_signature(model_config, config, train_files, (index, count)),
                                     "train_config": config.to_dict()}))
        metrics = _finished_fold(model_dir, run)
        if metrics is None:
            metrics = train(transformed_dir, fold_dir(output_dir, index), config, kind=kind, inputs=inputs,
                            fold=(index, count))["metrics"]
            # Per-epoch checkpoints (with optimizer slots) are what resume and the kept epoch needed;
            # the fold's kept weights stay in weights/.
            tf.io.gfile.rmtree(os.path.join(model_dir, CHECKPOINTS_DIR))
            with tf.io.gfile.GFile(os.path.join(model_dir, FOLD_RUN_FILE), "w") as f:
                f.write(json.dumps(run, indent=2))
        results.append({"fold": index + 1, **metrics})
        logger.info("%s fold %d of %d: validation accuracy %.4f (%s documents)", kind, index + 1, count,
                    metrics["accuracy"], f"{metrics['eval_examples']:,}")
    summary = summarize_folds(results)
    accuracy = summary["accuracy"]
    logger.info("%s %d-fold cross-validation: accuracy %.4f ± %.4f (sd; min %.4f, max %.4f)", kind, count,
                accuracy["mean"], accuracy["sd"], accuracy["min"], accuracy["max"])
    path = os.path.join(output_dir, CV_DIR, f"{kind}.json")
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(summary, indent=2))
    return summary
