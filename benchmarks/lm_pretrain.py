"""Language-model pretraining of the streaming LSTM on the corpus' own train split (an experiment, issue 14 item 3).

Dai & Le (2015, "Semi-supervised sequence learning") initialise an IMDB classifier's LSTM from an LSTM
language model (LM-LSTM). This script asks whether that pays for our streaming LSTM when the LM sees
only what the classifier trains on (the train split of a `beam-rnn preprocess` output; no unlabelled
reviews): it trains Embedding(V, 64, mask_zero) -> LSTM(64) to predict each next token id (sampled
softmax, 512 samples, Adam, gradients clipped at norm 1), then trains the classifier with the CLI's
defaults (`beam-rnn train --kind lstm --seed S`), initialised from the LM:

* ``--transfer all``: the Embedding and the LSTM (Dai & Le's LM-LSTM);
* ``--transfer embedding``: the Embedding only (like `train --pretrained-embeddings` from CBOW).

It prints the validation accuracy of the kept epoch as `benchmarks/accuracy.py --corpora imdb` does for
the same split, so the two compare seed for seed:

    python benchmarks/accuracy.py --work W --corpora imdb --seeds 42 --kinds lstm --arm base
    python benchmarks/lm_pretrain.py --prep W/imdb/prep --out W/imdb/lm --seed 42 --lm-epochs 5

The trainer has no hook for initial recurrent weights (only `--pretrained-embeddings`), so the script
wraps `beam_rnn.train.trainer._build` in this process: a benchmark's shortcut, not a product path.
"""

import argparse
import json
import os
import time

import numpy as np
import tensorflow as tf
import tf_keras as keras

from beam_rnn.core import constants as C
from beam_rnn.train import data, models, trainer

BUCKETS = [32, 64, 128, 192, 256, 320]


def documents(prep: str, max_len: int, seed: int, epoch: int, batch: int) -> tf.data.Dataset:
    """Right-padded batches of the train split's token ids (first max_len + 1 of each), shuffled per epoch."""
    spec = {C.TOKEN_IDS_KEY: data.FEATURE_SPEC[C.TOKEN_IDS_KEY]}  # the trainer's own parsing of the ids
    ds = tf.data.TFRecordDataset(data.shard_files(data.train_pattern(prep)), compression_type="GZIP")
    ds = ds.map(lambda s: tf.io.parse_single_example(s, spec)[C.TOKEN_IDS_KEY][: max_len + 1])
    ds = ds.shuffle(30_000, seed=seed * 100 + epoch)
    return ds.bucket_by_sequence_length(lambda t: tf.shape(t)[0], BUCKETS, [batch] * (len(BUCKETS) + 1)).prefetch(2)


def pretrain(prep: str, vocab_size: int, args: argparse.Namespace) -> tuple[np.ndarray, list[np.ndarray], float]:
    """Trains the LM; returns (embedding matrix, LSTM weights, seconds)."""
    tf.random.set_seed(args.seed)
    init = keras.initializers
    embedding = keras.layers.Embedding(vocab_size, args.dim, mask_zero=True,
                                       embeddings_initializer=init.RandomUniform(-0.05, 0.05, seed=args.seed))
    lstm = keras.layers.LSTM(args.dim, return_sequences=True, kernel_initializer=init.GlorotUniform(seed=args.seed + 1),
                             recurrent_initializer=init.Orthogonal(seed=args.seed + 2))
    out_w = tf.Variable(init.GlorotUniform(seed=args.seed + 3)((vocab_size, args.dim)))
    out_b = tf.Variable(tf.zeros([vocab_size]))
    optimizer = keras.optimizers.Adam(args.lm_learning_rate)

    @tf.function(reduce_retracing=True)
    def step(ids):
        x, y = ids[:, :-1], ids[:, 1:]
        with tf.GradientTape() as tape:
            hidden = lstm(embedding(x), mask=tf.not_equal(x, 0))
            real = tf.not_equal(y, 0)
            loss = tf.reduce_mean(tf.nn.sampled_softmax_loss(
                out_w, out_b, tf.boolean_mask(y, real)[:, None], tf.boolean_mask(hidden, real),
                num_sampled=args.sampled, num_classes=vocab_size, seed=args.seed))
        variables = embedding.trainable_variables + lstm.trainable_variables + [out_w, out_b]
        grads, _ = tf.clip_by_global_norm(tape.gradient(loss, variables), 1.0)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    start = time.time()
    for epoch in range(args.lm_epochs):
        losses = [float(step(ids)) for ids in documents(prep, args.max_len, args.seed, epoch, args.batch)]
        print(f"LM epoch {epoch + 1}/{args.lm_epochs}: sampled-softmax loss {np.mean(losses):.3f} "
              f"({time.time() - start:.0f} s)", flush=True)
    return embedding.get_weights()[0], lstm.get_weights(), time.time() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prep", required=True, help="A beam-rnn preprocess output.")
    parser.add_argument("--out", required=True, help="Where the classifier is trained (train --output).")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--lm-epochs", type=int, default=5)
    parser.add_argument("--lm-learning-rate", type=float, default=1e-3)
    parser.add_argument("--transfer", nargs="+", choices=("all", "embedding"), default=["all", "embedding"],
                        help="One classifier per choice, from the same LM (OUT/<choice>_seedS).")
    parser.add_argument("--max-len", type=int, default=400, help="LM: the first N + 1 tokens of each document.")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sampled", type=int, default=512, help="Sampled-softmax negatives.")
    parser.add_argument("--dim", type=int, default=64, help="Embedding and LSTM width (the classifier's default).")
    args = parser.parse_args(argv)
    with open(os.path.join(args.prep, C.STATS_FILE)) as f:
        vocab_size = json.load(f)["vocab_size_with_reserved"]
    matrix, lstm_weights, lm_seconds = pretrain(args.prep, vocab_size, args)

    build = trainer._build  # pylint: disable=protected-access

    transfer = None  # the arm being trained (read by build_from_lm)

    def build_from_lm(*a, **k):
        model, warm_start = build(*a, **k)
        model.get_layer(models.EMBEDDING_LAYER).set_weights([matrix])
        if transfer == "all":
            model.get_layer(models.rnn_layer_name(0)).set_weights(lstm_weights)
        return model, warm_start

    trainer._build = build_from_lm  # pylint: disable=protected-access
    from beam_rnn.cli import run_command  # pylint: disable=import-outside-toplevel

    for transfer in args.transfer:
        out = os.path.join(args.out, f"{transfer}_seed{args.seed}")
        if run_command("train", ["--transformed", args.prep, "--output", out, "--kind", "lstm", "--seed", str(args.seed),
                                 f"--embedding-dim={args.dim}", f"--units={args.dim}"]):
            return 1
        with open(os.path.join(out, "lstm", "metrics.json")) as f:
            metrics = json.load(f)
        print(json.dumps({"transfer": transfer, "seed": args.seed, "validation_accuracy": round(metrics["accuracy"], 4),
                          "best_epoch": metrics["best_epoch"], "epochs_run": metrics["epochs_run"],
                          "lm_seconds": round(lm_seconds), "train_seconds": metrics["train_seconds"]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
