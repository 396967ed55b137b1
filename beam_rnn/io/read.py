"""`ReadCorpus`: matching corpus files, splitting them into ranges, reading them into documents.

    files ─ SplitFiles ─ Reshuffle ─ ReadFiles ─┬─ documents (─ RedistributeDocuments)
                                                ├─ dead_letter
                                                └─ read counts (with_counts=True: summed into one dict)
"""

import csv
import gzip
import logging
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beam_rnn.core.constants import (
    FORMAT_ACLIMDB,
    FORMAT_CSV,
    FORMAT_PARQUET,
    FORMAT_TFRECORD,
    FORMAT_TSV,
    GROUP_KEY,
)
from beam_rnn.io import records
from beam_rnn.io.compressed import CorruptFileError
from beam_rnn.io.formats import READERS
from beam_rnn.io.lines import DEFAULT_SPLIT_BYTES, is_splittable, line_ranges
from beam_rnn.io.records import (
    DEAD_LETTER_TAG,
    REASON_TRUNCATED_FILE,
    REASON_UNREADABLE_FILE,
    CorpusConfig,
    Outcome,
    dead_letter,
    glob_root,
    make_reason,
    record_outcome,
)

# Every pattern must match: a typo in a path is an error, not an empty corpus.
_DISALLOW_EMPTY = fileio.EmptyMatchTreatment.DISALLOW
# Contents that cannot be parsed at all.  OSError (other than a corrupt gzip
# stream) is deliberately absent: an I/O failure should fail the bundle so that the
# runner retries it, not silently turn a whole file into one dead letter.
_CORRUPT_FILE_ERRORS = (ValueError, EOFError, zlib.error, gzip.BadGzipFile, csv.Error)
# Formats always read whole by one worker (see reshuffle_documents_default).
_UNSPLITTABLE_FORMATS = frozenset({FORMAT_CSV, FORMAT_TSV, FORMAT_TFRECORD, FORMAT_PARQUET})


def read_corpus_file(
    path: str, id_root: str, config: CorpusConfig, *, start: int = 0, end: int | None = None, first_line: int = 1
) -> Iterator[Outcome]:
    """Reads one corpus file (or one `line_ranges` range of it), one `Outcome` per raw row.

    A file whose contents cannot be parsed at all (corrupt gzip / TFRecord /
    Parquet, CSV header broken) ends in one `unreadable_file` dead letter, and a
    file that ends early (compressed stream without its end-of-stream marker,
    TFRecord cut inside a record) in one `truncated_file` dead letter, after the
    rows read before the damage; the reason names how many and the byte offset,
    and a warning is logged.  I/O errors propagate so the runner can retry.

    Args:
      path: The file.
      id_root: Directory that derived ids are relative to.
      config: The reader settings.
      start, end, first_line: A range from `line_ranges` (splittable files only);
        the defaults read the whole file.

    Yields:
      One `Outcome` per raw row.
    """
    whole = start == 0 and end is None and first_line == 1
    if not whole and not is_splittable(path, config):
        raise ValueError(f"{path!r} ({config.format}) cannot be read in byte ranges")
    line_range = {} if whole else {"start": start, "end": end, "first_line": first_line}
    rows = 0
    try:
        for record in READERS[config.format](path, config, **line_range):
            rows += 1
            yield record_outcome(record, path, id_root, config)
    except CorruptFileError as e:
        code, detail = e.code, e.detail
    except EOFError as e:
        code, detail = REASON_TRUNCATED_FILE, f"{type(e).__name__}: {e}"
    except _CORRUPT_FILE_ERRORS as e:
        code, detail = REASON_UNREADABLE_FILE, f"{type(e).__name__}: {e}"
    else:
        return
    where = "" if whole else f" (byte range from {start})"
    reason = make_reason(code, f"{detail}; rows read before it: {rows}{where}")
    logging.warning("Corpus file %s: %s", path, reason)
    yield Outcome(None, dead_letter(path, "", reason), 0, file_error=code)


