"""Refit: the exported model trained again on the train and eval splits together.

With ``train --refit`` the run that validates on the eval split (the *selection
run*: early stopping, the kept epoch E, the validation figures reported) is
followed by a fresh model with the same settings and seed, trained on the train and
eval splits together for E epochs without validation; that model is saved and
exported.  It learns from all the labelled data (a quarter more with the default
20% eval split), the way scikit-learn's ``refit=True`` and Kim (2014) retrain once
the settings are chosen.  The price: the refit model has no held-out data left, so
the validation figures in metrics.json and the model card are the selection run's
(``metrics["refit"]`` says so), and ``evaluate --split eval`` refuses such a model.

Layout under ``OUTPUT/<kind>/refit/`` (the trainer's, `beam_rnn.train.trainer`):
checkpoints/, history.jsonl and, while it runs, backup/.  A kill is resumed like the
trainer's: the same command again resumes the selection run with no epoch left (its
backup stays until the refit is done) and the refit at its first unfinished epoch,
ending bit-identical to an uninterrupted run.  The refit weights replace
``OUTPUT/<kind>/weights/``.  What it gains is measured in benchmarks/RESULTS.md
("Refit on all the data").
"""

import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf
import tf_keras as keras

from beam_rnn.core import progress
from beam_rnn.train import data, distill, models, trainer
from beam_rnn.train.callbacks import CommitState, EpochLog, TrainingProgress
from beam_rnn.train.checks import TrainingInputs, check_training_inputs
from beam_rnn.train.config import TrainConfig

NOTE = ("the validation figures are the selection run's (trained on the train split alone); the exported model was "
        "refit on the train and eval splits together, so no split of its preprocessing is held out")

logger = logging.getLogger(__name__)


def refit_epochs(metrics: Mapping[str, Any]) -> int:
    """How long the refit trains: the selection run's kept epoch (all its epochs when none was kept)."""
    best = metrics.get("best_epoch")
    return int(best) if best else int(metrics["epochs_run"])


def load_selection(model_dir: str) -> dict[str, Any]:
    """A finished selection run read back from its directory: what `refit` takes as ``selection``."""
    with tf.io.gfile.GFile(os.path.join(model_dir, trainer.MODEL_CONFIG_FILE)) as f:
        model_config = models.ModelConfig.from_dict(json.load(f))
    with tf.io.gfile.GFile(os.path.join(model_dir, trainer.METRICS_FILE)) as f:
        metrics = json.load(f)
    return {"kind": model_config.kind, "model_config": model_config, "model_dir": model_dir, "metrics": metrics}


