"""Tests for beam_rnn.io: ReadCorpus for every format, dead letters and counters."""

from __future__ import annotations

import csv
import gzip
import json
import shutil

import apache_beam as beam
import pytest
# Aliased so that pytest does not try to collect Beam's class as a test class.
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

from beam_rnn import io as corpus_io
from beam_rnn.core.constants import (
    DEAD_REASON_KEY,
    DEAD_ROW_KEY,
    DEAD_SOURCE_KEY,
    DEAD_STAGE_KEY,
    FORMAT_ACLIMDB,
    FORMAT_CSV,
    FORMAT_FILE_PER_LABEL,
    FORMAT_JSONL,
    FORMAT_LABELED_LINES,
    FORMAT_PARQUET,
    FORMAT_TEXT,
    FORMAT_TFRECORD,
    FORMAT_TSV,
    ID_KEY,
    LABEL_KEY,
    LABEL_TYPE_INT,
    LABEL_TYPE_STRING,
    TEXT_KEY,
)
from beam_rnn.io import (
    REASON_CODES,
    CorpusConfig,
    ReadCorpus,
    ReadCorpusResult,
    WriteJsonLines,
    dead_letter,
    derive_id,
    glob_root,
    parse_label,
    reason_code,
    relative_path,
)
from beam_rnn.io import lines as io_lines
from tests.conftest import shared_data_path
from tests.io_fixtures import counters, make_aclimdb, make_example, write_bytes, write_parquet, write_tfrecord


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def doc(id_: str, text: str, label=None) -> dict:
    d = {ID_KEY: id_, TEXT_KEY: text}
    if label is not None:
        d[LABEL_KEY] = label
    return d


def dead_view(root: str):
    """Maps a dead letter to (source relative to `root`, reason code, row) for comparison."""
    prefix = root.rstrip("/") + "/"

    def view(record):
        source = record[DEAD_SOURCE_KEY].replace(prefix, "", 1)
        return (source, reason_code(record[DEAD_REASON_KEY]), record[DEAD_ROW_KEY])

    return view


def check_dead_letter_shape(records):
    """Every dead letter has exactly the four keys, a known code and stage 'read'."""
    for record in records:
        if set(record) != {DEAD_SOURCE_KEY, DEAD_ROW_KEY, DEAD_REASON_KEY, DEAD_STAGE_KEY}:
            raise BeamAssertException(f"bad keys: {record}")
        if reason_code(record[DEAD_REASON_KEY]) not in REASON_CODES or record[DEAD_STAGE_KEY] != "read":
            raise BeamAssertException(f"bad reason or stage: {record}")
        if not isinstance(record[DEAD_ROW_KEY], str) or not record[DEAD_SOURCE_KEY]:
            raise BeamAssertException(f"bad row or source: {record}")


def run_read(options, tmp_path, transform, expected_docs, expected_dead=()):
    """Runs `transform`, asserts the exact documents and dead letters, returns the counters."""
    p = BeamTestPipeline(options=options)
    docs, dead = p | "Read" >> transform
    assert_that(docs, equal_to(list(expected_docs)), label="Documents")
    assert_that(dead | "View" >> beam.Map(dead_view(str(tmp_path))), equal_to(list(expected_dead)), label="Dead")
    assert_that(dead, check_dead_letter_shape, label="DeadShape")
    result = p.run()
    result.wait_until_finish()
    metrics = counters(result)
    # The reconciliation every read must satisfy: nothing appears, nothing vanishes.
    assert metrics.get("rows_in", 0) == len(expected_docs) + len(expected_dead)
    assert metrics.get("documents_out", 0) == len(expected_docs)
    assert metrics.get("dead_letter", 0) == len(expected_dead)
    return metrics


# --------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "pattern, root",
    [
        ("/data/imdb/*.csv", "/data/imdb"),
        ("/data/imdb/train.csv", "/data/imdb"),
        ("/data/**/part-?.csv", "/data"),
        ("/data/x[12]/a.csv", "/data"),
        ("gs://bucket/corpus/part-*", "gs://bucket/corpus"),
        ("gs://bucket/*.csv", "gs://bucket"),
        ("*.csv", ""),
        ("corpus/*.csv", "corpus"),
    ],
)
def test_glob_root(pattern, root):
    assert glob_root(pattern) == root


def test_relative_path_and_derive_id():
    assert relative_path("/data/imdb/sub/train.csv", "/data/imdb") == "sub/train.csv"
    assert relative_path("gs://b/corpus/part-1", "gs://b/corpus") == "part-1"
    assert relative_path("a.csv", "") == "a.csv"
    # Outside the root (should not happen) falls back to the base name.
    assert relative_path("/elsewhere/x.csv", "/data") == "x.csv"
    assert derive_id("sub/train.csv", 3) == "sub/train.csv:3"
    assert derive_id("train/pos/0_9.txt") == "train/pos/0_9.txt"


def test_reason_code_and_dead_letter():
    assert reason_code("invalid_label: label 'x' is not an integer") == "invalid_label"
    assert reason_code("empty_text") == "empty_text"
    assert dead_letter("f.csv:2", "2,,1", "empty_text: 'text' is empty") == {
        "source": "f.csv:2",
        "row": "2,,1",
        "reason": "empty_text: 'text' is empty",
        "stage": "read",
    }
    assert len(set(REASON_CODES)) == 10


@pytest.mark.parametrize(
    "value, label_type, polarity, expected",
    [
        ("1", LABEL_TYPE_INT, False, 1),
        (" 0 ", LABEL_TYPE_INT, False, 0),
        ("-3", LABEL_TYPE_STRING, False, "-3"),
        (4, LABEL_TYPE_INT, False, 4),
        (2.0, LABEL_TYPE_INT, False, 2),
        ("pos", LABEL_TYPE_INT, True, 1),
        ("NEG", LABEL_TYPE_INT, True, 0),
        (" pos ", LABEL_TYPE_STRING, True, "pos"),
        (3, LABEL_TYPE_STRING, False, "3"),
    ],
)
def test_parse_label(value, label_type, polarity, expected):
    parsed = parse_label(value, label_type, accept_polarity=polarity)
    assert parsed == expected and type(parsed) is type(expected)


