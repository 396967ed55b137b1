"""Fingerprint of a fixed, seeded end-to-end run: proves a refactoring changed no output.

    python benchmarks/fingerprint.py --write benchmarks/fingerprint.json   # before the change
    python benchmarks/fingerprint.py --expect benchmarks/fingerprint.json  # after: exit 1 on any difference

Runs the four stages a user runs, each as a subprocess through the `beam-rnn` CLI on
the default runner: preprocess (a 1,200-document CSV the script writes, with a few
bad rows) -> train both models for 1 epoch (seeded) -> score both models -> evaluate.
Every deterministic output is hashed (sha256):

* files whose bytes are the output (vocabulary, label vocabulary) as they are;
* JSON files canonicalised, with the keys that record wall time, dates, versions
  or paths removed (`VOLATILE_KEYS`);
* sharded outputs (transformed tf.Examples, score and record files, dead letters)
  as their sorted records, so a different shard split of the same records is equal;
  the working directory in dead-letter sources is replaced by ``<work>``;
* evaluate's records and metrics.json with floats rounded to 4 decimals (it batches
  documents in bundle order, and a padded batch's float32 results differ by up to
  ~1e-7 from run to run; score sorts its batches and is compared exactly);
* model weights as the arrays of the final checkpoint and of step_weights.npz;
* each SavedModel (and model.keras) through its predictions on 200 corpus texts,
  float32 bytes: the file bytes of a SavedModel carry generated names.

Not covered: plots and report.html (they embed latency measurements), TensorBoard
logs, timings.
"""

import argparse
import glob
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VOLATILE_KEYS = {
    "created", "versions", "export_seconds", "train_seconds", "training_seconds", "seconds", "elapsed_seconds",
    "epoch_seconds", "time", "wall_seconds", "latency", "report", "models_dir", "model_dir", "transformed",
    "output", "outputs", "models", "path", "paths", "tmp_dir", "examples_per_second", "docs_per_second", "pid",
}
WORDS_POS = "great superb loved wonderful moving brilliant".split()
WORDS_NEG = "awful boring hated dull weak terrible".split()
FILLER = [f"w{i}" for i in range(60)]


def write_corpus(path: Path, n: int = 1200, seed: int = 7) -> list[str]:
    """A labelled CSV with some malformed rows; returns the texts of the good rows."""
    import csv

    rng = random.Random(seed)
    texts = []
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", "text"])
        for i in range(n):
            label = i % 2
            words = [rng.choice(FILLER) for _ in range(rng.randint(2, 60))]
            for _ in range(rng.randint(1, 3)):
                words.insert(rng.randrange(len(words) + 1), rng.choice(WORDS_POS if label else WORDS_NEG))
            text = " ".join(words).capitalize() + ".<br />" + ("" if i % 7 else " The end!")
            texts.append(text)
            w.writerow([f"d{i:05d}", label, text])
            if i % 300 == 17:
                w.writerow([f"bad{i}", "x", "not a label"])
                w.writerow([f"empty{i}", label, "   "])
    return texts


_WORK = [""]  # the working directory, replaced by "<work>" in every string (dead-letter sources)


def _strip(value: Any, digits: int | None = None) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v, digits) for k, v in sorted(value.items()) if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_strip(v, digits) for v in value]
    if isinstance(value, str) and _WORK[0]:
        return value.replace(_WORK[0], "<work>")
    if isinstance(value, float) and digits is not None:
        return round(value, digits)
    return value


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_digest(path: str, digits: int | None = None) -> str:
    with open(path, encoding="utf-8") as f:
        return _sha(json.dumps(_strip(json.load(f), digits), sort_keys=True).encode())


def lines_digest(pattern: str, digits: int | None = None) -> str:
    lines = []
    for path in sorted(glob.glob(pattern)):
        with open(path, encoding="utf-8") as f:
            lines += [json.dumps(_strip(json.loads(line), digits), sort_keys=True) for line in f if line.strip()]
    return _sha("\n".join(sorted(lines)).encode()) + f" ({len(lines)} records)"


def tfrecord_digest(pattern: str) -> str:
    import tensorflow as tf

    files = sorted(glob.glob(pattern))
    # Re-serialised deterministically: protobuf map order in the written bytes is not.
    records = sorted(
        tf.train.Example.FromString(r.numpy()).SerializeToString(deterministic=True)
        for r in tf.data.TFRecordDataset(files, compression_type="GZIP")
    )
    return _sha(b"".join(hashlib.sha256(r).digest() for r in records)) + f" ({len(records)} records)"


def checkpoint_digest(prefix: str) -> str:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    names = sorted(n for n in reader.get_variable_to_shape_map() if "OPTIMIZER_SLOT" not in n and "save_counter" not in n)
    h = hashlib.sha256()
    for name in names:
        value = reader.get_tensor(name)
        h.update(name.encode())
        h.update(value if isinstance(value, bytes) else value.tobytes())
    return h.hexdigest() + f" ({len(names)} tensors)"


def npz_digest(path: str) -> str:
    import numpy as np

    with np.load(path) as z:
        h = hashlib.sha256()
        for name in sorted(z.files):
            h.update(name.encode())
            h.update(z[name].tobytes())
    return h.hexdigest()


