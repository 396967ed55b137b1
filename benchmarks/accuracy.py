"""Held-out accuracy with default settings, beside the published references (issue 14 item 4).

Every corpus runs through the CLI a user would run, with defaults only:

* ``imdb``: `preprocess` on ../shared/data/imdb/train.csv split by film (`--group-column movie`),
  `train --kind both`; the validation accuracy of the film-disjoint eval split.
  Reference: Maas et al. 2011, 0.889 (on the official test split, other films).
* ``sst2`` / ``sst1``: `preprocess` on stsa.{binary,fine}.train (its 20% eval split only drives early
  stopping), `train --kind both`, then `evaluate` on stsa.{binary,fine}.dev, which training never saw.
  References: Kim 2014 CNN-rand on the test split, SST-2 0.827, SST-1 0.450.
* ``mr``: Kim's protocol, 10-fold cross-validation over the whole corpus: `preprocess
  --eval-fraction 0`, `train --folds 10` (mean ± sd over the folds).  Reference: CNN-rand 0.761.

    python benchmarks/accuracy.py --corpora mr sst2 --work runs/bench_accuracy [--seeds 42 43 44] [--warm-start]

``--warm-start`` first trains CBOW vectors on the corpus' train split (`beam-rnn embeddings
--backend gensim`) and warm-starts both classifiers from them (issue 14 item 3).

Prints one markdown table (mean ± sd over seeds where several are given) and writes
WORK/summary_{cold,warm}.json.  The official test splits are not in ../shared/data: these are validation
numbers, and the references are test numbers (of other models) to stand beside, not equal.
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")
KINDS = ("bilstm", "lstm")
EMBEDDING_DIM = 64  # the classifiers' default --embedding-dim

CORPORA = {
    "imdb": {"reference": ("Maas et al. 2011 (test)", 0.889),
             "preprocess": ["--input", os.path.join(DATA, "imdb", "train.csv"), "--format", "csv",
                            "--id-column", "id", "--group-column", "movie"]},
    "sst2": {"reference": ("Kim 2014 CNN-rand (test)", 0.827),
             "preprocess": ["--input", os.path.join(DATA, "sst2", "stsa.binary.train"), "--format", "labeled_lines"],
             "dev": ["--input", os.path.join(DATA, "sst2", "stsa.binary.dev"), "--format", "labeled_lines"]},
    "sst1": {"reference": ("Kim 2014 CNN-rand (test)", 0.450),
             "preprocess": ["--input", os.path.join(DATA, "sst2", "stsa.fine.train"), "--format", "labeled_lines"],
             "dev": ["--input", os.path.join(DATA, "sst2", "stsa.fine.dev"), "--format", "labeled_lines"]},
    "mr": {"reference": ("Kim 2014 CNN-rand (10-fold CV)", 0.761),
           "preprocess": ["--input", os.path.join(DATA, "mr", "rt-polarity.pos"),
                          os.path.join(DATA, "mr", "rt-polarity.neg"), "--format", "file_per_label",
                          "--eval-fraction", "0"],
           "folds": 10},
}


def cli(*args: str) -> str:
    """Runs `beam-rnn ARGS` in a fresh process; returns its last stdout line (exits on failure)."""
    proc = subprocess.run([sys.executable, "-m", "beam_rnn.cli", *args], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"beam-rnn {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


def run_corpus(name: str, work: str, seed: int, warm_start: bool = False, arm: str | None = None,
               train_flags: Sequence[str] = (), kinds: Sequence[str] = KINDS) -> dict[str, float]:
    """Accuracy per model kind for one corpus and seed (warm-started from the corpus' own CBOW vectors;
    `train_flags` added to `train`, the models and reports named by `arm`; only `kinds` trained)."""
    spec = CORPORA[name]
    arm = arm or ("warm" if warm_start else "cold")
    prep, models = os.path.join(work, name, "prep"), os.path.join(work, name, f"models_{arm}_seed{seed}")
    if not os.path.exists(os.path.join(prep, "manifest.json")):
        cli("preprocess", *spec["preprocess"], "--output", prep, "--runner", "DirectRunner")
    train = ["train", "--transformed", prep, "--output", models, "--kind", "both" if len(kinds) > 1 else kinds[0], "--seed", str(seed), *train_flags]
    if warm_start:  # CBOW on the train split only (never the eval split or dev), width of the classifiers' Embedding
        vectors = os.path.join(work, name, f"vectors_seed{seed}")
        if not os.path.exists(os.path.join(vectors, "vectors.txt")):
            cli("embeddings", "--transformed", prep, "--output", vectors, "--dim", str(EMBEDDING_DIM),
                "--backend", "gensim", "--workers", "1", "--seed", str(seed), "--no-eval", "--runner", "DirectRunner")
        train += ["--pretrained-embeddings", os.path.join(vectors, "vectors.txt")]
    if spec.get("folds"):
        printed = json.loads(cli(*train, "--folds", str(spec["folds"])))
        return {kind: printed[kind]["cv_accuracy_mean"] for kind in kinds}
    printed = json.loads(cli(*train))
    if "dev" not in spec:
        return {kind: printed[kind]["validation_accuracy"] for kind in kinds}
    report = os.path.join(work, name, f"dev_{arm}_seed{seed}")
    cli("evaluate", "--model", models, *spec["dev"], "--output", report, "--runner", "DirectRunner")
    with open(os.path.join(report, "metrics.json")) as f:
        metrics = json.load(f)
    return {kind: metrics["models"][kind]["accuracy"] for kind in kinds}


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", nargs="+", choices=tuple(CORPORA), default=list(CORPORA))
    parser.add_argument("--work", default=os.path.join(ROOT, "runs", "bench_accuracy"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42], help="One training run per seed (default 42).")
    parser.add_argument("--warm-start", action="store_true",
                        help="Warm-start both models from CBOW vectors trained on the corpus' own train split "
                             "(gensim backend, one worker: deterministic per seed).")
    parser.add_argument("--arm", help="Name of this variant (models_ARM_seedS, dev_ARM_seedS, summary_ARM.json); "
                        "default cold / warm.")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS),
                        help="The models to train (default both).")
    parser.add_argument("--train-flags", default="", help='More `train` flags, e.g. --train-flags="--embedding-dropout 0.2".')
    args = parser.parse_args(argv)
    summary = {}
    arm = args.arm or ("warm" if args.warm_start else "cold")
    kinds = tuple(k for k in KINDS if k in args.kinds)
    for name in args.corpora:
        start = time.time()
        runs = [run_corpus(name, args.work, seed, args.warm_start, arm, shlex.split(args.train_flags), kinds)
                for seed in args.seeds]
        summary[name] = {"seeds": args.seeds, "warm_start": args.warm_start, "train_flags": args.train_flags,
                         "accuracy": {k: [r[k] for r in runs] for k in kinds},
                         "reference": CORPORA[name]["reference"], "seconds": round(time.time() - start, 1)}
        print(f"{name}: " + ", ".join(f"{k} {_cell(summary[name]['accuracy'][k])}" for k in kinds), flush=True)
    os.makedirs(args.work, exist_ok=True)
    with open(os.path.join(args.work, f"summary_{arm}.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print("| corpus | BiLSTM | streaming LSTM | reference |\n| --- | --- | --- | --- |")
    for name, s in summary.items():
        ref, value = s["reference"]
        cells = [_cell(s["accuracy"][k]) if k in kinds else "–" for k in KINDS]
        print(f"| {name} | {cells[0]} | {cells[1]} | {ref}: {value:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