@pytest.mark.parametrize("value", ["pos", "1.5", "1_000", "x", 2.5, True, None, [1]])
def test_parse_label_rejects(value):
    with pytest.raises(ValueError):
        parse_label(value, LABEL_TYPE_INT)


def test_named_int_labels_read_by_id_or_by_name():
    names = ("negative", "positive")
    read = [parse_label(v, LABEL_TYPE_INT, class_names=names) for v in ("positive", " negative ", "1", 0, "+1")]
    assert read == [1, 0, 1, 0, 1]
    assert parse_label("pos", LABEL_TYPE_INT, accept_polarity=True, class_names=names) == 1  # aclImdb's folders
    for bad in ("Positive", "neutral", "pos"):
        with pytest.raises(ValueError, match=r"neither a class id nor one of the class names \['negative', 'positive'\]"):
            parse_label(bad, LABEL_TYPE_INT, class_names=names)
    config = CorpusConfig(format="csv", class_names=names, label_set=("positive", "negative"))
    assert config.label_set == frozenset({0, 1})
    for bad in ({"label_type": LABEL_TYPE_STRING}, {"class_names": ("a", "a")}):
        with pytest.raises(ValueError, match="distinct names of int labels"):
            CorpusConfig(**{"format": "csv", "class_names": names, **bad})


@pytest.mark.parametrize("value", ["-3", " -1 ", -1, -2.0])
def test_negative_int_labels_are_rejected(value):
    # Int labels are class ids 0..K-1: a negative one is never a class.
    with pytest.raises(ValueError, match=r"^negative label -\d+: int labels are class ids 0\.\.K-1"):
        parse_label(value, LABEL_TYPE_INT)


def test_decode_bytes_replaces_and_counts():
    assert corpus_io.decode_bytes(b"caf\xe9 \xff\xfeok", "utf-8") == ("caf\ufffd \ufffd\ufffdok", 3)
    assert corpus_io.decode_bytes("café ☕".encode(), "utf-8") == ("café ☕", 0)
    assert corpus_io.decode_bytes(b"caf\xe9", "latin-1") == ("café", 0)


def test_split_labeled_line_and_label_from_file_name():
    # The text keeps its trailing space, as in the text and file_per_label formats.
    assert corpus_io.split_labeled_line(" 1  a stirring , funny ") == {LABEL_KEY: "1", TEXT_KEY: "a stirring , funny "}
    assert corpus_io.split_labeled_line("3") == {LABEL_KEY: "3", TEXT_KEY: ""}
    assert corpus_io.label_from_file_name("/d/rt-polarity.pos") == "pos"
    assert corpus_io.label_from_file_name("gs://b/d/rt-polarity.neg.gz") == "neg"
    assert corpus_io.label_from_file_name("/d/README") is None
    assert corpus_io.label_from_file_name("/d/.hidden") is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"format": "xml"}, "Unknown corpus format 'xml'"),
        ({"format": FORMAT_TEXT}, "labelled=False"),
        ({"format": FORMAT_CSV, "label_type": "float"}, "Unknown label_type 'float'"),
        ({"format": FORMAT_CSV, "label_set": ["0", "one"]}, "Invalid entry 'one' in label_set"),
        ({"format": FORMAT_CSV, "label_set": "01"}, "sequence of labels"),
        ({"format": FORMAT_CSV, "label_set": ["0", "2"]}, r"declared int labels \[0, 2\] are not 0\.\.1"),
        ({"format": FORMAT_CSV, "label_set": ["1"]}, r"declared int labels \[1\] are not 0\.\.0"),
        ({"format": FORMAT_CSV, "label_set": ["-1", "0"]}, "negative label -1"),
        ({"format": FORMAT_CSV, "max_document_chars": 0}, "--max-document-chars must be >= 1, got 0"),
        ({"format": FORMAT_CSV, "max_document_chars": 2.5}, "max_document_chars must be a positive integer"),
        ({"format": FORMAT_LABELED_LINES, "id_column": "id"}, "id_column is only meaningful"),
        ({"format": FORMAT_CSV, "encoding": "utf-16"}, "not ASCII-compatible"),
        ({"format": FORMAT_CSV, "encoding": "no-such-codec"}, "Unknown encoding"),
    ],
)
def test_invalid_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReadCorpus("/data/*.csv", **kwargs)


def test_valid_config_normalises_label_set():
    assert ReadCorpus("x", format=FORMAT_CSV, label_set=["0", " 1 "]).config.label_set == {0, 1}
    assert ReadCorpus("x", format=FORMAT_FILE_PER_LABEL, label_set=["pos", "neg"]).config.label_set == {0, 1}
    assert ReadCorpus("x", format=FORMAT_TEXT, labelled=False).config.labelled is False
    with pytest.raises(ValueError, match="non-empty pattern"):
        ReadCorpus([], format=FORMAT_CSV)


# --------------------------------------------------------------------------
# One test per format: exact documents
# --------------------------------------------------------------------------
CSV_QUOTED = (
    b"id,label,text\r\n"
    b'a1,1,"Hello, world"\n'
    b'a2,0,"tab\there"\n'
    b'a3,1,"line one\nline two"\n'
    b'a4,0,"She said ""hi"""\n'
    b'a5,1,"crlf\r\ninside"\r\n'
    b"\n"  # blank line: not a row
    b"a6, 0 ,plain"  # no final newline
)
CSV_TEXTS = ["Hello, world", "tab\there", "line one\nline two", 'She said "hi"', "crlf\r\ninside", "plain"]
CSV_LABELS = [1, 0, 1, 0, 1, 0]


def test_csv_quoting_given_and_derived_ids(tmp_path, beam_options):
    write_bytes(tmp_path / "corpus" / "part-0.csv", CSV_QUOTED)
    pattern = str(tmp_path / "corpus" / "*.csv")
    given = [doc(f"a{i + 1}", t, lab) for i, (t, lab) in enumerate(zip(CSV_TEXTS, CSV_LABELS))]
    run_read(beam_options, tmp_path, ReadCorpus(pattern, format=FORMAT_CSV, id_column="id"), given)
    derived = [doc(f"part-0.csv:{i + 1}", t, lab) for i, (t, lab) in enumerate(zip(CSV_TEXTS, CSV_LABELS))]
    run_read(beam_options, tmp_path, ReadCorpus(pattern, format=FORMAT_CSV), derived)


