"""Exported model directories: the one error, the model card, the manifest check (no TensorFlow).

Every reader of an export (scoring, evaluation, the streaming classifier) goes
through here: `read_model_card` parses ``model_card.json``, `read_model_info`
checks that a directory is a complete export and returns what a pipeline needs
to know (`ModelInfo`), `verify_model_files` checks the files a caller is about
to use against the export's ``manifest.json``.  Paths go through Beam's
`FileSystems`, so gs:// and other remote directories work too.
"""

import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from beam_rnn.core import constants as C
from beam_rnn.core.errors import ArtifactError

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ModelDirError(ArtifactError):
    """A model directory is missing, incomplete, damaged or of the wrong kind (one line; exit 2)."""


def _filesystems():
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel

    return FileSystems


def join_path(directory: str, *parts: str) -> str:
    """`os.path.join` for local paths, ``/`` for remote ones (gs://...)."""
    if "://" in directory:
        return "/".join([directory.rstrip("/"), *parts])
    return os.path.join(directory, *parts)


def path_exists(path: str) -> bool:
    """Whether `path` exists (local paths without importing Beam)."""
    if "://" not in path:
        return os.path.exists(path)
    return _filesystems().exists(path)


def read_bytes(path: str) -> bytes:
    """The whole file (local paths without importing Beam, so the streaming classifier stays light)."""
    if "://" not in path:
        with open(path, "rb") as f:
            return f.read()
    from apache_beam.io.filesystem import CompressionTypes  # pylint: disable=import-outside-toplevel

    with _filesystems().open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def _is_dir(path: str) -> bool:
    if "://" not in path:
        return os.path.isdir(path)
    try:
        [result] = _filesystems().match([path.rstrip("/") + "/*"])
        return bool(result.metadata_list)
    except Exception:  # pylint: disable=broad-except  # a filesystem that raises instead of matching nothing
        return False


