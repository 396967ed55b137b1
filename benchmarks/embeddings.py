"""Benchmark: our Beam + tf_keras Word2Vec CBOW vs gensim's Word2Vec CBOW, same corpus, same run.

Both train on the same tokens: the transformed token ids of a `pipelines.preprocess`
output (default: the IMDB train split in runs/imdb/prep) mapped back to words with
its vocabulary, OOV ids removed (ours removes them in the Beam stage, gensim gets
sentences without them).  Same dim, window, negatives, sample, epochs, min_count,
CBOW with mean (gensim sg=0, cbow_mean=1), gensim with 2 worker threads (2 cores).

Every measurement is repeated for each of --seeds (default 1 2 3: our example draws,
initialisation, shuffling and negatives; gensim's seed; the classifier's seed) and
summarised as mean, standard deviation and range: one seed's WordSim-353 moves by
~0.01 between seeds or even between reruns (gensim with 2 threads is not
deterministic), the same size as the goal's margin.

Measured:
* WordSim-353 and SimLex-999 Spearman, Google analogy accuracy (3CosAdd) — the
  same evaluation code (beam_rnn.embeddings) for both vector sets; gensim's own
  evaluate_word_pairs on gensim's vectors is printed as a cross-check of that code;
* training words/s: corpus words (in-vocabulary tokens) x epochs / training
  seconds, for each, and the ratio; ours also with the Beam stage included;
* optionally (on by default, --skip-sst2 to skip): SST-2 dev accuracy of the
  BiLSTM classifier (beam_rnn.train.trainer) without and with warm start from our vectors
  (fine-tuned, fine-tuned after rescaling, frozen) and from gensim's vectors (raw and
  rescaled), with the trainer's --pretrained-embeddings options (seed s's vectors for
  classifier seed s).

    python benchmarks/embeddings.py [--epochs 5] [--seeds 1 2 3] [--work runs/bench_embeddings] [--skip-sst2]
                                    [--backend keras|gensim]

--backend gensim runs ours as `beam-rnn embeddings --backend gensim` (gensim behind our command,
no Beam stage; its "incl. Beam" figure includes reading the documents and gensim's build_vocab).

Needs the `bench` extra (gensim).  Prints one JSON summary (also WORK/summary.json).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import logging
import os
import pathlib
import shutil
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"


def corpus_sentences(prep: str, splits: list[str]) -> tuple[list[list[str]], int]:
    """The transformed documents as word lists (OOV and padding removed), and the doc count."""
    import tensorflow as tf

    from beam_rnn.core import constants as C
    from beam_rnn.embeddings import parse_transformed_example
    from beam_rnn.preprocess.transform import read_vocabulary

    stats = json.load(open(os.path.join(prep, C.STATS_FILE)))
    k = int(stats["num_oov_buckets"])
    vocab = read_vocabulary(prep)
    files = sorted(f for s in splits for f in glob.glob(os.path.join(prep, C.TRANSFORMED_DIR, f"{s}-*")))
    sentences = []
    for rec in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        _, ids = parse_transformed_example(rec.numpy())
        sentences.append([vocab[i - k - 1] for i in ids if i > k])
    return sentences, len(sentences)


def run_ours(args, out: str) -> dict:
    from pipelines import embeddings as driver

    argv = ["--transformed", args.prep, "--output", out, "--epochs", str(args.epochs), "--dim", str(args.dim),
            "--window", str(args.window), "--negatives", str(args.negatives), "--sample", str(args.sample),
            "--min-count", str(args.min_count), "--seed", str(args.seed), "--eval-data", args.eval_data,
            "--splits", *args.splits, "--runner", "DirectRunner", "--delete-examples", "--backend", args.backend,
            "--workers", str(args.gensim_workers)]
    t0 = time.time()
    metrics = driver.run(argv, save_main_session=False)
    metrics["total_seconds"] = round(time.time() - t0, 3)
    return metrics


def run_gensim(args, sentences: list[list[str]], out: str) -> dict:
    from gensim.models import Word2Vec

    from beam_rnn import embeddings as E

    rates = E.CbowConfig()  # word2vec's alpha and final alpha, as ours uses them
    model = Word2Vec(vector_size=args.dim, window=args.window, negative=args.negatives, sample=args.sample,
                     min_count=args.min_count, sg=0, cbow_mean=1, hs=0, alpha=rates.learning_rate,
                     min_alpha=rates.min_learning_rate, workers=args.gensim_workers, seed=args.seed,
                     epochs=args.epochs)
    t0 = time.time()
    model.build_vocab(sentences)
    t1 = time.time()
    _, raw_words = model.train(sentences, total_examples=len(sentences), epochs=args.epochs)
    t2 = time.time()
    words = list(model.wv.index_to_key)
    vectors = model.wv.vectors
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, E.VECTORS_TXT)
    E.save_word2vec_text(path, words, vectors)
    evaluation = E.evaluate_embeddings((words, vectors), args.eval_data)
    own = model.wv.evaluate_word_pairs(os.path.join(args.eval_data, E.WORDSIM_FILE))
    return {
        "vectors": path,
        "words": len(words),
        "build_vocab_seconds": round(t1 - t0, 3),
        "train_seconds": round(t2 - t1, 3),
        "raw_words_trained": int(raw_words),
        "evaluation": evaluation,
        "gensim_own_wordsim353_spearman": float(own[1][0]),
    }


def sst2_prep(work: str) -> str:
    """Preprocess SST-2 with pipelines.preprocess so that eval split == the dev set.

    The split is a hash of the document id; ids are salted until train sentences
    hash into train and dev sentences into eval (eval_fraction 0.5).
    """
    from beam_rnn.preprocess.transform import SPLIT_EVAL, SPLIT_TRAIN, split_for_id
    from pipelines import preprocess

    out = os.path.join(work, "sst2_prep")
    csv_path = os.path.join(work, "sst2.csv")
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label", "text"])
        for name, split in (("train", SPLIT_TRAIN), ("dev", SPLIT_EVAL)):
            with open(SHARED / "sst2" / f"stsa.binary.{name}", encoding="utf-8", errors="replace") as src:
                for i, line in enumerate(src):
                    label, text = line.rstrip("\n").split(" ", 1)
                    salt = 0
                    while split_for_id(f"{name}-{i}-{salt}", 0.5) != split:
                        salt += 1
                    writer.writerow([f"{name}-{i}-{salt}", label, text])
    preprocess.run(["--input", csv_path, "--format", "csv", "--id-column", "id", "--output", out,
                    "--eval-fraction", "0.5", "--runner", "DirectRunner"], save_main_session=False)
    return out


SST2_ARMS = {
    # name: (vectors: "ours" | "gensim" | None, freeze, rescale)
    "random_init": (None, False, False),
    "warm_ours": ("ours", False, False),
    "warm_ours_rescaled": ("ours", False, True),
    "warm_ours_frozen": ("ours", True, False),
    "warm_gensim": ("gensim", False, False),
    "warm_gensim_rescaled": ("gensim", False, True),
}


def run_sst2(args, prep: str, work: str, seed: int, vectors: dict[str, str]) -> dict:
    """SST-2 dev accuracy of the BiLSTM for every arm of SST2_ARMS (classifier seed `seed`)."""
    from beam_rnn.train import trainer
    from beam_rnn.train.config import ModelSettings, TrainConfig

    results = {}
    for name, (source, freeze, rescale) in SST2_ARMS.items():
        config = TrainConfig(kinds=("bilstm",), epochs=args.sst2_epochs,
                             model=ModelSettings(embedding_dim=args.dim, seed=seed), early_stopping_patience=1,
                             verbose=0, pretrained_embeddings=vectors[source] if source else None,
                             freeze_embeddings=freeze, rescale_pretrained=rescale)
        res = trainer.train(prep, os.path.join(work, f"seed{seed}", name), config, kind="bilstm")
        m = res["metrics"]
        results[name] = {"dev_accuracy": round(m["accuracy"], 4), "dev_loss": round(m["loss"], 4),
                         "best_epoch": m["best_epoch"], "epochs_run": m["epochs_run"],
                         "train_seconds": m["train_seconds"],
                         **({"warm_start": m["warm_start"]} if m.get("warm_start") else {})}
        logging.info("SST-2 seed %d %s: %s", seed, name, results[name])
    return results


def spread(values: list[float], digits: int = 4) -> dict:
    """mean, sample standard deviation, min, max and the values themselves."""
    import statistics

    return {"mean": round(statistics.fmean(values), digits),
            "std": round(statistics.stdev(values), digits) if len(values) > 1 else 0.0,
            "min": round(min(values), digits), "max": round(max(values), digits),
            "values": [round(v, digits) for v in values]}


def main(argv=None) -> int:
    from beam_rnn.embeddings import CbowConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prep", default=str(ROOT / "runs" / "imdb" / "prep"), help="pipelines.preprocess output.")
    parser.add_argument("--splits", nargs="+", default=["train"], help="Transformed splits to train on.")
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench_embeddings"), help="Scratch/output dir.")
    parser.add_argument("--eval-data", default=str(SHARED / "embedding-eval"))
    cbow = CbowConfig()  # the defaults of `beam-rnn embeddings`, for both tools
    parser.add_argument("--epochs", type=int, default=cbow.epochs)
    parser.add_argument("--dim", type=int, default=cbow.dim)
    parser.add_argument("--window", type=int, default=cbow.window)
    parser.add_argument("--negatives", type=int, default=cbow.negatives)
    parser.add_argument("--sample", type=float, default=cbow.sample)
    parser.add_argument("--min-count", type=int, default=cbow.min_count)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="One full comparison per seed.")
    parser.add_argument("--gensim-workers", type=int, default=2, help="Threads of gensim (and of --backend gensim).")
    parser.add_argument("--backend", choices=["keras", "gensim"], default=cbow.backend,
                        help="Trainer of ours (beam-rnn embeddings --backend).")
    parser.add_argument("--skip-sst2", action="store_true", help="Skip the SST-2 warm-start comparison.")
    parser.add_argument("--sst2-epochs", type=int, default=4)
    args = parser.parse_args(argv)
    logging.getLogger().setLevel(logging.INFO)
    if not os.path.isdir(args.prep):
        parser.error(f"--prep {args.prep!r} does not exist (run pipelines.preprocess first)")
    if not os.path.isdir(args.eval_data):
        parser.error(f"--eval-data {args.eval_data!r} does not exist")
    if not args.skip_sst2 and not (SHARED / "sst2").is_dir():
        parser.error(f"{SHARED / 'sst2'} does not exist (or pass --skip-sst2)")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds must be distinct")
    try:
        import gensim  # noqa: F401
    except ImportError:
        parser.error("gensim is not installed (pip install 'beam-rnn[bench]')")
    if os.path.exists(args.work):
        shutil.rmtree(args.work)
    os.makedirs(args.work)

    sentences, docs = corpus_sentences(args.prep, args.splits)
    corpus_words = sum(len(s) for s in sentences)
    sst2 = None if args.skip_sst2 else sst2_prep(args.work)
    runs = []
    for seed in args.seeds:
        run_args = argparse.Namespace(**{**vars(args), "seed": seed})
        gensim_res = run_gensim(run_args, sentences, os.path.join(args.work, f"gensim_seed{seed}"))
        ours = run_ours(run_args, os.path.join(args.work, f"ours_seed{seed}"))
        words_total = ours["corpus_words"] * args.epochs
        run = {
            "seed": seed,
            "ours": {"evaluation": ours["evaluation"], "epoch_losses": [round(x, 4) for x in ours["epoch_losses"]],
                     "beam_seconds": ours["beam_seconds"], "train_seconds": ours["train_seconds"],
                     "read_seconds": ours["read_seconds"],
                     "words_per_second": round(words_total / ours["train_seconds"]),
                     # keras: reading the examples is inside train_seconds; gensim: reading + build_vocab are not
                     "words_per_second_incl_beam": round(words_total / (
                         ours["train_seconds"] + ours["beam_seconds"]
                         + (ours["read_seconds"] + ours["vocab_seconds"] if args.backend == "gensim" else 0.0))),
                     "exported_words": ours["exported_words"], "corpus_words": ours["corpus_words"]},
            "gensim": {k: gensim_res[k] for k in ("evaluation", "gensim_own_wordsim353_spearman", "words",
                                                  "build_vocab_seconds", "train_seconds", "raw_words_trained")}
            | {"words_per_second": round(words_total / gensim_res["train_seconds"])},
        }
        if sst2:
            run["sst2_bilstm"] = run_sst2(args, sst2, os.path.join(args.work, "sst2_models"), seed,
                                          {"ours": os.path.join(args.work, f"ours_seed{seed}", "vectors.txt"),
                                           "gensim": gensim_res["vectors"]})
        runs.append(run)
        logging.info("seed %d: %s", seed, json.dumps({k: run[k] for k in ("ours", "gensim")})[:2000])
    del sentences

    def metric(who: str, *path: str) -> list[float]:
        out = []
        for r in runs:
            v = r[who]
            for key in path:
                v = v[key]
            out.append(float(v))
        return out

    ws = {who: spread(metric(who, "evaluation", "wordsim353", "spearman")) for who in ("ours", "gensim")}
    speed = {who: spread(metric(who, "words_per_second"), 0) for who in ("ours", "gensim")}
    summary = {
        "corpus": {"prep": args.prep, "splits": args.splits, "documents": docs, "words_in_vocabulary": corpus_words},
        "settings": {k: getattr(args, k) for k in ("epochs", "dim", "window", "negatives", "sample", "min_count",
                                                   "seeds", "gensim_workers", "backend")},
        "comparison": {
            "wordsim353_spearman": ws,
            "wordsim353_goal_met (mean ours >= mean gensim - 0.02)": ws["ours"]["mean"] >= ws["gensim"]["mean"] - 0.02,
            "wordsim353_seeds_meeting_goal": sum(o >= g - 0.02 for o, g in zip(ws["ours"]["values"],
                                                                                 ws["gensim"]["values"])),
            "simlex999_spearman": {who: spread(metric(who, "evaluation", "simlex999", "spearman"))
                                   for who in ("ours", "gensim")},
            "analogy_accuracy": {who: spread(metric(who, "evaluation", "analogy", "accuracy"))
                                 for who in ("ours", "gensim")},
            "coverage": {name: runs[0]["ours"]["evaluation"][name]["coverage"]
                         for name in ("wordsim353", "simlex999", "analogy")},
            "training_words_per_second": speed,
            "speed_ratio_ours_over_gensim (mean words/s)": round(speed["ours"]["mean"] / speed["gensim"]["mean"], 3),
            "ours_words_per_second_incl_beam": spread(metric("ours", "words_per_second_incl_beam"), 0),
        },
        "runs": runs,
    }
    if sst2:
        summary["comparison"]["sst2_dev_accuracy_bilstm"] = {
            name: spread([r["sst2_bilstm"][name]["dev_accuracy"] for r in runs]) for name in SST2_ARMS
        }
    text = json.dumps(summary, indent=2)
    with open(os.path.join(args.work, "summary.json"), "w") as f:
        f.write(text)
    print(json.dumps(summary["comparison"], indent=2))
    return 0


if __name__ == "__main__":
    from beam_rnn.cli.runtime import hard_exit

    hard_exit(main(sys.argv[1:]))