def test_derived_ids_are_stable_across_runs_and_roots(tmp_path, beam_options):
    first = tmp_path / "one" / "corpus"
    write_bytes(first / "a" / "part-0.csv", CSV_QUOTED)
    write_bytes(first / "b" / "part-0.csv", b"text,label\nonly row,1\n")
    second = shutil.copytree(first, tmp_path / "moved" / "elsewhere")
    expected = [doc(f"a/part-0.csv:{i + 1}", t, lab) for i, (t, lab) in enumerate(zip(CSV_TEXTS, CSV_LABELS))]
    expected.append(doc("b/part-0.csv:1", "only row", 1))
    for root in (first, second):  # two runs, two locations: the same ids
        run_read(beam_options, tmp_path, ReadCorpus(f"{root}/**.csv", format=FORMAT_CSV), expected)


def test_tsv_with_quoted_tab_and_string_labels(tmp_path, beam_options):
    write_bytes(
        tmp_path / "reviews.tsv",
        b"id\tsentiment\treview\n"
        b"r1\tpositive\tfine, really\n"
        b'r2\tnegative\t"has\ttab and\nnewline"\n'
        b"r3\t  \tno label\n",
    )
    metrics = run_read(
        beam_options,
        tmp_path,
        ReadCorpus(
            str(tmp_path / "reviews.tsv"),
            format=FORMAT_TSV,
            text_column="review",
            label_column="sentiment",
            id_column="id",
            label_type=LABEL_TYPE_STRING,
            label_set=["positive", "negative"],
        ),
        [doc("r1", "fine, really", "positive"), doc("r2", "has\ttab and\nnewline", "negative")],
        [("reviews.tsv:3", "missing_label", "r3\t  \tno label")],
    )
    assert metrics["rows_in"] == 3


def test_jsonl_columns_ids_and_blank_lines(tmp_path, beam_options):
    lines = [
        {"uid": "x1", "review": "Good", "sentiment": "pos", "extra": [1, 2]},
        {"uid": "", "review": "café ☕", "sentiment": "neg"},  # empty id -> derived
        {"uid": 42, "review": "Numeric id", "sentiment": "pos"},
        {"review": "No id field", "sentiment": "neg"},
    ]
    data = "\n".join(json.dumps(line, ensure_ascii=False) for line in lines[:2]) + "\n\n  \n"
    data += "\n".join(json.dumps(line) for line in lines[2:]) + "\n"
    write_bytes(tmp_path / "j" / "reviews.jsonl", data.encode())
    run_read(
        beam_options,
        tmp_path,
        ReadCorpus(
            str(tmp_path / "j" / "*.jsonl"),
            format=FORMAT_JSONL,
            text_column="review",
            label_column="sentiment",
            id_column="uid",
            label_type=LABEL_TYPE_STRING,
        ),
        [
            doc("x1", "Good", "pos"),
            doc("reviews.jsonl:2", "café ☕", "neg"),
            doc("42", "Numeric id", "pos"),
            doc("reviews.jsonl:6", "No id field", "neg"),
        ],
    )


def test_text_format_unlabelled_line_numbers(tmp_path, beam_options):
    write_bytes(tmp_path / "t.txt", b"first line\n\n   \nsecond\r\n\tthird ")
    run_read(
        beam_options,
        tmp_path,
        ReadCorpus(str(tmp_path / "t.txt"), format=FORMAT_TEXT, labelled=False),
        [doc("t.txt:1", "first line"), doc("t.txt:4", "second"), doc("t.txt:5", "\tthird ")],
    )


def test_labeled_lines_int_and_string_labels(tmp_path, beam_options):
    write_bytes(
        tmp_path / "sst" / "stsa.binary.train",
        b"1 a stirring , funny and finally transporting re-imagining\n"
        b"0 apparently reassembled from the cutting-room floor .\n",
    )
    write_bytes(tmp_path / "sst" / "stsa.fine.train", b"4  the best\n2 so-so\n")
    run_read(
        beam_options,
        tmp_path,
        ReadCorpus(str(tmp_path / "sst" / "stsa.binary.*"), format=FORMAT_LABELED_LINES, label_set=["0", "1"]),
        [
            doc("stsa.binary.train:1", "a stirring , funny and finally transporting re-imagining", 1),
            doc("stsa.binary.train:2", "apparently reassembled from the cutting-room floor .", 0),
        ],
    )
    run_read(
        beam_options,
        tmp_path,
        ReadCorpus(
            str(tmp_path / "sst" / "stsa.fine.*"), format=FORMAT_LABELED_LINES, label_type=LABEL_TYPE_STRING
        ),
        [doc("stsa.fine.train:1", "the best", "4"), doc("stsa.fine.train:2", "so-so", "2")],
    )


def test_file_per_label_polarity_names_and_gzip(tmp_path, beam_options):
    mr = tmp_path / "mr"
    write_bytes(mr / "rt-polarity.pos", b"the rock is destined . \nsmart and alive .\n")
    write_bytes(mr / "rt-polarity.neg", b"simplistic , silly .\n")
    write_bytes(mr / "extra.neg.gz", gzip.compress(b"compressed and dull .\n"))
    pattern = str(mr / "*")
    run_read(
        beam_options,
        tmp_path,
        ReadCorpus(pattern, format=FORMAT_FILE_PER_LABEL, label_set=["pos", "neg"]),
        [
            doc("rt-polarity.pos:1", "the rock is destined . ", 1),
            doc("rt-polarity.pos:2", "smart and alive .", 1),
            doc("rt-polarity.neg:1", "simplistic , silly .", 0),
            doc("extra.neg.gz:1", "compressed and dull .", 0),
        ],
    )
    run_read(
        beam_options,
        tmp_path,
        ReadCorpus(pattern, format=FORMAT_FILE_PER_LABEL, label_type=LABEL_TYPE_STRING),
        [
            doc("rt-polarity.pos:1", "the rock is destined . ", "pos"),
            doc("rt-polarity.pos:2", "smart and alive .", "pos"),
            doc("rt-polarity.neg:1", "simplistic , silly .", "neg"),
            doc("extra.neg.gz:1", "compressed and dull .", "neg"),
        ],
    )


