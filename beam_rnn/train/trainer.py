"""Train the bidirectional and streaming classifiers on TFT-transformed TFRecords.

Input is a preprocessing output directory (`pipelines.preprocess`)::

    DIR/transform_fn/                          the TFT graph (used by the export, checked here)
    DIR/transformed/train-*.tfrecord.gz        tf.Example: token_ids int64 list, label int64, id bytes
    DIR/transformed/eval-*.tfrecord.gz
    DIR/stats.json                             vocab_size_with_reserved, num_classes, splits, ...

Output, per model kind, under ``OUTPUT/<kind>/``::

    model_config.json     the ModelConfig (config.ModelConfig.to_dict)
    train_config.json     the TrainConfig (config.TrainConfig.to_dict)
    history.jsonl         one JSON line per committed epoch (kept across resumes)
    metrics.json          final eval metrics of the kept (best) weights, timings
    weights/model.*       final weights (TF checkpoint format, model variables only)
    checkpoints/epoch_NNN.*  weights (and optimizer slots) after every epoch
    backup/               the training state while training is unfinished (see below)
    logs/                 TensorBoard (train/ and validation/)

Exact resume: after every epoch the whole training state is committed to
``backup/`` with one `tf.train.Checkpoint` — model weights, the Adam slots and
iteration counter (which also drives any learning-rate schedule), the state of
the Dropout layer's random generator and the number of finished epochs.
Everything else is a pure function of what is saved: epoch ``e`` shuffles the
cached training split with the seed ``(shuffle seed, e)`` instead of a stateful
reshuffling iterator, and early stopping replays the committed epochs of
history.jsonl.  Rerunning the same command after the process died — between
epochs or in the middle of one — restarts at the beginning of the first
unfinished epoch and ends with weights bit-identical to an uninterrupted run
(work done in the unfinished epoch is redone).  A backup made with another
model or training config, or for other data, is discarded with a warning.
``backup/`` is removed when training finishes.  The kept weights are those of the
best epoch by the early-stopping monitor over *all* epochs, including the ones
run before a restart (read from history.jsonl, loaded from checkpoints/).

Determinism: `keras.utils.set_random_seed` and `tf.config.experimental.
enable_op_determinism()` (process-wide) are set, the models seed their own
initialisers and Dropout, and the shuffle is seeded per epoch, so two runs with
the same config are bit-identical on CPU.
"""


import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import tensorflow as tf
import tf_keras as keras

from beam_rnn.core import constants as C
from beam_rnn.core import progress
from beam_rnn.train import auto, data, distill, losses, models
from beam_rnn.train.averaging import WeightAverage
from beam_rnn.train.callbacks import (
    CommitState,
    EpochLog,
    ResumableEarlyStopping,
    ScalarLogs,
    TrainingProgress,
    TrainingState,
    metrics_text,
)
from beam_rnn.train.checks import TrainingInputs, check_training_inputs
from beam_rnn.train.config import ModelConfig, TrainConfig

# --- Output layout under OUTPUT/<kind>/ ---------------------------------------
WEIGHTS_DIR = "weights"
WEIGHTS_PREFIX = "model"  # weights/model.index, weights/model.data-*
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_TEMPLATE = "epoch_{epoch:03d}"
BACKUP_DIR = "backup"
LOGS_DIR = "logs"
REFIT_DIR = "refit"  # train --refit's own run (beam_rnn.train.refit)
HISTORY_FILE = "history.jsonl"
METRICS_FILE = "metrics.json"
MODEL_CONFIG_FILE = "model_config.json"
TRAIN_CONFIG_FILE = "train_config.json"

RUN_FILE = "run.json"  # backup/run.json: what the backup was made for (configs, data)

logger = logging.getLogger(__name__)


def _read_json(path: str) -> Any:
    with tf.io.gfile.GFile(path) as f:
        return json.loads(f.read())


def _write_json(path: str, value: Any) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


def write_metrics(model_dir: str, metrics: Mapping[str, Any]) -> str:
    """Write `model_dir/metrics.json`; returns its path."""
    path = os.path.join(model_dir, METRICS_FILE)
    _write_json(path, dict(metrics))
    return path


