"""Benchmark: one more token (NumPy step) vs re-running the classifier on the whole prefix.

    python -m benchmarks.stream [--model DIR] [--imdb train.csv] [--output results.json]

For prefix lengths 50, 200 and 1000 (token ids of real IMDB reviews when available,
else random vocabulary ids):

* 1 stream: `StreamingClassifier.step` (one token, NumPy) vs the exported SavedModel on
  the whole prefix (``classify_ids`` on ids, ``serving_default`` on the prefix text,
  which also tokenises) and vs the NumPy full pass (`predict_ids`).
* 1,000 concurrent streams: one batched NumPy step (`step_batch_arrays` on stacked
  states; `step_many` with per-stream state objects) vs ``classify_ids`` on a
  [1000, L] batch (the batched full re-run).
* Tokens/s through `StreamPredictions` (the stateful DoFn) on the DirectRunner.

Times are medians of repeated runs in one process (the machine is shared, so compare
within a run).  Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from beam_rnn import stream as streaming  # noqa: E402
from beam_rnn.core.errors import ArtifactError  # noqa: E402
from beam_rnn.stream import step as rnn_step  # noqa: E402

LENGTHS = (50, 200, 1000)
STREAMS = 1000
DEFAULT_MODELS = (ROOT / "runs" / "imdb" / "models" / "lstm", Path("/tmp/stream_models/lstm"))
DEFAULT_IMDB = ROOT.parent / "shared" / "data" / "imdb" / "train.csv"


def _time(fn: Callable[[], Any], *, repeats: int, inner: int = 1) -> float:
    """Median seconds per call of fn (inner calls per timed repeat)."""
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples)


def _texts(imdb: Path, limit: int = 3000) -> list[str]:
    if not imdb.exists():
        return []
    csv.field_size_limit(sys.maxsize)
    with open(imdb, newline="", encoding="utf-8") as f:
        return [row["text"] for _, row in zip(range(limit), csv.DictReader(f))]


def _prefix_ids(clf: streaming.StreamingClassifier, texts: list[str], length: int, count: int, rng: random.Random) -> list[list[int]]:
    """`count` id sequences of exactly `length` tokens: real reviews concatenated, or random ids."""
    if texts:
        pool = [i for t in texts for i in clf.text_ids(t)]
        out = []
        for _ in range(count):
            start = rng.randrange(0, len(pool) - length)
            out.append(pool[start : start + length])
        return out
    high = clf.weights.vocab_size
    return [[rng.randrange(1, high) for _ in range(length)] for _ in range(count)]


def bench_model(model_dir: str, texts: list[str], quick: bool) -> dict[str, Any]:
    import tensorflow as tf

    from beam_rnn.train import export

    clf = streaming.StreamingClassifier.load(model_dir)
    sigs = export.load_exported(model_dir).signatures
    classify_ids, serve = sigs["classify_ids"], sigs["serving_default"]
    words = clf.vocabulary.words
    rng = random.Random(0)
    results: dict[str, Any] = {"single_stream": {}, "concurrent_streams": {}}
    for length in LENGTHS:
        [ids] = _prefix_ids(clf, texts, length + 1, 1, rng)
        prefix, nxt = ids[:length], ids[length]
        state = clf.start()
        for i in prefix:
            _, state = clf.step(state, i)
        step_s = _time(lambda: clf.step(state, nxt), repeats=7, inner=200)
        text = " ".join(words[i - clf.vocabulary.num_oov_buckets - 1] if i > clf.vocabulary.num_oov_buckets else "zzqx"
                        for i in ids)
        ids_tensor = tf.constant([ids], tf.int64)
        text_tensor = tf.constant([text])
        classify_s = _time(lambda: classify_ids(token_ids=ids_tensor), repeats=7, inner=3)
        serve_s = _time(lambda: serve(text=text_tensor), repeats=7, inner=3)
        numpy_full_s = _time(lambda: clf.predict_ids(ids), repeats=5, inner=1)
        # Sanity: same answer both ways.
        p_step = clf.step(state, nxt)[0].probability
        p_full = float(np.ravel(classify_ids(token_ids=ids_tensor)["probabilities"].numpy())[0])
        results["single_stream"][str(length)] = {
            "numpy_step_us": round(step_s * 1e6, 2),
            "saved_model_classify_ids_ms": round(classify_s * 1e3, 3),
            "saved_model_serving_default_ms": round(serve_s * 1e3, 3),
            "numpy_full_pass_ms": round(numpy_full_s * 1e3, 3),
            "speedup_vs_classify_ids": round(classify_s / step_s, 1),
            "speedup_vs_serving_default": round(serve_s / step_s, 1),
            "speedup_vs_numpy_full_pass": round(numpy_full_s / step_s, 1),
            "step_vs_full_pass_abs_diff": abs(float(np.ravel(p_step)[0]) - p_full),
        }

    n = 200 if quick else STREAMS
    for length in LENGTHS:
        seqs = _prefix_ids(clf, texts, length + 1, n, rng)
        batch = np.array(seqs, dtype=np.int64)
        nxt = batch[:, length]
        states = [clf.start() for _ in range(n)]
        # Advance every stream through its prefix in batches (this is also what the batched path costs per token).
        stacked = [np.zeros((n, clf.weights.units), np.float32) for _ in range(clf.num_state_arrays)]
        for t in range(length):
            _, stacked = clf.step_batch_arrays(batch[:, t], stacked)
        states = [
            streaming.StreamState(rnn=tuple(a[i] for a in stacked), logits=np.zeros(1, np.float32), tokens_seen=length)
            for i in range(n)
        ]
        step_arrays_s = _time(lambda: clf.step_batch_arrays(nxt, stacked), repeats=7, inner=10)
        step_many_s = _time(lambda: clf.step_many(states, list(nxt)), repeats=5, inner=1)
        full = tf.constant(batch)
        rerun_s = _time(lambda: classify_ids(token_ids=full), repeats=3 if length < 1000 else 1, inner=1)
        step_probs = rnn_step.probabilities(clf.step_batch_arrays(nxt, stacked)[0], clf.num_classes)
        rerun_probs = classify_ids(token_ids=full)["probabilities"].numpy()
        diff = float(np.max(np.abs(step_probs.reshape(rerun_probs.shape) - rerun_probs)))
        results["concurrent_streams"][str(length)] = {
            "streams": n,
            "batched_numpy_step_ms": round(step_arrays_s * 1e3, 3),
            "step_many_ms": round(step_many_s * 1e3, 3),
            "batched_classify_ids_rerun_ms": round(rerun_s * 1e3, 1),
            "speedup_batched_step": round(rerun_s / step_arrays_s, 1),
            "speedup_step_many": round(rerun_s / step_many_s, 1),
            "step_vs_rerun_max_abs_diff": diff,
        }
    return results


def bench_beam(model_dir: str, texts: list[str], streams: int, chunks_per_stream: int) -> dict[str, Any]:
    """Tokens/s through StreamPredictions (batch DirectRunner; events pre-generated)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_rnn.cli.runtime import counters

    rng = random.Random(1)
    pool = texts or ["good movie bad plot the actor was fine " * 20]
    events = []
    for s in range(streams):
        text = pool[s % len(pool)]
        cuts = sorted(rng.sample(range(1, max(2, len(text))), min(chunks_per_stream - 1, max(1, len(text) - 1))))
        pieces = [text[i:j] for i, j in zip([0] + cuts, cuts + [len(text)])]
        for seq, piece in enumerate(pieces):
            events.append({"stream_id": f"s{s}", "seq": seq, "text": piece, "end": seq == len(pieces) - 1})
    rng.shuffle(events)  # out of order, as the DoFn must cope with
    out = tempfile.mkdtemp(prefix="bench_stream_")
    start = time.perf_counter()
    options = PipelineOptions(["--runner=DirectRunner", "--direct_num_workers=1"])
    p = beam.Pipeline(options=options)
    result = p | beam.Create(events) | streaming.StreamPredictions(model_dir, max_buffered_events=1000,
                                                                   max_buffered_chars=10**6)
    _ = result["predictions"] | beam.combiners.Count.Globally() | beam.Map(
        lambda n: open(os.path.join(out, "count"), "w").write(str(n)))
    res = p.run()
    res.wait_until_finish()
    seconds = time.perf_counter() - start
    found = counters(res, streaming.METRICS_NAMESPACE)
    tokens = found.get("tokens", 0)
    return {
        "runner": "DirectRunner (batch, 1 worker)",
        "streams": streams,
        "events": len(events),
        "tokens": tokens,
        "seconds_including_pipeline_startup": round(seconds, 2),
        "tokens_per_second": round(tokens / seconds, 1),
        **streaming.reconcile(found),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Exported streaming model dir (default: the IMDB lstm).")
    parser.add_argument("--imdb", default=str(DEFAULT_IMDB), help="IMDB train.csv for real token sequences.")
    parser.add_argument("--beam-streams", type=int, default=300, help="Streams in the Beam throughput run.")
    parser.add_argument("--beam-chunks", type=int, default=20, help="Events per stream in the Beam run.")
    parser.add_argument("--quick", action="store_true", help="200 concurrent streams instead of 1,000.")
    parser.add_argument("--output", default=None, help="Also write the JSON summary here.")
    args = parser.parse_args(argv)
    model = args.model or next((str(m) for m in DEFAULT_MODELS if (m / "step_weights.npz").exists()), None)
    if model is None:
        parser.error("no streaming model found; pass --model DIR (train one with pipelines.train --kind lstm)")
    try:
        clf = streaming.StreamingClassifier.load(model)  # verified against its manifest.json
    except ArtifactError as e:
        parser.error(f"--model: {e}")
    texts = _texts(Path(args.imdb))
    summary = {
        "model": model,
        "model_shape": {"cell": clf.weights.cell, "layers": clf.weights.num_layers, "units": clf.weights.units,
                        "vocab": clf.weights.vocab_size, "embedding_dim": int(clf.weights.embedding.shape[1])},
        "token_source": "IMDB reviews" if texts else "random vocabulary ids",
        **bench_model(model, texts, args.quick),
        "beam_dofn": bench_beam(model, texts, args.beam_streams, args.beam_chunks),
    }
    summary["goal_100x_at_200_single_stream"] = summary["single_stream"]["200"]["speedup_vs_classify_ids"] >= 100
    text = json.dumps(summary, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    from beam_rnn.cli.runtime import hard_exit

    hard_exit(main())