def test_file_per_label_without_extension_dead_letters_every_line(tmp_path, beam_options):
    write_bytes(tmp_path / "mr" / "rt-polarity.pos", b"good .\n")
    write_bytes(tmp_path / "mr" / "NOTES", b"line one\nline two\n")
    run_read(
        beam_options,
        tmp_path,
        ReadCorpus(str(tmp_path / "mr" / "*"), format=FORMAT_FILE_PER_LABEL),
        [doc("rt-polarity.pos:1", "good .", 1)],
        [("mr/NOTES:1", "missing_label", "line one"), ("mr/NOTES:2", "missing_label", "line two")],
    )


ACLIMDB_TRAIN = [
    doc("train/pos/0_9.txt", "A great film.<br /><br />Loved it.", 1),
    doc("train/pos/1_7.txt", 'Good, "quoted" fun.\nSecond line.', 1),
    doc("train/neg/0_3.txt", "Dull.", 0),
    doc("train/neg/1_1.txt", "Awful \ufffd\ufffd acting.", 0),
]


def test_aclimdb_root_reads_every_split_and_skips_unsup(tmp_path, beam_options):
    root = make_aclimdb(tmp_path / "aclImdb")
    metrics = run_read(
        beam_options,
        tmp_path,
        ReadCorpus(str(root), format=FORMAT_ACLIMDB),
        ACLIMDB_TRAIN + [doc("test/pos/0_10.txt", "Superb.", 1)],
        [("aclImdb/test/neg/0_2.txt", "empty_text", "   ")],
    )
    assert metrics["replaced_chars"] == 2
    assert metrics["rows_with_replaced_bytes"] == 1
    assert metrics["files_in"] == 6


def test_aclimdb_split_root_gives_the_same_ids(tmp_path, beam_options):
    root = make_aclimdb(tmp_path / "aclImdb")
    run_read(beam_options, tmp_path, ReadCorpus(str(root / "train") + "/", format=FORMAT_ACLIMDB), ACLIMDB_TRAIN)
    run_read(
        beam_options,
        tmp_path,
        ReadCorpus(str(root / "train"), format=FORMAT_ACLIMDB, label_type=LABEL_TYPE_STRING, labelled=True),
        [dict(d, label="pos" if d[LABEL_KEY] else "neg") for d in ACLIMDB_TRAIN],
    )


def test_tfrecord_plain_and_gzip(tmp_path, beam_options):
    write_tfrecord(
        tmp_path / "tfr" / "train.tfrecord",
        [
            make_example({"text": b"first review", "label": 1, "id": b"ex-1"}),
            make_example({"text": "deuxième".encode(), "label": 0}),  # no id -> derived
        ],
    )
    # GZIP without a .gz extension: the reader sniffs the gzip magic.
    write_tfrecord(
        tmp_path / "tfr" / "more.tfrecord",
        [make_example({"text": b"gzipped", "label": b" 1 ", "id": b"ex-3"})],
        gzip=True,
    )
    write_tfrecord(
        tmp_path / "tfr" / "last.tfrecord.gz",
        [make_example({"text": b"named gz", "label": 0, "id": 7})],
        gzip=True,
    )
    run_read(
        beam_options,
        tmp_path,
        ReadCorpus(str(tmp_path / "tfr" / "*"), format=FORMAT_TFRECORD, id_column="id"),
        [
            doc("ex-1", "first review", 1),
            doc("train.tfrecord:2", "deuxième", 0),
            doc("ex-3", "gzipped", 1),
            doc("7", "named gz", 0),
        ],
    )


def test_parquet_columns_by_name_across_batches(tmp_path, beam_options):
    write_parquet(
        tmp_path / "pq" / "part-0.parquet",
        {
            "doc_id": ["p1", None, "p3", "p4", "p5"],
            "body": ["one", "two", "three", "four", "five"],
            "y": [1, 0, 1, 0, 1],
            "ignored": [0.5] * 5,
        },
    )
    run_read(
        beam_options,
        tmp_path,
        ReadCorpus(
            str(tmp_path / "pq" / "*.parquet"),
            format=FORMAT_PARQUET,
            text_column="body",
            label_column="y",
            id_column="doc_id",
        ),
        [
            doc("p1", "one", 1),
            doc("part-0.parquet:2", "two", 0),
            doc("p3", "three", 1),
            doc("p4", "four", 0),
            doc("p5", "five", 1),
        ],
    )


def test_several_patterns_and_namedtuple_result(tmp_path, beam_options):
    write_bytes(tmp_path / "a" / "x.txt", b"from a\n")
    write_bytes(tmp_path / "b" / "y.txt", b"from b\n")
    p = BeamTestPipeline(options=beam_options)
    result = p | "Read" >> ReadCorpus(
        [str(tmp_path / "a" / "*.txt"), str(tmp_path / "b" / "y.txt")], format=FORMAT_TEXT, labelled=False
    )
    assert isinstance(result, ReadCorpusResult)
    docs, dead = result
    assert docs is result.documents and dead is result.dead_letter
    assert_that(result.documents, equal_to([doc("x.txt:1", "from a"), doc("y.txt:1", "from b")]), label="Docs")
    assert_that(result.dead_letter, equal_to([]), label="Dead")
    p.run().wait_until_finish()


