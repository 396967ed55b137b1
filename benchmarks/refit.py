"""What `train --refit` gains: the exported model trained again on train + eval, measured on films no run saw.

A refit model has no held-out split of its own preprocessing left, so the measurement
nests one split inside another, on ../shared/data/imdb/train.csv split by film:

* outer: the films whose sha256 bucket is below 0.2 (the same 5,240 reviews as
  `preprocess --group-column movie`'s default eval split; `benchmarks/accuracy.py`'s
  IMDB validation set) are the test set, WORK/outer.csv; no run trains or stops on them;
* inner: the other films (19,760 reviews), WORK/inner.csv, preprocessed with
  ``--group-column movie --eval-fraction 0.36``: the buckets 0.2-0.36 are its eval split
  (~20% of the inner reviews), the rest its train split.

Per seed, both arms through the CLI a user runs, then `evaluate` on outer.csv:

* ``base``: `beam-rnn train --kind both --seed S` (train split; early stopping on the
  inner eval split), what `train` exports without --refit;
* ``refit``: the same selection run followed by the refit on train + eval for its kept
  epochs: `beam-rnn train --refit`.  The selection run is bit-identical to ``base``'s
  (tests/test_refit.py), so by default the script refits a copy of ``base``'s finished
  directory (`beam_rnn.train.refit.load_selection` + `refit` + the export, what `train --refit`
  runs after the selection) instead of training the selection again; ``--full-cli`` runs
  `train --refit` from scratch instead.

Prints accuracy on the outer films per arm and model (mean ± sd over seeds, the paired
difference) and the training time of each arm (the ratio refit / base).

    python benchmarks/refit.py --work runs/bench_refit --seeds 42 43 44
"""

import argparse
import csv
import json
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]
from accuracy import KINDS, _cell, cli  # noqa: E402  (the same CLI runner and table cells)

DATA = os.path.join(ROOT, "..", "shared", "data", "imdb", "train.csv")
OUTER_FRACTION = 0.2  # preprocess's default --eval-fraction: the outer films are its default eval split
INNER_EVAL_TO = 0.36  # inner eval = buckets [0.2, 0.36): 20% of the inner films' share (0.8 * 0.2 = 0.16)


def split_corpus(work: str) -> None:
    """WORK/outer.csv and WORK/inner.csv: the reviews of the outer films and of the others."""
    from beam_rnn.preprocess.transform import SPLIT_EVAL, split_for_id

    csv.field_size_limit(sys.maxsize)
    with open(DATA, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    parts = {"outer": [], "inner": []}
    for row in rows:
        parts["outer" if split_for_id(row["movie"], OUTER_FRACTION) == SPLIT_EVAL else "inner"].append(row)
    for name, part in parts.items():
        with open(os.path.join(work, f"{name}.csv"), "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(part)


def refit_copy(prep: str, selected: str, out: str) -> None:
    """`train --refit`'s refit phase and export on a copy of a finished selection run (`beam_rnn.train.refit`)."""
    from beam_rnn.train import refit
    from beam_rnn.train.config import TrainConfig

    with open(os.path.join(selected, KINDS[0], "train_config.json")) as f:
        config = TrainConfig.from_dict({**json.load(f), "kinds": list(KINDS), "refit": True, "verbose": 0})
    refit.refit_copy(prep, selected, out, config)


def outer_accuracy(work: str, models: str, report: str) -> dict[str, float]:
    if not os.path.exists(os.path.join(report, "metrics.json")):
        cli("evaluate", "--model", models, "--input", os.path.join(work, "outer.csv"), "--format", "csv",
            "--id-column", "id", "--output", report, "--runner", "DirectRunner")
    with open(os.path.join(report, "metrics.json")) as f:
        metrics = json.load(f)["models"]
    return {kind: metrics[kind]["accuracy"] for kind in KINDS}


def train_seconds(models: str) -> float:
    total = 0.0
    for kind in KINDS:
        with open(os.path.join(models, kind, "metrics.json")) as f:
            m = json.load(f)
        total += m["train_seconds"] + (m.get("refit") or {}).get("train_seconds", 0.0)
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--full-cli", action="store_true", help="Run `train --refit` from scratch for the refit arm.")
    args = parser.parse_args(argv)
    if not os.path.exists(DATA):
        sys.exit(f"{DATA} is absent: this benchmark needs the IMDB copy in ../shared/data")
    os.makedirs(args.work, exist_ok=True)
    if not os.path.exists(os.path.join(args.work, "outer.csv")):
        split_corpus(args.work)
    prep = os.path.join(args.work, "prep")
    if not os.path.exists(os.path.join(prep, "manifest.json")):
        cli("preprocess", "--input", os.path.join(args.work, "inner.csv"), "--format", "csv", "--id-column", "id",
            "--group-column", "movie", "--eval-fraction", str(INNER_EVAL_TO), "--output", prep,
            "--runner", "DirectRunner")
    accuracy = {"base": [], "refit": []}
    seconds = {"base": [], "refit": []}
    for seed in args.seeds:
        selected = os.path.join(args.work, f"models_base_s{seed}")
        if not os.path.exists(os.path.join(selected, "lstm", "model_card.json")):
            cli("train", "--transformed", prep, "--output", selected, "--kind", "both", "--seed", str(seed))
        refitted = os.path.join(args.work, f"models_refit_s{seed}")
        if not os.path.exists(os.path.join(refitted, "lstm", "model_card.json")):
            if args.full_cli:
                cli("train", "--transformed", prep, "--output", refitted, "--kind", "both", "--seed", str(seed),
                    "--refit")
            else:
                refit_copy(prep, selected, refitted)
        for arm, models in (("base", selected), ("refit", refitted)):
            accuracy[arm].append(outer_accuracy(args.work, models, os.path.join(args.work, f"dev_{arm}_s{seed}")))
            seconds[arm].append(train_seconds(models))
        print(f"seed {seed}: " + "; ".join(f"{arm} " + ", ".join(f"{k} {accuracy[arm][-1][k]:.4f}" for k in KINDS)
                                          for arm in accuracy), flush=True)
    print(f"\nAccuracy on the {len(args.seeds)}-seed outer films (5,240 reviews no run trained or stopped on):")
    print("| arm | BiLSTM | streaming LSTM |\n| --- | --- | --- |")
    for arm in accuracy:
        print(f"| {arm} | " + " | ".join(_cell([a[k] for a in accuracy[arm]]) for k in KINDS) + " |")
    for k in KINDS:
        diffs = [r[k] - s[k] for r, s in zip(accuracy["refit"], accuracy["base"])]
        better = sum(d > 0 for d in diffs)
        print(f"{k}: refit - base {statistics.fmean(diffs):+.4f} (better at {better} of {len(diffs)} seeds)")
    ratio = statistics.fmean(seconds["refit"]) / statistics.fmean(seconds["base"])
    print(f"training time: base {statistics.fmean(seconds['base']):.0f} s, refit (selection + refit) "
          f"{statistics.fmean(seconds['refit']):.0f} s: {ratio:.2f}x")
    with open(os.path.join(args.work, "summary_refit.json"), "w") as f:
        json.dump({"seeds": args.seeds, "accuracy": accuracy, "seconds": seconds}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