def _read_history(path: str) -> list[dict[str, Any]]:
    if not tf.io.gfile.exists(path):
        return []
    records = []
    with tf.io.gfile.GFile(path) as f:
        for line in f.read().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:  # a line torn by a kill (its epoch was never committed)
                continue
    return records


def _write_history(path: str, records: Sequence[Mapping[str, Any]]) -> None:
    """Replace history.jsonl (written aside, then renamed over it)."""
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write("".join(json.dumps(dict(r)) + "\n" for r in records))
    tf.io.gfile.rename(tmp, path, overwrite=True)


def weights_path(model_dir: str) -> str:
    """Prefix of the final weights (`model.save_weights` / `load_weights` path)."""
    return os.path.join(model_dir, WEIGHTS_DIR, WEIGHTS_PREFIX)


def checkpoint_path(model_dir: str, epoch: int) -> str:
    """Prefix of the weights saved after `epoch` (1-based)."""
    return os.path.join(model_dir, CHECKPOINTS_DIR, CHECKPOINT_TEMPLATE.format(epoch=epoch))


def load_trained_model(model_dir: str) -> tuple[keras.Model, models.ModelConfig]:
    """Rebuild a trained model from `model_config.json` and `weights/`."""
    model_config = models.ModelConfig.from_dict(_read_json(os.path.join(model_dir, MODEL_CONFIG_FILE)))
    model = models.build_classifier(model_config)
    model.load_weights(weights_path(model_dir)).expect_partial()
    return model, model_config


def prefix_fraction(config: TrainConfig, kind: str) -> float:
    """The share of documents cut to a prefix each epoch: `config.prefix_training` for the streaming model only."""
    return config.prefix_training if kind == models.KIND_LSTM else 0.0


def timestep_share(config: TrainConfig, kind: str) -> float:
    """The share of the loss on every token's prediction: `config.timestep_loss` for the streaming model only."""
    return config.timestep_loss if kind == models.KIND_LSTM else 0.0


def smoothness(config: TrainConfig, kind: str) -> float:
    """The weight of the logits' change from token to token: `config.smoothness` for the streaming model only."""
    return config.smoothness if kind == models.KIND_LSTM else 0.0


def per_token(config: TrainConfig, kind: str) -> bool:
    """Whether `kind` trains in the per-token view (`models.build_classifier(per_token=True)`)."""
    return losses.per_token_view(timestep_share(config, kind), smoothness(config, kind))


def _compile(model: keras.Model, config: TrainConfig, kind: str, num_classes: int) -> None:
    kwargs = {"learning_rate": config.learning_rate_for(kind)}
    if config.clipnorm is not None:
        kwargs["clipnorm"] = config.clipnorm
    if config.weight_decay > 0:
        optimizer = keras.optimizers.AdamW(weight_decay=config.weight_decay, **kwargs)
        optimizer.exclude_from_weight_decay(var_names=["bias"])
    else:
        optimizer = keras.optimizers.Adam(**kwargs)
    teacher_weight = config.teacher_weight if distill.distilling(config, kind) else 0.0
    loss, metrics = losses.loss_and_metrics(num_classes, teacher_weight=teacher_weight,
                                            timestep_share=timestep_share(config, kind),
                                            smoothness=smoothness(config, kind))
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)


def run_signature(model_config: models.ModelConfig, config: TrainConfig, train_files: Sequence[str],
                  fold: tuple[int, int] | None = None) -> dict[str, Any]:
    """What a backup was made for: a restart may continue it only when all of this is unchanged.

    Not included: `epochs` (a rerun may train longer: epoch e's shuffle does not
    depend on the number of epochs), `verbose`, `kinds` (a rerun may train
    fewer kinds) and `refit` (a later phase, `beam_rnn.train.refit`, with a
    backup of its own).  A cross-validation fold (i, K) is part of it.
    """
    train_config = {k: v for k, v in config.to_dict().items() if k not in ("epochs", "verbose", "kinds", "refit")}
    shards = {os.path.basename(f): int(tf.io.gfile.stat(f).length) for f in train_files}
    signature = {"model_config": model_config.to_dict(), "train_config": train_config, "train_shards": shards}
    if fold is not None:
        signature["fold"] = list(fold)
    return json.loads(json.dumps(signature))


