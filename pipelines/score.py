"""Score a corpus with exported classifiers (Beam RunInference).

    python -m pipelines.score --model out/models/bilstm --input 'data/*.csv' --format csv \\
        --output out/scores/imdb
    python -m pipelines.score --model out/models/bilstm out/models/lstm ...   # both, side by side

Writes (PREFIX = --output):

    PREFIX-SSSSS-of-NNNNN.<jsonl|csv|parquet|tfrecord>   one score record per document
    PREFIX-dead_letter-SSSSS-of-NNNNN.jsonl              malformed rows and inference failures
    PREFIX-summary.json                                  labelled corpora: accuracy, AUC, confusion, counts

Unknown flags go to Beam's PipelineOptions untouched, so `--runner DataflowRunner
--project P --region R --temp_location gs://... --setup_file ./setup.py` runs the same
job on Dataflow.  A missing or corrupt model directory is reported (exit status 2)
before the pipeline starts.
"""

import argparse
import json
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
from beam_rnn.serve.config import ScoreConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="beam-rnn score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_verbose_flag(parser)
    add_model_flag(parser, " Two or more are scored side by side in one pass (records carry each model's "
                   "outputs and `agreement`).")
    add_corpus_args(parser, label_type_from_model=True)
    parser.add_argument("--output", required=True, metavar="PREFIX",
                        help="Output prefix (local or gs://): PREFIX-*.FORMAT, PREFIX-dead_letter-*.jsonl, "
                        "PREFIX-summary.json.")
    add_config_flags(parser, ScoreConfig)
    return parser


def run(argv: Sequence[str] | None = None, save_main_session: bool = False) -> dict[str, Any] | None:
    """Parse the flags and run `beam_rnn.serve.run.run_score`; returns its report.

    None when the job was not waited for (``--template_location``: a Flex Template launch), see `main`.

    Args:
        argv: Command-line arguments (default: sys.argv[1:]); unknown flags are
            Beam pipeline options.
        save_main_session: Pickle the main session for remote workers (not needed:
            everything the workers run lives in beam_rnn).
    """
    from beam_rnn.serve.run import run_score

    parser = build_parser()
    known, pipeline_args = parse_known_flags(parser, argv)
    corpus = resolve_corpus(known)
    config = config_from_flags(ScoreConfig, known)
    return run_score(known.model, corpus, config, known.output, pipeline_args, save_main_session=save_main_session)


def main(argv: Sequence[str] | None = None) -> int:
    report = run(argv)
    if report is None:  # staged, not run: the job's last stage fails it when too many rows are dead letters
        print(staged_line(argv))
        return 0
    brief = {k: report.get(k) for k in ("rows_in", "documents_in", "scored", "dead_lettered", "reconciled",
                                        "duplicate_ids")}
    summary = report.get("summary")
    if summary and summary.get("labelled"):
        brief["metrics"] = {
            name: {k: m.get(k) for k in ("accuracy", "auc", "auc_method")} for name, m in summary["models"].items()
        }
        brief["metrics_measured_on"] = (f"the {summary['labelled']} documents of this corpus whose label is a class "
                                        "of the model (training documents too, if the corpus holds them)")
        if "agreement" in summary:
            brief["agreement"] = summary["agreement"]
    brief["outputs"] = report["outputs"]
    print(json.dumps(brief))
    return 0



def staged_line(argv: Sequence[str] | None) -> str:
    """The line printed for a job that was not waited for: where its output will be."""
    from beam_rnn.cli.runtime import pipeline_options, staged_message
    from beam_rnn.serve.write import output_patterns

    known, pipeline_args = parse_known_flags(build_parser(), argv)
    outputs = output_patterns(known.output, known.output_format)
    return staged_message(pipeline_options(pipeline_args), (
        f"{outputs['summary']}, the scores {outputs['scores']}, the dead letters {outputs['dead_letter']} "
        "(the job fails when too many rows are dead letters)"))


if __name__ == "__main__":
    from beam_rnn.cli import run_command
    from beam_rnn.cli.runtime import hard_exit

    hard_exit(run_command("score", sys.argv[1:]))