# --------------------------------------------------------------------------
# Bad rows: one mixed file per format family, reconciled against the counters
# --------------------------------------------------------------------------
def test_csv_bad_rows_are_dead_lettered(tmp_path, beam_options):
    write_bytes(
        tmp_path / "bad.csv",
        b"id,text,label\n"
        b"r1,good one,1\n"
        b'r2,"broken"quote,0\n'
        b"r3,too,many,fields,1\n"
        b"r4,,1\n"
        b"r5,   ,0\n"
        b"r6,no label,\n"
        b"r7,bad label,x\n"
        b"r8,not in set,5\n"
        b"r9,caf\xe9 \xff ok,0\n"
        b'r10,"unterminated,1\n'
        b"r11,not swallowed,1\n",
    )
    metrics = run_read(
        beam_options,
        tmp_path,
        ReadCorpus(str(tmp_path / "bad.csv"), format=FORMAT_CSV, id_column="id", label_set=["0", "1"]),
        [doc("r1", "good one", 1), doc("r9", "caf\ufffd \ufffd ok", 0), doc("r11", "not swallowed", 1)],
        [
            ("bad.csv:2", "unparseable_row", 'r2,"broken"quote,0'),
            ("bad.csv:3", "unparseable_row", "r3,too,many,fields,1"),
            ("bad.csv:4", "empty_text", "r4,,1"),
            ("bad.csv:5", "empty_text", "r5,   ,0"),
            ("bad.csv:6", "missing_label", "r6,no label,"),
            ("bad.csv:7", "invalid_label", "r7,bad label,x"),
            ("bad.csv:8", "label_not_in_set", "r8,not in set,5"),
            # An unterminated quote runs to the end of the file; only its own line
            # is dead-lettered and the row after it is read again, as a row.
            ("bad.csv:10", "unparseable_row", 'r10,"unterminated,1'),
        ],
    )
    assert metrics["replaced_chars"] == 2
    assert metrics["rows_with_replaced_bytes"] == 1


def test_csv_reasons_name_columns_and_lines(tmp_path, beam_options):
    # A two-line record with one field too many: its first line is dead-lettered,
    # its second is read again as a row of its own (here an invalid label).
    write_bytes(tmp_path / "c.csv", b'id,text,label\nr1,"two\nlines",1,extra\nr2,three fields,1\n')
    p = BeamTestPipeline(options=beam_options)
    docs, dead = p | ReadCorpus(str(tmp_path / "c.csv"), format=FORMAT_CSV)
    assert_that(docs | beam.Map(lambda d: d[TEXT_KEY]), equal_to(["three fields"]), label="Docs")
    assert_that(
        dead | beam.Map(lambda d: (d[DEAD_SOURCE_KEY].rsplit("/", 1)[1], d[DEAD_REASON_KEY])),
        equal_to([
            ("c.csv:1", "unparseable_row: 4 fields, header has 3 (record from line 2 to 3; "
                        "line 2 dead-lettered, reading resumes at line 3)"),
            ("c.csv:2", "invalid_label: label 'extra' is not an integer"),
        ]),
        label="Dead",
    )
    p.run().wait_until_finish()


def test_csv_missing_text_column_dead_letters_every_row(tmp_path, beam_options):
    write_bytes(tmp_path / "c.csv", b"id,review,label\n1,hello,1\n2,world,0\n")
    p = BeamTestPipeline(options=beam_options)
    docs, dead = p | ReadCorpus(str(tmp_path / "c.csv"), format=FORMAT_CSV)
    assert_that(docs, equal_to([]), label="Docs")
    assert_that(
        dead | beam.Map(lambda d: (d[DEAD_SOURCE_KEY].rsplit("/", 1)[1], d[DEAD_REASON_KEY])),
        equal_to([(f"c.csv:{n}", "missing_text: no value for 'text'") for n in (1, 2)]),
        label="Dead",
    )
    result = p.run()
    result.wait_until_finish()
    assert counters(result)["rows_in"] == 2


def test_jsonl_bad_rows_are_dead_lettered(tmp_path, beam_options):
    write_bytes(
        tmp_path / "bad.jsonl",
        b'{"text": "fine", "label": 1}\n'
        b"not json\n"
        b"[1, 2]\n"
        b'{"text": "", "label": 0}\n'
        b'{"label": 1}\n'
        b'{"text": "no label"}\n'
        b'{"text": "bad", "label": "one"}\n'
        b'{"text": "bool", "label": true}\n'
        b'{"text": "float", "label": 1.0}\n'
        b'{"text": "caf\xe9", "label": 0}\n'
        b'{"text": "esc \\udc80", "label": 0}\n'
        b'{"text": 5, "label": 0}\n'
        b"\n",
    )
    metrics = run_read(
        beam_options,
        tmp_path,
        ReadCorpus(str(tmp_path / "bad.jsonl"), format=FORMAT_JSONL),
        [
            doc("bad.jsonl:1", "fine", 1),
            doc("bad.jsonl:9", "float", 1),
            doc("bad.jsonl:10", "caf\ufffd", 0),
            doc("bad.jsonl:11", "esc \ufffd", 0),
        ],
        [
            ("bad.jsonl:2", "invalid_json", "not json"),
            ("bad.jsonl:3", "invalid_json", "[1, 2]"),
            ("bad.jsonl:4", "empty_text", '{"text": "", "label": 0}'),
            ("bad.jsonl:5", "missing_text", '{"label": 1}'),
            ("bad.jsonl:6", "missing_label", '{"text": "no label"}'),
            ("bad.jsonl:7", "invalid_label", '{"text": "bad", "label": "one"}'),
            ("bad.jsonl:8", "invalid_label", '{"text": "bool", "label": true}'),
            ("bad.jsonl:12", "unparseable_row", '{"text": 5, "label": 0}'),
        ],
    )
    assert metrics["replaced_chars"] == 2
    assert metrics["rows_with_replaced_bytes"] == 2


def test_line_format_bad_rows_are_dead_lettered(tmp_path, beam_options):
    write_bytes(tmp_path / "sst.txt", b"1 good movie\nx bad label\n1\n\n7 out of set\n0 caf\xe9\n")
    metrics = run_read(
        beam_options,
        tmp_path,
        ReadCorpus(str(tmp_path / "sst.txt"), format=FORMAT_LABELED_LINES, label_set=["0", "1"]),
        [doc("sst.txt:1", "good movie", 1), doc("sst.txt:6", "caf\ufffd", 0)],
        [
            ("sst.txt:2", "invalid_label", "x bad label"),
            ("sst.txt:3", "empty_text", "1"),
            ("sst.txt:5", "label_not_in_set", "7 out of set"),
        ],
    )
    assert metrics["replaced_chars"] == 1