def saved_model_path(model_dir: str) -> str:
    return join_path(model_dir, C.SAVED_MODEL_DIR)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the pipelines need to know about one exported model (read from its card).

    Attributes:
      name: Name in score records (``bilstm``, ``lstm``, or given).
      model_dir: The export directory (holds ``saved_model/`` and ``model_card.json``).
      kind: The model card's kind.
      num_classes: Number of classes (2 = binary: one probability per document).
      label_names: Class names by id (string labels, or int labels given --class-names), or None.
      label_type: The labels the model was trained on: int (class ids, which `label_names` may
        name) or string (the names are the labels); default: string when there are names.
    """

    name: str
    model_dir: str
    kind: str
    num_classes: int
    label_names: tuple[str, ...] | None = None
    label_type: str | None = None

    def __post_init__(self) -> None:
        if self.label_type is None:
            object.__setattr__(self, "label_type",
                               C.LABEL_TYPE_STRING if self.label_names is not None else C.LABEL_TYPE_INT)

    @property
    def binary(self) -> bool:
        return self.num_classes == 2

    def class_index(self, value: Any) -> int | None:
        """The class id of a document label (int id or class name), None if not a class."""
        if isinstance(value, bool) or value is None:
            return None
        if isinstance(value, int):
            return value if 0 <= value < self.num_classes else None
        if isinstance(value, str):
            text = value.strip()
            if self.label_names is not None and text in self.label_names:
                return self.label_names.index(text)
            if self.label_type == C.LABEL_TYPE_INT and text.isascii() and text.isdigit():
                return self.class_index(int(text))
        return None


def read_model_card(model_dir: str) -> dict[str, Any]:
    """Parses ``model_dir/model_card.json`` (a JSON object).

    Raises:
      ModelDirError: It is missing, not JSON or not an object.
    """
    card_path = join_path(model_dir, C.MODEL_CARD_FILE)
    if not path_exists(card_path):
        raise ModelDirError(f"{model_dir} is not an exported beam_rnn model: {card_path} is missing.")
    try:
        card = json.loads(read_bytes(card_path).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise ModelDirError(f"Corrupt model card {card_path}: {e}") from e
    if not isinstance(card, dict):
        raise ModelDirError(f"Corrupt model card {card_path}: not a JSON object.")
    return card


def read_model_info(model_dir: str, name: str | None = None) -> ModelInfo:
    """Checks that `model_dir` is a complete export and reads its model card.

    Raises:
      ModelDirError: The directory, ``saved_model/saved_model.pb`` or a valid
        ``model_card.json`` is missing, or the SavedModel's files do not match
        the manifest.
    """
    if not _is_dir(model_dir):
        raise ModelDirError(f"Model directory {model_dir} does not exist.")
    pb = join_path(saved_model_path(model_dir), "saved_model.pb")
    if not path_exists(pb):
        raise ModelDirError(
            f"{model_dir} is not an exported beam_rnn model: {pb} is missing "
            "(export one with `python -m pipelines.train`)."
        )
    card = read_model_card(model_dir)
    card_path = join_path(model_dir, C.MODEL_CARD_FILE)
    num_classes = card.get("num_classes")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ModelDirError(f"Corrupt model card {card_path}: num_classes={num_classes!r}.")
    names = card.get("label_names")
    if names is not None:
        if not isinstance(names, list) or len(names) != num_classes or not all(isinstance(n, str) for n in names):
            raise ModelDirError(
                f"Corrupt model card {card_path}: label_names={names!r} does not name {num_classes} classes."
            )
        names = tuple(names)
    kind = card.get("kind")
    kind = kind if isinstance(kind, str) and kind else os.path.basename(model_dir.rstrip("/")) or "model"
    preprocess_config = card.get("preprocess_config")
    card_type = preprocess_config.get("label_type") if isinstance(preprocess_config, dict) else None
    # Only named int labels need saying: otherwise ModelInfo infers the type from the names (older cards too).
    label_type = C.LABEL_TYPE_INT if card_type == C.LABEL_TYPE_INT else None
    verify_model_files(model_dir, [C.SAVED_MODEL_DIR + "/", C.MODEL_CARD_FILE])
    return ModelInfo(name=name or kind, model_dir=model_dir, kind=kind, num_classes=num_classes, label_names=names,
                     label_type=label_type)


def verify_model_files(model_dir: str, files: Sequence[str]) -> None:
    """Checks the files a caller is about to use against the export's manifest.json.

    Args:
      model_dir: An exported model directory.
      files: Relative paths (a trailing ``/`` means a whole directory) that must
        be in the manifest and match its sizes and sha256.

    Raises:
      ModelDirError: One line naming the missing or damaged file.
    """
    from beam_rnn.core.manifest import verify_manifest  # pylint: disable=import-outside-toplevel

    required = [f for f in files if not f.endswith("/")]
    try:
        verify_manifest(model_dir, prefixes=list(files), required=required, what="model")
    except ModelDirError:
        raise
    except ArtifactError as e:
        raise ModelDirError(str(e)) from e


def available_models(models_dir: str) -> list[str]:
    """Model kinds exported under `models_dir` (``bilstm``/``lstm`` with a saved_model.pb and a card)."""
    return [
        n for n in C.MODEL_NAMES
        if path_exists(join_path(models_dir, n, C.SAVED_MODEL_DIR, "saved_model.pb"))
        and path_exists(join_path(models_dir, n, C.MODEL_CARD_FILE))
    ]


ModelsArg = str | Sequence[str | ModelInfo] | Mapping[str, str] | ModelInfo


def expand_model_dirs(models: str | Sequence[str]) -> list[str]:
    """``--model`` values with each training output (``bilstm/`` and/or ``lstm/``, no card of its own) expanded.

    ``NAME=DIR`` values and export directories pass unchanged; ``runs/imdb/models``
    becomes ``bilstm=runs/imdb/models/bilstm`` and ``lstm=runs/imdb/models/lstm``.

    Raises:
      ModelDirError: A directory that holds neither a model card nor exported models.
    """
    out: list[str] = []
    for value in [models] if isinstance(models, str) else list(models):
        named = "=" in value and _NAME_RE.fullmatch(value.split("=", 1)[0])
        if named or not _is_dir(value) or path_exists(join_path(value, C.MODEL_CARD_FILE)):
            out.append(value)  # read_model_info says what is wrong with it, if anything
            continue
        kinds = available_models(value)
        if not kinds:
            raise ModelDirError(
                f"--model {value!r} holds no exported model (expected an export with {C.MODEL_CARD_FILE}, "
                f"or bilstm/ or lstm/ exports in it; run `beam-rnn train` first)")
        out += [f"{kind}={join_path(value, kind)}" for kind in kinds]
    return out


def resolve_models(models: ModelsArg) -> tuple[ModelInfo, ...]:
    """Reads the model cards of one or several models and names them uniquely.

    Args:
      models: A model dir; ``"NAME=DIR"``; a list of those (or `ModelInfo`s); or
        ``{name: dir}``.  Unnamed models are named after their card's kind
        (``bilstm``, ``lstm``), with ``_2``, ``_3``... appended to repeats.

    Returns:
      The models in order.

    Raises:
      ModelDirError: A directory is not a complete export, a name is not an
        identifier or repeats, or the models do not share classes.
    """
    if isinstance(models, (str, ModelInfo)):
        entries: list[tuple[str | None, Any]] = [(None, models)]
    elif isinstance(models, Mapping):
        entries = [(str(k), v) for k, v in models.items()]
    else:
        entries = [(None, m) for m in models]
    if not entries:
        raise ModelDirError("No model given.")
    infos: list[ModelInfo] = []
    for name, value in entries:
        if isinstance(value, ModelInfo):
            info = value if name is None else dataclasses.replace(value, name=name)
        else:
            if name is None and "=" in value and _NAME_RE.fullmatch(value.split("=", 1)[0]):
                name, value = value.split("=", 1)
            info = read_model_info(value, name)
        if name is not None and not _NAME_RE.fullmatch(info.name):
            raise ModelDirError(f"Model name {info.name!r} is not an identifier ([A-Za-z_][A-Za-z0-9_]*).")
        infos.append(info)
    return _check_shared_classes(_unique_names(infos, [n for n, _ in entries]))


def _unique_names(infos: Sequence[ModelInfo], given: Sequence[str | None]) -> list[ModelInfo]:
    taken: set[str] = {i.name for i, n in zip(infos, given) if n is not None}
    named: list[ModelInfo] = []
    for info, name in zip(infos, given):
        if name is None:
            base = info.name if _NAME_RE.fullmatch(info.name) else "model"
            candidate, k = base, 1
            while candidate in taken:
                k += 1
                candidate = f"{base}_{k}"
            info = dataclasses.replace(info, name=candidate)
        elif any(n.name == info.name for n in named):
            raise ModelDirError(f"Model name {info.name!r} is used twice.")
        taken.add(info.name)
        named.append(info)
    return named


def _check_shared_classes(infos: Sequence[ModelInfo]) -> tuple[ModelInfo, ...]:
    first = infos[0]
    for info in infos[1:]:
        if info.num_classes != first.num_classes or info.label_names != first.label_names:
            raise ModelDirError(
                f"Models {first.name} ({first.num_classes} classes, names {first.label_names}) and "
                f"{info.name} ({info.num_classes} classes, names {info.label_names}) do not share classes."
            )
    return tuple(infos)