def _prepare_model_dir(model_dir: str, model_config: models.ModelConfig, config: TrainConfig,
                       signature: Mapping[str, Any]) -> bool:
    """Decide between resuming and a fresh start; return True when resuming."""
    backup_dir = os.path.join(model_dir, BACKUP_DIR)
    resume = tf.io.gfile.isdir(backup_dir) and tf.train.latest_checkpoint(backup_dir) is not None
    if resume:
        run_path = os.path.join(backup_dir, RUN_FILE)
        previous = _read_json(run_path) if tf.io.gfile.exists(run_path) else None
        if previous != signature:
            logger.warning("Backup in %s was made for a different model config, training config or data; "
                           "starting fresh.", backup_dir)
            resume = False
    if not resume:
        for name in (BACKUP_DIR, CHECKPOINTS_DIR, LOGS_DIR, WEIGHTS_DIR, REFIT_DIR):
            path = os.path.join(model_dir, name)
            if tf.io.gfile.exists(path):
                tf.io.gfile.rmtree(path)
        for name in (HISTORY_FILE, METRICS_FILE):
            path = os.path.join(model_dir, name)
            if tf.io.gfile.exists(path):
                tf.io.gfile.remove(path)
        tf.io.gfile.makedirs(backup_dir)
        _write_json(os.path.join(backup_dir, RUN_FILE), dict(signature))
    for name in (CHECKPOINTS_DIR, WEIGHTS_DIR):
        tf.io.gfile.makedirs(os.path.join(model_dir, name))
    _write_json(os.path.join(model_dir, MODEL_CONFIG_FILE), model_config.to_dict())
    _write_json(os.path.join(model_dir, TRAIN_CONFIG_FILE), config.to_dict())
    return resume


def _best_epoch(history: list[dict[str, Any]], monitor: str) -> int | None:
    """1-based epoch with the best monitored value (earliest on ties)."""
    scored = [(h[monitor], h["epoch"]) for h in history if monitor in h]
    if not scored:
        return None
    if monitor.endswith("loss"):
        return min(scored, key=lambda s: (s[0], s[1]))[1]
    return min(scored, key=lambda s: (-s[0], s[1]))[1]



@contextlib.contextmanager
def _keras_output_to_logging() -> Iterator[None]:
    """While the console shows progress, Keras's own fit output goes to logging (absl, INFO).

    So ``beam-rnn train`` shows `TrainingProgress` only and ``--verbose`` adds Keras's
    lines; library callers (no progress display) keep Keras's console output.
    """
    switched = progress.BOARD.enabled and keras.utils.is_interactive_logging_enabled()
    if switched:
        keras.utils.disable_interactive_logging()
    try:
        yield
    finally:
        if switched:
            keras.utils.enable_interactive_logging()


def _length_buckets(train_files: str | Sequence[str], config: TrainConfig, fold: data.Fold | None = None):
    """(training lengths, bucket boundaries): fixed ones, or quantiles of the lengths."""
    lengths = data.sequence_lengths(train_files, config.max_length, fold)
    if config.bucket_boundaries is not None:
        return lengths, config.bucket_boundaries
    return lengths, data.quantile_boundaries(lengths, config.num_buckets)


def _build(model_config: ModelConfig, config: TrainConfig, transformed_dir: str,
           vectors: Any = None) -> tuple[keras.Model, Any]:
    """The compiled model (warm-started when configured) and the warm start's report.

    With ``--timestep-loss`` or ``--smoothness`` it is the per-token training view (`models.build_classifier`'s
    ``per_token``); the plain model gets its weights when training ends.
    """
    model = models.build_classifier(model_config, per_token=per_token(config, model_config.kind))
    warm_start = None
    if config.pretrained_embeddings:
        from beam_rnn.embeddings import warm_start_from_file

        # Before compile (freezing changes the trainable set); on resume, the
        # restored training state replaces this initialisation.
        warm_start = warm_start_from_file(model, config.pretrained_embeddings, transformed_dir,
                                          freeze=config.freeze_embeddings, rescale=config.rescale_pretrained,
                                          vectors=vectors)
    _compile(model, config, model_config.kind, model_config.num_classes)
    return model, warm_start


