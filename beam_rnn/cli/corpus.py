"""The corpus flags shared by every driver that reads one, and their resolution to a `Corpus`.

    parser = argparse.ArgumentParser()
    add_corpus_args(parser)                        # --input, --format, ... (from CorpusConfig)
    known, beam_args = parse_known_flags(parser, argv)
    corpus = resolve_corpus(known)                 # IMDB by default; InputError (exit 2) on bad inputs
    docs, dead = p | corpus.read()

The reader flags are generated from `beam_rnn.io.CorpusConfig` (the one home of
their defaults); `--input`, `--imdb`, `--unlabelled` and `--sample-fraction` describe
where the corpus is and how much of it to keep.
"""

import argparse
import logging

from beam_rnn.cli.flags import add_config_flags, config_from_flags
from beam_rnn.core import constants as C
from beam_rnn.core.errors import InputError
from beam_rnn.preprocess.config import Corpus


def add_corpus_args(parser: argparse.ArgumentParser, *, input_required: bool = False,
                    label_type_from_model: bool = False) -> None:
    """Adds the corpus flags (group "corpus") to `parser`.

    With `label_type_from_model` (score, evaluate), ``--label-type`` defaults to the
    model card's label type instead of int.
    """
    from beam_rnn.io import CorpusConfig

    group = parser.add_argument_group("corpus")
    group.add_argument("--input", nargs="+", required=input_required, metavar="PATTERN",
                       help="File pattern(s) or directory (aclimdb). Local paths, globs or gs://. "
                       "Default: the IMDB reviews (see --imdb).")
    from_model = {"label_type": None} if label_type_from_model else {}
    add_config_flags(group, CorpusConfig, defaults={"format": None, **from_model},
                     shown_defaults={"label_type": "the model's"} if label_type_from_model else None)
    group.add_argument("--unlabelled", action="store_true", help="The corpus has no labels.")
    group.add_argument("--sample-fraction", type=float, default=Corpus.sample_fraction,
                       help="Keep this fraction of the documents, chosen by hash of the id (deterministic; "
                       "the rest are counted as sampled_out). Default 1.0 (all).")
    group.add_argument("--max-dead-letter-fraction", type=float, default=Corpus.max_dead_letter_fraction,
                       metavar="F",
                       help="Fail the run (exit 1) when more than this share of the rows is dead-lettered "
                       f"(default {Corpus.max_dead_letter_fraction:g}).")
    group.add_argument("--imdb", default=None,
                       help=f"Local IMDB copy (train.csv or an aclImdb tree) used when --input is absent; "
                       f"also ${C.IMDB_ENV_VAR}. Without either, aclImdb_v1.tar.gz is downloaded once and cached.")


def resolve_corpus(known: argparse.Namespace) -> Corpus:
    """Fills in --input/--format (IMDB by default), checks the corpus flags and inputs.

    Before any pipeline starts: a pattern matching nothing, a directory given as a
    file (all formats but aclimdb), an unreadable file, an all-empty corpus, a
    declared int label set that is not 0..K-1 and a non-positive
    --max-document-chars raise `InputError` (one line, exit status 2 in `beam_rnn.cli.run_command`).

    Returns:
        The corpus the flags describe (`corpus_from_flags` builds it again from `known`).
    """
    from beam_rnn.cli.runtime import corpus_input_problem
    from beam_rnn.preprocess import datasets

    if not known.input:
        source = datasets.resolve_imdb(known.imdb)  # DatasetError is an InputError
        known.input = [source.pattern]
        if known.format is None:
            known.format = source.format
        logging.getLogger(__name__).info("Corpus: %s", source.description)
        # The IMDB copy names each review's film: split by it unless told otherwise (a split by review
        # puts a film's reviews on both sides and overstates validation accuracy).
        if getattr(known, "group_column", False) is None and source.group_column is not None:
            known.group_column = source.group_column
            logging.getLogger(__name__).info("Split: by %s (the reviews of one film stay on one side)",
                                             source.group_column)
        # Its labels are 0/1 by sentiment: name them, so scores and reports read "positive", not "1".
        if (getattr(known, "class_names", False) is None and not known.unlabelled
                and known.label_type in (None, C.LABEL_TYPE_INT)):
            known.class_names = C.IMDB_CLASS_NAMES
    if known.format is None:
        known.format = C.FORMAT_CSV
    if known.format == C.FORMAT_TEXT:
        known.unlabelled = True
    try:  # the same validation ReadCorpus applies (declared labels, columns, format)
        corpus = corpus_from_flags(known)
    except ValueError as e:
        raise InputError(f"{'--labels: ' if known.label_set and 'label' in str(e) else ''}{e}") from e
    problem = corpus_input_problem(known.input, directories=known.format == C.FORMAT_ACLIMDB)
    if problem:
        raise InputError(problem)
    return corpus


def corpus_from_flags(known: argparse.Namespace) -> Corpus:
    """The `Corpus` of parsed (and resolved, see `resolve_corpus`) corpus flags.

    Raises:
        ValueError: Invalid reader settings.
    """
    from beam_rnn.io import CorpusConfig

    label_type = known.label_type
    if label_type is None:  # from the model card, later (`beam_rnn.serve.run.fit_corpus_to_models`)
        label_type = C.LABEL_TYPE_INT if all(_is_int(x) for x in known.label_set or ()) else C.LABEL_TYPE_STRING
    # preprocess / run-all --class-names: rows and --labels may name int labels ("positive" for 1)
    # (repeated names are left to PreprocessConfig's message about --class-names)
    names = getattr(known, "class_names", None) if label_type == C.LABEL_TYPE_INT else None
    names = tuple(names) if names and len(set(names)) == len(names) else None
    config = config_from_flags(CorpusConfig, known, labelled=not known.unlabelled, label_type=label_type,
                               class_names=names)
    return Corpus(tuple(known.input), config, labels=known.label_set,
                  sample_fraction=getattr(known, "sample_fraction", Corpus.sample_fraction),
                  max_dead_letter_fraction=getattr(known, "max_dead_letter_fraction", Corpus.max_dead_letter_fraction),
                  label_type_from_model=known.label_type is None)


def _is_int(text: str) -> bool:
    return str(text).strip().lstrip("-").isdigit()