def predictions_digest(model_dir: str, texts: list[str]) -> dict[str, str]:
    import numpy as np
    import tensorflow as tf

    import beam_rnn.train.export as export  # registers the tokeniser for model.keras

    out = {}
    loaded = tf.saved_model.load(os.path.join(model_dir, "saved_model"))
    probs = loaded.signatures["serving_default"](text=tf.constant(texts))["probabilities"].numpy()
    out["saved_model serving_default"] = _sha(np.asarray(probs, np.float32).tobytes())
    keras_path = os.path.join(model_dir, "model.keras")
    if os.path.exists(keras_path):
        keras_model = export.load_keras_model(keras_path)
        logits = keras_model.predict(tf.constant(texts), verbose=0)
        out["model.keras predictions"] = _sha(np.asarray(logits, np.float32).tobytes())
    return out


def run_stage(argv: list[str], log: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    started = time.time()
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ beam-rnn {' '.join(argv)}\n")
        f.flush()
        proc = subprocess.run([sys.executable, "-m", "beam_rnn.cli", *argv], cwd=str(ROOT), env=env,
                              stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"stage failed (exit {proc.returncode}): beam-rnn {' '.join(argv)}; see {log}")
    return time.time() - started


def fingerprint(work: Path) -> dict[str, str]:
    _WORK[0] = str(work)
    corpus = work / "corpus.csv"
    texts = write_corpus(corpus)
    log = work / "log.txt"
    data = ["--input", str(corpus), "--format", "csv", "--id-column", "id"]
    prep, models, scores, report = (work / d for d in ("prep", "models", "scores", "report"))
    timings = {
        "preprocess": run_stage(["preprocess", *data, "--output", str(prep), "--vocab-size", "500",
                                 "--min-frequency", "1"], log),
        "train": run_stage(["train", "--transformed", str(prep), "--output", str(models), "--model", "both",
                            "--epochs", "1", "--units", "16", "--embedding-dim", "16", "--dense-units", "16",
                            "--seed", "3"], log),
        "score": run_stage(["score", *data, "--model", str(models / "bilstm"), str(models / "lstm"),
                            "--output", str(scores / "s"), "--output-format", "jsonl"], log),
        "evaluate": run_stage(["evaluate", *data, "--model", str(models), "--output", str(report)], log),
    }
    fp: dict[str, str] = {}
    fp["prep/vocab"] = _sha((prep / "transform_fn" / "assets" / "vocab").read_bytes())
    fp["prep/stats.json"] = json_digest(str(prep / "stats.json"))
    fp["prep/preprocess_config.json"] = json_digest(str(prep / "preprocess_config.json"))
    for split in ("train", "eval"):
        fp[f"prep/transformed/{split}"] = tfrecord_digest(str(prep / "transformed" / f"{split}-*"))
    fp["prep/dead_letter"] = lines_digest(str(prep / "dead_letter" / "*.jsonl"))
    for kind in ("bilstm", "lstm"):
        d = models / kind
        fp[f"models/{kind}/weights"] = checkpoint_digest(str(d / "weights" / "model"))
        fp[f"models/{kind}/metrics.json"] = json_digest(str(d / "metrics.json"))
        fp[f"models/{kind}/history.jsonl"] = lines_digest(str(d / "history.jsonl"))
        fp[f"models/{kind}/vocab.txt"] = _sha((d / "vocab.txt").read_bytes())
        if (d / "step_weights.npz").exists():
            fp[f"models/{kind}/step_weights.npz"] = npz_digest(str(d / "step_weights.npz"))
        for name, digest in predictions_digest(str(d), texts[:200]).items():
            fp[f"models/{kind}/{name}"] = digest
    fp["scores/records"] = lines_digest(str(scores / "s-[0-9]*.jsonl"))
    fp["scores/dead_letter"] = lines_digest(str(scores / "s-dead_letter-*.jsonl"))
    fp["scores/summary"] = json_digest(str(scores / "s-summary.json"))
    # evaluate batches documents in bundle order, and float32 results of a padded batch
    # can differ by ~1e-7 from run to run: its numbers are compared to 4 decimals.
    fp["report/records"] = lines_digest(str(report / "records-*.jsonl"), digits=4)
    fp["report/dead_letter"] = lines_digest(str(report / "dead_letter-*.jsonl"))
    fp["report/metrics.json"] = json_digest(str(report / "metrics.json"), digits=4)
    print("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), file=sys.stderr)
    return fp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", help="Write the fingerprint to this JSON file.")
    group.add_argument("--expect", help="Compare with this JSON file; exit 1 on any difference.")
    parser.add_argument("--work", help="Working directory (default: a temporary one, removed).")
    args = parser.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="beam_rnn_fp_"))
    if work.exists() and args.work:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        fp = fingerprint(work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    if args.write:
        Path(args.write).write_text(json.dumps(fp, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(fp)} fingerprints to {args.write}")
        return 0
    expected = json.loads(Path(args.expect).read_text())
    differ = sorted(k for k in set(fp) | set(expected) if fp.get(k) != expected.get(k))
    for key in differ:
        print(f"DIFFERS {key}: expected {expected.get(key)} got {fp.get(key)}")
    print(f"{len(fp) - len(differ)} of {len(set(fp) | set(expected))} outputs identical")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
