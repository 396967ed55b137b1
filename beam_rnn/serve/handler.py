"""The Beam ModelHandler for beam_rnn exports, and loading a SavedModel.

`ClassifierModelHandler` is what every RunInference in the project runs (scoring
and evaluation).  Loading is RunInference's: one copy per worker process
(Beam's ``shared.Shared``, reused by every thread and bundle of that step), or
one per machine across processes with ``share_model_across_processes`` /
``model_copies`` (``multi_process_shared``, keyed by `model_identifier`, so
the retry step of `ScoreCorpus` uses the same copy as the main one).  No cache
of our own on top.
"""

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from beam_rnn.core import constants as C
from beam_rnn.core.artifacts import (
    ModelDirError,
    ModelInfo,
    ModelsArg,
    resolve_models,
    saved_model_path,
)
from beam_rnn.serve.config import ScoreConfig

SERVING_SIGNATURE = "serving_default"  # = beam_rnn.train.export.SERVING_SIGNATURE (not imported: keeps TF lazy)
PROBABILITIES = "probabilities"
LABEL = "label"
INFERENCE_METRICS_NAMESPACE = "BeamML_beam_rnn"

_DEFAULTS = ScoreConfig()


class LoadedSavedModel:
    """One loaded SavedModel and its ``serving_default`` function."""

    def __init__(self, model_dir: str):
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        self.model_dir = model_dir
        self.module = tf.saved_model.load(saved_model_path(model_dir))
        self.serve = self.module.signatures[SERVING_SIGNATURE]


def check_model_loads(info: ModelInfo) -> None:
    """Loads the SavedModel and checks its serving signature (for drivers, before a run).

    The model is let go again: the workers load their own through RunInference.

    Raises:
      ModelDirError: It cannot be loaded or lacks ``serving_default(text)``.
    """
    try:
        loaded = LoadedSavedModel(info.model_dir)
    except Exception as e:  # pylint: disable=broad-except
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelDirError(
            f"The SavedModel in {info.model_dir} cannot be loaded: {type(e).__name__}: {first[:300]}"
        ) from e
    inputs = loaded.serve.structured_input_signature[1]
    outputs = loaded.serve.structured_outputs
    if C.TEXT_KEY not in inputs or PROBABILITIES not in outputs or LABEL not in outputs:
        raise ModelDirError(
            f"The SavedModel in {info.model_dir} has no {SERVING_SIGNATURE}(text) -> probabilities, label "
            "signature: was it exported by beam_rnn.train.export?"
        )


class ClassifierModels:
    """What `ClassifierModelHandler.load_model` returns: the loaded models, in order.

    `predict` is its only method that RunInference uses, so the object also works
    behind Beam's cross-process model proxy (``share_model_across_processes``).
    """

    def __init__(self, infos: Sequence[ModelInfo]):
        self.names = tuple(info.name for info in infos)
        self._models = [LoadedSavedModel(info.model_dir) for info in infos]

    @property
    def loaded(self) -> tuple[LoadedSavedModel, ...]:
        """The loaded SavedModels, in order (in-process use: latency, tests)."""
        return tuple(self._models)

    def full_pass(self, texts: Sequence[str]) -> list[tuple[Any, Any]]:
        """``[(probabilities, labels)]`` numpy arrays per model for a batch of raw texts."""
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        text = tf.constant(list(texts), dtype=tf.string)  # converted once, fed to every model
        outputs = []
        for model in self._models:
            out = model.serve(text=text)  # one serving_default call per model per batch
            outputs.append((out[PROBABILITIES].numpy(), out[LABEL].numpy()))
        return outputs

    def predict(self, texts: Sequence[str]) -> list[tuple[Any, Any]]:
        return self.full_pass(texts)


