"""Kim (2014)'s CNN-rand on the same data and splits as our models: is the gap to the published figure ours?

Issue 14 measures the defaults against Kim's published CNN-rand accuracy (SST-2 0.827, SST-1 0.450 on
the test splits, MR 0.761 by 10-fold cross-validation).  Those SST figures come from training on the
treebank's phrases as well as its sentences, which ../shared/data does not hold.  This script trains
Kim's CNN-rand itself on exactly what our models see — a `beam-rnn preprocess` output (its vocabulary,
its token ids, its train split; early stopping's epoch chosen on its eval split) — and scores it the same
way (SST: the dev file, tokenised by the preprocessing's own TFT graph; MR: `train --folds 10`'s folds), so
the two stand side by side under equal conditions.

CNN-rand as in the paper: 300-dimensional word vectors drawn from U(-0.25, 0.25) and trained, filter
widths 3, 4, 5 with 100 feature maps each, ReLU, max-over-time pooling, Dropout 0.5, an L2-norm limit of
3 on the output weights, Adadelta (rho 0.95, epsilon 1e-6), batches of 50, 25 epochs, the epoch with the
best validation accuracy kept.  Sentences are padded with 4 zero vectors at each end (Kim pads by the
widest filter minus one); padding vectors are zero.

    python benchmarks/kim_cnn.py --prep W/sst2/prep --dev ../shared/data/sst2/stsa.binary.dev --seeds 44 45 46
    python benchmarks/kim_cnn.py --prep W/mr/prep --folds 10

Prints accuracy per seed (or fold) and mean ± sd.  Not a project feature: a reference to measure against.
"""

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

WIDTHS = (3, 4, 5)
MAPS = 100
DIM = 300
EPOCHS = 25
BATCH = 50


