"""Benchmark: the NumPy recurrent steps with OpenBLAS's default thread pool vs one BLAS thread.

`beam_rnn.core.threads.limit_blas_threads` limits NumPy's BLAS to one thread in every process
that runs the NumPy steps.  This measures why, in one process, the same work both ways
(threadpoolctl switches the limit between the variants):

* ``step_batch``: one batched LSTM step of the exported streaming model, at 1, 64 and 640 rows;
* ``evaluate``: the early-prediction passes of `evaluate` on the first N IMDB reviews (sorted
  by length, batches of 64): the streaming LSTM's step per token (`streaming_early`) and the
  BiLSTM's prefixes (`bidirectional_early`).

    python benchmarks/blas_threads.py --model W/models --docs 1024

Prints the seconds of each variant, the ratio and the load average (the effect depends on
how busy the cores are: run it on a quiet machine and beside other work).
"""

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


def _per_call_us(fn, seconds: float = 1.0) -> float:
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return 1e6 * (time.perf_counter() - start) / calls


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A `beam-rnn train` output holding bilstm/ and lstm/.")
    parser.add_argument("--input", default=str(DEFAULT_INPUT))
    parser.add_argument("--docs", type=int, default=1024)
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf
    from threadpoolctl import ThreadpoolController

    from beam_rnn.core.artifacts import expand_model_dirs, resolve_models
    from beam_rnn.serve import evaluate as ev
    from beam_rnn.stream import step as rnn_step

    controller = ThreadpoolController()
    default_threads = max((p["num_threads"] for p in controller.info() if p["user_api"] == "blas"), default=None)
    infos = resolve_models(expand_model_dirs([args.model]))
    models = ev.EvaluationModels.__new__(ev.EvaluationModels)  # without __init__'s process-wide limit
    ev.ClassifierModels.__init__(models, infos)
    from beam_rnn.serve.bidirectional import PrefixBidirectional

    weights = ev.read_step_weights(dict((i.name, i.model_dir) for i in infos)["lstm"])
    bilstm = PrefixBidirectional.from_module(models.loaded[models.names.index("bilstm")].module, infos[0].num_classes)
    csv.field_size_limit(1 << 30)
    with open(args.input, newline="", encoding="utf-8") as f:
        texts = sorted((row["text"] for _, row in zip(range(args.docs), csv.DictReader(f))), key=len)
    batches = []
    for start in range(0, len(texts), 64):
        tok = models.loaded[0].module.signatures["tokenize"](text=tf.constant(texts[start:start + 64]))
        ids, lengths = tok["token_ids"].numpy(), tok["lengths"].numpy().astype(int)
        batches.append((ids, lengths, [ev.prefix_lengths(int(n)) for n in lengths]))

    def early(which: str) -> float:
        start = time.perf_counter()
        for ids, lengths, cuts in batches:
            if which == "lstm":
                ev.streaming_early(weights, ids, lengths, cuts, weights.num_classes)
            else:
                ev.bidirectional_early(bilstm, ids, cuts, weights.num_classes)
        return time.perf_counter() - start

    results = {"docs": len(texts), "default_blas_threads": default_threads, "load_start": os.getloadavg()}
    rng = np.random.default_rng(0)
    for rows in (1, 64, 640):
        state = rnn_step.initial_state(weights, rows)
        ids = rng.integers(1, weights.vocab_size, rows)
        call = lambda: rnn_step.step_batch(weights, ids, state)  # noqa: E731
        default = _per_call_us(call)
        with controller.limit(limits=1, user_api="blas"):
            one = _per_call_us(call)
        results[f"step_batch_{rows}_rows_us"] = {"default": round(default, 1), "one_thread": round(one, 1),
                                                 "ratio": round(default / one, 2)}
    for which in ("lstm", "bilstm"):
        default = early(which)
        with controller.limit(limits=1, user_api="blas"):
            one = early(which)
        results[f"evaluate_early_{which}_seconds"] = {"default": round(default, 2), "one_thread": round(one, 2),
                                                      "ratio": round(default / one, 2)}
    results["load_end"] = os.getloadavg()
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
