"""Benchmark: scoring raw IMDB reviews with our RunInference pipeline vs the stock handler.

Three ways to get from raw text to a probability per review, same exported model,
same batch size, each in its own fresh process (so every one pays its own imports
and model load, and peak RSS is per variant):

* ``ours``: ``python -m pipelines.score`` (ReadCorpus -> ScoreCorpus ->
  ClassifierModelHandler, one ``serving_default`` call per batch, length-sorted
  batches -> jsonl scores + summary), DirectRunner;
* ``stock``: ReadCorpus -> Beam's ``TFModelHandlerNumpy`` on the exported
  ``model.keras`` (1-element string arrays per document, batched by Beam, wrapped
  in KeyedModelHandler) -> jsonl, DirectRunner;
* ``limit``: no Beam: read the CSV with the csv module, call the SavedModel's
  ``serving_default`` on consecutive batches in corpus order.  ``limit_sorted``
  does the same after sorting each block of ``--sort-buffer`` texts by length
  (what our pipeline does inside each bundle), the strongest in-process baseline.

Then peak RSS of ``ours`` at larger corpora (the CSV hard-linked N times, so
nothing is copied): memory must stay flat as the corpus grows.  ONE large file
(the case an audit found growing) and preprocess / evaluate are measured by
benchmarks/memory.py.

    python benchmarks/score.py                       # 25k throughput + RSS at 100k and 1M
    python benchmarks/score.py --docs 100000          # RSS at 100k only
    python benchmarks/score.py --quick                # 2k-doc smoke run, RSS at 10k/20k
    python benchmarks/score.py --stock-docs 0          # stock handler on all 25k too (slow)

Prints one JSON summary (docs/s, ratios, goals: ours >= 3x stock, >= 0.5x the limit;
RSS growth from the smallest to the largest size <= 1.2x).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_INPUT = ROOT.parent / "shared" / "data" / "imdb" / "train.csv"
MODEL_CANDIDATES = [ROOT / "runs" / "imdb" / "models" / "bilstm", pathlib.Path("/tmp/score_models/bilstm")]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# --- Variants (each runs in a child process: benchmarks/score.py --variant NAME ...) -----------


def variant_ours(args) -> dict:
    from pipelines import score

    started = time.perf_counter()
    report = score.run([
        "--model", args.model, "--input", args.input_pattern, "--format", "csv", "--output", args.output,
        "--min-batch-size", str(args.batch_size), "--max-batch-size", str(args.batch_size),
        "--sort-buffer", str(args.sort_buffer), "--runner=DirectRunner",
    ])
    return {"seconds": time.perf_counter() - started, "docs": report["scored"], "reconciled": report["reconciled"],
            "accuracy": report.get("summary", {}).get("models", {}).get(next(iter(report["models"])), {}).get("accuracy")}


def variant_stock(args) -> dict:
    import beam_rnn.train.export  # noqa: F401  FIRST: registers the tokeniser, makes tf.keras = tf_keras

    import apache_beam as beam
    import numpy as np
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from apache_beam.ml.inference.tensorflow_inference import ModelType, TFModelHandlerNumpy

    from beam_rnn.io import ReadCorpus, WriteJsonLines
    from beam_rnn.cli.runtime import counters

    handler = KeyedModelHandler(TFModelHandlerNumpy(
        model_uri=os.path.join(args.model, "model.keras"), model_type=ModelType.SAVED_MODEL,
        min_batch_size=args.batch_size, max_batch_size=args.batch_size))

    def to_record(element):
        doc_id, result = element
        return {"id": doc_id, "probability": float(np.asarray(result.inference).reshape(-1)[0])}

    started = time.perf_counter()
    with beam.Pipeline(argv=["--runner=DirectRunner"]) as p:
        docs, _ = p | "Read" >> ReadCorpus(args.input_pattern, format="csv")
        _ = (docs
             | "ToArrays" >> beam.Map(lambda d: (d["id"], np.array([d["text"]], dtype=object)))
             | "RunInference" >> RunInference(handler)
             | "ToRecords" >> beam.Map(to_record)
             | "Write" >> WriteJsonLines(args.output))
    docs_out = counters(p.result, "beam_rnn.io").get("documents_out")
    return {"seconds": time.perf_counter() - started, "docs": docs_out}


def _read_texts(pattern: str, limit: int | None = None) -> list[str]:
    import glob

    csv.field_size_limit(1 << 30)
    texts = []
    for path in sorted(glob.glob(pattern)):
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                texts.append(row["text"])
                if limit and len(texts) >= limit:
                    return texts
    return texts


def variant_limit(args, *, sort: bool) -> dict:
    import tensorflow as tf

    import beam_rnn  # noqa: F401

    started = time.perf_counter()
    texts = _read_texts(args.input_pattern)
    serve = tf.saved_model.load(os.path.join(args.model, "saved_model")).signatures["serving_default"]
    n, b = len(texts), args.batch_size
    order = list(range(n))
    if sort:
        block = args.sort_buffer
        order = [i for s in range(0, n, block) for i in sorted(range(s, min(s + block, n)), key=lambda i: len(texts[i]))]
    probabilities = [0.0] * n
    for s in range(0, n, b):
        idx = order[s:s + b]
        out = serve(text=tf.constant([texts[i] for i in idx]))["probabilities"].numpy().tolist()
        for i, p in zip(idx, out):
            probabilities[i] = p
    return {"seconds": time.perf_counter() - started, "docs": n}


def run_variant(args) -> None:
    name = args.variant
    fn = {"ours": variant_ours, "stock": variant_stock, "limit": lambda a: variant_limit(a, sort=False),
          "limit_sorted": lambda a: variant_limit(a, sort=True)}[name]
    result = fn(args)
    result["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    print("RESULT " + json.dumps(result), flush=True)
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown (TF/Beam threads can crash it after the work is done)


# --- Driver -----------------------------------------------------------------------------------


def child(variant: str, model: str, pattern: str, output: str, args) -> dict:
    cmd = [sys.executable, __file__, "--variant", variant, "--model", model, "--input-pattern", pattern,
           "--output", output, "--batch-size", str(args.batch_size), "--sort-buffer", str(args.sort_buffer)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT))
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["process_wall_seconds"] = round(wall, 2)
    result["docs_per_s"] = round(result["docs"] / result["seconds"], 1)
    result["seconds"] = round(result["seconds"], 2)
    # RUSAGE_CHILDREN is the max over all waited-for children so far; report it when this child raised it.
    result["rusage_children_max_mb"] = round(after / 1024.0, 1) if after > before else None
    print(f"# {variant}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def repeated_corpus(source: pathlib.Path, copies: int, directory: pathlib.Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(copies):
        target = directory / f"part{i:04d}.csv"
        if not target.exists():
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
    return str(directory / "part*.csv")


def first_rows(source: pathlib.Path, n: int, target: pathlib.Path) -> pathlib.Path:
    csv.field_size_limit(1 << 30)
    with open(source, newline="", encoding="utf-8") as f, open(target, "w", newline="", encoding="utf-8") as g:
        reader, writer = csv.reader(f), csv.writer(g)
        writer.writerow(next(reader))
        for i, row in enumerate(reader):
            if i >= n:
                break
            writer.writerow(row)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=str(DEFAULT_INPUT), help="IMDB train.csv (id,label,...,text).")
    parser.add_argument("--model", default=None, help="Exported model dir (default: runs/imdb/models/bilstm "
                        "if exported, else /tmp/score_models/bilstm).")
    parser.add_argument("--batch-size", type=int, default=128, help="Batch size of every variant (default 128).")
    parser.add_argument("--sort-buffer", type=int, default=4096, help="Our pipeline's sort buffer (default 4096).")
    parser.add_argument("--docs", type=int, nargs="*", default=[100_000, 1_000_000],
                        help="Corpus sizes for the RSS runs (multiples of the corpus; default 100000 1000000).")
    parser.add_argument("--stock-docs", type=int, default=5000,
                        help="Documents the stock handler scores (its docs/s is per document; it runs the "
                        "Keras model eagerly and is slow: default the first 5000; 0 = the whole corpus).")
    parser.add_argument("--skip-throughput", action="store_true", help="Only the RSS runs.")
    parser.add_argument("--quick", action="store_true", help="Smoke run: 2,000 docs, RSS at 10k and 20k.")
    parser.add_argument("--workdir", default=None, help="Scratch dir (default: a temp dir, removed).")
    # Child-process mode.
    parser.add_argument("--variant", choices=("ours", "stock", "limit", "limit_sorted"), help=argparse.SUPPRESS)
    parser.add_argument("--input-pattern", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        run_variant(args)
        return

    if args.model is None:
        found = [m for m in MODEL_CANDIDATES if (m / "saved_model" / "saved_model.pb").exists()]
        if not found:
            sys.exit("No exported model: pass --model, or train one with `python -m pipelines.train "
                     "--transformed runs/imdb/prep --output /tmp/score_models --kind bilstm --epochs 1`.")
        args.model = str(found[0])
    source = pathlib.Path(args.input)
    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="bench_score_"))
    work.mkdir(parents=True, exist_ok=True)
    summary: dict = {"model": args.model, "input": str(source), "batch_size": args.batch_size,
                     "sort_buffer": args.sort_buffer, "cpus": os.cpu_count(),
                     "load_average_start": os.getloadavg()}
    try:
        base = source
        if args.quick:
            base = first_rows(source, 2000, work / "quick.csv")
            args.docs = [10_000, 20_000]
            args.stock_docs = min(args.stock_docs, 500) if args.stock_docs else 500
        with open(base, newline="", encoding="utf-8") as f:
            csv.field_size_limit(1 << 30)
            corpus_docs = sum(1 for _ in csv.DictReader(f))
        summary["corpus_docs"] = corpus_docs

        if not args.skip_throughput:
            results = {}
            for variant in ("limit", "limit_sorted", "ours"):
                results[variant] = child(variant, args.model, str(base), str(work / variant / "out"), args)
            stock_input = base
            if args.stock_docs and args.stock_docs < corpus_docs:
                stock_input = first_rows(base, args.stock_docs, work / "stock_subset.csv")
            results["stock"] = child("stock", args.model, str(stock_input), str(work / "stock" / "out"), args)
            ours = results["ours"]["docs_per_s"]
            summary["throughput"] = results
            summary["ratios"] = {
                "ours_vs_stock": round(ours / results["stock"]["docs_per_s"], 2),
                "ours_vs_limit": round(ours / results["limit"]["docs_per_s"], 2),
                "ours_vs_limit_sorted": round(ours / results["limit_sorted"]["docs_per_s"], 2),
            }
            summary["goals"] = {
                "ours_vs_stock>=3": summary["ratios"]["ours_vs_stock"] >= 3,
                "ours_vs_limit_sorted>=0.5": summary["ratios"]["ours_vs_limit_sorted"] >= 0.5,
            }

        rss = {}
        for n in sorted(args.docs):
            copies = max(1, -(-n // corpus_docs))
            pattern = repeated_corpus(base, copies, work / f"corpus_x{copies}")
            result = child("ours", args.model, pattern, str(work / f"rss_{copies}" / "out"), args)
            rss[str(copies * corpus_docs)] = result
            shutil.rmtree(work / f"rss_{copies}", ignore_errors=True)
        if rss:
            sizes = sorted(rss, key=int)
            summary["memory"] = {k: {"peak_rss_mb": v["peak_rss_mb"], "docs_per_s": v["docs_per_s"],
                                     "seconds": v["seconds"]} for k, v in rss.items()}
            growth = rss[sizes[-1]]["peak_rss_mb"] / rss[sizes[0]]["peak_rss_mb"]
            summary["memory"]["growth"] = round(growth, 3)
            summary.setdefault("goals", {})["rss_growth<=1.2"] = growth <= 1.2
        summary["load_average_end"] = os.getloadavg()
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
