"""Preprocess a text corpus: read, split, build the vocabulary, tokenise (TFT).

    python -m pipelines.preprocess --input 'data/*.csv' --format csv --output out/prep
    python -m pipelines.preprocess --output out/prep          # IMDB (see --imdb)

Unknown flags go to Beam's PipelineOptions untouched, so
`--runner DataflowRunner --project P --region R --temp_location gs://...
--setup_file ./setup.py` runs the same job on Dataflow.
"""

import argparse
import json
import sys
from collections.abc import Sequence

from beam_rnn.cli.corpus import add_corpus_args, resolve_corpus
from beam_rnn.cli.flags import add_config_flags, add_verbose_flag, config_from_flags, parse_known_flags
from beam_rnn.preprocess.config import PreprocessConfig, PreprocessJob


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="beam-rnn preprocess", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_verbose_flag(parser)
    add_corpus_args(parser)
    parser.add_argument("--output", required=True, help="Output directory (local or gs://).")
    add_config_flags(parser, PreprocessConfig)
    add_config_flags(parser, PreprocessJob)
    return parser


def run(argv: Sequence[str] | None = None, save_main_session: bool = True) -> dict | None:
    """Parses the flags and runs `beam_rnn.preprocess.pipeline.run_preprocess`; returns stats.json's contents.

    None when the job was not waited for (``--template_location``: a Flex Template launch), see `main`.

    Args:
        argv: Command-line arguments (default: sys.argv[1:]); unknown flags are
            Beam pipeline options.
        save_main_session: Pickle the main session for remote workers.

    Raises:
        SystemExit: (status 2) bad flags.  InputError (exit 2 through `beam_rnn.cli.run_command`):
            bad flag values or inputs, before any work.
        PreprocessError: The corpus gave no documents, or int labels that are not
            0..K-1 (without --labels); no manifest.json is written.
    """
    parser = build_parser()
    known, pipeline_args = parse_known_flags(parser, argv)
    corpus = resolve_corpus(known)
    config = config_from_flags(PreprocessConfig, known, **corpus.label_settings())
    job = config_from_flags(PreprocessJob, known)

    from beam_rnn.preprocess.pipeline import run_preprocess

    return run_preprocess(corpus, config, known.output, job=job, pipeline_options=pipeline_args,
                          save_main_session=save_main_session)


def main(argv: Sequence[str] | None = None) -> int:
    stats = run(argv)  # parses first: --help answers before TensorFlow is imported
    if stats is None:  # staged, not run: the job's last stage writes stats.json and, if usable, the manifest
        print(staged_line(argv))
        return 0
    from beam_rnn.preprocess.pipeline import summary_line

    print(json.dumps(summary_line(stats)))
    return 0


def staged_line(argv: Sequence[str] | None) -> str:
    """The line printed for a job that was not waited for: where its output will be."""
    import os

    from beam_rnn.cli.runtime import pipeline_options, staged_message
    from beam_rnn.core import constants as C
    from beam_rnn.core.manifest import MANIFEST_FILE

    known, pipeline_args = parse_known_flags(build_parser(), argv)
    return staged_message(pipeline_options(pipeline_args), (
        f"{os.path.join(known.output, C.STATS_FILE)}, and {os.path.join(known.output, MANIFEST_FILE)} "
        "if the output is usable (else the job fails)"))


if __name__ == "__main__":
    from beam_rnn.cli import run_command
    from beam_rnn.cli.runtime import hard_exit

    hard_exit(run_command("preprocess", sys.argv[1:]))
