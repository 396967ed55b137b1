"""The main job: corpus → preprocess → train both models → score → evaluate (report).

    python -m pipelines.run_all --output runs/imdb              # IMDB (see --imdb)
    python -m pipelines.run_all --output runs/quick --quick     # a small subset, a few minutes
    python -m pipelines.run_all --input 'data/*.jsonl' --format jsonl --output runs/mine

Every stage is the same driver you can run alone (`pipelines.preprocess`,
`pipelines.train`, `pipelines.score`, `pipelines.evaluate`); unknown flags are Beam
pipeline options passed to each Beam stage. The last line printed points at the report.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any, Callable, Sequence

from beam_rnn.core import constants as C

QUICK = {"sample_fraction": 0.08, "epochs": 2, "vocab_size": 5000, "max_length": 200}


def build_parser() -> argparse.ArgumentParser:
    from pipelines.preprocess import add_corpus_args

    parser = argparse.ArgumentParser(prog="beam-rnn run-all", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_args(parser)
    parser.add_argument("--output", default=os.path.join("runs", "imdb"), help="Run directory (default runs/imdb).")
    parser.add_argument("--quick", action="store_true",
                        help=f"Small run: {QUICK['sample_fraction'] * 100:g}%% of the corpus, {QUICK['epochs']} epochs, "
                        f"{QUICK['vocab_size']} words, documents cut to {QUICK['max_length']} tokens.")
    parser.add_argument("--epochs", type=int, default=None, help="Training epochs (default: the trainer's, or quick's).")
    parser.add_argument("--vocab-size", type=int, default=None, help="Vocabulary size (default 20000, quick 5000).")
    return parser


def _corpus_argv(known: argparse.Namespace) -> list[str]:
    """The corpus flags, resolved, to hand to each stage."""
    argv = ["--input", *known.input, "--format", known.format, "--text-column", known.text_column,
            "--label-column", known.label_column, "--label-type", known.label_type]
    if known.id_column:
        argv += ["--id-column", known.id_column]
    if known.labels:
        argv += ["--labels", known.labels]
    argv += ["--max-document-chars", str(known.max_document_chars)]
    return argv


def _stage(number: int, total: int, name: str, fn: Callable[[], Any], describe: Callable[[Any], str]) -> Any:
    print(f"[{number}/{total}] {name} ...", flush=True)
    start = time.perf_counter()
    result = fn()
    print(f"[{number}/{total}] {name} done in {time.perf_counter() - start:.0f}s: {describe(result)}", flush=True)
    return result


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every stage; returns {stage: result}."""
    from pipelines import evaluate, preprocess, score, train
    from pipelines.preprocess import resolve_corpus

    parser = build_parser()
    known, beam_args = parser.parse_known_args(argv)
    if known.unlabelled:
        parser.error("run-all trains classifiers and needs a labelled corpus")
    resolve_corpus(known, parser)
    sample = QUICK["sample_fraction"] if known.quick and known.sample_fraction == 1.0 else known.sample_fraction
    vocab = known.vocab_size or (QUICK["vocab_size"] if known.quick else 20000)
    epochs = known.epochs or (QUICK["epochs"] if known.quick else None)
    corpus = _corpus_argv(known)
    sampled = corpus + ["--sample-fraction", str(sample)]
    out = known.output
    prep, models, scores, report = (os.path.join(out, d) for d in ("prep", "models", "scores", "report"))
    results: dict[str, Any] = {}
    total = 4
    results["preprocess"] = _stage(
        1, total, "preprocess",
        lambda: preprocess.run(sampled + ["--output", prep, "--vocab-size", str(vocab)] + beam_args),
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
        lambda: score.run(corpus + ["--model", *model_dirs, "--output", os.path.join(scores, "scores"),
                                    "--output-format", "jsonl"] + beam_args),
        lambda r: f"{r['scored']} scored, {r['dead_lettered']} dead-lettered -> {scores}")
    results["evaluate"] = _stage(
        4, total, "evaluate (held-out split)",
        lambda: evaluate.run(sampled + ["--models", models, "--output", report, "--split", "eval"] + beam_args),
        lambda m: ", ".join(f"{k} accuracy {v['accuracy']:.3f}" for k, v in m["models"].items()))
    print(f"Report: {results['evaluate']['report']}", flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.preprocess import PreprocessError

    logging.getLogger().setLevel(logging.WARNING)
    try:
        run(argv)
    except PreprocessError as e:
        print(f"beam-rnn run-all: error: preprocess: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from beam_rnn.cli.runtime import hard_exit

    hard_exit(main(sys.argv[1:]))
