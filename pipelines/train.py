"""Train the bidirectional (bilstm) and/or streaming (lstm) classifiers.

    python -m pipelines.train --transformed out/prep --output out/models --kind both

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

from beam_rnn.cli.flags import add_config_flags, add_verbose_flag, config_from_flags, parse_flags
from beam_rnn.core import constants as C

MODEL_BOTH = "both"



def build_parser() -> argparse.ArgumentParser:
    from beam_rnn.train.config import TrainConfig

    parser = argparse.ArgumentParser(allow_abbrev=False, prog="beam-rnn train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_verbose_flag(parser)
    parser.add_argument("--transformed", required=True,
                        help="A `beam-rnn preprocess` output. Missing, incomplete, without manifest.json or not "
                        "matching it: one error line naming the file, exit 2, before any model is built.")
    parser.add_argument("--output", required=True, help="Output dir; each model goes to OUTPUT/<kind>/.")
    parser.add_argument("--kind", choices=(*C.MODEL_NAMES, MODEL_BOTH), default=MODEL_BOTH,
                        help="bilstm (the tutorial's classifier), lstm (streaming), or both (default both).")
    # The old name, for one release: `--model` names an exported model directory in every other command.
    parser.add_argument("--model", choices=(*C.MODEL_NAMES, MODEL_BOTH), dest="kind_old_name", help=argparse.SUPPRESS)
    add_config_flags(parser, TrainConfig)
    parser.add_argument("--skip-export", action="store_true", help="Train only; do not call the export step.")
    return parser


def config_from_args(known: argparse.Namespace):
    """The TrainConfig of parsed flags (--kind picks the kinds)."""
    from beam_rnn.train.config import TrainConfig

    if getattr(known, "kind_old_name", None):
        logging.getLogger("beam_rnn.train").warning(
            "train --model is now --kind (--model names a model directory in score, evaluate and stream)")
        known.kind = known.kind_old_name
    kinds = C.MODEL_NAMES if known.kind == MODEL_BOTH else (known.kind,)
    return config_from_flags(TrainConfig, known, kinds=kinds)


def run(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Train (and export) the requested model(s).

    Args:
        argv: Command-line arguments (default: sys.argv[1:]); an unknown flag is an error.

    Returns:
        {kind: metrics} — the contents of each OUTPUT/<kind>/metrics.json.

    Raises:
        SystemExit(2): bad flag values.  beam_rnn.core.errors.InputError (exit 2 through
            `beam_rnn.cli.run_command`): unusable inputs, found before any model is built.
    """
    parser = build_parser()
    known = parse_flags(parser, argv)  # training takes no Beam flags: every unknown flag is an error
    config = config_from_args(known)
    from beam_rnn.train import run_training

    return run_training(known.transformed, known.output, config, export=not known.skip_export)


def main(argv: Sequence[str] | None = None) -> int:
    results = run(argv)
    keys = ("epochs_run", "best_epoch", "train_seconds", "examples_per_second")
    # accuracy, auc and loss are measured on the held-out eval split of the preprocessing: say so.
    printed = {}
    for kind, m in results.items():
        line = {}
        if "accuracy" in m:  # a final model was trained
            line = {"validation_documents": m.get("eval_examples"),
                    **{f"validation_{k}": m.get(k) for k in ("accuracy", "auc", "loss")},
                    **{k: m.get(k) for k in keys}}
        if m.get("refit"):  # the exported model was trained again on train + eval (the figures above are not its)
            line.update({"refit_epochs": m["refit"]["epochs"], "refit_train_documents": m["refit"]["train_examples"]})
        cv = m.get("cross_validation")
        if cv:
            line.update({"cv_folds": cv["folds"], "cv_accuracy_mean": round(cv["accuracy"]["mean"], 4),
                         "cv_accuracy_sd": round(cv["accuracy"]["sd"], 4)})
        printed[kind] = line
    print(json.dumps(printed))
    return 0


if __name__ == "__main__":
    from beam_rnn.cli import run_command
    from beam_rnn.cli.runtime import hard_exit

    hard_exit(run_command("train", sys.argv[1:]))