def test_tfrecord_bad_records_are_dead_lettered(tmp_path, beam_options):
    write_tfrecord(
        tmp_path / "bad.tfrecord",
        [
            make_example({"text": b"good", "label": 1}),
            make_example({"text": [b"two", b"values"], "label": 1}),
            b"\xff\xff\xff",  # not a tf.Example
            make_example({"text": b"no label"}),
            make_example({"text": b"float label", "label": 2.5}),
            make_example({"label": 0}),
            make_example({"text": b"bad \xff bytes", "label": 0}),
        ],
    )
    p = BeamTestPipeline(options=beam_options)
    docs, dead = p | ReadCorpus(str(tmp_path / "bad.tfrecord"), format=FORMAT_TFRECORD)
    expected_docs = [doc("bad.tfrecord:1", "good", 1), doc("bad.tfrecord:7", "bad \ufffd bytes", 0)]
    assert_that(docs, equal_to(expected_docs), label="Docs")
    assert_that(
        dead | beam.Map(lambda d: (d[DEAD_SOURCE_KEY].rsplit("/", 1)[1], reason_code(d[DEAD_REASON_KEY]))),
        equal_to(
            [
                ("bad.tfrecord:2", "unparseable_row"),
                ("bad.tfrecord:3", "unparseable_row"),
                ("bad.tfrecord:4", "missing_label"),
                ("bad.tfrecord:5", "invalid_label"),
                ("bad.tfrecord:6", "missing_text"),
            ]
        ),
        label="Dead",
    )
    assert_that(dead, check_dead_letter_shape, label="Shape")
    result = p.run()
    result.wait_until_finish()
    metrics = counters(result)
    assert (metrics["rows_in"], metrics["documents_out"], metrics["dead_letter"]) == (7, 2, 5)
    assert metrics["replaced_chars"] == 1


def test_parquet_bad_rows_are_dead_lettered(tmp_path, beam_options):
    write_parquet(
        tmp_path / "bad.parquet",
        {
            "text": ["ok", None, "  ", "no label", "big", "x\xff"],
            "label": ["1", "0", "1", None, "9", "0"],
        },
    )
    metrics = run_read(
        beam_options,
        tmp_path,
        ReadCorpus(str(tmp_path / "bad.parquet"), format=FORMAT_PARQUET, label_set=["0", "1"]),
        [doc("bad.parquet:1", "ok", 1), doc("bad.parquet:6", "x\xff", 0)],
        [
            ("bad.parquet:2", "missing_text", '{"text": null, "label": "0"}'),
            ("bad.parquet:3", "empty_text", '{"text": "  ", "label": "1"}'),
            ("bad.parquet:4", "missing_label", '{"text": "no label", "label": null}'),
            ("bad.parquet:5", "label_not_in_set", '{"text": "big", "label": "9"}'),
        ],
    )
    assert metrics.get("replaced_chars", 0) == 0


def test_unreadable_files_become_one_dead_letter_each(tmp_path, beam_options):
    write_bytes(tmp_path / "csv" / "good.csv", b"text,label\nfine,1\n")
    write_bytes(tmp_path / "csv" / "corrupt.csv.gz", b"this is not gzip data")
    run_read(
        beam_options,
        tmp_path,
        ReadCorpus(str(tmp_path / "csv" / "*"), format=FORMAT_CSV),
        [doc("good.csv:1", "fine", 1)],
        [("csv/corrupt.csv.gz", "unreadable_file", "")],
    )
    write_bytes(tmp_path / "pq" / "junk.parquet", b"PAR1 not really parquet")
    run_read(
        beam_options,
        tmp_path,
        ReadCorpus(str(tmp_path / "pq" / "*.parquet"), format=FORMAT_PARQUET),
        [],
        [("pq/junk.parquet", "unreadable_file", "")],
    )


def test_truncated_tfrecord_keeps_the_records_before_the_damage(tmp_path, beam_options):
    path = write_tfrecord(
        tmp_path / "cut.tfrecord",
        [make_example({"text": b"kept", "label": 1}), make_example({"text": b"lost tail", "label": 0})],
    )
    path.write_bytes(path.read_bytes()[:-6])
    run_read(
        beam_options,
        tmp_path,
        ReadCorpus(str(path), format=FORMAT_TFRECORD),
        [doc("cut.tfrecord:1", "kept", 1)],
        [("cut.tfrecord", "truncated_file", "")],
    )


@pytest.mark.parametrize(
    "pattern, fmt",
    [("missing/*.csv", FORMAT_CSV), ("missing.csv", FORMAT_CSV), ("aclImdb", FORMAT_ACLIMDB)],
)
def test_empty_match_fails_the_pipeline(tmp_path, beam_options, pattern, fmt):
    (tmp_path / "aclImdb" / "train" / "unsup").mkdir(parents=True)
    p = BeamTestPipeline(options=beam_options)
    _ = p | ReadCorpus(str(tmp_path / pattern), format=fmt)
    with pytest.raises(Exception, match="Empty match for pattern|No aclImdb review files"):
        p.run().wait_until_finish()


# --------------------------------------------------------------------------
# Writing dead letters
# --------------------------------------------------------------------------
def test_write_json_lines_round_trip(tmp_path, beam_options):
    records = [
        dead_letter("a.csv:1", "r1,café,x", "invalid_label: label 'x' is not an integer"),
        dead_letter("a.csv:2", 'r2,"multi\nline",1', "unparseable_row: 4 fields"),
    ]
    p = BeamTestPipeline(options=beam_options)
    _ = p | beam.Create(records) | WriteJsonLines(str(tmp_path / "dead" / "read"), num_shards=1)
    p.run().wait_until_finish()
    written = sorted((tmp_path / "dead").glob("read-*.jsonl"))
    assert [f.name for f in written] == ["read-00000-of-00001.jsonl"]
    content = written[0].read_text(encoding="utf-8")
    assert "café" in content  # ensure_ascii=False: readable, not \u00e9
    assert sorted(map(json.loads, content.splitlines()), key=json.dumps) == sorted(records, key=json.dumps)


