"""Preprocess a text corpus: read, split, build the vocabulary, tokenise (TFT).

    python -m pipelines.preprocess --input 'data/*.csv' --format csv --output out/prep
    python -m pipelines.preprocess --output out/prep          # IMDB (see --imdb)

Unknown flags go to Beam's PipelineOptions untouched, so
`--runner DataflowRunner --project P --region R --temp_location gs://...
--setup_file ./setup.py` runs the same job on Dataflow.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Sequence

from beam_rnn.core import constants as C


class PreprocessError(Exception):
    """The run finished but its output is not usable (one line); no manifest.json is written."""


def add_corpus_args(parser: argparse.ArgumentParser, *, input_required: bool = False) -> None:
    """Flags that describe a corpus (shared by every driver that reads one)."""
    group = parser.add_argument_group("corpus")
    group.add_argument("--input", nargs="+", required=input_required, metavar="PATTERN",
                       help="File pattern(s) or directory (aclimdb). Local paths, globs or gs://. "
                       "Default: the IMDB reviews (see --imdb).")
    group.add_argument("--format", choices=C.FORMATS, default=None,
                       help="Corpus format (default: csv, or what --imdb resolves to).")
    group.add_argument("--text-column", default=C.TEXT_KEY, help="Text column/field (csv, tsv, jsonl, tfrecord, parquet).")
    group.add_argument("--label-column", default=C.LABEL_KEY, help="Label column/field.")
    group.add_argument("--id-column", default=None, help="Id column/field (default: derived from file and position).")
    group.add_argument("--unlabelled", action="store_true", help="The corpus has no labels.")
    group.add_argument("--label-type", choices=C.LABEL_TYPES, default=C.LABEL_TYPE_INT,
                       help="int: labels are class ids 0..K-1 (negative ones are dead letters; pos/neg names "
                       "accepted for file_per_label and aclimdb); string: a label vocabulary is built.")
    group.add_argument("--labels", default=None,
                       help="Comma-separated declared label set; rows with other labels are dead-lettered. "
                       "Int labels must be 0..K-1. For string labels the order defines the ids.")
    group.add_argument("--max-document-chars", type=int, default=None, metavar="N",
                       help="Longest document text accepted, in characters, in every format (default: "
                       "beam_rnn.io.DEFAULT_MAX_DOCUMENT_CHARS, 10 million); longer documents are dead letters "
                       "(document_too_large).")
    group.add_argument("--sample-fraction", type=float, default=1.0,
                       help="Keep this fraction of the documents, chosen by hash of the id (deterministic; "
                       "the rest are counted as sampled_out). Default 1.0 (all).")
    group.add_argument("--imdb", default=None,
                       help=f"Local IMDB copy (train.csv or an aclImdb tree) used when --input is absent; "
                       f"also ${C.IMDB_ENV_VAR}. Without either, aclImdb_v1.tar.gz is downloaded once and cached.")


def resolve_corpus(known: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fill in --input/--format (IMDB by default) and check the corpus flags and inputs; exit 2 if bad.

    Before any pipeline starts: a pattern matching nothing, a directory given as a
    file (all formats but aclimdb), an unreadable file, an all-empty corpus, a
    declared int label set that is not 0..K-1 and a non-positive
    --max-document-chars are one error line and exit status 2.
    """
    from beam_rnn.preprocess import datasets
    from beam_rnn.io import DEFAULT_MAX_DOCUMENT_CHARS, CorpusConfig
    from beam_rnn.cli.runtime import corpus_input_problem

    if not known.input:
        try:
            source = datasets.resolve_imdb(known.imdb)
        except datasets.DatasetError as e:
            parser.error(str(e))
        known.input = [source.pattern]
        if known.format is None:
            known.format = source.format
        logging.info("Corpus: %s", source.description)
    if known.format is None:
        known.format = C.FORMAT_CSV
    if known.format == C.FORMAT_TEXT:
        known.unlabelled = True
    if not 0.0 < known.sample_fraction <= 1.0:
        parser.error(f"--sample-fraction must be in (0, 1], got {known.sample_fraction}")
    if known.max_document_chars is None:
        known.max_document_chars = DEFAULT_MAX_DOCUMENT_CHARS
    if known.max_document_chars < 1:
        parser.error(f"--max-document-chars must be >= 1, got {known.max_document_chars}")
    try:  # the same validation ReadCorpus applies (declared labels, columns, format)
        _corpus_config(known, CorpusConfig)
    except ValueError as e:
        parser.error(f"{'--labels: ' if known.labels and 'label' in str(e) else ''}{e}")
    problem = corpus_input_problem(known.input, directories=known.format == C.FORMAT_ACLIMDB)
    if problem:
        parser.error(problem)


