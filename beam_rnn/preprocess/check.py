"""Is this a finished preprocess output? The one check that `train` and `embeddings` run before work.

A preprocess output directory holds ``transform_fn/`` (graph and vocabulary),
``transformed/{train,eval}-*`` shards, ``stats.json`` and, written last,
``manifest.json``.  `check_preprocess_output` names everything that is missing in
one line and verifies the files a reader is about to use against the manifest.
"""

import json
import os
from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from beam_rnn.core import constants as C
from beam_rnn.core.errors import InputError


def shard_pattern(transformed_dir: str, split: str) -> str:
    """The glob of a split's transformed shards."""
    return os.path.join(transformed_dir, C.TRANSFORMED_DIR, f"{split}-*")


def check_preprocess_output(
    transformed_dir: str,
    *,
    splits: Sequence[str],
    need: Sequence[tuple[str, str]] = (),
    verify: Sequence[str] | None,
    verify_required: Sequence[str] = (C.STATS_FILE,),
    stats_keys: Sequence[str] = (),
    error: type[InputError] = InputError,
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """The shards of `splits` and stats.json of a complete, intact preprocess output.

    Args:
      transformed_dir: The ``beam-rnn preprocess --output`` directory.
      splits: The splits whose shards must exist.
      need: Further ``(relative path, description)`` files that must exist.
      verify: Manifest prefixes to verify (sizes and sha256) before use; None: the caller verifies.
      verify_required: Files that must be in the manifest.
      stats_keys: Keys stats.json must have.
      error: The `InputError` subclass to raise (the trainer has its own).

    Raises:
      `error`: The directory is missing or incomplete: one line naming everything missing.
      ArtifactError: A file does not match the manifest (one line naming it).
    """
    from beam_rnn.core.manifest import verify_manifest  # pylint: disable=import-outside-toplevel

    if not transformed_dir or not tf.io.gfile.isdir(transformed_dir):
        raise error(f"--transformed {transformed_dir!r} does not exist (run `beam-rnn preprocess` first)")
    missing = [description for rel, description in need
               if not tf.io.gfile.exists(os.path.join(transformed_dir, rel))]
    shards = {}
    for split in splits:
        shards[split] = sorted(tf.io.gfile.glob(shard_pattern(transformed_dir, split)))
        if not shards[split]:
            missing.append(f"{split} shards {C.TRANSFORMED_DIR}/{split}-*")
    stats: dict[str, Any] = {}
    stats_path = os.path.join(transformed_dir, C.STATS_FILE)
    if not tf.io.gfile.exists(stats_path):
        missing.append(C.STATS_FILE)
    else:
        try:
            with tf.io.gfile.GFile(stats_path) as f:
                stats = json.loads(f.read())
        except (ValueError, OSError) as e:
            missing.append(f"a readable {C.STATS_FILE} ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
        else:
            absent = [k for k in stats_keys if k not in stats]
            if absent:
                missing.append(f"{C.STATS_FILE} keys {absent}")
    if missing:
        raise error(f"--transformed {transformed_dir!r} is incomplete (run `beam-rnn preprocess` to completion); "
                    f"missing: {'; '.join(missing)}")
    if verify is not None:
        verify_manifest(transformed_dir, prefixes=list(verify), required=list(verify_required),
                        what="preprocess output")
    return shards, stats