def test_write_json_lines_uses_the_given_encoder(tmp_path, beam_options):
    # A value the default encoder cannot write (a set) goes through a caller's encoder.
    encode = lambda record: json.dumps(record, sort_keys=True, default=sorted)  # noqa: E731
    p = BeamTestPipeline(options=beam_options)
    _ = p | beam.Create([{"id": "a", "tags": {"y", "x"}}]) | WriteJsonLines(
        str(tmp_path / "out"), num_shards=1, encode=encode)
    p.run().wait_until_finish()
    (written,) = tmp_path.glob("out-*.jsonl")
    assert written.read_text(encoding="utf-8") == '{"id": "a", "tags": ["x", "y"]}\n'


# --------------------------------------------------------------------------
# The real corpora in ../shared/data (skipped when absent)
# --------------------------------------------------------------------------
@pytest.mark.data
def test_real_mr_and_sst_read_completely(tmp_path, beam_options):
    mr = shared_data_path("mr")
    sst = shared_data_path("sst2", "stsa.binary.train")
    p = BeamTestPipeline(options=beam_options)
    mr_docs, mr_dead = p | "MR" >> ReadCorpus(str(mr / "rt-polarity.*"), format=FORMAT_FILE_PER_LABEL)
    sst_docs, sst_dead = p | "SST" >> ReadCorpus(str(sst), format=FORMAT_LABELED_LINES, label_set=["0", "1"])
    count = lambda label, pcoll: pcoll | label >> beam.combiners.Count.Globally()  # noqa: E731
    assert_that(count("CountMR", mr_docs), equal_to([10662]), label="MR")
    assert_that(count("CountSST", sst_docs), equal_to([6920]), label="SST")
    assert_that((mr_dead, sst_dead) | beam.Flatten(), equal_to([]), label="NoDead")
    p.run().wait_until_finish()


@pytest.mark.data
def test_real_imdb_csv_reads_every_review(beam_options):
    imdb = shared_data_path("imdb", "train.csv")
    p = BeamTestPipeline(options=beam_options)
    # Derived ids: the CSV's own "id" column numbers files within pos/ and neg/
    # separately, so it is not unique across the corpus.
    docs, dead = p | ReadCorpus(str(imdb), format=FORMAT_CSV, label_set=["0", "1"])
    labels = docs | beam.Map(lambda d: d[LABEL_KEY]) | beam.combiners.Count.PerElement()
    assert_that(labels, equal_to([(0, 12500), (1, 12500)]), label="Labels")
    unique_ids = docs | beam.Map(lambda d: d[ID_KEY]) | beam.Distinct() | beam.combiners.Count.Globally()
    assert_that(unique_ids, equal_to([25000]), label="UniqueIds")
    first = docs | beam.Filter(lambda d: d[ID_KEY] == "train.csv:1") | beam.Map(lambda d: d[TEXT_KEY][:34])
    assert_that(first, equal_to(["Bromwell High is a cartoon comedy."]), label="First")
    assert_that(dead, equal_to([]), label="NoDead")
    result = p.run()
    result.wait_until_finish()
    assert counters(result)["rows_in"] == 25000


def _applied_labels(pipeline) -> list[str]:
    from apache_beam.pipeline import PipelineVisitor

    labels = []

    class Visitor(PipelineVisitor):
        def enter_composite_transform(self, node):
            labels.append(node.full_label)

        def visit_transform(self, node):
            labels.append(node.full_label)

    pipeline.visit(Visitor())
    return labels


@pytest.mark.parametrize("reshuffle", [True, False])
def test_documents_of_one_file_are_redistributed_after_the_read(tmp_path, beam_options, reshuffle):
    # One file is read by one worker; the fusion break lets later steps spread out.
    rows = [(str(i), i % 2, f"review number {i}") for i in range(40)]
    path = tmp_path / "one.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label", "text"])
        writer.writerows(rows)
    transform = ReadCorpus(str(path), format=FORMAT_CSV, id_column="id", reshuffle_documents=reshuffle)
    p = BeamTestPipeline(options=beam_options)
    docs, dead = p | "Read" >> transform
    assert_that(docs, equal_to([{"id": i, "label": y, "text": t} for i, y, t in rows]))
    assert ("Read/RedistributeDocuments" in _applied_labels(p)) is reshuffle
    result = p.run()
    result.wait_until_finish()
    assert counters(result)["documents_out"] == 40


# --------------------------------------------------------------------------
# Byte ranges of large line files
# --------------------------------------------------------------------------
def _line_file_bytes(rng, lines=300) -> bytes:
    """Lines of varied lengths: blank, CRLF, non-ASCII, bad UTF-8, some longer than a range."""
    out = []
    for i in range(lines):
        kind = i % 7
        if kind == 0:
            out.append(b"")
        elif kind == 1:
            out.append(f"{i % 2} caf\u00e9 number {i}\r".encode())
        elif kind == 2:
            out.append(b"1 bad \xff byte %d" % i)
        elif kind == 3:
            out.append(("0 " + "long " * int(rng.integers(20, 60))).encode())
        elif kind == 5:
            out.append(f"x not-a-label {i}".encode())
        else:
            out.append(f"{i % 2} line {i}".encode())
    return b"\n".join(out)  # no trailing newline


@pytest.mark.parametrize("split_bytes", [1, 17, 64, 500, 10**6])
@pytest.mark.parametrize("scan_block", [5, 64, 8 << 20])
def test_line_ranges_cover_the_file_at_newlines_with_line_numbers(tmp_path, monkeypatch, split_bytes, scan_block):
    import numpy as np

    monkeypatch.setattr(io_lines, "_SCAN_BLOCK_BYTES", scan_block)  # cuts across scan blocks
    data = _line_file_bytes(np.random.default_rng(0))
    for suffix, content in (("", data), ("_nl", data + b"\n")):
        path = tmp_path / f"lines{suffix}.txt"
        path.write_bytes(content)
        ranges = corpus_io.line_ranges(str(path), split_bytes)
        assert ranges[0][0] == 0 and ranges[-1][1] is None
        for (start, end, first), nxt in zip(ranges, ranges[1:] + [(len(content), None, None)]):
            assert end is None or end == nxt[0]
            assert start == 0 or content[start - 1:start] == b"\n"
            assert first == content[:start].count(b"\n") + 1
            assert start < len(content) or len(ranges) == 1
        if split_bytes < 100:
            assert len(ranges) > 10