def _committed_state(model: keras.Model, model_dir: str, config: TrainConfig, resumed: bool):
    """The training state under `model_dir`, restored when resuming (also `beam_rnn.train.refit`'s).

    Returns:
        (start epoch, the committed epochs' history records, the epoch-checkpoint callback, the
        `TrainingState`); history.jsonl is cut back to the committed epochs.
    """
    checkpoints = os.path.join(model_dir, CHECKPOINTS_DIR, CHECKPOINT_TEMPLATE)
    # With an average, it is what the epoch checkpoints hold, and part of the training state.
    average = WeightAverage(model, config.ema_momentum, checkpoints) if config.ema_momentum > 0 else None
    checkpoint = average or keras.callbacks.ModelCheckpoint(checkpoints, save_weights_only=True, save_freq="epoch")
    state = TrainingState(os.path.join(model_dir, BACKUP_DIR), model,
                          weight_average=average.state if average else None)
    history_path = os.path.join(model_dir, HISTORY_FILE)
    start_epoch = state.restore() if resumed else 0
    # Epochs after the last commit were cut short by the kill: they run again.
    committed = [h for h in _read_history(history_path) if int(h["epoch"]) <= start_epoch]
    _write_history(history_path, committed)
    return start_epoch, committed, checkpoint, state


def _restore(model: keras.Model, model_dir: str, config: TrainConfig, resumed: bool,
             callbacks: Sequence[keras.callbacks.Callback]):
    """Restores the committed state; returns (start epoch, early stopping, epoch log, all callbacks)."""
    start_epoch, committed, checkpoint, state = _committed_state(model, model_dir, config, resumed)
    history_path = os.path.join(model_dir, HISTORY_FILE)

    mode = "min" if config.monitor.endswith("loss") else "max"
    early_stopping = ResumableEarlyStopping(
        committed, monitor=config.monitor, mode=mode, patience=config.early_stopping_patience
    )
    early_stopping.set_model(model)
    early_stopping.on_train_begin()  # replays the committed epochs: a stop may already be decided
    epoch_log = EpochLog(history_path)
    all_callbacks: list[keras.callbacks.Callback] = [
        epoch_log,
        checkpoint,
        ScalarLogs(os.path.join(model_dir, LOGS_DIR)),
        early_stopping,
        CommitState(state),  # last built-in: the epoch is finished once this has run
        *callbacks,
    ]
    return start_epoch, early_stopping, epoch_log, all_callbacks


def _metrics(kind: str, results: Mapping[str, Any], history: list[dict[str, Any]], best: int | None,
             epoch_log: EpochLog, resumed: bool, train_seconds: float, **facts: Any) -> dict[str, Any]:
    """metrics.json: eval results of the kept weights, epochs (across resumes) and timings."""
    epochs_run = max([int(h["epoch"]) for h in history], default=0)
    # No epoch ran in this process only when the backup already covered them all.
    first = epoch_log.first_epoch if epoch_log.first_epoch is not None else epochs_run
    epochs_this_run = 0 if epoch_log.last_epoch is None else epoch_log.last_epoch + 1 - first
    train_examples = facts["train_examples"]
    return {
        "kind": kind,
        "accuracy": float(results["accuracy"]),
        "auc": float(results["auc"]) if "auc" in results else None,
        "loss": float(results["loss"]),
        "epochs_run": epochs_run,
        "epochs_this_run": epochs_this_run,
        "start_epoch": first,
        "resumed": bool(resumed and first > 0),
        "best_epoch": best,
        "monitor": facts["monitor"],
        "learning_rate": facts["learning_rate"],
        "ema_momentum": facts["ema_momentum"],  # 0: the raw weights; else the kept weights are their average
        "weight_decay": facts["weight_decay"],
        "stopped_early": facts["stopped_early"],
        "train_seconds": round(train_seconds, 3),
        "examples_per_second": round(train_examples * epochs_this_run / train_seconds, 2) if train_seconds > 0 else None,
        "train_examples": train_examples,
        "eval_examples": facts["eval_examples"],
        "num_classes": facts["num_classes"],
        "vocab_size": facts["vocab_size"],
        "bucket_boundaries": facts["bucket_boundaries"],
        "warm_start": facts["warm_start"],
        "hyperparameters": facts["hyperparameters"],
    }


