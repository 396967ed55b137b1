"""Checks of training inputs, before any model is built: the preprocessing output and warm-start vectors.

Each raises `TrainerInputError` (an `InputError`: exit 2) or
`beam_rnn.core.manifest`'s `ArtifactError` with one line naming what is wrong.
"""

import os
from typing import Any, NamedTuple

import tensorflow as tf

from beam_rnn.core import constants as C
from beam_rnn.preprocess.check import check_preprocess_output
from beam_rnn.train.config import TrainConfig
from beam_rnn.train.data import eval_pattern, shard_files, train_pattern
from beam_rnn.train.errors import TrainerInputError


def validate_transformed_dir(transformed_dir: str, *, need_eval: bool = True) -> dict[str, Any]:
    """Check a preprocessing output is complete and trainable; return its stats.json.

    An empty eval split is accepted without `need_eval` (cross-validation only).

    Raises:
        TrainerInputError: With one message naming everything that is missing or unusable.
    """
    _, stats = check_preprocess_output(
        transformed_dir, splits=(C.TRAIN_PREFIX, C.EVAL_PREFIX), verify=None, error=TrainerInputError,
        need=[(f"{C.TRANSFORM_FN_DIR}/saved_model.pb", f"{C.TRANSFORM_FN_DIR}/ (the TFT transform graph)")],
        stats_keys=("vocab_size_with_reserved", "num_classes", "splits"))
    problems = []
    if int(stats["num_classes"]) < 2:
        problems.append(f"num_classes is {stats['num_classes']} (training needs labelled data with >= 2 classes)")
    if int(stats["vocab_size_with_reserved"]) < 3:
        problems.append(f"vocab_size_with_reserved is {stats['vocab_size_with_reserved']} (the vocabulary is empty)")
    for split in (C.TRAIN_PREFIX, C.EVAL_PREFIX) if need_eval else (C.TRAIN_PREFIX,):
        if int(stats["splits"].get(split, {}).get("documents", 0)) < 1:
            problems.append(f"the {split} split has no documents")
    if problems:
        raise TrainerInputError(f"transformed dir {transformed_dir!r} is not trainable: {'; '.join(problems)}")
    return stats


# What training reads from a preprocess output, checked against its manifest.json.
_INPUT_PREFIXES = (f"{C.TRANSFORM_FN_DIR}/", f"{C.TRANSFORMED_METADATA_DIR}/", f"{C.TRANSFORMED_DIR}/",
                   C.STATS_FILE, C.PREPROCESS_CONFIG_FILE)


def _first_line(error: BaseException, limit: int = 200) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def check_transformed_dir(transformed_dir: str, *, need_eval: bool = True) -> dict[str, Any]:
    """`validate_transformed_dir`, then integrity, before any model is built; returns stats.json.

    The files training reads (transform_fn/, transformed_metadata/, the shards,
    stats.json, preprocess_config.json) must match the directory's manifest.json
    (sizes and sha256; `pipelines.preprocess` writes it last, so a directory
    without one did not finish), no shard may be missing from it, and the TFT
    metadata and graph must load (the export needs them after training).

    Raises:
        TrainerInputError or beam_rnn.core.manifest.ArtifactError (both ValueErrors):
            one line naming the damaged or missing file.
    """
    from beam_rnn.core.manifest import verify_manifest

    stats = validate_transformed_dir(transformed_dir, need_eval=need_eval)
    what = "preprocess output"
    manifest = verify_manifest(
        transformed_dir, prefixes=_INPUT_PREFIXES, what=what,
        required=(C.STATS_FILE, C.PREPROCESS_CONFIG_FILE, f"{C.TRANSFORM_FN_DIR}/saved_model.pb"),
    )
    patterns = [train_pattern(transformed_dir)]
    if int(stats["splits"].get(C.EVAL_PREFIX, {}).get("documents", 0)) > 0:
        patterns.append(eval_pattern(transformed_dir))
    for pattern in patterns:
        for path in shard_files(pattern):
            rel = f"{C.TRANSFORMED_DIR}/{os.path.basename(path)}"
            if rel not in manifest["files"]:
                raise TrainerInputError(f"{what} {transformed_dir}: {rel} is not in its manifest.json "
                                        "(left over from another run?)")
    import tensorflow_transform as tft

    try:
        output = tft.TFTransformOutput(transformed_dir)
        output.transformed_feature_spec()
    except Exception as e:  # any failure to read is the same error for the user
        raise TrainerInputError(f"{what} {transformed_dir}: {C.TRANSFORMED_METADATA_DIR}/ does not load "
                                f"({_first_line(e)})") from e
    try:
        output.transform_features_layer()
    except Exception as e:
        raise TrainerInputError(f"{what} {transformed_dir}: {C.TRANSFORM_FN_DIR}/saved_model.pb does not load "
                                f"as a SavedModel ({_first_line(e)})") from e
    return stats


