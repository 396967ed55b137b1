"""Per-epoch curves on small corpora: what early stopping would keep, and what it is worth on unseen data.

Issue 14 item 2 (defaults that adapt to the corpus).  One long run per (variant, kind, seed) with
early stopping off records, after every epoch, the validation loss / accuracy of the train
file's own eval split (what early stopping sees) and the accuracy on a separate dev file that
training and early stopping never see.  Any stopping rule (monitor, patience, epoch budget) can
then be replayed on the recorded validation curve, and the dev accuracy of the epoch it would keep
read off — without retraining per rule:

    python benchmarks/epoch_curves.py --corpus sst2 --work runs/curves --epochs 15 --seeds 42 43 \
        --variants base dropout

Variants are TrainConfig / model-setting overrides (see VARIANTS).  Writes WORK/<corpus>/curves.json
and prints, per variant and kind, the dev accuracy kept by each candidate rule (mean over seeds).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DATA = os.path.join(ROOT, "..", "shared", "data")

CORPORA = {
    "sst2": (["--input", os.path.join(DATA, "sst2", "stsa.binary.train"), "--format", "labeled_lines"],
             os.path.join(DATA, "sst2", "stsa.binary.dev")),
    "sst1": (["--input", os.path.join(DATA, "sst2", "stsa.fine.train"), "--format", "labeled_lines"],
             os.path.join(DATA, "sst2", "stsa.fine.dev")),
}

# name -> (TrainConfig overrides, ModelSettings overrides)
VARIANTS = {
    "base": ({}, {"dropout": 0.0}),
    "dropout": ({}, {"dropout": 0.5}),
    "lr1e-3": ({"learning_rate": 1e-3}, {"dropout": 0.0}),
    "dropout_lr1e-3": ({"learning_rate": 1e-3}, {"dropout": 0.5}),
}

# Candidate stopping rules replayed on the recorded curves: (monitor, patience, max epochs).
RULES = [("val_loss", 2, 5), ("val_loss", 2, 15), ("val_loss", 3, 15), ("val_loss", 5, 15),
         ("val_accuracy", 2, 15), ("val_accuracy", 3, 15), ("val_accuracy", 5, 15), ("none", 0, 15)]


def _dev_dataset(prep: str, dev_file: str, batch_size: int):
    """(token_ids, label) batches of the dev file, tokenised by the preprocessing's own TFT graph."""
    import tensorflow as tf
    import tensorflow_transform as tft

    texts, labels = [], []
    with open(dev_file, encoding="utf-8") as f:
        for line in f:
            label, _, text = line.rstrip("\n").partition(" ")
            if text:
                labels.append(int(label))
                texts.append(text)
    out = tft.TFTransformOutput(prep)
    ids = out.transform_raw_features(
        {"id": tf.constant([str(i) for i in range(len(texts))]), "text": tf.constant(texts),
         "label": tf.constant(labels, tf.int64)}, drop_unused_features=True)["token_ids"]
    dense = tf.sparse.to_dense(ids)
    dense = tf.pad(dense, [[0, 0], [0, tf.maximum(1 - tf.shape(dense)[1], 0)]])
    classes = len(set(labels))
    y = tf.constant(labels, tf.float32)[:, None] if classes == 2 else tf.constant(labels, tf.int64)
    return tf.data.Dataset.from_tensor_slices((dense, y)).batch(batch_size), len(texts)


def run_one(prep: str, dev_file: str, out_dir: str, kind: str, seed: int, epochs: int, variant: str) -> dict:
    import tf_keras as keras

    from beam_rnn.train.config import ModelSettings, TrainConfig
    from beam_rnn.train.trainer import train

    train_over, model_over = VARIANTS[variant]
    config = TrainConfig(kinds=(kind,), epochs=epochs, early_stopping_patience=epochs,
                         model=ModelSettings(seed=seed, **model_over), verbose=0, **train_over)
    dev, dev_n = _dev_dataset(prep, dev_file, config.batch_size)
    dev_acc: list[float] = []

    class DevAccuracy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            dev_acc.append(float(self.model.evaluate(dev, verbose=0, return_dict=True)["accuracy"]))

    start = time.time()
    train(prep, out_dir, config, kind=kind, callbacks=[DevAccuracy()])
    with open(os.path.join(out_dir, kind, "history.jsonl")) as f:
        history = [json.loads(line) for line in f if line.strip()]
    return {"kind": kind, "seed": seed, "variant": variant, "seconds": round(time.time() - start, 1),
            "dev_documents": dev_n, "val_loss": [h["val_loss"] for h in history],
            "val_accuracy": [h["val_accuracy"] for h in history], "dev_accuracy": dev_acc}


