"""Benchmark: the TensorFlow tutorial's BiLSTM training vs our trainer, same data, same run.

Tutorial ("Text classification with an RNN", as written): TextVectorization(max_tokens=1000)
inside the model, Embedding(1000, 64, mask_zero) → Bidirectional(LSTM(64)) → Dense(64, relu)
→ Dense(1), Adam(1e-4), batch 64, shuffle(10000), every batch padded to its longest review.

Ours: the same architecture and vocabulary size (998 words + padding + OOV = 1000 ids), the
preprocessing stage (TFT) and `beam_rnn.train.trainer` (length-bucketed batches, full seeded
shuffle, Adam 1e-3).

Both train on the same IMDB split (our 80/20 split by hash of the derived document id) for
the same number of epochs and are evaluated on the same held-out 20%. Examples/s =
train examples × epochs / wall time of `fit` (per-epoch validation included for both); epoch
examples/s the same over the epochs' own seconds (begin to end of each epoch, validation included).

The IMDB CSV is sorted by label; the tutorial reads tfds' shuffled files, so its input list is
permuted once (seeded) before its own shuffle(10000), as the tutorial's data would be.

    python benchmarks/train.py [--epochs 2] [--input ../shared/data/imdb/train.csv]

Trainer speed alone (e.g. before/after a trainer change), on every 8th review (3,125):

    python benchmarks/train.py --ours-only --subset-every 8 --kinds lstm,bilstm
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import shutil
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import beam_rnn  # noqa: E402,F401  (pins tf_keras before TensorFlow is imported)

DEFAULT_INPUT = ROOT.parent / "shared" / "data" / "imdb" / "train.csv"


def load_split(path: str):
    """Texts and labels of our train/eval split (ids as ReadCorpus derives them)."""
    from beam_rnn.io import derive_id
    from beam_rnn.preprocess.transform import SPLIT_EVAL, split_for_id

    train, evals = ([], []), ([], [])
    with open(path, newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.DictReader(f), start=1):
            doc_id = derive_id(os.path.basename(path), n)
            target = evals if split_for_id(doc_id, 0.2) == SPLIT_EVAL else train
            target[0].append(row["text"])
            target[1].append(float(row["label"]))
    return train, evals


def run_tutorial(train, evals, epochs: int, seed: int) -> dict:
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    order = np.random.default_rng(seed).permutation(len(train[0]))
    texts = [train[0][i] for i in order]
    labels = [train[1][i] for i in order]
    train_ds = tf.data.Dataset.from_tensor_slices((texts, labels)).shuffle(10000, seed=seed).batch(64).prefetch(
        tf.data.AUTOTUNE)
    eval_ds = tf.data.Dataset.from_tensor_slices(evals).batch(64).prefetch(tf.data.AUTOTUNE)

    start = time.perf_counter()
    encoder = keras.layers.TextVectorization(max_tokens=1000)
    encoder.adapt(train_ds.map(lambda text, label: text))
    adapt_seconds = time.perf_counter() - start
    model = keras.Sequential([
        encoder,
        keras.layers.Embedding(input_dim=len(encoder.get_vocabulary()), output_dim=64, mask_zero=True),
        keras.layers.Bidirectional(keras.layers.LSTM(64)),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(1),
    ])
    model.compile(loss=keras.losses.BinaryCrossentropy(from_logits=True), optimizer=keras.optimizers.Adam(1e-4),
                  metrics=["accuracy"])
    epoch_seconds: list[float] = []

    class EpochTimer(keras.callbacks.Callback):  # what ours records in history.jsonl: begin to end of an epoch
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.time()

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(time.time() - self.start)

    start = time.perf_counter()
    model.fit(train_ds, epochs=epochs, validation_data=eval_ds, verbose=2, callbacks=[EpochTimer()])
    fit_seconds = time.perf_counter() - start
    loss, accuracy = model.evaluate(eval_ds, verbose=0)
    return {"examples_per_second": len(texts) * epochs / fit_seconds, "eval_accuracy": accuracy,
            "epoch_examples_per_second": len(texts) * epochs / sum(epoch_seconds),
            "fit_seconds": fit_seconds, "adapt_seconds": adapt_seconds, "vocabulary": len(encoder.get_vocabulary())}


def subset(input_path: str, every: int, workdir: str) -> str:
    """Every `every`-th row of a CSV (the IMDB file is sorted by label: this keeps both), as a new file."""
    out = os.path.join(workdir, f"every{every}.csv")
    os.makedirs(workdir, exist_ok=True)
    with open(input_path, newline="", encoding="utf-8") as f, open(out, "w", newline="", encoding="utf-8") as g:
        reader = csv.DictReader(f)
        writer = csv.DictWriter(g, fieldnames=reader.fieldnames)
        writer.writeheader()
        writer.writerows(row for n, row in enumerate(reader) if n % every == 0)
    return out


def run_ours(input_path: str, workdir: str, epochs: int, seed: int, kind: str = "bilstm") -> dict:
    from beam_rnn.train import trainer
    from beam_rnn.train.config import ModelSettings, TrainConfig
    from pipelines import preprocess

    prep = os.path.join(workdir, "prep")
    start = time.perf_counter()
    if not os.path.exists(os.path.join(prep, "manifest.json")):  # one preprocessing for every kind
        preprocess.run(["--input", input_path, "--format", "csv", "--output", prep, "--vocab-size", "998",
                        "--min-frequency", "1", "--runner", "DirectRunner"])
    with open(os.path.join(prep, "stats.json"), encoding="utf-8") as f:
        stats = json.load(f)
    preprocess_seconds = time.perf_counter() - start
    config = TrainConfig(kinds=(kind,), epochs=epochs, early_stopping_patience=epochs, model=ModelSettings(seed=seed))
    result = trainer.train(prep, os.path.join(workdir, "models"), config, kind=kind)
    m = result["metrics"]
    with open(os.path.join(workdir, "models", kind, trainer.HISTORY_FILE), encoding="utf-8") as f:
        epoch_seconds = sum(json.loads(line)["seconds"] for line in f)
    return {"kind": kind, "examples_per_second": m["examples_per_second"], "eval_accuracy": m["accuracy"],
            "epoch_examples_per_second": m["train_examples"] * m["epochs_this_run"] / epoch_seconds,
            "fit_seconds": m["train_seconds"], "preprocess_seconds": preprocess_seconds,
            "vocabulary": stats["vocab_size_with_reserved"], "best_epoch": m["best_epoch"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=str(DEFAULT_INPUT))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "bench_train"))
    parser.add_argument("--ours-only", action="store_true", help="Time our trainer only (no tutorial arm).")
    parser.add_argument("--kinds", default="bilstm", help="Our model kinds to time, comma-separated (default bilstm).")
    parser.add_argument("--subset-every", type=int, default=1, metavar="N", help="Use every N-th row of --input.")
    args = parser.parse_args()
    if not os.path.exists(args.input):
        sys.exit(f"benchmark input {args.input} is absent (needs ../shared/data/imdb/train.csv or --input)")
    shutil.rmtree(args.workdir, ignore_errors=True)
    if args.subset_every > 1:
        args.input = subset(args.input, args.subset_every, args.workdir)
    for kind in args.kinds.split(","):
        ours = run_ours(args.input, args.workdir, args.epochs, args.seed, kind=kind)
        print("ours:", json.dumps(ours), flush=True)
    if args.ours_only:
        return
    train, evals = load_split(args.input)
    assert len(train[0]) + len(evals[0]) == 25000 or args.input != str(DEFAULT_INPUT)
    tutorial = run_tutorial(train, evals, args.epochs, args.seed)
    print("tutorial:", json.dumps(tutorial), flush=True)
    print(json.dumps({
        "epochs": args.epochs,
        "examples_per_second": {"tutorial": round(tutorial["examples_per_second"], 1),
                                "ours": round(ours["examples_per_second"], 1)},
        "speedup": round(ours["examples_per_second"] / tutorial["examples_per_second"], 2),
        # The same from the epochs' own seconds: without what fit spends outside them (tracing before the first
        # epoch, the input's teardown after the last: tf.data's autotuning held it up to ~25 s, RESULTS.md).
        "epoch_examples_per_second": {"tutorial": round(tutorial["epoch_examples_per_second"], 1),
                                      "ours": round(ours["epoch_examples_per_second"], 1)},
        "epoch_speedup": round(ours["epoch_examples_per_second"] / tutorial["epoch_examples_per_second"], 2),
        "eval_accuracy": {"tutorial": round(tutorial["eval_accuracy"], 4), "ours": round(ours["eval_accuracy"], 4)},
        "goal": "speedup >= 3 at accuracy >= tutorial's",
    }))


if __name__ == "__main__":
    main()
    from beam_rnn.cli.runtime import hard_exit

    hard_exit(0)
