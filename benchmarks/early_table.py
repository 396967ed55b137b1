"""Table of how early streaming models are right, from `beam-rnn evaluate` outputs (issue 15 item 2).

Reads every ``DIR/dev_<arm>_s<seed>/metrics.json`` written by ``beam-rnn evaluate
--incremental-sample N`` and prints one Markdown row per (arm, model): final accuracy, accuracy
after 20%, 25% (the mean of the 20% and 30% points of the early-prediction curve) and 50% of the
tokens, edit overhead (EO) and relative correctness (RC) on the incremental sample, each as the
mean ± sd over the seeds found (sd over seeds, n-1).  The BiLSTM (re-run on every prefix) is shown
for the arms whose evaluate included it.

    python benchmarks/early_table.py W [--arms plain ts05 tkp]

The training and evaluate commands behind the directories are in benchmarks/RESULTS.md.
"""

import argparse
import glob
import json
import os
import statistics
import sys

COLUMNS = (("final", "final accuracy"), ("a20", "after 20%"), ("a25", "after 25%"), ("a50", "after 50%"),
           ("EO", "EO"), ("RC", "RC"))


def read_runs(work: str) -> dict[tuple[str, str], dict[int, dict[str, float]]]:
    """{(arm, model): {seed: {column: value}}} from W/dev_<arm>_s<seed>/metrics.json."""
    runs: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
    for path in sorted(glob.glob(os.path.join(work, "dev_*_s*", "metrics.json"))):
        arm, seed = os.path.basename(os.path.dirname(path))[len("dev_"):].rsplit("_s", 1)
        with open(path) as f:
            metrics = json.load(f)
        incremental = metrics.get("incremental", {}).get("models", {})
        for model, m in metrics["models"].items():
            early = m["early_accuracy"]
            row = {"final": m["accuracy"], "a20": early["20%"], "a25": (early["20%"] + early["30%"]) / 2,
                   "a50": early["50%"]}
            mean = incremental.get(model, {}).get("mean", {})
            if mean:
                row.update(EO=mean["edit_overhead"], RC=mean["relative_correctness"])
            runs.setdefault((arm, model), {})[int(seed)] = row
    return runs


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work", help="The directory holding dev_<arm>_s<seed>/ evaluate outputs.")
    p.add_argument("--arms", nargs="*", help="Arms to show, in this order (default: all, sorted).")
    args = p.parse_args(argv)
    runs = read_runs(args.work)
    if not runs:
        print(f"no dev_<arm>_s<seed>/metrics.json under {args.work}", file=sys.stderr)
        return 2
    order = args.arms or sorted({arm for arm, _ in runs})
    print("| arm | model | seeds | " + " | ".join(title for _, title in COLUMNS) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in COLUMNS) + " |")
    for arm in order:
        for model in ("lstm", "bilstm"):
            seeds = runs.get((arm, model))
            if not seeds:
                continue
            cells = [_cell([row[key] for row in seeds.values() if key in row]) for key, _ in COLUMNS]
            print(f"| {arm} | {model} | {', '.join(map(str, sorted(seeds)))} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