def kept_epoch(curve: dict, monitor: str, patience: int, max_epochs: int) -> int:
    """0-based epoch an early-stopping rule would keep (best monitored value up to its stop)."""
    n = min(max_epochs, len(curve["val_loss"]))
    if monitor == "none":
        return n - 1
    values = curve[monitor][:n]
    better = (lambda a, b: a < b) if monitor.endswith("loss") else (lambda a, b: a > b)
    best, wait = 0, 0
    for e in range(1, n):
        if better(values[e], values[best]):
            best, wait = e, 0
        else:
            wait += 1
            if wait >= patience:
                break
    return best


def summarize(curves: list[dict]) -> str:
    lines = ["| variant | kind | " + " | ".join(f"{m} p{p} ≤{e}" for m, p, e in RULES) + " | best dev epoch |",
             "| --- | --- |" + " --- |" * (len(RULES) + 1)]
    for variant in dict.fromkeys(c["variant"] for c in curves):
        for kind in ("bilstm", "lstm"):
            runs = [c for c in curves if c["variant"] == variant and c["kind"] == kind]
            if not runs:
                continue
            cells = []
            for rule in RULES:
                kept = [c["dev_accuracy"][kept_epoch(c, *rule)] for c in runs]
                epochs = [kept_epoch(c, *rule) + 1 for c in runs]
                cells.append(f"{statistics.mean(kept):.3f} (ep {','.join(map(str, epochs))})")
            oracle = [max(c["dev_accuracy"]) for c in runs]
            cells.append(f"{statistics.mean(oracle):.3f}")
            lines.append(f"| {variant} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="sst2")
    parser.add_argument("--work", default=os.path.join(ROOT, "runs", "curves"))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["base", "dropout"])
    parser.add_argument("--kinds", nargs="+", default=["bilstm", "lstm"])
    parser.add_argument("--summarize-only", action="store_true")
    args = parser.parse_args(argv)
    work = os.path.join(args.work, args.corpus)
    prep = os.path.join(work, "prep")
    results_path = os.path.join(work, "curves.json")
    curves = json.load(open(results_path)) if os.path.exists(results_path) else []
    if not args.summarize_only:
        if not os.path.exists(os.path.join(prep, "manifest.json")):
            subprocess.run([sys.executable, "-m", "beam_rnn.cli", "preprocess", *CORPORA[args.corpus][0],
                            "--output", prep, "--runner", "DirectRunner"], check=True, cwd=ROOT,
                           capture_output=True)
        for variant in args.variants:
            for seed in args.seeds:
                for kind in args.kinds:
                    if any(c["variant"] == variant and c["seed"] == seed and c["kind"] == kind
                           and len(c["dev_accuracy"]) >= args.epochs for c in curves):
                        continue
                    out = os.path.join(work, f"{variant}_seed{seed}")
                    curve = run_one(prep, CORPORA[args.corpus][1], out, kind, seed, args.epochs, variant)
                    curves = [c for c in curves if not (c["variant"] == variant and c["seed"] == seed
                                                        and c["kind"] == kind)] + [curve]
                    with open(results_path, "w") as f:
                        json.dump(curves, f, indent=1)
                    print(f"{variant} {kind} seed {seed}: {curve['seconds']} s, dev "
                          + " ".join(f"{a:.3f}" for a in curve["dev_accuracy"]), flush=True)
    print(summarize(curves))


if __name__ == "__main__":
    main()