# --- File matching -------------------------------------------------------------------------
def match_aclimdb(root: str) -> list[tuple[str, str]]:
    """Lists the review files of an aclImdb tree.

    `root` is either the tree (``.../aclImdb``: reads every split's ``pos`` and
    ``neg``) or one split (``.../aclImdb/train``).  ``unsup`` is never read.  Ids
    are relative to the tree in both cases (``train/pos/0_9.txt``), so they do
    not depend on which form was given.

    Args:
      root: The aclImdb directory or one split directory.

    Returns:
      ``(id_root, path)`` pairs, sorted by path.

    Raises:
      FileNotFoundError: No review file was found.
    """
    root = root.rstrip("/")
    parent = FileSystems.split(root)[0]
    patterns = {
        FileSystems.join(root, "*", "pos", "*.txt"): root,
        FileSystems.join(root, "*", "neg", "*.txt"): root,
        FileSystems.join(root, "pos", "*.txt"): parent,
        FileSystems.join(root, "neg", "*.txt"): parent,
    }
    files = []
    for pattern, result in zip(patterns, FileSystems.match(list(patterns))):
        files += [(patterns[pattern], metadata.path) for metadata in result.metadata_list]
    if not files:
        raise FileNotFoundError(
            f"No aclImdb review files ({{split}}/{{pos,neg}}/*.txt or {{pos,neg}}/*.txt) under {root!r}."
        )
    return sorted(files, key=lambda pair: pair[1])


# --- Beam transforms ------------------------------------------------------------------------
# The reader's counts as data (`ReadCorpus(with_counts=True)`): the same numbers as its counters,
# for stages that must use them inside the pipeline (a runner's counters are only readable by a
# driver that waits for the job).
READ_COUNTS_TAG = "read_counts"
READ_COUNT_KEYS = (
    records.COUNTER_ROWS_IN, records.COUNTER_DOCUMENTS_OUT, records.COUNTER_DEAD_LETTER,
    records.COUNTER_REPLACED_CHARS, records.COUNTER_ROWS_WITH_REPLACED_BYTES, records.COUNTER_FILES_TRUNCATED,
    records.COUNTER_FILES_UNREADABLE, records.COUNTER_DOCUMENTS_WITHOUT_GROUP,
)


