"""The models a service answers with: loading, whole-text classification, change detection.

`load_models` reads the ``--model`` values the way every other command does
(`beam_rnn.core.artifacts.expand_model_dirs`: a training output becomes its
``bilstm`` and ``lstm`` exports; ``NAME=DIR`` names one) and verifies each export
before anything is served:

* an export with ``step_weights.npz`` (the unidirectional LSTM) is loaded as a
  `StreamingClassifier` (manifest and tokenizer golden file checked), which serves
  the WebSocket and ``/v1/stream`` sessions and its own whole-text predictions in
  NumPy — no TensorFlow;
* any other export (the BiLSTM) loads its SavedModel's ``serving_default``
  (`beam_rnn.serve.handler.LoadedSavedModel`) once and is called on a one-text batch
  before the service starts, so a model that cannot answer is refused at load time.

TensorFlow is imported only when such a model is given.
"""

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

from beam_rnn.core import constants as C
from beam_rnn.core.artifacts import (
    _NAME_RE,  # the NAME=DIR rule of --model (resolve_models reads it the same way)
    ModelDirError,
    ModelInfo,
    expand_model_dirs,
    join_path,
    path_exists,
    read_bytes,
    read_model_info,
    resolve_models,
    saved_model_path,
)
from beam_rnn.core.manifest import MANIFEST_FILE
from beam_rnn.core.outputs import class_names, prediction_fields
from beam_rnn.stream.classifier import StreamingClassifier
from beam_rnn.stream.events import one_line

SERVING_PROBABILITIES = "probabilities"  # = beam_rnn.serve.handler.PROBABILITIES (that module imports Beam)
SERVING_LABEL = "label"


@dataclasses.dataclass(frozen=True, eq=False)
class ServedModel:
    """One loaded model: its card's `ModelInfo` and what predicts with it.

    Attributes:
        info: Name (the key in /v1/classify answers), directory, kind, classes.
        streaming: The NumPy classifier of a streaming export (else None).
        saved: The loaded SavedModel of any other export (else None).
    """

    info: ModelInfo
    streaming: StreamingClassifier | None = None
    saved: Any = None

    @property
    def name(self) -> str:
        return self.info.name


def _split_name(value: str) -> tuple[str | None, str]:
    """``NAME=DIR`` -> (NAME, DIR); a plain directory -> (None, DIR)."""
    name, sep, rest = value.partition("=")
    if sep and _NAME_RE.fullmatch(name):
        return name, rest
    return None, value


def _streaming_info(name: str | None, model_dir: str, classifier: StreamingClassifier) -> ModelInfo:
    """The `ModelInfo` of a streaming export, from its saved_model's card when it has one (every full export)."""
    if path_exists(join_path(saved_model_path(model_dir), "saved_model.pb")):
        return read_model_info(model_dir, name)
    labels = tuple(classifier.label_names) if classifier.label_names else None
    return ModelInfo(name=name or C.MODEL_LSTM, model_dir=model_dir, kind=C.MODEL_LSTM,
                     num_classes=classifier.num_classes, label_names=labels)


def _load_saved(info: ModelInfo) -> Any:
    from beam_rnn.serve.handler import LoadedSavedModel  # pylint: disable=import-outside-toplevel  (TF, Beam)

    try:
        return LoadedSavedModel(info.model_dir)
    except Exception as e:  # pylint: disable=broad-except  # TF raises many types for a bad SavedModel
        raise ModelDirError(f"The SavedModel in {info.model_dir} cannot be loaded: {one_line(e)[:300]}") from e


def _load_one(value: str, max_pending_chars: int) -> ServedModel:
    name, model_dir = _split_name(value)
    if path_exists(join_path(model_dir, C.STEP_WEIGHTS_FILE)):
        classifier = StreamingClassifier.load(model_dir, max_pending_chars=max_pending_chars)
        return ServedModel(_streaming_info(name, model_dir, classifier), streaming=classifier)
    info = read_model_info(model_dir, name)
    return ServedModel(info, saved=_load_saved(info))