def train(
    transformed_dir: str,
    output_dir: str,
    config: TrainConfig,
    *,
    kind: str | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    position: tuple[int, int] | None = None,
    inputs: TrainingInputs | None = None,
    fold: tuple[int, int] | None = None,
    keep_backup: bool = False,
) -> dict[str, Any]:
    """Train one model kind on a preprocessing output, resuming an interrupted run exactly.

    Logs (``beam_rnn.train``) which model trains on how many documents, one line per
    epoch with each figure named by its split, when early stopping fired, which
    epoch's weights were kept and their validation figures; `beam_rnn.core.progress`
    shows the batches of the running epoch with an ETA.

    Args:
        transformed_dir: The preprocessing output (see the module docstring);
            checked whole first (`checks.check_transformed_dir`: complete, matching
            its manifest.json, TFT graph loadable), as are warm-start vectors.
        output_dir: The model goes to `output_dir/<kind>/`.
        config: Training configuration.
        kind: Which model to train (default: `config.kinds[0]`).
        callbacks: Extra Keras callbacks, run after the built-in ones (so after
            the epoch's state is committed); also how tests inject faults.
        position: (i, n): this is the i-th of n models trained in a row (named in the log).
        inputs: What `checks.check_training_inputs` returned for these arguments
            (`run_training` checks once for every kind); None: check here.
        fold: (i, K): train on the train split without its fold i of K and validate
            on fold i (`data.Fold`; cross-validation, `beam_rnn.train.cv`) instead of
            on the eval split.
        keep_backup: Leave the finished run's backup in place (a phase that follows, `beam_rnn.train.refit`,
            removes it when it is done): a rerun after a kill then resumes with no epoch left to run.

    Returns:
        A dict with:
            "kind": the model kind,
            "model": the trained classifier (the kept epoch's weights; the plain model also
                when it trained in the per-token view of ``--timestep-loss`` / ``--smoothness``),
            "model_config": its `ModelConfig`,
            "model_dir": `output_dir/<kind>`,
            "metrics": JSON-able metrics, also written to `metrics.json`: eval
                "accuracy", "auc" (None for K > 2), "loss"; "epochs_run" (total,
                across resumes), "epochs_this_run", "start_epoch" (0-based epoch this
                process started at; > 0 when resumed), "resumed", "best_epoch",
                "stopped_early", "train_seconds" (this process's fit, incl. per-epoch
                validation), "examples_per_second", "train_examples",
                "eval_examples", "num_classes", "vocab_size", "bucket_boundaries".

    Raises:
        TrainerInputError, ArtifactError: If an input is missing, incomplete or damaged
            (nothing is written then).
    """
    kind = kind or config.kinds[0]
    if kind not in models.KINDS:
        raise ValueError(f"Unknown model kind {kind!r}; expected one of {models.KINDS}")
    inputs = inputs or check_training_inputs(transformed_dir, config)
    stats = inputs.stats
    num_classes = int(stats["num_classes"])
    vocab_size = int(stats["vocab_size_with_reserved"])
    model_dir = os.path.join(output_dir, kind)

    train_files, eval_files = data.train_pattern(transformed_dir), data.eval_pattern(transformed_dir)
    train_fold = eval_fold = None
    if fold is not None:  # validate on fold i of the train split, train on the others
        train_fold, eval_fold = data.Fold(fold[0], fold[1], False), data.Fold(fold[0], fold[1], True)
        eval_files = train_files
    lengths, boundaries = _length_buckets(train_files, config, train_fold)
    if fold is None:
        eval_documents = int(stats["splits"][C.EVAL_PREFIX]["documents"])
    else:
        eval_documents = len(data.sequence_lengths(eval_files, config.max_length, eval_fold))
    config, hyperparameters = auto.resolve(config, train_documents=len(lengths), validation_documents=eval_documents,
                                           num_classes=num_classes)
    model_config = config.model_config(kind, vocab_size=vocab_size, num_classes=num_classes)

    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    dataset = {"batch_size": config.batch_size, "max_length": config.max_length, "bucket_boundaries": boundaries,
               "num_classes": num_classes}
    if distill.distilling(config, kind):  # train and validation targets carry the teacher's probabilities
        dataset["teacher"] = distill.Teacher(config.teacher, num_classes).pack
    eval_ds = data.make_dataset(eval_files, shuffle=False, fold=eval_fold, **dataset)

    signature = run_signature(model_config, config, data.shard_files(train_files), fold)
    resumed = _prepare_model_dir(model_dir, model_config, config, signature)
    model, warm_start = _build(model_config, config, transformed_dir, inputs.vectors)
    start_epoch, early_stopping, epoch_log, all_callbacks = _restore(model, model_dir, config, resumed, callbacks)

    name = f"{kind} ({position[0]} of {position[1]})" if position else kind
    if fold is not None:
        name = f"{kind}, fold {fold[0] + 1} of {fold[1]}"
    logger.info("training %s: %s train / %s validation documents, up to %d epoch%s%s", name, f"{len(lengths):,}",
                f"{eval_documents:,}", config.epochs, "" if config.epochs == 1 else "s", f" (resuming at epoch {start_epoch + 1})" if resumed else "")
    logger.debug("%s: %s, bucket boundaries %s", kind, model_config, list(boundaries))
    logger.info("%s: %s", kind, auto.describe(hyperparameters))
    if timestep_share(config, kind):
        logger.info("%s: %g of the loss on the prediction after every token", kind, config.timestep_loss)
    if smoothness(config, kind):
        logger.info("%s: smoothness %g (the logits' squared change from token to token)", kind, config.smoothness)
    if "teacher" in dataset:
        logger.info("%s: distilling from %s (teacher weight %g)", kind, distill.teacher_dir(config.teacher),
                    config.teacher_weight)
    train_seconds = 0.0
    if start_epoch < config.epochs and not early_stopping.stopped_epoch:
        train_ds = data.make_dataset(train_files, shuffle=True, seed=config.effective_shuffle_seed,
                                     shuffle_buffer_size=len(lengths), epochs=range(start_epoch, config.epochs),
                                     fold=train_fold, prefix_fraction=prefix_fraction(config, kind), **dataset)
        steps = data.batches_per_epoch(lengths, config.batch_size, boundaries)
        shown = TrainingProgress(kind, config.epochs, steps, eval_documents)
        start = time.time()
        with progress.task(f"training {name}"), _keras_output_to_logging():
            model.fit(train_ds, validation_data=eval_ds, epochs=config.epochs, initial_epoch=start_epoch,
                      steps_per_epoch=steps, callbacks=[*all_callbacks, shown], verbose=config.verbose)
        train_seconds = time.time() - start

    history = _read_history(os.path.join(model_dir, HISTORY_FILE))
    best = _best_epoch(history, config.monitor)
    if early_stopping.stopped_epoch:
        logger.info("%s: early stopping after epoch %d of up to %d (%s, patience %d)", kind,
                    early_stopping.stopped_epoch + 1, config.epochs, config.monitor, config.early_stopping_patience)
    if best is not None and tf.io.gfile.glob(checkpoint_path(model_dir, best) + ".index"):
        model.load_weights(checkpoint_path(model_dir, best)).expect_partial()
    results = model.evaluate(eval_ds, verbose=0, return_dict=True)
    if best is not None:
        logger.info("%s: kept epoch %d's weights (best %s): validation (%s docs) %s", kind, best, config.monitor,
                    f"{eval_documents:,}", metrics_text(results))

    # Save the model variables only (no optimizer state): a fresh copy of the model.
    final = models.build_classifier(model_config)
    final.set_weights(model.get_weights())
    final.save_weights(weights_path(model_dir))

    metrics = _metrics(kind, results, history, best, epoch_log, resumed, train_seconds,
                       monitor=config.monitor, learning_rate=config.learning_rate_for(kind),
                       ema_momentum=config.ema_momentum, weight_decay=config.weight_decay,
                       stopped_early=early_stopping.stopped_epoch > 0, train_examples=len(lengths),
                       eval_examples=eval_documents, num_classes=num_classes,
                       vocab_size=vocab_size, bucket_boundaries=list(boundaries), warm_start=warm_start,
                       hyperparameters=hyperparameters)
    if timestep_share(config, kind):
        metrics["timestep_loss"] = config.timestep_loss
    if smoothness(config, kind):
        metrics["smoothness"] = config.smoothness
    if "teacher" in dataset:
        metrics["teacher"] = {"model_dir": distill.teacher_dir(config.teacher), "weight": config.teacher_weight}
    write_metrics(model_dir, metrics)
    # Finished: nothing left to resume (a kill before this line resumes with no epoch to run).
    if not keep_backup:
        tf.io.gfile.rmtree(os.path.join(model_dir, BACKUP_DIR))
    logger.debug("Trained %s: %s", kind, metrics)
    return {"kind": kind, "model": final, "model_config": model_config, "model_dir": model_dir, "metrics": metrics}


