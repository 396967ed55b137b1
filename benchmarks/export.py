"""Export time against training time, in the same run, optionally before/after a change.

    python benchmarks/export.py --corpus sst2 --work /tmp/export_bench [--baseline-tree DIR]
    python benchmarks/export.py --corpus imdb --sample-fraction 0.4 --work /tmp/export_bench_imdb

For each model kind (bilstm, lstm) in one process: train with the trainer's defaults
(`beam_rnn.train.trainer.train`, wall time of the call = "training"), then
`export_model` on the trained model (wall time = "export", with the step times the
export logs).  The ratio export / training is the figure of issue 13 (at most 0.25).

With ``--baseline-tree DIR`` (a copy of the package before a change, e.g.
``git archive <commit> beam_rnn | tar -x -C DIR``) each trained model is also
exported from its saved weights in fresh subprocesses, once by DIR's code and once
by this tree's, alternating which goes first over ``--repeats`` rounds: the same
machine load for both, so their ratio is meaningful on a busy machine.

The corpus is preprocessed first with ``beam-rnn preprocess`` (not timed):
``sst2`` = ../shared/data/sst2/stsa.binary.train (6,920 sentences), ``mr`` =
../shared/data/mr (10,662 snippets), ``imdb`` = ../shared/data/imdb/train.csv
(25,000 reviews; ``--sample-fraction`` keeps a deterministic subset).
"""

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CORPORA = {
    "sst2": ["--input", str(DATA / "sst2" / "stsa.binary.train"), "--format", "labeled_lines"],
    "mr": ["--input", str(DATA / "mr" / "rt-polarity.*"), "--format", "file_per_label"],
    "imdb": ["--imdb", str(DATA / "imdb" / "train.csv")],
}
STEP_LINE = re.compile(r"^export (\w+): (.+) (\d+\.\d) s$")

# Run in a fresh interpreter with the package of `sys.argv[1]` first on sys.path:
# loads a trained model from its weights and times export_model.
_EXPORT_SCRIPT = """
import json, logging, sys, time
sys.path.insert(0, sys.argv[1])
steps = []
class Steps(logging.Handler):
    def emit(self, record):
        steps.append(record.getMessage())
import beam_rnn
assert beam_rnn.__file__.startswith(sys.argv[1]), (beam_rnn.__file__, sys.argv[1])
from beam_rnn.train import export
from beam_rnn.train.trainer import load_trained_model
logging.getLogger(export.__name__).addHandler(Steps())
logging.getLogger(export.__name__).setLevel(logging.INFO)
model, config = load_trained_model(sys.argv[2])
start = time.perf_counter()
export.export_model(model, config, sys.argv[3], sys.argv[4], {})
print(json.dumps({"seconds": time.perf_counter() - start, "steps": steps}))
"""


def _step_times(lines: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in lines:
        match = STEP_LINE.match(line)
        if match:
            out[match.group(2)] = float(match.group(3))
    return out


def preprocess(corpus: str, prep: Path, sample_fraction: float | None) -> None:
    if (prep / "manifest.json").exists():
        return
    cmd = [sys.executable, "-m", "beam_rnn.cli", "preprocess", *CORPORA[corpus], "--output", str(prep)]
    if sample_fraction is not None:
        cmd += ["--sample-fraction", str(sample_fraction)]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def train_and_export(kind: str, prep: Path, models_dir: Path, epochs: int | None) -> dict[str, Any]:
    """Trains one kind with the trainer's defaults, then exports it; wall times of both calls."""
    from beam_rnn.train import export
    from beam_rnn.train.config import TrainConfig
    from beam_rnn.train.trainer import train

    config = TrainConfig(kinds=(kind,)) if epochs is None else TrainConfig(kinds=(kind,), epochs=epochs)
    start = time.perf_counter()
    result = train(str(prep), str(models_dir), config, kind=kind)
    train_seconds = time.perf_counter() - start

    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    export_logger = logging.getLogger(export.__name__)
    export_logger.addHandler(handler)
    export_logger.setLevel(logging.INFO)
    try:
        start = time.perf_counter()
        export.export_model(result["model"], result["model_config"], str(prep), result["model_dir"], result["metrics"])
        export_seconds = time.perf_counter() - start
    finally:
        export_logger.removeHandler(handler)
    return {"train_seconds": round(train_seconds, 1), "fit_seconds": result["metrics"]["train_seconds"],
            "epochs_run": result["metrics"]["epochs_run"], "export_seconds": round(export_seconds, 1),
            "ratio": round(export_seconds / train_seconds, 3), "steps": _step_times(lines)}


def subprocess_export(tree: Path, model_dir: Path, prep: Path, out_dir: Path) -> dict[str, Any]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", _EXPORT_SCRIPT, str(tree), str(model_dir), str(prep), str(out_dir)],
                          cwd=tree, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"export with {tree} failed:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"seconds": round(report["seconds"], 1), "steps": _step_times(report["steps"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="sst2")
    parser.add_argument("--work", required=True, help="Working directory (preprocessing output, models).")
    parser.add_argument("--kinds", default="bilstm,lstm")
    parser.add_argument("--epochs", type=int, default=None, help="Training epochs (default: the trainer's).")
    parser.add_argument("--sample-fraction", type=float, default=None, help="Preprocess this fraction only.")
    parser.add_argument("--baseline-tree", type=Path, default=None,
                        help="Directory holding the package before the change (beam_rnn/ inside).")
    parser.add_argument("--repeats", type=int, default=1, help="Subprocess export rounds per tree.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work)
    prep = work / "prep"
    preprocess(args.corpus, prep, args.sample_fraction)
    results: dict[str, Any] = {"corpus": args.corpus, "sample_fraction": args.sample_fraction, "kinds": {}}
    for kind in args.kinds.split(","):
        measured = train_and_export(kind, prep, work / "models", args.epochs)
        print(f"{kind}: training {measured['train_seconds']} s (fit {measured['fit_seconds']} s, "
              f"{measured['epochs_run']} epochs), export {measured['export_seconds']} s, "
              f"export/training {measured['ratio']}", flush=True)
        print(f"  steps: {measured['steps']}", flush=True)
        if args.baseline_tree is not None:
            trees = {"baseline": args.baseline_tree.resolve(), "current": ROOT}
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
            for i in range(args.repeats):
                for name in (list(trees) if i % 2 == 0 else list(trees)[::-1]):
                    runs[name].append(subprocess_export(trees[name], work / "models" / kind, prep,
                                                        work / f"export_{name}" / kind))
            for name, done in runs.items():
                seconds = [r["seconds"] for r in done]
                best = min(seconds)
                print(f"  {name} tree, fresh process: export {seconds} s, export/training "
                      f"{round(best / measured['train_seconds'], 3)} (best of {len(seconds)})", flush=True)
                print(f"    steps (best run): {min(done, key=lambda r: r['seconds'])['steps']}", flush=True)
            measured["subprocess"] = runs
        results["kinds"][kind] = measured
    (work / "export_benchmark.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
