"""What a preprocessing run is given: the corpus to read and the text → id settings.

No TensorFlow and no Beam here: drivers build their flags from these dataclasses
(`beam_rnn.cli.flags`) before any heavy import, and `PreprocessConfig` is written
next to the transform_fn as ``preprocess_config.json``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any, Mapping

from beam_rnn.cli.flags import check_options, option
from beam_rnn.core import constants as C
from beam_rnn.core.errors import InputError

if TYPE_CHECKING:
    from beam_rnn.io import CorpusConfig, ReadCorpus


def _as_id(label: str) -> str:
    """An int label as its canonical digits ("01" -> "1"); anything else unchanged."""
    text = str(label).strip()
    return str(int(text)) if text.isascii() and text.isdigit() else text


def parse_class_names(text: str) -> tuple[str, ...] | None:
    """The ``--class-names`` value: comma-separated names of the ids 0, 1, ... (None if empty)."""
    return tuple(name.strip() for name in text.split(",")) if text else None


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """Configuration of the text → token id mapping (the one home of its defaults).

    Attributes:
        vocab_size: Keep at most this many words (top-k by frequency); the id space
            of a model is `vocab_size + num_oov_buckets + 1` at most.
        min_frequency: Drop words seen fewer times than this in the analysed split.
        num_oov_buckets: Number of hashed out-of-vocabulary ids (>= 1).
        max_tokens: Truncate documents to their first `max_tokens` tokens (None: keep all).
        labelled: Whether documents carry labels.
        label_type: "int" (labels are already 0..K-1) or "string" (a label vocabulary is built).
        label_set: Declared labels; for string labels their order defines the ids.
        class_names: Names of the int label ids 0..K-1 (e.g. ``negative,positive``):
            stats.json, the model card, scores and reports show them instead of ids.
            Int labels only (string labels are their own names); naming K classes
            declares the labels 0..K-1 (rows with others are dead letters) unless
            `label_set` declares some of them.
        eval_fraction: Fraction held out for evaluation, by hash of the id, or of the
            group with `group_column`.
        group_column: Column whose value groups documents (IMDB: ``movie``): every
            document of a group lands on the same side of the split, so validation
            measures other groups, as a test set of other films would.  Documents
            without a value are split by their id (counted: ``documents_without_group``).
            The share held out is then `eval_fraction` of the groups, not exactly of
            the documents.
    """

    vocab_size: int = option(20000, "Keep the top-k words.", minimum=1)
    min_frequency: int = option(2, "Drop words seen fewer times.", minimum=1)
    num_oov_buckets: int = option(C.DEFAULT_NUM_OOV_BUCKETS, "Out-of-vocabulary ids.", minimum=1)
    max_tokens: int | None = option(None, "Truncate documents to this many tokens.", metavar="N",
                                     minimum=1)
    # The label settings come from the corpus flags (`Corpus.label_settings`).
    labelled: bool = option(True, "Whether documents carry labels.", cli=False)
    label_type: str = option(C.LABEL_TYPE_INT, "int or string labels.", cli=False, choices=C.LABEL_TYPES)
    label_set: tuple[str, ...] | None = option(None, "Declared labels, in id order.", cli=False)
    class_names: tuple[str, ...] | None = option(
        None, "Names of the int labels 0, 1, ..., comma-separated (e.g. negative,positive): the corpus may label "
        "rows by id or by name; outputs, reports and the model card show the names; rows with other labels are "
        "dead-lettered.", metavar="NAMES",
        parse=parse_class_names, show_default="ids; negative,positive for the IMDB copy")
    eval_fraction: float = option(0.2, "Fraction held out for evaluation, by hash of the id (or of the group).",
                                  minimum=0.0, less_than=1.0)
    group_column: str | None = option(
        None, "Split by this column's value instead of the id: documents sharing it (e.g. reviews of one film) "
        "land on the same side of the train/eval split. aclimdb: 'movie' (from urls_*.txt).", metavar="COL",
        show_default="by id; 'movie' for the IMDB copy")

    def __post_init__(self) -> None:
        check_options(self)
        if self.label_set is not None:
            object.__setattr__(self, "label_set", tuple(str(x) for x in self.label_set))
        if self.class_names is not None:
            self._check_class_names()

    def _check_class_names(self) -> None:
        names = tuple(str(n) for n in self.class_names)
        object.__setattr__(self, "class_names", names)
        if self.label_type != C.LABEL_TYPE_INT:
            raise InputError("--class-names names int labels; string labels are their own names")
        if len(names) < 2 or len(set(names)) != len(names) or not all(n.strip() == n and n for n in names):
            raise InputError(f"--class-names needs two or more distinct, non-empty names, got {','.join(names)!r}")
        numbers = [n for n in names if n.lstrip("+-").isdigit()]
        if numbers:
            raise InputError(f"--class-names {','.join(numbers)}: a class name cannot be a number (numbers are the ids)")
        if not self.labelled:
            raise InputError("--class-names names the labels of a labelled corpus")
        ids = tuple(str(i) for i in range(len(names)))
        if self.label_set is None:
            object.__setattr__(self, "label_set", ids)  # naming K classes declares 0..K-1
        else:  # declared by id or by name
            object.__setattr__(self, "label_set", tuple(str(names.index(x)) if x in names else x for x in self.label_set))
            strangers = sorted(x for x in self.label_set if _as_id(x) not in ids)
            if strangers:
                raise InputError(f"--labels {','.join(strangers)}: {len(names)} --class-names name the ids "
                                 f"0..{len(ids) - 1}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (written next to the transform_fn)."""
        d = dataclasses.asdict(self)
        for key in ("label_set", "class_names"):
            d[key] = list(d[key]) if d[key] is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreprocessConfig:
        """Inverse of `to_dict` (unknown keys are ignored for forward compatibility)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        for key in ("label_set", "class_names"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


@dataclasses.dataclass(frozen=True)
class PreprocessJob:
    """How a preprocessing run executes (not part of the text → id mapping)."""

    batch_size: int = option(1000, "Documents per Arrow record batch fed to TFT.", minimum=1)
    keep_tmp: bool = option(False, "Keep OUTPUT/tmp (TFT temp files).")

    def __post_init__(self) -> None:
        check_options(self)


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A corpus to read: file patterns, `ReadCorpus` settings and a deterministic sample.

    Attributes:
        patterns: File patterns (globs, local or gs://), or aclImdb tree roots.
        config: The validated reader settings.
        labels: The declared labels as given, in order (`config.label_set` is a set;
            for string labels the order defines the ids), or None.
        sample_fraction: Keep this fraction of the documents, by hash of the id.
        max_dead_letter_fraction: A run in which a larger share of the rows is
            dead-lettered fails (exit 1) instead of reporting success.
        label_type_from_model: Scoring and evaluation take the label type from the
            model card (the corpus flags did not set one).
    """

    patterns: tuple[str, ...]
    config: CorpusConfig
    labels: tuple[str, ...] | None = None
    sample_fraction: float = 1.0
    max_dead_letter_fraction: float = 0.5
    label_type_from_model: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "patterns", tuple(self.patterns))
        if not self.patterns:
            raise InputError("a corpus needs at least one file pattern")
        if not 0.0 < self.sample_fraction <= 1.0:
            raise InputError(f"--sample-fraction must be in (0, 1], got {self.sample_fraction}")
        if not 0.0 <= self.max_dead_letter_fraction <= 1.0:
            raise InputError(f"--max-dead-letter-fraction must be in [0, 1], got {self.max_dead_letter_fraction}")

    def read(self, *, group_column: str | None = None, with_counts: bool = False) -> ReadCorpus:
        """The `ReadCorpus` transform of this corpus (sampling is `SampleDocuments`).

        Args:
            group_column: Also read this column as each document's group (the split's).
            with_counts: Also output the reader's counts (see `ReadCorpus`).
        """
        from beam_rnn.io import ReadCorpus

        settings = {f.name: getattr(self.config, f.name) for f in dataclasses.fields(self.config)}
        settings["label_set"] = self.labels
        settings["group_column"] = group_column
        pattern = self.patterns[0] if len(self.patterns) == 1 else list(self.patterns)
        return ReadCorpus(pattern, with_counts=with_counts, **settings)

    def check_group_column(self, group_column: str | None) -> None:
        """Raises InputError (one line, before work) when this corpus cannot be grouped by `group_column`."""
        if group_column is None:
            return
        try:
            dataclasses.replace(self.config, group_column=group_column)
        except ValueError as e:
            raise InputError(f"--group-column {group_column}: {e}") from e

    def declaring(self, labels: tuple[str, ...]) -> Corpus:
        """This corpus with `labels` declared (``--labels``): rows with other labels are dead letters."""
        config = dataclasses.replace(self.config, label_set=labels)  # re-validated against the label type
        return dataclasses.replace(self, labels=tuple(labels), config=config)

    def naming(self, class_names: tuple[str, ...]) -> Corpus:
        """This corpus with its int labels named: a label equal to a name reads as its id ("positive" as 1)."""
        return dataclasses.replace(self, config=dataclasses.replace(self.config, class_names=tuple(class_names)))

    def label_settings(self) -> dict[str, Any]:
        """The `PreprocessConfig` fields this corpus decides: ``PreprocessConfig(**corpus.label_settings())``."""
        return {"labelled": self.config.labelled, "label_type": self.config.label_type, "label_set": self.labels}
