"""Benchmark: peak memory of preprocess, score and evaluate must not grow with the corpus.

Builds ONE CSV of N short labelled documents for each size (default 100k and 1M;
the smaller corpus is the first rows of the larger one), then runs each command
in its own subprocess on it with the default runner (no --runner flag):

    python -m pipelines.preprocess --input CORPUS.csv --format csv --output ...
    python -m pipelines.score --model MODELS/bilstm MODELS/lstm --input CORPUS.csv --format csv --output ...
    python -m pipelines.evaluate --model MODELS --input CORPUS.csv --format csv --output ...

Peak RSS is the largest SUM of the resident set sizes of the child and all its
descendants seen by psutil polling (every --poll seconds); shared pages are
counted once per process, so it over- rather than under-states.  It prints a
table (peak RSS, wall time, docs/s per command and size), the ratio largest /
smallest size per command, and exits with status 1 if a ratio exceeds
--max-ratio (default 1.2).

Documents: sentences of 20-60 words (uniform) drawn deterministically (seeded
numpy) from a closed, Zipf-weighted vocabulary of 5,000 pseudo-words plus 40
sentiment words whose mix sets the label, so a tiny model learns something and
the vocabulary does not grow with N.  Models for score/evaluate: trained once on
a separate 5,000-document corpus from the same generator with
``pipelines.train --epochs 1 --units 8 --embedding-dim 8 --kind both`` (or
--models DIR to reuse an export).

    python benchmarks/memory.py                                 # 100k and 1M, all three commands
    python benchmarks/memory.py --sizes 20000 200000 --commands score
    python benchmarks/memory.py --json runs/bench_memory/result.json

Wall times include start-up (imports, model loading, the evaluate report's
latency measurement) and are only as steady as the machine: compare within a run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMANDS = ("preprocess", "score", "evaluate")
VOCAB_WORDS = 5000
SENTIMENT_WORDS = 20  # per class
_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "be", "da", "fu", "go", "hi", "ja", "pe", "zu")


# --- The corpus -------------------------------------------------------------------------------


def _pseudo_words(n: int, offset: int = 0) -> list[str]:
    """n distinct lower-case ASCII words (base-16 numbers spelled in syllables)."""
    words = []
    for i in range(offset, offset + n):
        syllables, k = [], i + 16  # at least two syllables
        while k:
            k, r = divmod(k, len(_SYLLABLES))
            syllables.append(_SYLLABLES[r])
        words.append("".join(syllables))
    return words


class Corpus:
    """Deterministic labelled sentences: document i depends only on (seed, i)."""

    def __init__(self, seed: int = 0, min_words: int = 20, max_words: int = 60):
        self.seed, self.min_words, self.max_words = seed, min_words, max_words
        self.vocab = np.array(_pseudo_words(VOCAB_WORDS))
        self.sentiment = [np.array(_pseudo_words(SENTIMENT_WORDS, VOCAB_WORDS + c * SENTIMENT_WORDS))
                          for c in range(2)]
        weights = 1.0 / np.arange(1, VOCAB_WORDS + 1)
        self.cdf = np.cumsum(weights / weights.sum())

    def chunk(self, start: int, n: int) -> list[tuple[str, int]]:
        """Documents start .. start+n-1 as (text, label)."""
        rng = np.random.default_rng([self.seed, start])
        labels = rng.integers(0, 2, size=n)
        lengths = rng.integers(self.min_words, self.max_words + 1, size=n)
        total = int(lengths.sum())
        words = self.vocab[np.minimum(np.searchsorted(self.cdf, rng.random(total)), VOCAB_WORDS - 1)]
        # About one word in eight is a sentiment word, 80% of them of the document's class.
        is_sentiment = rng.random(total) < 0.125
        doc_of_word = np.repeat(np.arange(n), lengths)
        agree = rng.random(total) < 0.8
        cls = np.where(agree, labels[doc_of_word], 1 - labels[doc_of_word])
        pick = rng.integers(0, SENTIMENT_WORDS, size=total)
        for c in range(2):
            mask = is_sentiment & (cls == c)
            words[mask] = self.sentiment[c][pick[mask]]
        ends = np.cumsum(lengths)
        out, begin = [], 0
        for i in range(n):
            out.append((" ".join(words[begin:ends[i]].tolist()) + ".", int(labels[i])))
            begin = ends[i]
        return out


def write_csv(path: pathlib.Path, corpus: Corpus, n: int, chunk: int = 20000) -> None:
    """Writes documents 0..n-1 as a csv with columns label,text (written once, reused)."""
    done = path.with_suffix(path.suffix + ".done")
    if path.exists() and done.exists() and done.read_text() == f"{n} {corpus.seed}":
        return
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "text"])
        for start in range(0, n, chunk):
            writer.writerows((label, text) for text, label in corpus.chunk(start, min(chunk, n - start)))
    tmp.rename(path)
    done.write_text(f"{n} {corpus.seed}")


# --- Measuring one command --------------------------------------------------------------------


def run_measured(cmd: list[str], log_path: pathlib.Path, poll: float) -> dict:
    """Runs cmd; returns wall seconds, peak RSS of the process tree (MB), peak of one process, rc."""
    import psutil

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    peak_tree = peak_one = 0
    timeline = []  # (seconds, tree RSS MB) about every 5 s: steady growth vs a step
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        parent = psutil.Process(proc.pid)
        while proc.poll() is None:
            total = 0
            try:
                procs = [parent] + parent.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    rss = p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += rss
                peak_one = max(peak_one, rss)
            peak_tree = max(peak_tree, total)
            now = time.perf_counter() - started
            if not timeline or now - timeline[-1][0] >= 5:
                timeline.append((round(now, 1), round(total / 2**20)))
            time.sleep(poll)
        rc = proc.wait()
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_tree / 2**20,
            "peak_process_rss_mb": peak_one / 2**20, "returncode": rc, "rss_timeline_mb": timeline}


def command_line(command: str, corpus_csv: pathlib.Path, out: pathlib.Path, models: pathlib.Path) -> list[str]:
    corpus = ["--input", str(corpus_csv), "--format", "csv"]
    if command == "preprocess":
        return [sys.executable, "-m", "pipelines.preprocess", *corpus, "--output", str(out)]
    if command == "score":
        return [sys.executable, "-m", "pipelines.score", "--model", str(models / "bilstm"), str(models / "lstm"),
                *corpus, "--output", str(out / "scores")]
    return [sys.executable, "-m", "pipelines.evaluate", "--model", str(models), *corpus, "--output", str(out)]


def last_json_line(log_path: pathlib.Path) -> dict | None:
    for line in reversed(log_path.read_text(errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def documents_done(command: str, summary: dict | None) -> int | None:
    """How many documents the command reports it processed (checked against N)."""
    if not summary:
        return None
    if command == "preprocess":
        return summary.get("documents_out")
    if command == "score":
        return summary.get("scored")
    return summary.get("documents")


def train_models(work: pathlib.Path, corpus: Corpus, docs: int) -> pathlib.Path:
    models = work / "models"
    if (models / "bilstm" / "model_card.json").exists() and (models / "lstm" / "model_card.json").exists():
        return models
    train_csv = work / "train.csv"
    write_csv(train_csv, corpus, docs)
    for cmd in (
        [sys.executable, "-m", "pipelines.preprocess", "--input", str(train_csv), "--format", "csv",
         "--output", str(work / "train_prep")],
        [sys.executable, "-m", "pipelines.train", "--transformed", str(work / "train_prep"), "--output", str(models),
         "--model", "both", "--epochs", "1", "--units", "8", "--embedding-dim", "8"],
    ):
        print("$", " ".join(cmd), flush=True)
        with open(work / "train_models.log", "a") as log:
            subprocess.run(cmd, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    return models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="Corpus sizes (documents).")
    parser.add_argument("--commands", nargs="+", choices=COMMANDS, default=list(COMMANDS))
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench_memory"), help="Working directory.")
    parser.add_argument("--models", default=None, help="Exported models dir (bilstm/ and lstm/) to reuse.")
    parser.add_argument("--train-docs", type=int, default=5000, help="Documents for training the tiny models.")
    parser.add_argument("--min-words", type=int, default=20)
    parser.add_argument("--max-words", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--poll", type=float, default=0.2, help="RSS polling interval (seconds).")
    parser.add_argument("--max-ratio", type=float, default=1.2, help="Fail if largest/smallest peak RSS exceeds this.")
    parser.add_argument("--json", default=None, help="Also write the results here.")
    args = parser.parse_args(argv)
    sizes = sorted(set(args.sizes))
    if len(sizes) < 2:
        parser.error("--sizes needs at least two distinct sizes")

    work = pathlib.Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(args.seed, args.min_words, args.max_words)
    csvs = {}
    for n in sizes:
        csvs[n] = work / f"corpus-{n}" / "corpus.csv"
        csvs[n].parent.mkdir(exist_ok=True)
        write_csv(csvs[n], corpus, n)
        print(f"corpus {n}: {csvs[n]} ({csvs[n].stat().st_size / 2**20:.0f} MB)", flush=True)
    models = pathlib.Path(args.models).resolve() if args.models else None
    if models is None and any(c != "preprocess" for c in args.commands):
        models = train_models(work, Corpus(args.seed + 1, args.min_words, args.max_words), args.train_docs)

    results: dict[str, dict[int, dict]] = {}
    for command in args.commands:
        results[command] = {}
        for n in sizes:
            out = work / "out" / f"{command}-{n}"
            out.mkdir(parents=True, exist_ok=True)
            cmd = command_line(command, csvs[n], out, models)
            log = work / "out" / f"{command}-{n}.log"
            print("$", " ".join(cmd), flush=True)
            r = run_measured(cmd, log, args.poll)
            r["documents"] = documents_done(command, last_json_line(log))
            r["docs_per_s"] = n / r["seconds"]
            results[command][n] = r
            print(f"  {command} {n}: rc {r['returncode']}, {r['seconds']:.0f} s, peak RSS {r['peak_rss_mb']:.0f} MB "
                  f"(largest process {r['peak_process_rss_mb']:.0f} MB), documents {r['documents']}", flush=True)

    failed = False
    lo, hi = sizes[0], sizes[-1]
    print()
    print(f"| command | peak RSS {lo:,} | peak RSS {hi:,} | ratio | docs/s {lo:,} | docs/s {hi:,} |")
    print("| --- | --- | --- | --- | --- | --- |")
    summary = {"sizes": sizes, "max_ratio": args.max_ratio, "commands": {}}
    for command, by_size in results.items():
        a, b = by_size[lo], by_size[hi]
        ok_runs = all(r["returncode"] == 0 and r["documents"] == n for n, r in by_size.items())
        ratio = b["peak_rss_mb"] / a["peak_rss_mb"]
        bad = ratio > args.max_ratio or not ok_runs
        failed |= bad
        print(f"| {command} | {a['peak_rss_mb']:,.0f} MB | {b['peak_rss_mb']:,.0f} MB | **{ratio:.2f}x**"
              f"{'' if ok_runs else ' (a run failed or lost documents)'} | {a['docs_per_s']:,.0f} | "
              f"{b['docs_per_s']:,.0f} |")
        summary["commands"][command] = {"ratio": ratio, "runs_ok": ok_runs,
                                        "by_size": {str(n): r for n, r in by_size.items()}}
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(summary, indent=2))
    print(f"\n{'FAIL' if failed else 'OK'}: ratio {hi:,}/{lo:,} must be <= {args.max_ratio} and every run must "
          "finish with every document")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
