"""Benchmark: reading ONE large JSON Lines file whole vs in byte ranges (ReadCorpus split_bytes).

A file is otherwise read by one worker; with `split_bytes` a newline-counting scan
cuts it into ranges that the runner spreads over its workers.  Both runs use the
same pipeline (ReadCorpus with its defaults -> count documents and dead letters) on the DirectRunner
with `--direct_num_workers N --direct_running_mode multi_processing` (N = cores),
in the same process, and must produce the same counts.

The file: the IMDB train reviews (../shared/data/imdb/train.csv) as JSONL,
repeated --copies times (ids stay unique: the line number is the id).

    python benchmarks/read.py [--copies 8] [--split-mb 8] [--workers 2]

Prints documents/s of each and the ratio split / whole.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_INPUT = ROOT.parent / "shared" / "data" / "imdb" / "train.csv"


def make_jsonl(source: str, path: str, copies: int) -> tuple[int, int]:
    """Writes the reviews of `source` `copies` times as JSONL; returns (rows, bytes)."""
    csv.field_size_limit(1 << 30)
    with open(source, newline="", encoding="utf-8") as f:
        rows = [json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in csv.DictReader(f)]
    with open(path, "w", encoding="utf-8") as out:
        for _ in range(copies):
            out.writelines(rows)
    return len(rows) * copies, os.path.getsize(path)


def read_counts(path: str, split_bytes: int, workers: int, reshuffle: bool | None = None) -> tuple[dict, float]:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_rnn.io import ReadCorpus

    options = PipelineOptions(["--runner=DirectRunner", f"--direct_num_workers={workers}",
                               "--direct_running_mode=multi_processing"])
    out = os.path.join(os.path.dirname(path), f"counts_{split_bytes}")
    t0 = time.time()
    with beam.Pipeline(options=options) as p:
        docs, dead = p | "Read" >> ReadCorpus(path, format="jsonl", split_bytes=split_bytes,
                                                    reshuffle_documents=reshuffle)
        counts = (
            (docs | "DocKey" >> beam.Map(lambda _: "documents"), dead | "DeadKey" >> beam.Map(lambda _: "dead"))
            | beam.Flatten()
            | beam.combiners.Count.PerElement()
            | beam.Map(json.dumps)
        )
        _ = counts | beam.io.WriteToText(out, num_shards=1, shard_name_template="")
    seconds = time.time() - t0
    with open(out) as f:
        result = dict(json.loads(line) for line in f)
    return result, seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=str(DEFAULT_INPUT), help="IMDB-style CSV (text,label columns).")
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench_read"))
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--split-mb", type=float, default=8.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeats", type=int, default=1, help="Best of N per variant.")
    parser.add_argument("--reshuffle-documents", action="store_true",
                        help="Add ReadCorpus' fusion break after the read (off by default for JSONL).")
    args = parser.parse_args(argv)
    if not os.path.exists(args.input):
        parser.error(f"--input {args.input!r} does not exist")
    if args.copies < 1 or args.split_mb <= 0 or args.workers < 1:
        parser.error("--copies, --split-mb and --workers must be positive")
    os.makedirs(args.work, exist_ok=True)
    path = os.path.join(args.work, "reviews.jsonl")
    rows, size = make_jsonl(args.input, path, args.copies)
    split_bytes = int(args.split_mb * (1 << 20))
    results = {}
    for name, sb in (("whole_file", 0), ("byte_ranges", split_bytes)):
        best = None
        for _ in range(args.repeats):
            counts, seconds = read_counts(path, sb, args.workers, True if args.reshuffle_documents else None)
            if counts.get("documents", 0) + counts.get("dead", 0) != rows:
                raise SystemExit(f"{name}: counts {counts} do not add up to {rows} rows")
            best = seconds if best is None else min(best, seconds)
        results[name] = {"seconds": round(best, 2), "docs_per_s": round(rows / best), "counts": counts}
        print(f"{name}: {rows} rows in {best:.1f}s = {rows / best:.0f} docs/s {counts}", flush=True)
    summary = {"file_mb": round(size / (1 << 20), 1), "rows": rows, "workers": args.workers,
               "split_mb": args.split_mb,
               "reshuffle_documents": args.reshuffle_documents, **results,
               "ratio_byte_ranges_over_whole": round(results["whole_file"]["seconds"]
                                                     / results["byte_ranges"]["seconds"], 2)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    from beam_rnn.cli.runtime import hard_exit

    hard_exit(main(sys.argv[1:]))
