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

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Sequence

from beam_rnn.cli.corpus import add_corpus_args, read_corpus_transform, resolve_corpus


def build_parser() -> argparse.ArgumentParser:
    from beam_rnn.serve import scoring as I

    parser = argparse.ArgumentParser(prog="beam-rnn score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", required=True, metavar="DIR",
                        help="Exported model dir(s) (OUTPUT/<kind> of pipelines.train); NAME=DIR names one. "
                        "Two or more are scored side by side in one pass (records carry each model's "
                        "outputs and `agreement`).")
    add_corpus_args(parser)
    parser.add_argument("--output", required=True, metavar="PREFIX",
                        help="Output prefix (local or gs://): PREFIX-*.FORMAT, PREFIX-dead_letter-*.jsonl, "
                        "PREFIX-summary.json.")
    parser.add_argument("--output-format", choices=I.OUTPUT_FORMATS, default=I.OUTPUT_JSONL,
                        help="Score file format (default jsonl).")
    parser.add_argument("--min-batch-size", type=int, default=I.DEFAULT_BATCH_SIZE,
                        help=f"Smallest RunInference batch (default {I.DEFAULT_BATCH_SIZE}).")
    parser.add_argument("--max-batch-size", type=int, default=I.DEFAULT_BATCH_SIZE,
                        help=f"Largest RunInference batch (default {I.DEFAULT_BATCH_SIZE}).")
    parser.add_argument("--sort-buffer", type=int, default=I.DEFAULT_SORT_BUFFER,
                        help="Documents per bundle sorted by length before batching, so batches pad less "
                        f"(default {I.DEFAULT_SORT_BUFFER}; 0 disables).")
    parser.add_argument("--num-shards", type=int, default=0, help="Score file shards (default: runner's choice).")
    parser.add_argument("--share-model-across-processes", action="store_true",
                        help="One model copy per machine shared by all SDK worker processes (Beam large_model).")
    parser.add_argument("--model-copies", type=int, default=None,
                        help="Exact number of model copies per machine (implies sharing).")
    parser.add_argument("--retry-failed-batches", action="store_true",
                        help="Re-score the documents of a batch that failed one at a time, so only failing "
                        "documents are dead-lettered (on the DirectRunner this buffers all scores in memory).")
    parser.add_argument("--auc-max-bins", type=int, default=I.DEFAULT_AUC_MAX_BINS,
                        help="The summary's AUC is exact up to this many distinct scores, "
                        f"a bounded histogram beyond (default {I.DEFAULT_AUC_MAX_BINS}).")
    parser.add_argument("--skip-model-load-check", action="store_true",
                        help="Only check that saved_model.pb and model_card.json exist and parse; "
                        "do not load the SavedModel on the launcher.")
    return parser


def _delete_stale_outputs(prefix: str, output_format: str) -> None:
    """Removes earlier outputs of this prefix, so that old shards are not mixed in."""
    from apache_beam.io.filesystems import FileSystems

    from beam_rnn.serve.scoring import output_patterns

    paths = []
    for result in FileSystems.match(list(output_patterns(prefix, output_format).values())):
        paths += [m.path for m in result.metadata_list]
    if paths:
        FileSystems.delete(paths)


def _reconcile(io_counters: dict[str, int], score_counters: dict[str, int]) -> dict[str, Any]:
    report: dict[str, Any] = {
        "rows_in": io_counters.get("rows_in"),
        "read_dead_lettered": io_counters.get("dead_letter", 0) if io_counters else None,
        "documents_in": score_counters.get("documents_in"),
        "scored": score_counters.get("scored", 0) if score_counters else None,
        "score_dead_lettered": score_counters.get("dead_letter", 0) if score_counters else None,
        "failed_batches": score_counters.get("failed_batches", 0) if score_counters else None,
        "retried_singly": score_counters.get("retried_singly", 0) if score_counters else None,
    }
    if io_counters and score_counters:
        report["dead_lettered"] = report["read_dead_lettered"] + report["score_dead_lettered"]
        report["reconciled"] = (
            io_counters.get("rows_in", 0) == io_counters.get("documents_out", 0) + io_counters.get("dead_letter", 0)
            and io_counters.get("documents_out", 0) == score_counters.get("documents_in", 0)
            and score_counters.get("documents_in", 0) == report["scored"] + report["score_dead_lettered"]
        )
    else:
        report["dead_lettered"] = None
        report["reconciled"] = None  # this runner reports no counters
    return report