def _corpus_config(known: argparse.Namespace, factory):
    return factory(
        format=known.format,
        text_column=known.text_column,
        label_column=known.label_column,
        id_column=known.id_column,
        labelled=not known.unlabelled,
        label_type=known.label_type,
        label_set=known.labels.split(",") if known.labels else None,
        max_document_chars=known.max_document_chars,
    )


def read_corpus_transform(known: argparse.Namespace):
    """The ReadCorpus transform the corpus flags describe."""
    import functools

    from beam_rnn.io import DEFAULT_MAX_DOCUMENT_CHARS, ReadCorpus

    if getattr(known, "max_document_chars", None) is None:
        known.max_document_chars = DEFAULT_MAX_DOCUMENT_CHARS
    return _corpus_config(known, functools.partial(ReadCorpus, known.input if len(known.input) > 1 else known.input[0]))


def maybe_sample(docs, fraction: float, label: str = "SampleDocuments"):
    """Keep a deterministic `fraction` of documents (no-op at 1.0); the rest are counted."""
    import apache_beam as beam

    from beam_rnn.preprocess.transform import KeepSample

    if fraction >= 1.0:
        return docs
    return docs | label >> beam.ParDo(KeepSample(fraction))


# The second read of the corpus (vocabulary only); its counters repeat the first read's and are left out.
ANALYZE_READ_STEPS = ("ReadCorpusToAnalyze", "SampleDocumentsToAnalyze")


def first_read_counters(result, namespace: str) -> dict[str, int]:
    """Counters of a preprocess run, without those of the steps in `ANALYZE_READ_STEPS`."""
    from apache_beam.metrics.metric import MetricsFilter

    out: dict[str, int] = {}
    try:
        query = result.metrics().query(MetricsFilter().with_namespace(namespace))
    except Exception:  # Some runners do not support metrics queries; stats then omit them.
        return out
    for counter in query.get("counters", []):
        if (counter.key.step or "").split("/", 1)[0] in ANALYZE_READ_STEPS:
            continue
        value = counter.committed if counter.committed is not None else counter.attempted
        out[counter.key.metric.name] = out.get(counter.key.metric.name, 0) + int(value or 0)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="beam-rnn preprocess", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_args(parser)
    parser.add_argument("--output", required=True, help="Output directory (local or gs://).")
    parser.add_argument("--vocab-size", type=int, default=20000, help="Keep the top-k words (default 20000).")
    parser.add_argument("--min-frequency", type=int, default=2, help="Drop words seen fewer times (default 2).")
    parser.add_argument("--num-oov-buckets", type=int, default=C.DEFAULT_NUM_OOV_BUCKETS, help="OOV ids (default 1).")
    parser.add_argument("--max-tokens", type=int, default=None, help="Truncate documents to this many tokens.")
    parser.add_argument("--eval-fraction", type=float, default=0.2,
                        help="Fraction held out for evaluation, by hash of the id (default 0.2).")
    parser.add_argument("--batch-size", type=int, default=1000, help="Documents per Arrow record batch.")
    parser.add_argument("--keep-tmp", action="store_true", help="Keep OUTPUT/tmp (TFT temp files).")
    return parser


