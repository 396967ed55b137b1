"""The Beam ModelHandler for beam_rnn exports, and loading a SavedModel.

`ClassifierModelHandler` is what every RunInference in the project runs (scoring
and evaluation).  Loading is RunInference's: one copy per worker process
(Beam's ``shared.Shared``, reused by every thread and bundle of that step), or
one per machine across processes with ``share_model_across_processes`` /
``model_copies`` (``multi_process_shared``, keyed by `model_identifier`, so
the retry step of `ScoreCorpus` uses the same copy as the main one).  No cache
of our own on top.

Model refresh: given ``RunInference(..., model_metadata_pcoll=...)`` (e.g. from
Beam's ``WatchFilePattern``), RunInference calls
`ClassifierModelHandler.update_model_path` with each new ``ModelMetadata.model_id``
and loads the models again under that id as its cache tag, so a swapped model is
a fresh load, never the old model's cache entry.  An update must keep the score
records' schema (same kinds, classes and label names); one that does not, or that
cannot be read or loaded, is refused: logged, counted, and the current models
keep serving.  (Beam keys that cache by the path alone: two steps of one process
with different handler classes, refreshed to the same path, would share one
loaded object; only scoring's `Infer` takes a ``model_metadata`` here.)
"""

import dataclasses
import hashlib
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.metrics import Metrics
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
COUNTER_MODEL_UPDATES = "model_updates"
COUNTER_MODEL_UPDATES_REFUSED = "model_updates_refused"

_DEFAULTS = ScoreConfig()
_LOG = logging.getLogger(__name__)


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
        raise ModelDirError(f"The SavedModel in {info.model_dir} cannot be loaded: {_first_line(e, 300)}") from e
    inputs = loaded.serve.structured_input_signature[1]
    outputs = loaded.serve.structured_outputs
    if C.TEXT_KEY not in inputs or PROBABILITIES not in outputs or LABEL not in outputs:
        raise ModelDirError(
            f"The SavedModel in {info.model_dir} has no {SERVING_SIGNATURE}(text) -> probabilities, label "
            "signature: was it exported by beam_rnn.train.export?"
        )


def replacement_models(current: Sequence[ModelInfo], model_path: str) -> tuple[ModelInfo, ...]:
    """The models named by a model update, if they can replace `current` without changing the records.

    Args:
      current: The models being served.
      model_path: An export dir or a comma-separated list of them, ``NAME=DIR``
        allowed (what `resolve_models` reads; the form of a `PredictionResult`'s
        ``model_id``).

    Returns:
      The new models under the current names (the records' column prefixes),
      matched by name when the update's names are the current ones, else by
      position.

    Raises:
      ModelDirError: A dir is not a complete export, or the models differ from
        `current` in number, kind, number of classes or label names.
    """
    new = list(resolve_models([part.strip() for part in model_path.split(",") if part.strip()]))
    if len(new) != len(current):
        raise ModelDirError(f"{len(new)} model(s) given to replace {len(current)}.")
    names = [info.name for info in current]
    if sorted(info.name for info in new) == sorted(names):
        by_name = {info.name: info for info in new}
        new = [by_name[name] for name in names]
    replaced = []
    for old, info in zip(current, new):
        if (info.kind, info.num_classes, info.label_names) != (old.kind, old.num_classes, old.label_names):
            raise ModelDirError(
                f"{info.model_dir} ({info.kind}, {info.num_classes} classes, names {info.label_names}) cannot "
                f"replace {old.name} ({old.kind}, {old.num_classes} classes, names {old.label_names}): "
                "the score records would change.")
        replaced.append(dataclasses.replace(info, name=old.name))
    return tuple(replaced)