def run(argv: Sequence[str] | None = None, save_main_session: bool = False) -> dict[str, Any]:
    """Build and run the scoring pipeline.

    Args:
        argv: Command-line arguments (default: sys.argv[1:]); unknown flags are
            Beam pipeline options.
        save_main_session: Pickle the main session for remote workers (not needed:
            everything the workers run lives in beam_rnn).

    Returns:
        Counts (rows in, scored, dead-lettered, reconciled), output paths and, for
        labelled corpora, the summary (also in PREFIX-summary.json).
    """
    import apache_beam as beam
    import tensorflow as tf
    from apache_beam.options.pipeline_options import SetupOptions

    from beam_rnn.serve import scoring as I
    from beam_rnn.io import WriteJsonLines
    from beam_rnn.cli.runtime import counters

    parser = build_parser()
    known, pipeline_args = parser.parse_known_args(argv)
    resolve_corpus(known, parser)
    keep_loaded = []
    try:
        infos = I.resolve_models(known.model)
        if not known.skip_model_load_check:
            keep_loaded = [I.check_model_loads(info) for info in infos]  # reused by in-process workers
    except I.ModelDirError as e:
        parser.error(str(e))
    if getattr(known, "sample_fraction", 1.0) != 1.0:
        parser.error("--sample-fraction is a preprocessing option; score scores every document "
                     "(sample the corpus files instead)")
    if known.num_shards < 0:
        parser.error(f"--num-shards must be >= 0, got {known.num_shards}")
    try:
        read = read_corpus_transform(known)
        score = I.ScoreCorpus(
            models=infos,
            corpus=read,
            min_batch_size=known.min_batch_size,
            max_batch_size=known.max_batch_size,
            sort_buffer=known.sort_buffer,
            share_model_across_processes=known.share_model_across_processes,
            model_copies=known.model_copies,
            auc_max_bins=known.auc_max_bins,
            retry_failed_batches=known.retry_failed_batches,
        )
    except ValueError as e:
        parser.error(str(e))

    prefix = known.output
    parent = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
    if parent and "://" not in parent:
        tf.io.gfile.makedirs(parent)
    _delete_stale_outputs(prefix, known.output_format)

    from beam_rnn.cli.runtime import pipeline_options

    options = pipeline_options(pipeline_args)
    options.view_as(SetupOptions).save_main_session = save_main_session
    with beam.Pipeline(options=options) as p:
        result = p | "ScoreCorpus" >> score
        _ = result.scores | "WriteScores" >> I.WriteScores(
            prefix, output_format=known.output_format, columns=score.columns, num_shards=known.num_shards
        )
        _ = result.dead_letter | "WriteDeadLetter" >> WriteJsonLines(prefix + "-dead_letter")
        _ = I.write_summary(result.summary, prefix)
    del keep_loaded

    report = _reconcile(counters(p.result, "beam_rnn.io"), counters(p.result, I.METRICS_NAMESPACE))
    report["models"] = {info.name: info.model_dir for info in infos}
    report["outputs"] = I.output_patterns(prefix, known.output_format)
    path = report["outputs"]["summary"]
    with tf.io.gfile.GFile(path) as f:
        summary = json.loads(f.read())
    summary["counters"] = {k: v for k, v in report.items() if k not in ("models", "outputs")}
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(I.summary_json(summary))
    report["summary"] = summary
    report["duplicate_ids"] = summary.get("duplicate_ids")
    if summary.get("duplicate_ids"):
        logging.warning("%d of %d scored documents repeat an earlier document id (%d distinct ids)",
                        summary["duplicate_ids"], summary["ids"], summary["distinct_ids"])
    return report


def main(argv: Sequence[str] | None = None) -> int:
    logging.getLogger().setLevel(logging.INFO)
    report = run(argv)
    brief = {k: report.get(k) for k in ("rows_in", "documents_in", "scored", "dead_lettered", "reconciled",
                                        "duplicate_ids")}
    summary = report.get("summary")
    if summary and summary.get("labelled"):
        brief["metrics"] = {
            name: {k: m.get(k) for k in ("accuracy", "auc", "auc_method")} for name, m in summary["models"].items()
        }
        if "agreement" in summary:
            brief["agreement"] = summary["agreement"]
    brief["outputs"] = report["outputs"]
    print(json.dumps(brief))
    return 0


if __name__ == "__main__":
    from beam_rnn.cli.runtime import hard_exit

    hard_exit(main(sys.argv[1:]))