def _drop_stale_refit(model_dir: str) -> None:
    """Removes the run of an earlier ``--refit`` (e.g. one killed mid-refit) that this run without it replaces."""
    stale = os.path.join(model_dir, REFIT_DIR)
    if tf.io.gfile.exists(stale):
        logger.info("removing %s: an earlier --refit's run; this model was trained without --refit", stale)
        tf.io.gfile.rmtree(stale)


def run_training(transformed_dir: str, output_dir: str, config: TrainConfig, *,
                 export: bool = True) -> dict[str, dict[str, Any]]:
    """Trains (and exports) every kind of `config.kinds`: what ``beam-rnn train`` runs.

    Every kind's model config is validated and the inputs are checked (once, for
    every kind) before the first one trains or anything is written.  After a model is
    trained it is exported (`beam_rnn.train.export.export_model`) into its
    directory, then its metrics.json is written (again, with what the export added).

    With ``config.refit`` the exported model is trained again on the train and eval
    splits for the kept epochs (`beam_rnn.train.refit`).

    With ``config.folds`` each kind is cross-validated first (`beam_rnn.train.cv`),
    its summary kept in metrics.json (and so the model card) as ``cross_validation``;
    when the eval split is empty only the cross-validation runs.

    Returns:
        {kind: metrics} — the contents of each OUTPUT/<kind>/metrics.json
        ({"kind", "cross_validation"} for a cross-validation only run).
    """
    for kind in config.kinds:
        config.model_config(kind, vocab_size=3, num_classes=2)
    inputs = check_training_inputs(transformed_dir, config)
    final = int(inputs.stats["splits"][C.EVAL_PREFIX]["documents"]) > 0  # else cross-validation only
    results: dict[str, dict[str, Any]] = {}
    for number, kind in enumerate(config.kinds, 1):
        summary = None
        if config.folds:
            from beam_rnn.train.cv import cross_validate

            summary = cross_validate(transformed_dir, output_dir, config, kind=kind, inputs=inputs)
            if not final:
                results[kind] = {"kind": kind, "cross_validation": summary}
                continue
        result = train(transformed_dir, output_dir, config, kind=kind, position=(number, len(config.kinds)),
                       inputs=inputs, keep_backup=config.refit)
        if config.refit:
            from beam_rnn.train.refit import refit

            result = refit(transformed_dir, config, selection=result, inputs=inputs)
        else:
            _drop_stale_refit(result["model_dir"])
        metrics = result["metrics"]
        if summary is not None:
            metrics["cross_validation"] = summary
        if export:
            from beam_rnn.train.export import export_model

            export_model(result["model"], result["model_config"], transformed_dir, result["model_dir"], metrics)
        write_metrics(result["model_dir"], metrics)
        results[kind] = metrics
    return results