def run(argv: Sequence[str] | None = None, save_main_session: bool = True) -> dict:
    """Build and run the preprocessing pipeline; returns the statistics written.

    Args:
        argv: Command-line arguments (default: sys.argv[1:]); unknown flags are
            Beam pipeline options.
        save_main_session: Pickle the main session for remote workers.

    Returns:
        The contents of OUTPUT/stats.json.

    Raises:
        SystemExit: (status 2) bad flags or inputs, before any work.
        PreprocessError: The corpus gave no documents, or int labels that are not
            0..K-1 (without --labels); no manifest.json is written.
    """
    import apache_beam as beam
    import tensorflow as tf
    import tensorflow_transform.beam as tft_beam
    from apache_beam.options.pipeline_options import SetupOptions

    from beam_rnn.io import WriteJsonLines
    from beam_rnn.core.manifest import MANIFEST_FILE, write_manifest
    from beam_rnn.preprocess.tft_graph import PreprocessConfig
    from beam_rnn.preprocess.transform import (
        AnalyzeAndTransform,
        dead_letter_reason_counts,
        finalize_stats,
        output_problem,
        write_partial_stats,
    )

    parser = build_parser()
    known, pipeline_args = parser.parse_known_args(argv)
    resolve_corpus(known, parser)
    try:
        config = PreprocessConfig(
            vocab_size=known.vocab_size,
            min_frequency=known.min_frequency,
            num_oov_buckets=known.num_oov_buckets,
            max_tokens=known.max_tokens,
            labelled=not known.unlabelled,
            label_type=known.label_type,
            label_set=tuple(known.labels.split(",")) if known.labels else None,
            eval_fraction=known.eval_fraction,
        )
        read = read_corpus_transform(known)
    except ValueError as e:
        parser.error(str(e))

    output = known.output
    tmp_dir = os.path.join(output, C.TMP_DIR)
    if tf.io.gfile.exists(os.path.join(output, C.TRANSFORMED_DIR)):
        # Stale shards from an earlier run would be mixed into this run's data.
        tf.io.gfile.rmtree(os.path.join(output, C.TRANSFORMED_DIR))
    if tf.io.gfile.exists(os.path.join(output, MANIFEST_FILE)):
        tf.io.gfile.remove(os.path.join(output, MANIFEST_FILE))  # rewritten when this run succeeds
    for stale in (C.DEAD_LETTER_DIR, C.TMP_DIR):
        if tf.io.gfile.exists(os.path.join(output, stale)):
            tf.io.gfile.rmtree(os.path.join(output, stale))
    tf.io.gfile.makedirs(tmp_dir)

    from beam_rnn.cli.runtime import pipeline_options

    options = pipeline_options(pipeline_args)
    options.view_as(SetupOptions).save_main_session = save_main_session
    with beam.Pipeline(options=options) as p, tft_beam.Context(temp_dir=tmp_dir):
        docs, dead = p | "ReadCorpus" >> read
        docs = maybe_sample(docs, known.sample_fraction)
        # Memory: the vocabulary is built from a second read of the corpus, so that the documents to
        # transform stream through instead of being held until it is ready (AnalyzeAndTransform doc).
        to_analyze, _ = p | ANALYZE_READ_STEPS[0] >> read_corpus_transform(known)
        to_analyze = maybe_sample(to_analyze, known.sample_fraction, label=ANALYZE_READ_STEPS[1])
        result = (to_analyze, docs) | "AnalyzeAndTransform" >> AnalyzeAndTransform(
            config=config, output_dir=output, batch_size=known.batch_size
        )
        _ = dead | "WriteDeadLetter" >> WriteJsonLines(os.path.join(output, C.DEAD_LETTER_DIR, "dead_letter"))
        write_partial_stats(result.stats, dead_letter_reason_counts(dead), tmp_dir)
    pipeline_result = p.result
    stats = finalize_stats(output, config=config,
                           counters={**first_read_counters(pipeline_result, "beam_rnn.io"),
                                     **first_read_counters(pipeline_result, "beam_rnn.preprocess.transform")})
    with tf.io.gfile.GFile(os.path.join(output, C.PREPROCESS_CONFIG_FILE), "w") as f:
        f.write(config.to_json())
    if not known.keep_tmp:
        tf.io.gfile.rmtree(tmp_dir)
    problem = output_problem(stats, config)
    if problem:  # stats.json and the dead letters stay for diagnosis; without a manifest nothing trains on it
        raise PreprocessError(f"{problem} (see {os.path.join(output, C.STATS_FILE)}; no {MANIFEST_FILE} written)")
    # Last: readers (train, embeddings) verify the output against it before work.
    write_manifest(output, exclude=(C.TMP_DIR + "/",))
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    logging.getLogger().setLevel(logging.INFO)
    try:
        stats = run(argv)
    except PreprocessError as e:
        print(f"beam-rnn preprocess: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: stats[k] for k in ("rows_in", "documents_out", "dead_lettered", "reconciled",
                                            "vocabulary_words")}))
    return 0


if __name__ == "__main__":
    from beam_rnn.cli.runtime import hard_exit

    hard_exit(main(sys.argv[1:]))
