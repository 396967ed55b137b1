"""Table of how early streaming models are right, from `beam-rnn evaluate` outputs (issue 15 item 2).

Reads every ``DIR/dev_<arm>_s<seed>/metrics.json`` written by ``beam-rnn evaluate
--incremental-sample N`` and prints one Markdown row per (arm, model): final accuracy, accuracy
after 20%, 25% (the mean of the 20% and 30% points of the early-prediction curve) and 50% of the
tokens, edit overhead (EO) and relative correctness (RC) on the incremental sample, each as the
mean ± sd over the seeds found (sd over seeds, n-1).  The BiLSTM (re-run on every prefix) is shown
for the arms whose evaluate included it.

    python benchmarks/early_table.py W [--arms plain ts05 tkp] [--plot curves.png --title "..."]

``--plot`` also draws each shown (arm, model)'s accuracy against the share of the tokens read
(the evaluate report's 10-point early-prediction curve, mean over seeds).

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
            row["curve"] = [early[f"{10 * k}%"] for k in range(1, 11)]
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
    p.add_argument("--plot", help="Also save the early-accuracy curves to this PNG.")
    p.add_argument("--title", default="Accuracy after reading part of the text")
    p.add_argument("--label", nargs="*", default=[], metavar="ARM/MODEL=TEXT",
                   help="Legend text of a curve, e.g. plain/bilstm='BiLSTM, re-run on each prefix'.")
    p.add_argument("--goal", nargs="*", default=[], metavar="PERCENT=ACCURACY",
                   help="Targets to mark on the plot, e.g. 25=0.78 50=0.83.")
    args = p.parse_args(argv)
    runs = read_runs(args.work)
    if not runs:
        print(f"no dev_<arm>_s<seed>/metrics.json under {args.work}", file=sys.stderr)
        return 2
    order = args.arms or sorted({arm for arm, _ in runs})
    shown = [(arm, model) for arm in order for model in ("lstm", "bilstm") if runs.get((arm, model))]
    print("| arm | model | seeds | " + " | ".join(title for _, title in COLUMNS) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in COLUMNS) + " |")
    for arm, model in shown:
        seeds = runs[(arm, model)]
        cells = [_cell([row[key] for row in seeds.values() if key in row]) for key, _ in COLUMNS]
        print(f"| {arm} | {model} | {', '.join(map(str, sorted(seeds)))} | " + " | ".join(cells) + " |")
    if args.plot:
        goals = [tuple(float(v) for v in item.split("=", 1)) for item in args.goal]
        _plot(runs, shown, args.plot, args.title, dict(item.split("=", 1) for item in args.label), goals)
    return 0


def _plot(runs, shown, path: str, title: str, labels: dict[str, str], goals: list[tuple[float, float]]) -> None:
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

    xs = [10 * k for k in range(1, 11)]
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=130)
    for arm, model in shown:
        seeds = runs[(arm, model)]
        curve = [statistics.mean(row["curve"][k] for row in seeds.values()) for k in range(10)]
        name = labels.get(f"{arm}/{model}", f"{arm} ({model})")
        style = "--" if model == "bilstm" else "-"
        ax.plot(xs, curve, style, marker="o", markersize=3.5, label=f"{name}, {len(seeds)} seed{'s' * (len(seeds) > 1)}")
    if goals:
        ax.plot([g[0] for g in goals], [g[1] for g in goals], "kx", markersize=9, mew=2, linestyle="none",
                label="goal")
    ax.set_xlabel("share of the tokens read (%)")
    ax.set_ylabel("accuracy on the validation split")
    ax.set_title(title)
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"curves -> {path}")


if __name__ == "__main__":
    sys.exit(main())
