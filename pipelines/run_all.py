"""The main job: corpus → preprocess → train both models → score → evaluate (report) [→ refit].

    python -m pipelines.run_all --output runs/imdb              # IMDB (see --imdb)
    python -m pipelines.run_all --output runs/quick --quick     # a small subset, a few minutes
    python -m pipelines.run_all --input 'data/*.jsonl' --format jsonl --output runs/mine

Each stage is the library call behind a driver you can run alone (`run_preprocess`,
`run_training`, `run_score`, `run_evaluate`), given config objects; unknown flags are
Beam pipeline options passed to each Beam stage. The last line printed points at the report.
"""

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from beam_rnn.cli.corpus import add_corpus_args, resolve_corpus
from beam_rnn.cli.flags import add_config_flags, add_verbose_flag, parse_known_flags
from beam_rnn.core import constants as C
from beam_rnn.core.errors import InputError
from beam_rnn.preprocess.config import PreprocessConfig

# Enough optimizer updates to learn something in a few minutes: on the IMDB copy (2 cores) 20% and 3 epochs
# (~180 updates) gave validation accuracy BiLSTM 0.81 / LSTM 0.81 in ~2.2 min for the whole run, where 8% and
# 2 epochs (~50 updates) left the BiLSTM at chance (benchmarks/RESULTS.md, "run-all --quick profile").
QUICK = {"sample_fraction": 0.2, "epochs": 3, "vocab_size": 5000, "max_length": 200}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="beam-rnn run-all", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_verbose_flag(parser)
    add_corpus_args(parser)
    parser.add_argument("--output", default=os.path.join("runs", "imdb"), help="Run directory (default runs/imdb).")
    parser.add_argument("--quick", action="store_true",
                        help=f"Small run: {QUICK['sample_fraction'] * 100:g}%% of the corpus, {QUICK['epochs']} epochs, "
                        f"{QUICK['vocab_size']} words, documents cut to {QUICK['max_length']} tokens.")
    parser.add_argument("--epochs", type=int, default=None, help="Training epochs (default: the trainer's, or quick's).")
    parser.add_argument("--refit", action="store_true",
                        help="After the report, refit both models on the train and eval splits together for their "
                        "kept epochs (train --refit) into OUTPUT/models-refit: the models to ship; the report "
                        "describes OUTPUT/models, trained without the eval split.")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help=f"Vocabulary size (default {PreprocessConfig.vocab_size}, quick {QUICK['vocab_size']}).")
    add_config_flags(parser, PreprocessConfig, exclude=[f.name for f in dataclasses.fields(PreprocessConfig)
                                                        if f.name not in ("group_column", "class_names")])
    return parser