def refit(transformed_dir: str, config: TrainConfig, *, selection: Mapping[str, Any], inputs: TrainingInputs,
          callbacks: Sequence[keras.callbacks.Callback] = ()) -> dict[str, Any]:
    """Trains the model to export on the train and eval splits for the selection run's kept epochs.

    Args:
        transformed_dir: The preprocessing output the selection run trained on.
        config: The training configuration of the selection run.
        selection: `trainer.train`'s result (or `load_selection`): "kind", "model_config",
            "model_dir", "metrics".
        inputs: `checks.check_training_inputs` of these arguments (warm-start vectors).
        callbacks: Extra Keras callbacks, run after the built-in ones (how tests inject faults).

    Returns:
        `selection` with "model" the refit classifier and "metrics" the selection run's plus
        ``"refit": {"epochs", "train_examples", "train_seconds", "examples_per_second", "note"}``
        (also written to metrics.json).
    """
    kind, model_config, model_dir = selection["kind"], selection["model_config"], selection["model_dir"]
    epochs = refit_epochs(selection["metrics"])
    config = dataclasses.replace(config, epochs=epochs)
    work = os.path.join(model_dir, trainer.REFIT_DIR)
    files = [data.train_pattern(transformed_dir), data.eval_pattern(transformed_dir)]
    lengths, boundaries = trainer._length_buckets(files, config)  # pylint: disable=protected-access

    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    dataset = {"batch_size": config.batch_size, "max_length": config.max_length, "bucket_boundaries": boundaries,
               "num_classes": model_config.num_classes}
    if distill.distilling(config, kind):
        dataset["teacher"] = distill.Teacher(config.teacher, model_config.num_classes).pack
    signature = {**trainer.run_signature(model_config, config, data.shard_files(files)), "refit_epochs": epochs}
    resumed = trainer._prepare_model_dir(work, model_config, config, signature)  # pylint: disable=protected-access
    model, _ = trainer._build(model_config, config, transformed_dir, inputs.vectors)  # pylint: disable=protected-access

    start_epoch, _, checkpoint, state = trainer._committed_state(model, work, config, resumed)  # pylint: disable=protected-access
    history_path = os.path.join(work, trainer.HISTORY_FILE)

    logger.info("refitting %s on the train and eval splits: %s documents, %d epoch%s (the selection run's kept "
                "epoch)%s", kind, f"{len(lengths):,}", epochs, "" if epochs == 1 else "s",
                f" (resuming at epoch {start_epoch + 1})" if resumed else "")
    seconds = 0.0
    if start_epoch < epochs:
        train_ds = data.make_dataset(files, shuffle=True, seed=config.effective_shuffle_seed,
                                     shuffle_buffer_size=len(lengths), epochs=range(start_epoch, epochs),
                                     prefix_fraction=trainer.prefix_fraction(config, kind), **dataset)
        steps = data.batches_per_epoch(lengths, config.batch_size, boundaries)
        shown = TrainingProgress(f"{kind} refit", epochs, steps, 0)
        start = time.time()
        with progress.task(f"refitting {kind}"), trainer._keras_output_to_logging():  # pylint: disable=protected-access
            model.fit(train_ds, epochs=epochs, initial_epoch=start_epoch, steps_per_epoch=steps,
                      callbacks=[EpochLog(history_path), checkpoint, CommitState(state), *callbacks, shown],
                      verbose=config.verbose)
        seconds = time.time() - start
    model.load_weights(trainer.checkpoint_path(work, epochs)).expect_partial()  # the average, when one is kept

    final = models.build_classifier(model_config)
    final.set_weights(model.get_weights())
    final.save_weights(trainer.weights_path(model_dir))
    epochs_run = epochs - start_epoch
    metrics = dict(selection["metrics"])
    metrics["refit"] = {"epochs": epochs, "train_examples": len(lengths), "train_seconds": round(seconds, 3),
                        "examples_per_second": round(len(lengths) * epochs_run / seconds, 2) if seconds > 0 else None,
                        "note": NOTE}
    trainer.write_metrics(model_dir, metrics)
    # Done: nothing left to resume; the refit's weights are the model directory's.
    for done in (os.path.join(work, trainer.BACKUP_DIR), os.path.join(work, trainer.WEIGHTS_DIR),
                 os.path.join(model_dir, trainer.BACKUP_DIR)):
        if tf.io.gfile.exists(done):
            tf.io.gfile.rmtree(done)
    logger.info("%s: refit done; exporting the refit model (validation figures above are the selection run's)", kind)
    return {**selection, "model": final, "metrics": metrics}


def refit_copy(transformed_dir: str, models_dir: str, out_dir: str, config: TrainConfig) -> dict[str, dict[str, Any]]:
    """Refits a copy of finished training outputs: ``models_dir/<kind>`` to ``out_dir/<kind>``, then exported.

    What `run-all --refit` runs after its report (the report's models stay as they are), and
    `benchmarks/refit.py` (the refit of a selection run it already has).

    Returns:
        {kind: metrics} for every kind of `config.kinds`, as `trainer.run_training` returns them.
    """
    from beam_rnn.train.export import copy_tree, export_model  # pylint: disable=import-outside-toplevel

    inputs = check_training_inputs(transformed_dir, config)
    results = {}
    for kind in config.kinds:
        model_dir = os.path.join(out_dir, kind)
        copy_tree(os.path.join(models_dir, kind), model_dir)
        result = refit(transformed_dir, config, selection=load_selection(model_dir), inputs=inputs)
        export_model(result["model"], result["model_config"], transformed_dir, model_dir, result["metrics"])
        trainer.write_metrics(model_dir, result["metrics"])
        results[kind] = result["metrics"]
    return results