def _first_line(error: BaseException, limit: int = 500) -> str:
    """``Type: the first line of its message`` (cut at `limit` characters) for a one-line log or error."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:limit]}" if text else type(error).__name__


def _models_id(infos: Sequence[ModelInfo]) -> str:
    """What names a set of loaded models (a `PredictionResult`'s ``model_id``): their export dirs, comma-joined."""
    return ",".join(info.model_dir for info in infos)


class ClassifierModels:
    """What `ClassifierModelHandler.load_model` returns: the loaded models, in order.

    `predict` is its only method that RunInference uses, so the object also works
    behind Beam's cross-process model proxy (``share_model_across_processes``).
    """

    def __init__(self, infos: Sequence[ModelInfo]):
        self.names = tuple(info.name for info in infos)
        self._model_id = _models_id(infos)
        self._models = [LoadedSavedModel(info.model_dir) for info in infos]

    def model_id(self) -> str:
        """The loaded export dirs, comma-joined (a method, so it also works behind the cross-process proxy)."""
        return self._model_id

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
    ``model_id`` names the models that scored it: their export dirs, comma-joined;
    `update_model_path` swaps the models of a running pipeline.
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
        self._set_models(resolve_models(models))
        self._settings = {
            "min_batch_size": min_batch_size,
            "max_batch_size": max_batch_size,
            "max_batch_duration_secs": max_batch_duration_secs,
            "share_model_across_processes": share_model_across_processes,
            "model_copies": model_copies,
        }
        self._update_request: str | None = None  # the last model_path given to update_model_path
        self._replaced: tuple[ModelInfo, ...] | None = None  # what an accepted update replaced, until loaded

    @property
    def infos(self) -> tuple[ModelInfo, ...]:
        return self._infos

    def model_identifier(self) -> str:
        """RunInference's ``model_identifier``: the same for every step that loads the same models.

        It names the current models, so after an accepted `update_model_path` it
        names the new ones (RunInference itself caches refreshed models under the
        update's path, not under this identifier).
        """
        digest = hashlib.sha1(repr((type(self).__qualname__, self._infos)).encode()).hexdigest()[:16]
        return f"beam_rnn_{digest}"

    def with_batch_size(self, min_batch_size: int, max_batch_size: int) -> "ClassifierModelHandler":
        """A handler of the same class for the same models, with other batch sizes."""
        settings = dict(self._settings, min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        return type(self)(self._infos, **settings)

    def update_model_path(self, model_path: str | None = None) -> None:
        """Serves the models of `model_path` from the next `load_model` on (RunInference's model refresh).

        RunInference calls it with each new ``ModelMetadata.model_id`` of its
        ``model_metadata_pcoll``, then loads the models again under that id.
        `model_path` is an export dir or a comma-separated list of them, as the
        constructor takes (``WatchFilePattern`` emits file paths: map them to their
        export dir first, e.g. watch ``*/manifest.json``, which an export writes
        last).  The new models must match the current ones in number, kind,
        classes and label names, and keep their names (see `replacement_models`).

        It never raises: a path that is refused (unreadable, incomplete, or
        incompatible) is logged as one error line and counted
        (``model_updates_refused``), and the current models keep serving; an
        accepted one is counted as ``model_updates``.  None, ``""`` and a repeat
        of the previous path (RunInference calls it twice per update) change nothing.
        """
        if not model_path or model_path == self._update_request:
            return
        self._update_request = model_path
        try:
            infos = replacement_models(self._infos, model_path)
        except Exception as e:  # pylint: disable=broad-except  # a bad model must not fail a running stream
            self._refuse(model_path, e)
            return
        if infos == self._infos:
            return
        _LOG.info("Model update: serving %s instead of %s from the next load.", _models_id(infos), self._model_id)
        self._replaced = self._infos
        self._set_models(infos)
        Metrics.counter(INFERENCE_METRICS_NAMESPACE, COUNTER_MODEL_UPDATES).inc()

    def _set_models(self, infos: tuple[ModelInfo, ...]) -> None:
        self._infos = infos
        self._model_id = _models_id(infos)

    def _refuse(self, model_path: str, error: BaseException) -> None:
        _LOG.error("Model update to %s refused, still serving %s: %s", model_path, self._model_id, _first_line(error))
        Metrics.counter(INFERENCE_METRICS_NAMESPACE, COUNTER_MODEL_UPDATES_REFUSED).inc()

    def load_model(self) -> ClassifierModels:
        """Loads the current models.

        When the models of an accepted update fail to load, the update is refused
        after all (logged, counted as ``model_updates_refused``) and the models it
        replaced are loaded instead.
        """
        replaced, self._replaced = self._replaced, None
        try:
            return ClassifierModels(self._infos)
        except Exception as e:  # pylint: disable=broad-except
            if replaced is None:
                raise
            failed = self._model_id
            self._set_models(replaced)
            self._refuse(failed, e)
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
        if self._update_request is not None and hasattr(model, "model_id"):
            # Refreshed: name what really scored the batch (RunInference may hand over a model it cached).
            model_id = model.model_id()
        return [PredictionResult(text, scores, model_id) for text, scores in zip(texts, zip(*per_model))]

    def get_num_bytes(self, batch: Sequence[str]) -> int:
        return sum(len(text) for text in batch)

    def get_metrics_namespace(self) -> str:
        return INFERENCE_METRICS_NAMESPACE

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{i.name}={i.model_dir}' for i in self._infos)})"