def manifest_fingerprint(model_dirs: Sequence[str]) -> tuple[str, ...]:
    """sha256 of each directory's manifest.json ("missing" when it cannot be read): what ``--watch`` compares."""
    out = []
    for model_dir in model_dirs:
        try:
            out.append(hashlib.sha256(read_bytes(join_path(model_dir, MANIFEST_FILE))).hexdigest())
        except OSError:
            out.append("missing")
    return tuple(out)


class ModelSet:
    """The models of one load: every model answers /v1/classify; the first streaming one serves sessions.

    Immutable once built: a reload builds a new set, and each session keeps the
    set's streaming model it started with.

    Attributes:
        models: The loaded models, in ``--model`` order.
        class_names: Names of the classes by id (shared by all models).
        stream: The streaming model sessions use (None: only whole-text models).
        fingerprint: `manifest_fingerprint` of the model directories when loaded.
    """

    def __init__(self, models: Sequence[ServedModel], fingerprint: tuple[str, ...] = ()):
        if not models:
            raise ModelDirError("No model given.")
        self.models = tuple(models)
        first = self.models[0].info
        self.class_names = class_names(first.label_names, first.num_classes)
        self.stream = next((m for m in self.models if m.streaming is not None), None)
        self.fingerprint = fingerprint

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    @property
    def model_dirs(self) -> tuple[str, ...]:
        return tuple(m.info.model_dir for m in self.models)

    def classify(self, texts: Sequence[str]) -> list[dict[str, dict[str, Any]]]:
        """``[{model name: {predicted_label, predicted_label_name, probabilities}}]``, one per text.

        Streaming models: `StreamingClassifier.predict_text` (NumPy); the others: one
        ``serving_default`` call for the batch.  Blocking (run it off the event loop).
        """
        out: list[dict[str, dict[str, Any]]] = [{} for _ in texts]
        for model in self.models:
            if model.streaming is not None:
                for row, text in zip(out, texts):
                    row[model.name] = model.streaming.predict_text(text)
                continue
            for row, fields in zip(out, self._serving_default(model, texts)):
                row[model.name] = fields
        return out

    def _serving_default(self, model: ServedModel, texts: Sequence[str]) -> list[dict[str, Any]]:
        import tensorflow as tf  # pylint: disable=import-outside-toplevel  (loaded with the SavedModel)

        result = model.saved.serve(text=tf.constant(list(texts), dtype=tf.string))
        probabilities = result[SERVING_PROBABILITIES].numpy().tolist()  # binary: P(class 1); else K floats
        labels = result[SERVING_LABEL].numpy().tolist()
        return [prediction_fields(p, int(label), self.class_names) for p, label in zip(probabilities, labels)]


def load_models(values: Sequence[str], *, max_pending_chars: int) -> ModelSet:
    """Loads and verifies every model of ``--model`` (see the module docstring).

    Raises:
        ModelDirError: (exit 2) one line naming the model that is missing, damaged or
            does not share the others' classes.
    """
    entries = expand_model_dirs(list(values))
    dirs = [_split_name(value)[1] for value in entries]
    fingerprint = manifest_fingerprint(dirs)
    loaded = [_load_one(value, max_pending_chars) for value in entries]
    infos = resolve_models([m.info for m in loaded])  # unique names, shared classes
    models = ModelSet([dataclasses.replace(m, info=info) for m, info in zip(loaded, infos)], fingerprint)
    for model in models.models:
        if model.saved is not None:
            try:
                models._serving_default(model, [""])  # pylint: disable=protected-access
            except Exception as e:  # pylint: disable=broad-except
                raise ModelDirError(f"The SavedModel in {model.info.model_dir} cannot classify a text "
                                    f"(serving_default): {one_line(e)[:300]}") from e
    return models


def incompatibility(old: ModelSet, new: ModelSet) -> str | None:
    """Why `new` cannot replace `old` in a running service (None: it can)."""
    if new.class_names != old.class_names:
        return f"its classes {list(new.class_names)} differ from the served models' {list(old.class_names)}"
    if old.stream is not None and new.stream is None:
        return "it has no streaming model and sessions need one"
    return None