@pytest.mark.parametrize("fmt, name, kwargs", [
    (FORMAT_LABELED_LINES, "big.txt", {}),
    (FORMAT_TEXT, "big.txt", {"labelled": False}),
    (FORMAT_FILE_PER_LABEL, "big.pos", {"label_type": LABEL_TYPE_STRING}),
    (FORMAT_JSONL, "big.jsonl", {}),
])
def test_split_read_equals_whole_file_read(tmp_path, beam_options, fmt, name, kwargs):
    import numpy as np

    rng = np.random.default_rng(1)
    if fmt == FORMAT_JSONL:
        rows = []
        for i in range(200):
            if i % 11 == 0:
                rows.append(b"{not json")
            elif i % 13 == 0:
                rows.append(b"")
            else:
                rows.append(json.dumps({"text": f"review \u00e9 {i} " * int(rng.integers(1, 9)),
                                        "label": i % 3 if i % 17 else "x"}).encode())
        content = b"\n".join(rows) + b"\n"
    else:
        content = _line_file_bytes(rng, 200)
    path = tmp_path / name
    path.write_bytes(content)

    transform = ReadCorpus(str(path), format=fmt, split_bytes=97, **kwargs)
    # Expected: the pure whole-file reader, in process.
    outcomes = list(corpus_io.read_corpus_file(str(path), str(tmp_path), transform.config))
    expected_docs = [o.document for o in outcomes if o.document is not None]
    expected_dead = [o.dead_letter for o in outcomes if o.dead_letter is not None]
    assert len(expected_docs) > 50 and (bool(expected_dead) == (fmt in (FORMAT_LABELED_LINES, FORMAT_JSONL)))

    p = BeamTestPipeline(options=beam_options)
    docs, dead = p | "Read" >> transform
    assert_that(docs, equal_to(expected_docs), label="Docs")
    assert_that(dead, equal_to(expected_dead), label="Dead")
    result = p.run()
    result.wait_until_finish()
    metrics = counters(result)
    assert metrics["files_in"] == 1 and metrics["file_ranges"] > 10
    assert metrics["rows_in"] == len(outcomes) == metrics["documents_out"] + metrics.get("dead_letter", 0)


def test_compressed_and_csv_files_are_never_split(tmp_path):
    config = ReadCorpus("x", format=FORMAT_JSONL).config
    assert corpus_io.is_splittable(str(tmp_path / "a.jsonl"), config)
    assert not corpus_io.is_splittable(str(tmp_path / "a.jsonl.gz"), config)
    assert not corpus_io.is_splittable(str(tmp_path / "a.csv"), ReadCorpus("x", format=FORMAT_CSV).config)
    with pytest.raises(ValueError):
        list(corpus_io.read_corpus_file(str(tmp_path / "a.csv"), str(tmp_path),
                                        ReadCorpus("x", format=FORMAT_CSV).config, start=10))
    with pytest.raises(ValueError):
        ReadCorpus("x", format=FORMAT_JSONL, split_bytes=-1)


_DISTRIBUTED_RUNNERS = [
    # (DataflowRunner itself looks up GCP credentials when a pipeline is built: stood in for by a runner class
    # this module does not know, which must count as distributed too.)
    ["--runner=tests.test_io._RemoteRunner"],
    ["--runner=FlinkRunner"],
    ["--runner=SparkRunner"],
    ["--runner=PortableRunner", "--job_endpoint=localhost:8099"],
]
class _RemoteRunner(beam.runners.runner.PipelineRunner):
    """An unknown (e.g. remote) runner; only used to build pipelines."""


_LOCAL_RUNNERS = [
    [],  # Beam's default (DirectRunner)
    ["--runner=DirectRunner"],
    ["--runner=beam_rnn.cli.runtime.LocalRunner"],
    ["--runner=BundleBasedDirectRunner"],
    ["--runner=PrismRunner"],
    ["--runner=PortableRunner", "--job_endpoint=embed"],
]


@pytest.mark.parametrize("runner_args, local", [(a, False) for a in _DISTRIBUTED_RUNNERS]
                         + [(a, True) for a in _LOCAL_RUNNERS])
def test_local_runners_are_told_from_distributed_ones(runner_args, local):
    from apache_beam.options.pipeline_options import PipelineOptions

    assert corpus_io.is_local_runner(beam.Pipeline(options=PipelineOptions(runner_args))) is local


@pytest.mark.parametrize("runner_args, local", [(_DISTRIBUTED_RUNNERS[0], False), (_LOCAL_RUNNERS[0], True)])
@pytest.mark.parametrize("fmt, read_whole", [(FORMAT_CSV, True), (FORMAT_TSV, True), (FORMAT_TFRECORD, True),
                                             (FORMAT_PARQUET, True), (FORMAT_JSONL, False), (FORMAT_TEXT, False),
                                             (FORMAT_ACLIMDB, False)])
def test_documents_are_redistributed_by_default_only_for_formats_read_whole_on_distributed_runners(
        tmp_path, runner_args, local, fmt, read_whole):
    # Line formats are split into byte ranges before the read instead; aclImdb is many small files.  Local
    # runners hold a Reshuffle's elements in memory (peak RSS grew with the corpus) and have no workers to
    # spread to, so the break is left out there.  The pipelines are only built, never run.
    from apache_beam.options.pipeline_options import PipelineOptions

    for explicit in (None, True, False):  # an explicit setting wins on any runner
        p = beam.Pipeline(options=PipelineOptions(runner_args))
        _ = p | "Read" >> ReadCorpus(str(tmp_path / "x"), format=fmt, labelled=fmt != FORMAT_TEXT,
                                     reshuffle_documents=explicit)
        expected = (read_whole and not local) if explicit is None else explicit
        assert ("Read/RedistributeDocuments" in _applied_labels(p)) is expected
