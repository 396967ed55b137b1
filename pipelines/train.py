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

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from beam_rnn.cli.flags import add_config_flags, config_from_flags, parse_known_flags
from beam_rnn.core import constants as C

MODEL_BOTH = "both"

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    from beam_rnn.train.config import TrainConfig

    parser = argparse.ArgumentParser(prog="beam-rnn train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transformed", required=True,
                        help="Preprocessing output dir (pipelines.preprocess --output).")
    parser.add_argument("--output", required=True, help="Output dir; each model goes to OUTPUT/<kind>/.")
    parser.add_argument("--model", choices=(*C.MODEL_NAMES, MODEL_BOTH), default=MODEL_BOTH,
                        help="Model(s) to train (default both).")
    add_config_flags(parser, TrainConfig)
    parser.add_argument("--skip-export", action="store_true", help="Train only; do not call the export step.")
    return parser


def config_from_args(known: argparse.Namespace):
    """The TrainConfig of parsed flags (--model picks the kinds)."""
    from beam_rnn.train.config import TrainConfig

    kinds = C.MODEL_NAMES if known.model == MODEL_BOTH else (known.model,)
    return config_from_flags(TrainConfig, known, kinds=kinds)


def run(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Train (and export) the requested model(s).

    Args:
        argv: Command-line arguments (default: sys.argv[1:]). Unrecognised flags
            are ignored with a warning (Beam drivers' convention).

    Returns:
        {kind: metrics} — the contents of each OUTPUT/<kind>/metrics.json.

    Raises:
        SystemExit(2): bad flag values.  beam_rnn.core.errors.InputError (exit 2 through
            `beam_rnn.cli.run_command`): unusable inputs, found before any model is built.
    """
    parser = build_parser()
    known, unknown = parse_known_flags(parser, argv)
    if unknown:
        logger.warning("Ignoring unrecognised arguments: %s", " ".join(unknown))
    try:
        config = config_from_args(known)
    except ValueError as e:
        parser.error(str(e))
    from beam_rnn.train import run_training

    return run_training(known.transformed, known.output, config, export=not known.skip_export)


def main(argv: Sequence[str] | None = None) -> int:
    results = run(argv)
    keys = ("accuracy", "auc", "loss", "epochs_run", "best_epoch", "train_seconds", "examples_per_second")
    print(json.dumps({kind: {k: m.get(k) for k in keys} for kind, m in results.items()}))
    return 0


if __name__ == "__main__":
    from beam_rnn.cli import run_command
    from beam_rnn.cli.runtime import hard_exit

    hard_exit(run_command("train", sys.argv[1:]))
