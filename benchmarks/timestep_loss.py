"""Benchmark: what ``train --timestep-loss`` costs per training batch (issue 14: no regression in examples/s).

The streaming LSTM at IMDB's size (20,002 ids, widths 64) is trained on the same synthetic
batches (64 documents, lengths uniform in [length/2, length], right-padded) in its plain form
(Keras's binary cross-entropy on the whole text) and in the per-token view that
``--timestep-loss`` trains (`models.build_classifier(per_token=True)`: the head on every step,
`losses.ClassifierLoss` over every prefix).  Both are built and compiled by the trainer's own
`_build` (its optimizer, loss and metrics); each batch is stepped by one arm then the other (the order
alternating), so both see the same machine load, and the median time per batch of each is
printed with their ratio.

    python benchmarks/timestep_loss.py [--batches 60] [--length 230]

Not measured here: the length-bucketed IMDB batches of a real epoch (shorter batches hold
fewer steps for the per-token head), nor validation (it runs the same way for both arms).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import beam_rnn  # noqa: E402,F401  (pins tf_keras before TensorFlow is imported)
import numpy as np  # noqa: E402
import tf_keras as keras  # noqa: E402

from beam_rnn.train import trainer  # noqa: E402
from beam_rnn.train.config import TrainConfig  # noqa: E402


def _compiled(share: float, vocab: int) -> keras.Model:
    """The streaming LSTM as `train --timestep-loss share` builds and compiles it (the trainer's own `_build`)."""
    config = TrainConfig(kinds=("lstm",), timestep_loss=share)
    model_config = config.model_config("lstm", vocab_size=vocab, num_classes=2)
    return trainer._build(model_config, config, transformed_dir="")[0]  # pylint: disable=protected-access


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=60, help="Batches timed per arm.")
    p.add_argument("--length", type=int, default=230, help="Longest document of a batch (IMDB's median is ~230).")
    p.add_argument("--share", type=float, default=0.5, help="The --timestep-loss share of the per-token arm.")
    p.add_argument("--vocab", type=int, default=20_002)
    args = p.parse_args(argv)

    arms = {"plain": _compiled(0.0, args.vocab), "timestep": _compiled(args.share, args.vocab)}
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(args.batches + 2):
        lengths = rng.integers(args.length // 2, args.length + 1, size=64)
        x = rng.integers(1, args.vocab, size=(64, args.length))
        x[np.arange(args.length)[None, :] >= lengths[:, None]] = 0
        batches.append((x, rng.integers(0, 2, size=(64, 1)).astype("float32")))
    for model in arms.values():  # trace and warm up outside the timing
        for x, y in batches[:2]:
            model.train_on_batch(x, y)
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    for i, (x, y) in enumerate(batches[2:]):
        order = list(arms) if i % 2 == 0 else list(reversed(arms))
        for name in order:
            start = time.perf_counter()
            arms[name].train_on_batch(x, y)
            seconds[name].append(time.perf_counter() - start)
    plain, steps = statistics.median(seconds["plain"]), statistics.median(seconds["timestep"])
    ratios = [t / p for t, p in zip(seconds["timestep"], seconds["plain"])]
    print(f"streaming LSTM, {args.batches} batches of 64 documents of {args.length // 2}-{args.length} tokens, "
          f"--timestep-loss {args.share:g}")
    print(f"  plain     {plain * 1e3:7.1f} ms a batch  ({64 / plain:,.0f} examples/s)")
    print(f"  timestep  {steps * 1e3:7.1f} ms a batch  ({64 / steps:,.0f} examples/s)")
    print(f"  ratio timestep / plain: {steps / plain:.3f} (median of per-batch ratios {statistics.median(ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
