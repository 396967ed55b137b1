"""Train Word2Vec CBOW word vectors on a preprocessed corpus (Beam examples + tf_keras).

    python -m pipelines.embeddings --transformed out/prep --output out/vectors

Reads a `pipelines.preprocess` output (transformed/*.tfrecord.gz, the vocabulary,
stats.json), makes CBOW examples with Beam (OUTPUT/examples/, OUTPUT/cbow.json),
trains, and writes OUTPUT/vectors.txt (word2vec text), OUTPUT/vectors.tsv +
metadata.tsv (TensorBoard projector) and OUTPUT/metrics.json (WordSim-353 and
SimLex-999 Spearman, analogy accuracy when --eval-data is available).

--backend gensim trains gensim's Word2Vec CBOW on the same tokens with the same
settings instead of the tf_keras reference (no Beam example stage; `gensim` extra).

Unknown flags go to Beam's PipelineOptions (e.g. --runner DataflowRunner ...).
The vectors warm-start the classifiers: pipelines.train --pretrained-embeddings
OUTPUT/vectors.txt (same --embedding-dim as --dim here).
"""

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from beam_rnn.cli.flags import add_config_flags, add_verbose_flag, config_from_flags, parse_known_flags
from beam_rnn.embeddings.config import CbowConfig, EmbeddingsConfig


def build_parser() -> argparse.ArgumentParser:
    """The flags of `EmbeddingsConfig` and `CbowConfig` (names, help and defaults come from them)."""
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="beam-rnn embeddings", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_verbose_flag(parser)
    add_config_flags(parser, EmbeddingsConfig)
    add_config_flags(parser.add_argument_group("CBOW"), CbowConfig)
    return parser


def run(argv: Sequence[str] | None = None, save_main_session: bool = True) -> dict[str, Any]:
    """Parses the flags and runs `beam_rnn.embeddings.run`; returns the metrics written to OUTPUT/metrics.json.

    Raises:
        SystemExit(2): bad flag values.  InputError (exit 2 through `beam_rnn.cli.run_command`):
            unusable inputs, found before any work.  RunFailed (exit 1): no CBOW example.
    """
    parser = build_parser()
    known, pipeline_args = parse_known_flags(parser, argv)
    config = config_from_flags(EmbeddingsConfig, known, cbow=config_from_flags(CbowConfig, known))
    from beam_rnn.embeddings.pipeline import run as run_embeddings

    return run_embeddings(config, pipeline_args, save_main_session=save_main_session)


def main(argv: Sequence[str] | None = None) -> int:
    metrics = run(argv)
    ev = metrics.get("evaluation", {})
    print(json.dumps({
        "exported_words": metrics["exported_words"],
        "epoch_losses": [round(x, 4) for x in metrics["epoch_losses"]],
        "words_per_second": metrics["words_per_second"],
        "wordsim353_spearman": ev.get("wordsim353", {}).get("spearman"),
        "simlex999_spearman": ev.get("simlex999", {}).get("spearman"),
        "analogy_accuracy": ev.get("analogy", {}).get("accuracy"),
    }))
    return 0


if __name__ == "__main__":
    from beam_rnn.cli import run_command
    from beam_rnn.cli.runtime import hard_exit

    hard_exit(run_command("embeddings", sys.argv[1:]))
