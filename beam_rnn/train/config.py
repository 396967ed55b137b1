"""The training configuration: the one place each model and training default is written down.

No TensorFlow here (``beam-rnn train --help`` builds its flags from these classes
before any heavy import):

* `ModelSettings`: the architecture a user chooses (sizes, cell, dropout, seed).
* `ModelConfig`: `ModelSettings` plus what the data and the model kind fix (kind,
  vocabulary size, number of classes); what `models.build_classifier` builds and the
  model card records (``model_config``).
* `TrainConfig`: the training run, with the model settings nested (``config.model``).

Fields carry their command-line flag (`beam_rnn.cli.flags.option`), so `pipelines.train`
generates its flags, help and defaults from here.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from beam_rnn.cli.flags import check_options, int_list, option
from beam_rnn.core import constants as C
from beam_rnn.core.errors import InputError
from beam_rnn.stream.step import CELL_LSTM, CELLS

KIND_BILSTM = C.MODEL_BILSTM
KIND_LSTM = C.MODEL_LSTM
KINDS = (KIND_BILSTM, KIND_LSTM)

# Measured on IMDB (20% eval split by hash of the derived id, seed 42, 2 CPU cores):
# BiLSTM 0.892 at 5e-4 (best epoch 2) vs 0.877 at 1e-3 (it overfits after epoch 1);
# the unidirectional LSTM 0.881 at 5e-4 (0.869-0.880 at 1e-3 depending on batch
# composition).  An earlier split (by the CSV's repeating id column) gave the BiLSTM
# 0.886 at 1e-3 and 0.880 at 5e-4: differences of ~0.01 are split/seed noise.
DEFAULT_LEARNING_RATES = {KIND_BILSTM: 5e-4, KIND_LSTM: 5e-4}
MONITORS = ("val_loss", "val_accuracy", "val_auc")


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an int, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """The architecture of a classifier, as chosen by the user (no data-dependent field).

    Attributes:
        embedding_dim: Embedding width.
        units: Recurrent units per layer (per direction for "bilstm").
        layers: Number of stacked recurrent layers.
        cell: "lstm", "gru" or "simple_rnn".
        dense_units: Width of the relu hidden layer of the head.
        dropout: Rate of the Dropout before the logits (0 = no Dropout layer; None: chosen
            from the corpus by `beam_rnn.train.auto` when training, 0 in a bare `ModelConfig`).
        stacked_tutorial: "bilstm" only: the tutorial's stacked variant,
            Bi(LSTM(units, return_sequences)) -> Bi(LSTM(units // 2)) ->
            Dense(dense_units, relu) -> Dropout(dropout or 0.5) -> Dense(out).
        embedding_dropout: Rate of a SpatialDropout1D after the Embedding (0 = no layer).
        recurrent_dropout: Variational dropout in every recurrent layer (Gal & Ghahramani
            2016): Keras's ``dropout`` and ``recurrent_dropout`` of the cell, both this rate
            (one mask per document on the inputs and one on the state, while training).
        seed: Seed of every initialiser and of the Dropout layers' random generators
            (training also seeds the global random state and the shuffle with it).
    """

    embedding_dim: int = option(64, "Embedding width.", minimum=1)
    units: int = option(64, "Recurrent units.", minimum=1)
    layers: int = option(1, "Recurrent layers.", minimum=1)
    cell: str = option(CELL_LSTM, "Recurrent cell.", choices=CELLS)
    dense_units: int = option(64, "Hidden dense width.", minimum=1)
    dropout: float | None = option(None, "Dropout before the logits.", minimum=0.0, less_than=1.0,
                                   show_default="auto: 0.5 below 10,000 training documents, else 0")
    stacked_tutorial: bool = option(False, "bilstm: the tutorial's stacked two-layer variant.", flag="stacked")
    embedding_dropout: float = option(
        0.0, "Spatial dropout after the Embedding: this share of the embedding dimensions is zeroed for a whole "
        "document at a time while training (0: no layer).", minimum=0.0, less_than=1.0)
    recurrent_dropout: float = option(
        0.0, "Variational dropout in the recurrent layers (Gal & Ghahramani 2016): this share of the cell's inputs "
        "and of its state is zeroed, one mask per document, while training (0: none).", minimum=0.0, less_than=1.0)
    seed: int = option(42, "Seed of initialisers, Dropout and shuffles: seeded runs are bit-identical on CPU, also "
                       "across a kill and resume.", minimum=0)

    def __post_init__(self) -> None:
        """Validates the fields so a bad config fails before any model is built."""
        for name in ("embedding_dim", "units", "layers", "dense_units", "seed"):
            _check_int(name, getattr(self, name))
        check_options(self)

    def settings(self) -> "ModelSettings":
        """Just the `ModelSettings` fields (of a `ModelConfig` too)."""
        return ModelSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ModelSettings)})


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig(ModelSettings):
    """Hyper-parameters of one classifier (`ModelSettings` plus kind and data sizes); JSON-able for the model card.

    Attributes:
        kind: "bilstm" (tutorial bidirectional model) or "lstm" (streaming).
        vocab_size: Number of token ids, including 0 (padding) and the OOV ids.
        num_classes: 2 gives one logit; K > 2 gives K logits.
        (and every `ModelSettings` field)
    """

    kind: str = option(cli=False, choices=KINDS)
    # 0 = padding and 1 = OOV are always present, so a usable vocabulary has at least one real word after them.
    vocab_size: int = option(cli=False, minimum=3)
    num_classes: int = option(2, cli=False, minimum=2)

    def __post_init__(self) -> None:
        if self.dropout is None:  # a built model has a definite rate; training chooses it (train.auto)
            object.__setattr__(self, "dropout", 0.0)
        _check_int("vocab_size", self.vocab_size)
        _check_int("num_classes", self.num_classes)
        super().__post_init__()
        if self.stacked_tutorial:
            if self.kind != KIND_BILSTM:
                raise InputError("stacked_tutorial only applies to kind 'bilstm'.")
            if self.layers != 1:
                raise InputError("stacked_tutorial fixes the depth at two layers; leave layers=1.")
            if self.units < 2:
                raise InputError("stacked_tutorial needs units >= 2 (the second layer has units // 2).")

    @property
    def num_outputs(self) -> int:
        """Width of the logits: 1 for binary, K otherwise."""
        return 1 if self.num_classes == 2 else self.num_classes

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-able dict of every field (kind, vocab_size, num_classes first, as model cards have it)."""
        values = dataclasses.asdict(self)
        head = ("kind", "vocab_size", "num_classes")
        return {**{k: values[k] for k in head}, **{k: v for k, v in values.items() if k not in head}}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
        """Builds a config from `to_dict` output (a model card's ``model_config``).

        Args:
            values: Field name -> value; missing fields take their defaults.

        Raises:
            ValueError: On unknown keys (a typo in a model card should not be
                silently ignored) or invalid values.
        """
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"Unknown ModelConfig keys {unknown}; expected a subset of {sorted(known)}.")
        return cls(**dict(values))


def _boundaries(text: str) -> tuple[int, ...] | None:
    return int_list(text) or None


_SETTINGS = tuple(f.name for f in dataclasses.fields(ModelSettings))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (defaults chosen for IMDB on 2 CPU cores).

    Attributes:
        kinds: Model kinds to train ("bilstm", "lstm"); `train` trains one of them.
        epochs: Maximum number of epochs (early stopping usually ends sooner).  None, and
            `early_stopping_patience` and the model's `dropout` when None: chosen from the
            corpus when training starts (`beam_rnn.train.auto.resolve`, recorded in the
            model card).
        batch_size: Documents per batch (every length bucket uses this size).
        learning_rate: Adam learning rate (None: the per-kind default of
            DEFAULT_LEARNING_RATES, 5e-4 for both kinds).
        clipnorm: Adam gradient-norm clipping (None: no clipping).
        max_length: Keep the first `max_length` token ids of each document (None: all).
        bucket_boundaries: Fixed length-bucket boundaries (bucket i holds lengths
            < boundary i); None derives `num_buckets` buckets from quantiles of
            the training lengths.
        num_buckets: Number of quantile buckets when `bucket_boundaries` is None
            (1 = no bucketing; batches are still padded only to their own longest).
        shuffle_seed: Seed of the full shuffle (None: use `seed`).
        early_stopping_patience: Epochs without improvement of `monitor` before stopping.
        monitor: "val_accuracy" (default), "val_loss" or "val_auc" (binary only);
            also picks the kept epoch (the earliest of equal ones).
        model: The architecture (`ModelSettings`; its seed is the run's `seed`).
            A `ModelConfig` given here keeps only its settings: kind, vocabulary
            size and classes come from `kinds` and the data.
        pretrained_embeddings: word2vec/GloVe text vectors that initialise the
            Embedding rows of the words they cover (see beam_rnn.embeddings).
        freeze_embeddings: Keep the warm-started Embedding fixed.
        rescale_pretrained: Scale the pretrained vectors to the size of Keras'
            initial embeddings (similarities unchanged).  On by default: raw CBOW
            vectors are ~12x larger (RMS) than Keras' initial rows and warm-starting
            with them lowered SST-2 dev accuracy (0.778 vs 0.791 cold, 3 seeds);
            rescaled they raised it (0.801).
        folds: K-fold cross-validation on the train split before the final model
            (`beam_rnn.train.cv`); None: none.
        prefix_training: "lstm" only: the share of training documents cut to a random
            prefix each epoch (`data.make_dataset`'s ``prefix_fraction``); 0: off.
        timestep_loss: "lstm" only: this share of the loss is on the prediction after every
            token, weighted toward later tokens (`beam_rnn.train.losses`); 0: off.
        smoothness: "lstm" only: the weight of a penalty on the logits' squared change from
            one token to the next (fewer changes of mind); 0: off.
        teacher: "lstm" only: a BiLSTM export to distil from (`beam_rnn.train.distill`); None: off.
        teacher_weight: The teacher's share of the training target.
        weight_decay: > 0: AdamW with this decay (times the learning rate, per step), biases excluded.
        ema_momentum: > 0: the model is an exponential moving average of the weights (`beam_rnn.train.averaging`).
        refit: Train the exported model again on train + eval for the chosen epochs (`beam_rnn.train.refit`).
        verbose: Keras `fit` verbosity (2 = one line per epoch).

    `to_dict` is flat (the model settings beside the training fields), the layout
    train_config.json and the resume signature have always had; `from_dict` reads it.
    """

    kinds: tuple[str, ...] = option(KINDS, cli=False, choices=KINDS)
    epochs: int | None = option(
        None, "Maximum epochs (early stopping on --monitor; the best epoch's weights are kept).", minimum=1,
        show_default="auto: 5 from 10,000 training documents, else 10 (15 with more than 2 classes)")
    batch_size: int = option(64, "Documents per batch; batches are bucketed by length and padded to their own longest document.",
                             minimum=1)
    learning_rate: float | None = option(
        None, "Adam learning rate.",
        show_default=", ".join(f"{k} {v:g}" for k, v in DEFAULT_LEARNING_RATES.items()), greater_than=0.0)
    clipnorm: float | None = option(1.0, cli=False, greater_than=0.0)
    max_length: int | None = option(None, "Keep the first N token ids of each document.", metavar="N",
                                    show_default="all", minimum=1)
    bucket_boundaries: tuple[int, ...] | None = option(
        None, "Comma-separated fixed length-bucket boundaries (overrides --num-buckets).", parse=_boundaries)
    num_buckets: int = option(10, "Length buckets from training-length quantiles.", minimum=1)
    shuffle_seed: int | None = option(None, cli=False)
    early_stopping_patience: int | None = option(
        None, "Early-stopping patience in epochs.", flag="patience", minimum=0,
        show_default="auto: 2, or 3 below 2,000 validation documents")
    # val_accuracy, not val_loss: the loss keeps rising from overconfidence while accuracy still improves
    # (IMDB, streaming LSTM, seed 42: val_loss kept epoch 1 at 0.836, epoch 3 had 0.872; RESULTS.md).
    monitor: str = option("val_accuracy", "Early stopping / kept epoch metric.", choices=MONITORS)
    model: ModelSettings = option(default_factory=ModelSettings)  # noqa: RUF009  its fields are flags too
    pretrained_embeddings: str | None = option(
        None, "word2vec/GloVe text vectors (e.g. pipelines.embeddings OUTPUT/vectors.txt) that initialise the "
        "Embedding; --embedding-dim must equal their width.", metavar="PATH")
    freeze_embeddings: bool = option(False, "Keep the pretrained embedding fixed.")
    rescale_pretrained: bool = option(
        True, "Scale pretrained vectors to Keras' initial embedding size, similarities unchanged "
        "(unscaled word2vec vectors lowered SST-2 dev accuracy, see benchmarks/RESULTS.md).")
    folds: int | None = option(
        None, "Cross-validate first: K models, each validated on one of K folds of the train split (by hash of "
        "the group, else the id), reported as mean ± sd in OUTPUT/cv/<kind>.json and the model card; then the "
        "final model as usual (none when the eval split is empty, e.g. preprocess --eval-fraction 0).",
        metavar="K", minimum=2)
    prefix_training: float = option(
        0.0, "Streaming LSTM only: each epoch, cut this share of the training documents to a random prefix "
        "(truncated training, Madureira & Schlangen 2020), so it learns to be right before the end.",
        metavar="SHARE", minimum=0.0, maximum=1.0)
    timestep_loss: float = option(
        0.0, "Streaming LSTM only: put this share of the loss on the prediction after every token (token t of n "
        "weighted t / (1 + ... + n)), the rest on the whole text's, so it learns to be right before the end.",
        metavar="SHARE", minimum=0.0, maximum=1.0)
    smoothness: float = option(
        0.0, "Streaming LSTM only: add this weight times the mean squared change of the logits from one token to "
        "the next, so the prediction changes its mind less often (a lower edit overhead).", metavar="W", minimum=0.0)
    teacher: str | None = option(
        None, "Streaming LSTM only: distil from this BiLSTM export (or a training output holding bilstm/), trained "
        "on the same preprocessing: the target mixes the true label with the teacher's probabilities on the whole "
        "text (also for the prefixes of --prefix-training).", metavar="DIR")
    teacher_weight: float = option(
        0.5, "With --teacher: the teacher's share of the training target (1 - this: the true label's).",
        greater_than=0.0, maximum=1.0)
    weight_decay: float = option(
        0.0, "Decoupled weight decay (AdamW) of the kernels and embeddings, biases excluded; 0: Adam.", metavar="W",
        minimum=0.0)
    # 0.99: +0.2 to +0.7 points of held-out accuracy on SST-2 (5 seeds), SST-1, MR (10 folds) and IMDB by film, for
    # ~2% more time a batch (benchmarks/RESULTS.md, "Averaged weights").
    ema_momentum: float = option(
        0.99, "Validate, keep and export an exponential moving average of the weights, updated after every batch "
        "with this momentum (beam_rnn.train.averaging; 0: the raw weights).", metavar="M", minimum=0.0,
        less_than=1.0)
    refit: bool = option(
        False, "After early stopping has chosen the epoch on the eval split, train a fresh model on the train and "
        "eval splits together for that many epochs and export it (beam_rnn.train.refit): more data for the "
        "exported model; the validation figures reported stay the selection run's.")
    verbose: int = option(2, cli=False)

    def __post_init__(self) -> None:
        kinds = (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds)
        object.__setattr__(self, "kinds", kinds)
        if not kinds:
            raise InputError(f"kinds must be a non-empty subset of {KINDS}, got none")
        if not isinstance(self.model, ModelSettings):
            raise InputError(f"model must be a ModelSettings, got {self.model!r}")
        object.__setattr__(self, "model", self.model.settings())
        check_options(self)
        if self.bucket_boundaries is not None:
            b = tuple(int(x) for x in self.bucket_boundaries)
            if any(x < 1 for x in b) or list(b) != sorted(set(b)):
                raise InputError(f"bucket_boundaries must be strictly increasing positive ints, got {b}")
            object.__setattr__(self, "bucket_boundaries", b)

    @property
    def seed(self) -> int:
        """The run's seed: the models' initialisers, the global random state, the shuffle (by default)."""
        return self.model.seed

    def learning_rate_for(self, kind: str) -> float:
        """The Adam learning rate used for `kind`."""
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATES[kind]

    @property
    def effective_shuffle_seed(self) -> int:
        return self.seed if self.shuffle_seed is None else self.shuffle_seed

    def model_config(self, kind: str, *, vocab_size: int, num_classes: int) -> ModelConfig:
        """The `ModelConfig` of `kind` for a dataset (stacked_tutorial reaches bilstm only)."""
        settings = dataclasses.replace(self.model, stacked_tutorial=self.model.stacked_tutorial and kind == KIND_BILSTM)
        return ModelConfig(kind=kind, vocab_size=int(vocab_size), num_classes=int(num_classes),
                           **dataclasses.asdict(settings))

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-able dict: the training fields with the model settings in place of ``model``."""
        d: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            if field.name == "model":
                d.update(dataclasses.asdict(self.model))
            else:
                d[field.name] = getattr(self, field.name)
        d["kinds"] = list(self.kinds)
        d["bucket_boundaries"] = list(self.bucket_boundaries) if self.bucket_boundaries is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Builds a config from `to_dict` output (flat) or with the settings nested under ``model``."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names and k != "model"}
        nested = d.get("model")
        settings = dict(nested) if isinstance(nested, Mapping) else {}
        settings.update({k: v for k, v in d.items() if k in _SETTINGS})
        kwargs["model"] = nested if isinstance(nested, ModelSettings) else ModelSettings(**settings)
        for key in ("kinds", "bucket_boundaries"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)
