"""The main job: corpus → preprocess → train both models → score → evaluate (report).

    python -m pipelines.run_all --output runs/imdb              # IMDB (see --imdb)
    python -m pipelines.run_all --output runs/quick --quick     # a small subset, a few minutes
    python -m pipelines.run_all --input 'data/*.jsonl' --format jsonl --output runs/mine

Every stage is the same driver you can run alone (`pipelines.preprocess`,
`pipelines.train`, `pipelines.score`, `pipelines.evaluate`); unknown flags are Beam
pipeline options passed to each Beam stage. The last line printed points at the report.
"""

import argparse
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from beam_rnn.cli.corpus import add_corpus_args, resolve_corpus
from beam_rnn.cli.flags import parse_known_flags
from beam_rnn.core import constants as C
from beam_rnn.preprocess.config import Corpus, PreprocessConfig

QUICK = {"sample_fraction": 0.08, "epochs": 2, "vocab_size": 5000, "max_length": 200}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="beam-rnn run-all", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_args(parser)
    parser.add_argument("--output", default=os.path.join("runs", "imdb"), help="Run directory (default runs/imdb).")
    parser.add_argument("--quick", action="store_true",
                        help=f"Small run: {QUICK['sample_fraction'] * 100:g}%% of the corpus, {QUICK['epochs']} epochs, "
                        f"{QUICK['vocab_size']} words, documents cut to {QUICK['max_length']} tokens.")
    parser.add_argument("--epochs", type=int, default=None, help="Training epochs (default: the trainer's, or quick's).")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help=f"Vocabulary size (default {PreprocessConfig.vocab_size}, quick {QUICK['vocab_size']}).")
    return parser


def _corpus_argv(corpus: Corpus) -> list[str]:
    """The corpus as flags, for the stages still run through their driver's `run(argv)`."""
    config = corpus.config
    argv = ["--input", *corpus.patterns, "--format", config.format, "--text-column", config.text_column,
            "--label-column", config.label_column, "--label-type", config.label_type]
    if config.id_column:
        argv += ["--id-column", config.id_column]
    if corpus.labels:
        argv += ["--labels", ",".join(corpus.labels)]
    argv += ["--encoding", config.encoding, "--max-document-chars", str(config.max_document_chars)]
    if corpus.sample_fraction != 1.0:
        argv += ["--sample-fraction", str(corpus.sample_fraction)]
    return argv


def _stage(number: int, total: int, name: str, fn: Callable[[], Any], describe: Callable[[Any], str]) -> Any:
    print(f"[{number}/{total}] {name} ...", flush=True)
    start = time.perf_counter()
    result = fn()
    print(f"[{number}/{total}] {name} done in {time.perf_counter() - start:.0f}s: {describe(result)}", flush=True)
    return result


def _preprocess(corpus: Corpus, config: PreprocessConfig, output: str, beam_args: Sequence[str]) -> dict:
    from beam_rnn.preprocess.pipeline import PreprocessError, run_preprocess

    try:
        return run_preprocess(corpus, config, output, pipeline_options=beam_args)
    except PreprocessError as e:
        raise PreprocessError(f"preprocess: {e}") from e


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every stage; returns {stage: result}.

    Raises:
        SystemExit: (status 2) bad flags or inputs, before any work.
        beam_rnn.preprocess.pipeline.PreprocessError: Preprocessing gave no usable output.
    """
    from pipelines import evaluate, score, train

    parser = build_parser()
    known, beam_args = parse_known_flags(parser, argv)
    if known.unlabelled:
        parser.error("run-all trains classifiers and needs a labelled corpus")
    corpus = resolve_corpus(known, parser)
    if known.quick and corpus.sample_fraction == 1.0:
        corpus = dataclasses.replace(corpus, sample_fraction=QUICK["sample_fraction"])
    whole = dataclasses.replace(corpus, sample_fraction=1.0)
    vocab = known.vocab_size or (QUICK["vocab_size"] if known.quick else PreprocessConfig.vocab_size)
    try:
        config = PreprocessConfig(vocab_size=vocab, **corpus.label_settings())
    except ValueError as e:
        parser.error(str(e))
    epochs = known.epochs or (QUICK["epochs"] if known.quick else None)
    out = known.output
    prep, models, scores, report = (os.path.join(out, d) for d in ("prep", "models", "scores", "report"))
    results: dict[str, Any] = {}
    total = 4
    results["preprocess"] = _stage(
        1, total, "preprocess", lambda: _preprocess(corpus, config, prep, beam_args),
        lambda s: f"{s['documents_out']} documents, {s['dead_lettered']} dead-lettered, "
                  f"{s['vocabulary_words']} words -> {prep}")
    train_argv = ["--transformed", prep, "--output", models, "--model", "both"]
    if epochs:
        train_argv += ["--epochs", str(epochs)]
    if known.quick:
        train_argv += ["--max-length", str(QUICK["max_length"])]
    results["train"] = _stage(
        2, total, "train (bilstm + lstm)", lambda: train.run(train_argv),
        lambda r: ", ".join(f"{k} eval accuracy {m['accuracy']:.3f}" for k, m in r.items()) + f" -> {models}")
    model_dirs = [os.path.join(models, k) for k in C.MODEL_NAMES]
    # Scoring covers the whole corpus (even with --quick): it is the batch job users run
    # on large collections, and its counts reconcile against every row read.
    results["score"] = _stage(
        3, total, "score (both models, whole corpus)",
        lambda: score.run(_corpus_argv(whole) + ["--model", *model_dirs, "--output", os.path.join(scores, "scores"),
                                                 "--output-format", "jsonl"] + beam_args),
        lambda r: f"{r['scored']} scored, {r['dead_lettered']} dead-lettered -> {scores}")
    results["evaluate"] = _stage(
        4, total, "evaluate (held-out split)",
        lambda: evaluate.run(_corpus_argv(corpus) + ["--models", models, "--output", report, "--split", "eval"]
                             + beam_args),
        lambda m: ", ".join(f"{k} accuracy {v['accuracy']:.3f}" for k, v in m["models"].items()))
    print(f"Report: {results['evaluate']['report']}", flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    logging.getLogger().setLevel(logging.WARNING)
    run(argv)
    return 0


if __name__ == "__main__":
    from beam_rnn.cli import run_command
    from beam_rnn.cli.runtime import hard_exit

    hard_exit(run_command("run-all", sys.argv[1:]))