def build(vocab_size: int, num_classes: int, seed: int):
    import tensorflow as tf
    import tf_keras as keras

    init = keras.initializers.RandomUniform(-0.25, 0.25, seed=seed)
    ids = keras.Input([None], dtype="int64")
    padded = keras.layers.Lambda(lambda t: tf.pad(t, [[0, 0], [max(WIDTHS) - 1, max(WIDTHS) - 1]]))(ids)
    vectors = keras.layers.Embedding(vocab_size, DIM, embeddings_initializer=init)(padded)
    real = keras.layers.Lambda(lambda t: tf.cast(tf.not_equal(t, 0), tf.float32)[..., None])(padded)
    vectors = keras.layers.Multiply()([vectors, real])  # padding vectors are zero
    pooled = [keras.layers.GlobalMaxPooling1D()(
        keras.layers.Conv1D(MAPS, w, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed + w))(
            vectors)) for w in WIDTHS]
    features = keras.layers.Dropout(0.5, seed=seed)(keras.layers.Concatenate()(pooled))
    out = 1 if num_classes == 2 else num_classes
    logits = keras.layers.Dense(out, kernel_constraint=keras.constraints.MaxNorm(3.0, axis=0),
                                kernel_initializer=keras.initializers.GlorotUniform(seed))(features)
    model = keras.Model(ids, logits)
    loss = (keras.losses.BinaryCrossentropy(from_logits=True) if out == 1
            else keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    metric = keras.metrics.BinaryAccuracy(threshold=0.0) if out == 1 else keras.metrics.SparseCategoricalAccuracy()
    model.compile(keras.optimizers.Adadelta(learning_rate=1.0, rho=0.95, epsilon=1e-6), loss, metrics=[metric])
    return model


def fit_best(model, train_ds, val_ds, steps: int) -> float:
    """Trains EPOCHS epochs; keeps the weights of the epoch with the best validation accuracy, returns it."""
    import tf_keras as keras

    class Best(keras.callbacks.Callback):
        accuracy, weights = -1.0, None

        def on_epoch_end(self, epoch, logs=None):
            value = [v for k, v in logs.items() if k.startswith("val_") and k.endswith("accuracy")][0]
            if value > self.accuracy:
                self.accuracy, self.weights = value, self.model.get_weights()

    best = Best()
    model.fit(train_ds, validation_data=val_ds, epochs=EPOCHS, steps_per_epoch=steps, callbacks=[best], verbose=0)
    model.set_weights(best.weights)
    return best.accuracy


def dev_accuracy(model, prep: str, dev_file: str, num_classes: int) -> float:
    import numpy as np
    import tensorflow as tf
    import tensorflow_transform as tft

    from beam_rnn.core import constants as C

    labels, texts = [], []
    with open(dev_file, encoding="utf-8") as f:
        for line in f:
            label, _, text = line.strip().partition(" ")
            labels.append(int(label))
            texts.append(text)
    layer = tft.TFTransformOutput(prep).transform_features_layer()
    ids = layer({C.TEXT_KEY: tf.constant(texts)})[C.TOKEN_IDS_KEY]
    ids = tf.sparse.to_dense(ids) if isinstance(ids, tf.SparseTensor) else ids.to_tensor()
    logits = model.predict(tf.cast(ids, tf.int64), batch_size=256, verbose=0)
    predicted = (logits[:, 0] > 0).astype(int) if num_classes == 2 else logits.argmax(axis=1)
    return float(np.mean(predicted == np.array(labels)))


def run_one(prep: str, seed: int, dev_file: str | None, fold: tuple[int, int] | None) -> float:
    import tf_keras as keras

    from beam_rnn.train import data

    with open(os.path.join(prep, "stats.json")) as f:
        stats = json.load(f)
    num_classes, vocab_size = int(stats["num_classes"]), int(stats["vocab_size_with_reserved"])
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    train_files, val_files, train_fold, val_fold = data.train_pattern(prep), data.eval_pattern(prep), None, None
    if fold is not None:
        train_fold, val_fold = data.Fold(fold[0], fold[1], False), data.Fold(fold[0], fold[1], True)
        val_files = train_files
    lengths = data.sequence_lengths(train_files, fold=train_fold)
    boundaries = data.quantile_boundaries(lengths, 4)
    common = {"batch_size": BATCH, "bucket_boundaries": boundaries, "num_classes": num_classes}
    train_ds = data.make_dataset(train_files, shuffle=True, seed=seed, epochs=range(EPOCHS), fold=train_fold,
                                 shuffle_buffer_size=len(lengths), **common)
    val_ds = data.make_dataset(val_files, fold=val_fold, **common)
    model = build(vocab_size, num_classes, seed)
    best = fit_best(model, train_ds, val_ds, data.batches_per_epoch(lengths, BATCH, boundaries))
    if fold is not None:
        return best  # the held-out fold's accuracy at the best epoch (as `train --folds` reports it)
    return dev_accuracy(model, prep, dev_file, num_classes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prep", required=True, help="A `beam-rnn preprocess` output.")
    parser.add_argument("--dev", help="A labeled_lines file scored after training (SST dev).")
    parser.add_argument("--folds", type=int, help="Cross-validate on the train split's folds instead (MR).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    args = parser.parse_args(argv)
    if bool(args.dev) == bool(args.folds):
        parser.error("give --dev or --folds")
    start = time.time()
    if args.folds:
        runs = [run_one(args.prep, args.seeds[0], None, (i, args.folds)) for i in range(args.folds)]
        label = f"{args.folds}-fold CV, seed {args.seeds[0]}"
    else:
        runs = [run_one(args.prep, seed, args.dev, None) for seed in args.seeds]
        label = f"dev, seeds {' '.join(map(str, args.seeds))}"
    for i, accuracy in enumerate(runs):
        print(f"{'fold' if args.folds else 'seed'} {i if args.folds else args.seeds[i]}: {accuracy:.4f}", flush=True)
    spread = f" ± {statistics.stdev(runs):.3f}" if len(runs) > 1 else ""
    print(f"CNN-rand ({label}): {statistics.fmean(runs):.3f}{spread} ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
