"""CBOW settings: the one home of every default of the library and of ``beam-rnn embeddings``.

No TensorFlow, no Beam: the driver builds its flags from these dataclasses
(`beam_rnn.cli.flags`) before any heavy import.
"""

import dataclasses
import os
from typing import Any

from beam_rnn.cli.flags import check_options, option
from beam_rnn.core import constants as C
from beam_rnn.core.errors import InputError

DEFAULT_EVAL_DATA = os.path.join("..", "shared", "data", "embedding-eval")
SPLITS = (C.TRAIN_PREFIX, C.EVAL_PREFIX)
BACKENDS = ("keras", "gensim")


@dataclasses.dataclass(frozen=True)
class CbowConfig:
    """CBOW hyper-parameters (defaults: word2vec's / gensim's CBOW defaults).

    Used by the Beam stage (`MakeCbowExamples`: window, sample, min_count,
    dynamic_window, passes, seed) and by training (`train_cbow`: the rest).

    Attributes:
        dim: Vector width.
        window: Context words on each side.
        negatives: Negative samples per example.
        sample: Subsampling threshold (0 disables).
        min_count: Words seen fewer times are removed (like OOV).
        epochs: Training epochs.
        passes: Independent example draws materialised by the Beam stage (None: = epochs).
        dynamic_window: Draw each target's window from 1..window (word2vec).
        batch_size: Examples per SGD step.
        learning_rate: Initial SGD rate (word2vec's/gensim's alpha, 0.025).
        min_learning_rate: Final rate (word2vec: alpha * 1e-4).
        noise_power: Exponent of the unigram noise distribution.
        max_examples_in_memory: A pass larger than this is trained in consecutive
            chunks of about this many examples, each shuffled in memory (44 bytes an
            example with window 5: the default 20 M is ~0.9 GB); smaller passes are
            shuffled whole.
        seed: Seed of the example draws, the initialisation, shuffling and negatives.
        backend: "keras" (the reference: Beam examples + the tf_keras SGD) or "gensim"
            (gensim's Word2Vec CBOW on the same tokens and settings, ~8x faster; needs the
            `gensim` extra; see `beam_rnn.embeddings.gensim_backend`).
        workers: gensim backend's worker threads (None: the CPU count).
    """

    # Field order is the order of cbow_config.json and of metrics.json's "config".
    dim: int = option(100, "Vector width.", minimum=1)
    window: int = option(5, "Context words on each side.", minimum=1)
    negatives: int = option(5, "Negative samples per example.", minimum=1)
    sample: float = option(1e-3, "Subsampling threshold, 0 = off.", show_default="1e-3", minimum=0.0)
    min_count: int = option(5, "Ignore words seen fewer times.", minimum=1)
    epochs: int = option(5, "Training epochs.", minimum=1)
    passes: int | None = option(None, "Independent subsampling/window draws made by Beam.", show_default="= epochs",
                                minimum=1)
    dynamic_window: bool = option(True, "Always use the full window instead of word2vec's random 1..window.",
                                  flag="fixed-window", negated=True)
    batch_size: int = option(256, "Examples per SGD step.", minimum=1)
    learning_rate: float = option(0.025, "Initial SGD rate.", greater_than=0.0)
    min_learning_rate: float = option(0.025 * 1e-4, "Final SGD rate.", cli=False, minimum=0.0)
    noise_power: float = option(0.75, "Exponent of the unigram noise distribution.", cli=False)
    max_examples_in_memory: int = option(
        20_000_000, "Train a larger pass in shuffled chunks of about this many examples (44 bytes each with window 5).",
        show_default="20,000,000", minimum=1)
    seed: int = option(1, "Seed.")
    backend: str = option("keras", "Trainer: keras (reference) or gensim (faster; pip install 'beam-rnn[gensim]').",
                          choices=BACKENDS)
    workers: int | None = option(None, "Worker threads of the gensim backend.", show_default="CPU count", minimum=1)

    def __post_init__(self) -> None:
        check_options(self)

    @property
    def effective_passes(self) -> int:
        return self.epochs if self.passes is None else int(self.passes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class EmbeddingsConfig:
    """One ``beam-rnn embeddings`` run: input, output, evaluation and the CBOW settings."""

    transformed: str = option(help="Preprocessing output dir (pipelines.preprocess --output).")
    output: str = option(help="Output dir (examples, vectors, metrics).")
    splits: tuple[str, ...] = option((C.TRAIN_PREFIX,), "Transformed splits to train on.", nargs="+", choices=SPLITS)
    eval_data: str | None = option(None, "Dir with wordsim353.tsv, simlex999.txt, questions-words.txt.",
                                   show_default=f"{DEFAULT_EVAL_DATA} if present")
    evaluate: bool = option(True, "Skip the evaluation.", flag="no-eval", negated=True)
    analogy_restrict_vocab: int | None = option(None, "Answer analogies among the top-N words only.",
                                                metavar="N", show_default="all exported words")
    delete_examples: bool = option(False, "Delete OUTPUT/examples after training.")
    cbow: CbowConfig = dataclasses.field(default_factory=CbowConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "splits", tuple(self.splits))
        if not self.splits:
            raise InputError(f"--splits must be some of {', '.join(SPLITS)}, got none")
        check_options(self)

    def eval_dir(self) -> str | None:
        """The evaluation files' dir: --eval-data, else DEFAULT_EVAL_DATA when it exists; None: no evaluation."""
        if not self.evaluate:
            return None
        if self.eval_data is None:
            return DEFAULT_EVAL_DATA if os.path.isdir(DEFAULT_EVAL_DATA) else None
        return self.eval_data