def sum_read_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Sums read-count dicts key by key; every `READ_COUNT_KEYS` key is present (0 for an empty corpus)."""
    out = dict.fromkeys(READ_COUNT_KEYS, 0)
    for part in counts:
        for key, value in part.items():
            out[key] = out.get(key, 0) + value
    return out


def _counter(name: str) -> Any:
    """A `beam_rnn.io` counter (`records.METRICS_NAMESPACE`)."""
    return Metrics.counter(records.METRICS_NAMESPACE, name)


class FileRange(NamedTuple):
    """A unit of reading: a whole file, or a byte range of a splittable one."""

    id_root: str
    path: str
    start: int = 0
    end: int | None = None
    first_line: int = 1


class _SplitFileFn(beam.DoFn):
    """``(id_root, path, size)`` -> FileRanges: large splittable files in ~split_bytes pieces."""

    def __init__(self, config: CorpusConfig, split_bytes: int):
        super().__init__()
        self._config = config
        self._split_bytes = split_bytes
        self._files_in = _counter(records.COUNTER_FILES_IN)
        self._ranges = _counter(records.COUNTER_FILE_RANGES)

    def process(self, element: tuple[str, str, int]) -> Iterator[FileRange]:
        id_root, path, size = element
        self._files_in.inc()
        if self._split_bytes and size > self._split_bytes and is_splittable(path, self._config):
            ranges = [FileRange(id_root, path, *r) for r in line_ranges(path, self._split_bytes)]
        else:
            ranges = [FileRange(id_root, path)]
        self._ranges.inc(len(ranges))
        yield from ranges


class _ReadFileFn(beam.DoFn):
    """Reads one `FileRange` into documents and dead letters."""

    def __init__(self, config: CorpusConfig):
        super().__init__()
        self._config = config
        self._rows_in = _counter(records.COUNTER_ROWS_IN)
        self._documents_out = _counter(records.COUNTER_DOCUMENTS_OUT)
        self._dead_letter = _counter(records.COUNTER_DEAD_LETTER)
        self._replaced_chars = _counter(records.COUNTER_REPLACED_CHARS)
        self._rows_with_replaced = _counter(records.COUNTER_ROWS_WITH_REPLACED_BYTES)
        self._files_truncated = _counter(records.COUNTER_FILES_TRUNCATED)
        self._files_unreadable = _counter(records.COUNTER_FILES_UNREADABLE)
        self._without_group = _counter(records.COUNTER_DOCUMENTS_WITHOUT_GROUP)

    def process(self, element: FileRange) -> Iterator[Any]:
        id_root, path, start, end, first_line = element
        # The counters (monitoring) and, once the range is read, the same counts as data (READ_COUNTS_TAG).
        counts = dict.fromkeys(READ_COUNT_KEYS, 0)

        def count(key: str, counter: Any, n: int = 1) -> None:
            counts[key] += n
            counter.inc(n)

        for outcome in read_corpus_file(path, id_root, self._config, start=start, end=end, first_line=first_line):
            count(records.COUNTER_ROWS_IN, self._rows_in)
            if outcome.file_error == REASON_TRUNCATED_FILE:
                count(records.COUNTER_FILES_TRUNCATED, self._files_truncated)
            elif outcome.file_error is not None:
                count(records.COUNTER_FILES_UNREADABLE, self._files_unreadable)
            if outcome.replaced_chars:
                count(records.COUNTER_REPLACED_CHARS, self._replaced_chars, outcome.replaced_chars)
                count(records.COUNTER_ROWS_WITH_REPLACED_BYTES, self._rows_with_replaced)
            if outcome.document is not None:
                count(records.COUNTER_DOCUMENTS_OUT, self._documents_out)
                if self._config.group_column is not None and GROUP_KEY not in outcome.document:
                    count(records.COUNTER_DOCUMENTS_WITHOUT_GROUP, self._without_group)
                yield outcome.document
            else:
                count(records.COUNTER_DEAD_LETTER, self._dead_letter)
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, outcome.dead_letter)
        yield beam.pvalue.TaggedOutput(READ_COUNTS_TAG, counts)


# Runners that run a pipeline inside this machine's memory: a GroupByKey / Reshuffle
# there holds every element until its stage has finished (matched by class name
# anywhere in the runner's MRO, so subclasses such as beam_rnn.cli.runtime.LocalRunner count).
_LOCAL_RUNNER_CLASSES = frozenset({
    "SwitchingDirectRunner", "DirectRunner", "BundleBasedDirectRunner", "TestDirectRunner",
    "FnApiRunner", "PrismRunner",
})


def is_local_runner(pipeline: beam.Pipeline) -> bool:
    """True when `pipeline` runs on a local in-process runner (Direct, FnApi, Prism, embedded portable).

    Dataflow, Flink, Spark, a remote portable job service and unknown runners are
    not local.  An InteractiveRunner is judged by the runner it wraps.
    """
    runner = getattr(pipeline, "runner", None)
    while runner is not None and getattr(runner, "_underlying_runner", None) is not None:
        runner = runner._underlying_runner  # InteractiveRunner  pylint: disable=protected-access
    names = {cls.__name__ for cls in type(runner).__mro__}
    if names & _LOCAL_RUNNER_CLASSES:
        return True
    if "PortableRunner" in names and not names & {"FlinkRunner", "SparkRunner"}:
        from apache_beam.options.pipeline_options import PortableOptions  # pylint: disable=import-outside-toplevel

        return pipeline.options.view_as(PortableOptions).job_endpoint == "embed"
    return False


def reshuffle_documents_default(format: str, pipeline: beam.Pipeline) -> bool:  # pylint: disable=redefined-builtin
    """Whether `ReadCorpus` redistributes documents after the read when not told.

    Only for the formats read whole by one worker (csv, tsv, tfrecord, parquet),
    and only on distributed runners, where the fusion break lets one large file
    use many workers.  Memory: on a local runner the Reshuffle would hold the
    whole corpus (peak RSS grew ~1 KB a document), with no worker to spread to.
    """
    return format in _UNSPLITTABLE_FORMATS and not is_local_runner(pipeline)


def _without_size(root_path: tuple[str, str]) -> tuple[str, str, int]:
    """An aclImdb ``(id_root, path)`` as a `_SplitFileFn` input: size 0, small files are never split."""
    return (*root_path, 0)


class ReadCorpusResult(NamedTuple):
    """The outputs of `ReadCorpus`: unpack it or use the attributes."""

    documents: beam.PCollection
    dead_letter: beam.PCollection


class CountedReadResult(NamedTuple):
    """The outputs of `ReadCorpus(with_counts=True)`."""

    documents: beam.PCollection
    dead_letter: beam.PCollection
    counts: beam.PCollection  # one dict {READ_COUNT_KEYS: int}, counted where the rows are read


class ReadCorpus(beam.PTransform):
    """Reads a text corpus into ``{"id", "text", "label"[, "group"]}`` documents and dead letters.

    Example::

        docs, dead = p | "ReadImdb" >> ReadCorpus("gs://b/imdb/*.csv", format="csv")

    Ids: the `id_column` value when given and non-empty, else
    ``"<relpath>:<n>"`` where relpath is the file path relative to the longest
    glob-free directory of the pattern (`glob_root`) and n the 1-based row number:
    the physical line number for line formats (text, labeled_lines,
    file_per_label, jsonl; blank lines keep their numbers but are not rows), the
    record number after the header for csv / tsv, the record number for tfrecord
    / parquet.  aclImdb ids are ``"<split>/<pos|neg>/<file>.txt"``.

    Labels: ``label_type="int"`` parses integers (``" 1 "`` ok); for the
    file_per_label and aclimdb formats the polarity names ``pos`` -> 1 and
    ``neg`` -> 0 are accepted as well (also in `label_set`).
    ``label_type="string"`` keeps the stripped string.

    Int labels are class ids: negative ones are `invalid_label` dead letters and
    a declared int `label_set` must be exactly ``0..K-1``.  Texts longer than
    `max_document_chars` are `document_too_large` dead letters.

    Undecodable bytes are replaced with U+FFFD (one per byte) and counted, never
    dropped.  Files matching several patterns are read once per pattern.
    """

    def __init__(
        self,
        file_pattern: str | Sequence[str],
        *,
        reshuffle_documents: bool | None = None,
        split_bytes: int = DEFAULT_SPLIT_BYTES,
        with_counts: bool = False,
        **settings: Any,
    ):
        """Validates the settings.

        Args:
          file_pattern: A file pattern (glob) or several; for ``aclimdb`` the tree
            root(s) instead.
          **settings: The fields of `CorpusConfig` (their defaults and meaning are
            there): ``format`` (required), ``text_column``, ``label_column``,
            ``id_column``, ``group_column``, ``labelled``, ``label_type``, ``label_set``,
            ``encoding`` and ``max_document_chars``, the one document-size limit
            of every format (a document whose text has more characters is a
            `document_too_large` dead letter; lines longer than
            ``4 * max_document_chars + 1 MiB`` bytes and CSV records longer than
            ``2 * max_document_chars + 1 MiB`` characters are not held).
          reshuffle_documents: Redistribute the documents after reading (a fusion
            break).  A file (or byte range) is read by one worker, and without
            the break every fused step after the read (tokenising, scoring) would
            also run on that worker: one large CSV would never use more than one
            Dataflow worker.  None (default) = `reshuffle_documents_default`: on
            for the formats that are always read whole (csv, tsv, tfrecord,
            parquet) on distributed runners (Dataflow, Flink, Spark, a remote
            portable job service); off on the local in-process runners (Direct,
            FnApi, Prism, an embedded portable job service), which hold every
            element of a Reshuffle in memory until the stage ends (peak RSS grew
            with the corpus, benchmarks/memory.py) and have no other workers to
            spread to.  Always off for the line formats, which are split into
            byte ranges instead, and for aclimdb (many small files).  Pass True
            for large compressed line files on Dataflow.  The break also costs a
            shuffle of the corpus: on the DirectRunner it more than doubled the
            time of a read-only pipeline (benchmarks/read.py).
          split_bytes: Uncompressed files of the line formats (text,
            labeled_lines, file_per_label, jsonl) larger than this are read as
            byte ranges of about this size, in parallel, after one newline-counting
            scan (ids and dead letters are exactly those of a whole-file read).
            0 reads every file whole.  CSV / TSV (quoted newlines), TFRecord,
            Parquet and compressed files are always read whole.
          with_counts: Also return the reader's counts (rows in, documents out,
            dead letters, replaced characters, damaged files, documents without a
            group) as one dict, a `CountedReadResult`: for steps inside the
            pipeline that need them (the counters are read only after the job).

        Raises:
          ValueError: Invalid settings.
          TypeError: A setting that is not a `CorpusConfig` field, or no ``format``.
        """
        super().__init__()
        patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise ValueError(
                f"file_pattern must be a non-empty pattern or list of patterns, got {file_pattern!r}."
            )
        self._patterns = patterns
        # None: decided in expand(), where the runner is known (see reshuffle_documents_default).
        self._reshuffle_documents = None if reshuffle_documents is None else bool(reshuffle_documents)
        if split_bytes < 0:
            raise ValueError(f"split_bytes must be >= 0, got {split_bytes}.")
        self._split_bytes = int(split_bytes)
        self._with_counts = bool(with_counts)
        # label_set is normalised (and type-checked) by CorpusConfig.
        self._config = CorpusConfig(**settings)

    @property
    def config(self) -> CorpusConfig:
        """The validated settings."""
        return self._config

    # No return annotation: Beam warns about any output hint that is not a PCollection.
    def expand(self, pbegin: beam.pvalue.PBegin):
        """Returns the `ReadCorpusResult` (`CountedReadResult` with ``with_counts``)."""
        if self._config.format == FORMAT_ACLIMDB:
            files = (
                pbegin
                | "Roots" >> beam.Create(self._patterns)
                | "MatchAclImdb" >> beam.FlatMap(match_aclimdb)
                | "NoSize" >> beam.Map(_without_size)
            )
        else:
            matched = []
            for i, pattern in enumerate(self._patterns):
                root = glob_root(pattern)
                matched.append(
                    pbegin
                    | f"Match[{i}]" >> fileio.MatchFiles(pattern, empty_match_treatment=_DISALLOW_EMPTY)
                    | f"WithRoot[{i}]"
                    >> beam.Map(lambda metadata, root=root: (root, metadata.path, metadata.size_in_bytes))
                )
            files = tuple(matched) | "Files" >> beam.Flatten()
        outputs = (
            files
            | "SplitFiles" >> beam.ParDo(_SplitFileFn(self._config, self._split_bytes))
            # Spread files / ranges over workers: the match step emits them all from one bundle.
            | "Reshuffle" >> beam.Reshuffle()
            | "ReadFiles"
            >> beam.ParDo(_ReadFileFn(self._config)).with_outputs(DEAD_LETTER_TAG, READ_COUNTS_TAG, main="documents")
        )
        documents = outputs.documents
        reshuffle = self._reshuffle_documents
        if reshuffle is None:
            reshuffle = reshuffle_documents_default(self._config.format, pbegin.pipeline)
        if reshuffle:
            documents = documents | "RedistributeDocuments" >> beam.Reshuffle()
        if self._with_counts:
            counts = outputs[READ_COUNTS_TAG] | "SumReadCounts" >> beam.CombineGlobally(sum_read_counts)
            return CountedReadResult(documents, outputs[DEAD_LETTER_TAG], counts)
        return ReadCorpusResult(documents, outputs[DEAD_LETTER_TAG])