class TrainingInputs(NamedTuple):
    """What the input checks read, handed to training so nothing is read twice."""

    stats: dict[str, Any]  # the preprocess output's stats.json
    vectors: dict[str, Any] | None  # the warm-start vectors, or None


def check_training_inputs(transformed_dir: str, config: TrainConfig) -> TrainingInputs:
    """Every input check of training, once for all kinds: the preprocess output, the monitor, the vectors."""
    stats = check_transformed_dir(transformed_dir, need_eval=not config.folds)
    if config.folds:
        from beam_rnn.train.cv import check_folds

        check_folds(transformed_dir, config.folds)
    if config.monitor == "val_auc" and int(stats["num_classes"]) != 2:
        raise TrainerInputError("monitor 'val_auc' needs a binary task")
    vectors = check_pretrained(config)
    if config.teacher:
        from beam_rnn.train.distill import check_teacher

        check_teacher(config, transformed_dir, stats)
    return TrainingInputs(stats, vectors)


def check_pretrained(config: TrainConfig) -> dict[str, Any] | None:
    """Refuses unusable warm-start settings, before any training; returns the vectors read (None: none given).

    The vectors file is read whole here (every line parses, every vector has the
    same width, and as many vectors as its "<count> <dim>" header announces), so a
    truncated or damaged file stops the run before any work instead of after the
    model is built.  Messages name the command-line flags.
    """
    if config.freeze_embeddings and not config.pretrained_embeddings:
        raise TrainerInputError("--freeze-embeddings needs --pretrained-embeddings")
    path = config.pretrained_embeddings
    if not path:
        return None
    if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
        raise TrainerInputError(f"--pretrained-embeddings {path!r} does not exist or is not a file")
    from beam_rnn.embeddings import load_word2vec_text, read_word2vec_dim

    try:
        dim = read_word2vec_dim(path)
        vectors = load_word2vec_text(path)
        with tf.io.gfile.GFile(path, "rb") as f:
            header = f.readline().split()
            lines = sum(1 for line in f if line.strip())
    except (ValueError, OSError) as e:
        raise TrainerInputError(f"--pretrained-embeddings {path} is damaged or not word2vec/GloVe text: "
                                f"{_first_line(e)}") from e
    if not vectors:
        raise TrainerInputError(f"--pretrained-embeddings {path} holds no vectors")
    if len(header) == 2 and all(p.isdigit() for p in header) and int(header[0]) != lines:
        raise TrainerInputError(f"--pretrained-embeddings {path} is damaged: its header announces {int(header[0])} "
                                f"vectors, it holds {lines} (a truncated file?)")
    if dim != config.model.embedding_dim:
        raise TrainerInputError(f"--pretrained-embeddings has {dim}-dimensional vectors but --embedding-dim is "
                                f"{config.model.embedding_dim}; pass --embedding-dim {dim}")
    return vectors
