"""Benchmark: `beam-rnn evaluate` wall time, this tree against an earlier commit, on the same documents.

Issue 15's goals: `evaluate` of both models on 25,000 IMDB reviews (the whole report, with the
10-point early-accuracy curve) in under 10 minutes on 2 cores, and the incremental measures of
1,000 documents, both models, every prefix, in under 10 minutes.  The alternative a user has is
the previous release of the same command, so each variant is the real CLI run in its own
process (imports, model loads, Beam and all), on the same CSV and models:

* ``current``: this tree (the BiLSTM's prefixes with its forward direction shared, in NumPy;
  documents sorted by length before batching);
* ``baseline``: ``--baseline REF`` checked out into a temporary git worktree (default bbdd341:
  the BiLSTM re-run on each prefix through ``classify_ids``, batches in corpus order).

    python benchmarks/evaluate_speed.py --model W/models --docs 2000                 # both variants
    python benchmarks/evaluate_speed.py --model W/models --docs 25000 --variants current
    python benchmarks/evaluate_speed.py --model W/models --split eval --incremental-sample 1000

Prints per variant: wall seconds, documents/s, peak RSS, the accuracies and early-accuracy
curves (which must agree between the variants: same models, same documents), the incremental
stage's own seconds per model when ``--incremental-sample`` is given; then the ratio.
"""

import argparse
import csv
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_INPUT = ROOT.parent / "shared" / "data" / "imdb" / "train.csv"


def first_rows(source: pathlib.Path, count: int, out: pathlib.Path) -> int:
    """Copies the header and the first `count` records of a CSV (all when count <= 0)."""
    csv.field_size_limit(1 << 30)
    written = 0
    with open(source, newline="", encoding="utf-8") as f, open(out, "w", newline="", encoding="utf-8") as g:
        reader, writer = csv.reader(f), csv.writer(g)
        writer.writerow(next(reader))
        for row in reader:
            if 0 < count <= written:
                break
            writer.writerow(row)
            written += 1
    return written


def run_evaluate(tree: pathlib.Path, args: argparse.Namespace, data: pathlib.Path, out: pathlib.Path) -> dict:
    """One `evaluate` run from `tree` in a child process: wall time, peak RSS and its metrics.json."""
    command = [sys.executable, "-m", "beam_rnn.cli", "evaluate", "--model", args.model, "--input", str(data),
               "--format", "csv", "--split", args.split, "--output", str(out), "--runner", "DirectRunner"]
    if args.incremental_sample:
        command += ["--incremental-sample", str(args.incremental_sample)]
    env = dict(os.environ, PYTHONPATH=str(tree))
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    err = child.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"evaluate from {tree} failed:\n{err[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    result = {"seconds": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024),
              "documents": metrics["documents"],
              "documents_per_second": round(metrics["documents"] / seconds, 1), "models": {}}
    for name, m in metrics["models"].items():
        result["models"][name] = {"accuracy": m["accuracy"], "early_accuracy": m["early_accuracy"]}
    for name, m in metrics.get("incremental", {}).get("models", {}).items():
        result["models"][name]["incremental"] = {
            "seconds": m["seconds"], "microseconds_per_token": m["microseconds_per_token"],
            "edit_overhead": m["mean"]["edit_overhead"], "relative_correctness": m["mean"]["relative_correctness"]}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A `beam-rnn train` output (bilstm/ and lstm/) or exports.")
    parser.add_argument("--input", default=str(DEFAULT_INPUT), help="A CSV with text and label columns.")
    parser.add_argument("--docs", type=int, default=2000, help="The first N rows of --input (0: all).")
    parser.add_argument("--split", default="all", choices=("all", "eval", "train"))
    parser.add_argument("--incremental-sample", type=int, default=0)
    parser.add_argument("--baseline", default="bbdd341", help="The git ref of the baseline variant.")
    parser.add_argument("--variants", default="current,baseline")
    parser.add_argument("--keep", help="Keep the reports under this directory.")
    args = parser.parse_args(argv)
    args.model = str(pathlib.Path(args.model).resolve())
    variants = [v for v in args.variants.split(",") if v]
    results = {}
    with tempfile.TemporaryDirectory(prefix="evaluate_speed_") as tmp:
        work = pathlib.Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = work / "input.csv"
        rows = first_rows(pathlib.Path(args.input), args.docs, data)
        print(f"{rows} documents from {args.input}, split {args.split}, incremental sample "
              f"{args.incremental_sample}", flush=True)
        for variant in variants:
            tree = ROOT
            if variant == "baseline":
                tree = work / "baseline_tree"
                subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), args.baseline],
                               check=True)
            try:
                results[variant] = run_evaluate(tree, args, data, work / f"report_{variant}")
            finally:
                if variant == "baseline":
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
            print(variant, json.dumps(results[variant]), flush=True)
    if {"current", "baseline"} <= results.keys():
        c, b = results["current"], results["baseline"]
        summary = {"speedup_wall": round(b["seconds"] / c["seconds"], 2)}
        for name in c["models"]:
            if "incremental" in c["models"][name]:
                summary[f"incremental_speedup_{name}"] = round(
                    b["models"][name]["incremental"]["seconds"] / c["models"][name]["incremental"]["seconds"], 2)
            summary[f"max_early_accuracy_difference_{name}"] = max(
                abs(c["models"][name]["early_accuracy"][k] - b["models"][name]["early_accuracy"][k])
                for k in c["models"][name]["early_accuracy"])
        print("summary", json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