def _stage(number: int, total: int, name: str, fn: Callable[[], Any], describe: Callable[[Any], str]) -> Any:
    print(f"[{number}/{total}] {name} ...", flush=True)
    start = time.perf_counter()
    result = fn()
    print(f"[{number}/{total}] {name} done in {time.perf_counter() - start:.0f}s: {describe(result)}", flush=True)
    return result


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every stage; returns {stage: result}.

    Raises:
        SystemExit: (status 2) bad flags.  InputError (exit 2 through `beam_rnn.cli.run_command`):
            bad flag values or inputs, before any work.
        beam_rnn.core.errors.BeamRnnError: A stage refused its inputs or failed
            (a preprocessing failure says ``preprocess: ...``).
    """
    parser = build_parser()
    known, beam_args = parse_known_flags(parser, argv)  # before the heavy imports: --help is instant

    from beam_rnn.preprocess import pipeline as preprocess
    from beam_rnn.serve import run as serve
    from beam_rnn.serve.config import OUTPUT_JSONL, EvaluateConfig, ScoreConfig
    from beam_rnn.train import trainer
    from beam_rnn.train.config import TrainConfig

    if known.unlabelled:
        raise InputError("run-all trains classifiers and needs a labelled corpus")
    from beam_rnn.cli.runtime import driver_waits, pipeline_options

    if not driver_waits(pipeline_options(beam_args)):
        raise InputError("run-all waits for each stage's output before the next one starts: it cannot be staged "
                         "(--template_location) or left running (--no_wait_until_finish); use the "
                         "preprocess and score templates instead")
    corpus = resolve_corpus(known)
    if known.quick and corpus.sample_fraction == 1.0:
        corpus = dataclasses.replace(corpus, sample_fraction=QUICK["sample_fraction"])
    vocab = known.vocab_size or (QUICK["vocab_size"] if known.quick else PreprocessConfig.vocab_size)
    epochs = known.epochs or (QUICK["epochs"] if known.quick else None)
    prep_config = PreprocessConfig(vocab_size=vocab, group_column=known.group_column, class_names=known.class_names,
                                   **corpus.label_settings())
    train_config = TrainConfig(kinds=C.MODEL_NAMES, **({"epochs": epochs} if epochs else {}),
                               **({"max_length": QUICK["max_length"]} if known.quick else {}))
    out = known.output
    prep, models, scores, report = (os.path.join(out, d) for d in ("prep", "models", "scores", "report"))
    results: dict[str, Any] = {}
    total = 5 if known.refit else 4

    def run_preprocess() -> dict:
        try:
            return preprocess.run_preprocess(corpus, prep_config, prep, pipeline_options=beam_args)
        except preprocess.PreprocessError as e:
            raise preprocess.PreprocessError(f"preprocess: {e}") from e

    results["preprocess"] = _stage(
        1, total, "preprocess", run_preprocess,
        lambda s: f"{s['documents_out']} documents, {s['dead_lettered']} dead-lettered, "
                  f"{s['vocabulary_words']} words -> {prep}")
    results["train"] = _stage(
        2, total, "train (bilstm + lstm)", lambda: trainer.run_training(prep, models, train_config),
        lambda r: "validation accuracy " + ", ".join(f"{k} {m['accuracy']:.3f}" for k, m in r.items())
        + _on_documents(next(iter(r.values())).get("eval_examples"))
        # The report (stage 4) reads whole documents: say why its accuracy may differ from this one.
        + (f" (their first {train_config.max_length} tokens)" if train_config.max_length else "") + f" -> {models}")
    model_dirs = [os.path.join(models, k) for k in C.MODEL_NAMES]
    # Scoring covers the whole corpus (even with --quick): it is the batch job users run
    # on large collections, and its counts reconcile against every row read.
    results["score"] = _stage(
        3, total, "score (both models, whole corpus)",
        lambda: serve.run_score(model_dirs, dataclasses.replace(corpus, sample_fraction=1.0),
                                ScoreConfig(output_format=OUTPUT_JSONL), os.path.join(scores, "scores"), beam_args),
        lambda r: f"{r['scored']} scored, {r['dead_lettered']} dead-lettered -> {scores}")
    results["evaluate"] = _stage(
        4, total, "evaluate (held-out split)",
        lambda: serve.run_evaluate(models, corpus, EvaluateConfig(split="eval"), report, beam_args),
        lambda m: "accuracy " + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in m["models"].items())
        + _on_documents(m.get("documents")) + " (eval split)")
    if known.refit:
        from beam_rnn.train.refit import refit_copy

        refitted = os.path.join(out, "models-refit")
        results["refit"] = _stage(
            5, total, "refit (bilstm + lstm, train + eval splits)", lambda: refit_copy(prep, models, refitted, train_config),
            lambda r: ", ".join(f"{k} {m['refit']['epochs']} epoch{'' if m['refit']['epochs'] == 1 else 's'}"
                                for k, m in r.items())
            + f" on {next(iter(r.values()))['refit']['train_examples']:,} documents -> {refitted} (the models to ship)")
    print(f"Report: {results['evaluate']['report']}", flush=True)
    return results


def _on_documents(n: int | None) -> str:
    return "" if n is None else f" on {n:,} held-out documents"


def main(argv: Sequence[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    from beam_rnn.cli import run_command
    from beam_rnn.cli.runtime import hard_exit

    hard_exit(run_command("run-all", sys.argv[1:]))
