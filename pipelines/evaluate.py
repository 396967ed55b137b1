"""Evaluate exported models on a labelled corpus: the streaming-vs-bidirectional report.

    python -m pipelines.evaluate --model runs/imdb/models --input data.csv --format csv --output runs/imdb/report

`--model` is a `beam-rnn train` output holding `bilstm/` and/or `lstm/`, or the exports themselves. Writes
OUTPUT/metrics.json, OUTPUT/*.png, OUTPUT/report.html, per-document records
(OUTPUT/records-*.jsonl) and dead letters (OUTPUT/dead_letter-*.jsonl). Unknown flags
are Beam pipeline options (e.g. --runner DataflowRunner ...).
"""

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from beam_rnn.cli.corpus import add_corpus_args, resolve_corpus
from beam_rnn.cli.flags import (
    add_config_flags,
    add_model_flag,
    add_verbose_flag,
    config_from_flags,
    parse_known_flags,
)
from beam_rnn.core.errors import InputError
from beam_rnn.serve.config import EvaluateConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="beam-rnn evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_verbose_flag(parser)
    add_model_flag(parser, " The streaming (lstm) model is also read token by token.")
    add_corpus_args(parser, label_type_from_model=True)
    parser.add_argument("--output", required=True, help="Report directory (local or gs://).")
    add_config_flags(parser, EvaluateConfig)
    return parser


def run(argv: Sequence[str] | None = None, save_main_session: bool = True) -> dict[str, Any]:
    """Parse the flags and run `beam_rnn.serve.run.run_evaluate`; returns metrics.json's contents."""
    from beam_rnn.serve.run import run_evaluate

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--models" or a.startswith("--models=") for a in argv):  # the old name, for one release
        logging.getLogger("beam_rnn.serve").warning("evaluate --models is now --model (as in score and stream)")
        argv = ["--model" + a[len("--models"):] if a == "--models" or a.startswith("--models=") else a for a in argv]
    parser = build_parser()
    known, pipeline_args = parse_known_flags(parser, argv)
    if known.unlabelled:
        raise InputError("evaluate needs a labelled corpus")
    config = config_from_flags(EvaluateConfig, known)
    corpus = resolve_corpus(known)
    return run_evaluate(known.model, corpus, config, known.output, pipeline_args,
                        save_main_session=save_main_session)


def main(argv: Sequence[str] | None = None) -> int:
    metrics = run(argv)
    summary = {name: {k: m[k] for k in ("accuracy", "auc", "f1")} for name, m in metrics["models"].items()}
    print(json.dumps({"split": metrics.get("split"), "documents": metrics["documents"], "models": summary,
                      "report": metrics["report"]}))
    return 0


if __name__ == "__main__":
    from beam_rnn.cli import run_command
    from beam_rnn.cli.runtime import hard_exit

    hard_exit(run_command("evaluate", sys.argv[1:]))