class ClassifierModelHandler(ModelHandler[str, PredictionResult, ClassifierModels]):
    """Beam ModelHandler for beam_rnn exports: raw texts in, ``(probability, label)`` per model out.

    Each `PredictionResult` holds the text as ``example`` and, as ``inference``, a
    tuple with one ``(probability, label)`` pair per model (in `infos` order):
    probability is a float (binary: P(label 1)) or a list of K floats.  Wrap it
    in ``KeyedModelHandler`` to carry document ids through RunInference.
    Subclasses (evaluation, tests) override `load_model` / `run_inference` and
    keep the constructor's keyword arguments.
    """

    def __init__(
        self,
        models: ModelsArg,
        *,
        min_batch_size: int | None = _DEFAULTS.min_batch_size,
        max_batch_size: int | None = _DEFAULTS.max_batch_size,
        max_batch_duration_secs: int | None = None,
        share_model_across_processes: bool = False,
        model_copies: int | None = None,
    ):
        """Reads the model cards (the SavedModels load on the workers).

        Args:
          models: One or several exports (see `beam_rnn.core.artifacts.resolve_models`).
          min_batch_size: Smallest batch BatchElements forms (None: Beam's default).
          max_batch_size: Largest batch (None: Beam's default).  Equal min and max
            give fixed-size batches.
          max_batch_duration_secs: Streaming: longest time a batch is buffered.
          share_model_across_processes: One copy of the models per machine, shared
            by all SDK worker processes (Beam's ``large_model``).
          model_copies: Exact number of copies per machine (implies sharing).

        Raises:
          ModelDirError: See `resolve_models`.
          ValueError: Inconsistent batch sizes.
        """
        for label, value in (("min_batch_size", min_batch_size), ("max_batch_size", max_batch_size)):
            if value is not None and value < 1:
                raise ValueError(f"{label} must be >= 1, got {value}.")
        if min_batch_size is not None and max_batch_size is not None and min_batch_size > max_batch_size:
            raise ValueError(f"min_batch_size {min_batch_size} > max_batch_size {max_batch_size}.")
        if model_copies is not None and model_copies < 1:
            raise ValueError(f"model_copies must be >= 1, got {model_copies}.")
        super().__init__(
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            max_batch_duration_secs=max_batch_duration_secs,
            large_model=share_model_across_processes,
            model_copies=model_copies,
        )
        self._infos = resolve_models(models)
        self._settings = {
            "min_batch_size": min_batch_size,
            "max_batch_size": max_batch_size,
            "max_batch_duration_secs": max_batch_duration_secs,
            "share_model_across_processes": share_model_across_processes,
            "model_copies": model_copies,
        }
        self._model_id = ",".join(info.model_dir for info in self._infos)

    @property
    def infos(self) -> tuple[ModelInfo, ...]:
        return self._infos

    def model_identifier(self) -> str:
        """RunInference's ``model_identifier``: the same for every step that loads the same models."""
        digest = hashlib.sha1(repr((type(self).__qualname__, self._infos)).encode()).hexdigest()[:16]
        return f"beam_rnn_{digest}"

    def with_batch_size(self, min_batch_size: int, max_batch_size: int) -> "ClassifierModelHandler":
        """A handler of the same class for the same models, with other batch sizes."""
        settings = dict(self._settings, min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        return type(self)(self._infos, **settings)

    def load_model(self) -> ClassifierModels:
        return ClassifierModels(self._infos)

    def run_inference(
        self,
        batch: Sequence[str],
        model: ClassifierModels,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        texts = list(batch)
        outputs = model.predict(texts)
        # Whole-batch conversions to plain Python lists; rows are then zipped, never sliced.
        per_model = [zip(probabilities.tolist(), labels.tolist()) for probabilities, labels in outputs]
        model_id = self._model_id
        return [PredictionResult(text, scores, model_id) for text, scores in zip(texts, zip(*per_model))]

    def get_num_bytes(self, batch: Sequence[str]) -> int:
        return sum(len(text) for text in batch)

    def get_metrics_namespace(self) -> str:
        return INFERENCE_METRICS_NAMESPACE

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{i.name}={i.model_dir}' for i in self._infos)})"
