"""Reading labelled text corpora into documents, and writing dead letters.

`ReadCorpus` turns corpus files (local or any Beam filesystem such as gs://) into
one dict per document::

    {"id": str, "text": str, "label": int | str}   # "label" absent when unlabelled

plus a dead-letter PCollection holding every row that could not become a document::

    {"source": "<path>:<n>", "row": str, "reason": "<code>: <detail>", "stage": "read"}

Nothing disappears: every raw row (line, CSV record, JSON line, TFRecord, Parquet
row, aclImdb file) is counted once in the ``rows_in`` counter and ends up either as a
document or as a dead letter, so ``rows_in == documents_out + dead_letter``.

Formats (`beam_rnn.core.constants.FORMATS`):

* ``csv`` / ``tsv``: header row, columns chosen by name, RFC-4180 quoting (the
  ``excel`` / ``excel-tab`` dialects of the csv module, strict mode).
* ``jsonl``: one JSON object per line.
* ``text``: one unlabelled document per line.
* ``labeled_lines``: ``<label> <text>`` per line (SST files).
* ``file_per_label``: one document per line, label = file name extension
  (``rt-polarity.pos`` -> ``pos``).
* ``aclimdb``: the IMDB tree ``{train,test}/{pos,neg}/*.txt``, one document per file.
* ``tfrecord``: tf.Example records (uncompressed or GZIP).
* ``parquet``: columns chosen by name.

Every file is opened through `apache_beam.io.filesystems.FileSystems` and streamed,
never read whole (except aclImdb files, each of which is one document).  Files
with a compression extension (``.gz``, ``.bz2``...) are decompressed transparently.

Decisions worth knowing:

* A CSV / TSV / JSONL / Parquet / tf.Example source without the text (or label)
  column is not an error at construction or read time: each of its rows becomes a
  ``missing_text`` (``missing_label``) dead letter naming the column.
* A file that cannot be parsed at all (corrupt gzip, TFRecord, Parquet, or a
  broken CSV header) yields one ``unreadable_file`` dead letter (counted as one
  row) after whatever rows were read before the damage.  A file that ends early
  (a compressed stream cut before its end-of-stream marker, even on a line
  boundary, or a TFRecord cut inside a record) yields one ``truncated_file`` dead
  letter instead.  Both name the rows read and the byte offset, are logged as a
  warning and counted (``files_truncated`` / ``files_unreadable``).  I/O errors
  are not caught, so the runner retries the bundle.
* A malformed CSV / TSV record never swallows the lines after it: when a record
  that spans several physical lines fails to parse (broken quoting, wrong field
  count, or it runs past the record bound), only its first line is dead-lettered
  and parsing resumes at the next physical line.
* One size limit for every format: a document whose text is longer than
  ``max_document_chars`` (default `DEFAULT_MAX_DOCUMENT_CHARS`, 10 million) is a
  ``document_too_large`` dead letter.  Nothing larger is held in memory: a line is
  read up to ``4 * max_document_chars + 1 MiB`` bytes, a CSV record up to
  ``2 * max_document_chars + 1 MiB`` characters.  There is no other parser limit
  (the csv module's field size limit is raised to match).
* Int labels are class ids ``0..K-1``: a negative one is an ``invalid_label``
  dead letter, and a declared int label set must be exactly ``{0, ..., K-1}``.  With
  ``class_names`` (``preprocess --class-names``, or a model card's names when scoring)
  a label equal to a name reads as its id.
* Every pattern must match at least one file; otherwise the pipeline fails.
* Undecodable bytes become U+FFFD, one per byte, counted in ``replaced_chars``.

Modules (this package re-exports their public names, each imported on first use, so that
importing `beam_rnn.io.records` for the corpus flags does not load Beam's readers):

* `records`: reason codes, counters, `CorpusConfig` (also the corpus flags),
  `RawRecord`, `build_document`, `dead_letter` (the project's one dead-letter builder).
* `compressed`: `open_corpus_file`, decompression with truncation detection.
* `lines`: bounded physical lines, `line_ranges` for parallel reads of line files.
* `delimited`: CSV / TSV records and resynchronisation after a broken one.
* `formats`: the other readers (jsonl, text, labeled_lines, file_per_label,
  aclimdb, tfrecord, parquet).
* `read`: `ReadCorpus` and its DoFns, `read_corpus_file`, file matching.
* `write`: `WriteJsonLines`.
"""

from beam_rnn.core.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "compressed": (
            "CorruptFileError",
            "open_corpus_file",
        ),
        "delimited": (
            "read_delimited",
        ),
        "formats": (
            "example_fields",
            "iter_tfrecords",
            "label_from_file_name",
            "parse_json_line",
            "read_aclimdb_file",
            "read_file_per_label",
            "read_jsonl",
            "read_labeled_lines",
            "read_parquet",
            "read_text",
            "read_tfrecord",
            "split_labeled_line",
        ),
        "lines": (
            "DEFAULT_SPLIT_BYTES",
            "SPLITTABLE_FORMATS",
            "is_splittable",
            "line_ranges",
        ),
        "read": (
            "READ_COUNTS_TAG",
            "CountedReadResult",
            "FileRange",
            "ReadCorpus",
            "ReadCorpusResult",
            "is_local_runner",
            "match_aclimdb",
            "read_corpus_file",
            "reshuffle_documents_default",
            "sum_read_counts",
        ),
        "records": (
            "COUNTER_DEAD_LETTER",
            "COUNTER_DOCUMENTS_OUT",
            "COUNTER_FILE_RANGES",
            "COUNTER_FILES_IN",
            "COUNTER_FILES_TRUNCATED",
            "COUNTER_FILES_UNREADABLE",
            "COUNTER_REPLACED_CHARS",
            "COUNTER_ROWS_IN",
            "COUNTER_ROWS_WITH_REPLACED_BYTES",
            "DEAD_LETTER_TAG",
            "DEFAULT_MAX_DOCUMENT_CHARS",
            "METRICS_NAMESPACE",
            "POLARITY_LABELS",
            "READ_STAGE",
            "REASON_CODES",
            "REASON_DOCUMENT_TOO_LARGE",
            "REASON_EMPTY_TEXT",
            "REASON_INVALID_JSON",
            "REASON_INVALID_LABEL",
            "REASON_LABEL_NOT_IN_SET",
            "REASON_MISSING_LABEL",
            "REASON_MISSING_TEXT",
            "REASON_TRUNCATED_FILE",
            "REASON_UNPARSEABLE_ROW",
            "REASON_UNREADABLE_FILE",
            "CorpusConfig",
            "Outcome",
            "RawRecord",
            "build_document",
            "dead_letter",
            "decode_bytes",
            "derive_id",
            "glob_root",
            "make_reason",
            "parse_label",
            "parse_label_list",
            "reason_code",
            "record_outcome",
            "relative_path",
            "replace_lone_surrogates",
            "row_preview",
        ),
        "write": (
            "WriteJsonLines",
        ),
    },
)
