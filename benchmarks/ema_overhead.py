"""Benchmark: what ``train --ema-momentum`` costs per training batch (issue 14: no regression in examples/s).

The same model (the project's BiLSTM or LSTM at IMDB's size: 20,002 ids, widths 64) is fit on
the same synthetic batches (64 documents of `--length` tokens) with and without the
`beam_rnn.train.averaging.WeightAverage` callback, in alternating rounds in one process, and
the examples/s of each are printed with their ratio, and the update timed alone (200 calls) as a
share of a plain batch (steadier than the ratio on a busy machine).  The average's update is one
`tf.function` over every trainable variable (the 1.3 M-float embedding dominates) after
each batch.

    python benchmarks/ema_overhead.py [--kind bilstm|lstm] [--rounds 3] [--batches 30] [--length 230]

Not measured here: real IMDB batches (length-bucketed; the padded length changes the batch time
but not the update's, so shorter batches show a larger share).
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import beam_rnn  # noqa: E402,F401  (pins tf_keras before TensorFlow is imported)
import numpy as np  # noqa: E402
import tf_keras as keras  # noqa: E402

from beam_rnn.train import models  # noqa: E402
from beam_rnn.train.averaging import WeightAverage  # noqa: E402
from beam_rnn.train.config import TrainConfig  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", default="bilstm", choices=("bilstm", "lstm"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", type=int, default=30, help="Batches timed per round and arm.")
    p.add_argument("--length", type=int, default=230, help="Tokens per document (IMDB's median is ~230).")
    p.add_argument("--vocab", type=int, default=20_002)
    args = p.parse_args(argv)

    config = TrainConfig(kinds=(args.kind,)).model_config(args.kind, vocab_size=args.vocab, num_classes=2)
    model = models.build_classifier(config)
    model.compile(optimizer=keras.optimizers.Adam(5e-4), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.integers(1, args.vocab, size=(64 * args.batches, args.length))
    y = rng.integers(0, 2, size=(64 * args.batches, 1)).astype("float32")
    model.fit(x[:128], y[:128], batch_size=64, epochs=1, verbose=0)  # trace and warm up
    with tempfile.TemporaryDirectory() as tmp:
        average = WeightAverage(model, 0.99, str(Path(tmp) / "epoch_{epoch:03d}"))
        average._update()  # pylint: disable=protected-access  (trace it outside the timing)
        rates: dict[str, list[float]] = {"plain": [], "ema": []}
        for _ in range(args.rounds):
            for arm in ("plain", "ema"):
                # Only the per-batch update is timed: the epoch-end checkpoint and swaps happen once an epoch.
                callbacks = [] if arm == "plain" else [_BatchOnly(average)]
                start = time.perf_counter()
                model.fit(x, y, batch_size=64, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)
                rates[arm].append(len(x) / (time.perf_counter() - start))
        start = time.perf_counter()
        for _ in range(200):
            average._update()  # pylint: disable=protected-access
        update = (time.perf_counter() - start) / 200
    plain, ema = statistics.median(rates["plain"]), statistics.median(rates["ema"])
    batch = 64 / plain
    print(f"{args.kind}, batches of 64 x {args.length} tokens, {args.rounds} rounds of {args.batches} batches")
    print(f"  examples/s  plain {plain:,.1f}  (rounds {', '.join(f'{r:.1f}' for r in rates['plain'])})")
    print(f"  examples/s  ema   {ema:,.1f}  (rounds {', '.join(f'{r:.1f}' for r in rates['ema'])})")
    print(f"  ratio ema / plain {ema / plain:.3f}")
    print(f"  one update alone {update * 1e3:.2f} ms = {update / batch:.1%} of a plain batch ({batch * 1e3:.0f} ms)")
    return 0


class _BatchOnly(keras.callbacks.Callback):
    def __init__(self, average: WeightAverage) -> None:
        super().__init__()
        self.average = average

    def on_train_batch_end(self, batch, logs=None):
        self.average._update()  # pylint: disable=protected-access


if __name__ == "__main__":
    sys.exit(main())
