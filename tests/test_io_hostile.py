"""ReadCorpus on hostile input (issue 11): broken quotes, cut compressed files, huge documents.

Every test builds real files and checks that no good row is lost, every bad one is
a dead letter with a reason, and rows_in == documents_out + dead_letter.
"""

import bz2
import csv
import gzip
import io
import json
import logging
import zlib

import apache_beam as beam
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_rnn import io as corpus_io
from beam_rnn.core.constants import DEAD_REASON_KEY, DEAD_SOURCE_KEY, FORMAT_CSV, FORMAT_JSONL, FORMAT_TEXT, FORMAT_TSV
from beam_rnn.io import CorpusConfig, ReadCorpus, read_corpus_file, reason_code
from tests.io_fixtures import counters, write_bytes
from tests.test_io import doc, run_read


def write_delimited(path, rows, delimiter=","):
    """Writes a header + rows with the csv module (correct quoting), returns the text."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    writer.writerow(["id", "text", "label"])
    writer.writerows(rows)
    write_bytes(path, out.getvalue().encode())
    return out.getvalue()


# --------------------------------------------------------------------------
# 1. A broken record never takes the good rows after it
# --------------------------------------------------------------------------
GOOD_ROWS = [
    ("g1", "plain text", "1"),
    ("g2", 'has "quotes", and a comma', "0"),
    ("g3", "two\nlines, quoted legitimately", "1"),
    ("g4", "plain again", "0"),
    ("g5", "three\nphysical\nlines", "1"),
    ("g6", "no quotes at all", "0"),
    ("g7", "last good row", "1"),
]


@pytest.mark.parametrize("fmt, sep", [(FORMAT_CSV, ","), (FORMAT_TSV, "\t")])
def test_broken_quotes_swallow_no_good_row(tmp_path, beam_options, fmt, sep):
    good = write_delimited(tmp_path / "x", GOOD_ROWS, delimiter=sep).splitlines(keepends=True)
    # Physical lines: 1 header, 2 g1, 3 g2, 4-5 g3, 6 g4, 7-9 g5, 10 g6, 11 g7.
    broken = {
        # An unterminated quote followed by quoted good rows (csv error a few lines on).
        "b1": f'b1{sep}"unterminated quote{sep}1\n',
        # A stray quote in the middle of a quoted field (csv error on its own line).
        "b2": f'b2{sep}"stray"quote{sep}0\n',
        # An unterminated quote with only unquoted rows after it: runs to the end of the file.
        "b3": f'b3{sep}"never closed{sep}1\n',
    }
    lines = [good[0], good[1], broken["b1"], *good[2:6], broken["b2"], *good[6:9], broken["b3"], *good[9:]]
    path = write_bytes(tmp_path / f"broken.{fmt}", "".join(lines).encode())
    records_in_file = len(GOOD_ROWS) + len(broken)
    # Record numbers (ids of rows without an id column): g1=1, b1=2, g2=3, g3=4,
    # g4=5, b2=6, g5=7, b3=8, g6=9, g7=10.
    metrics = run_read(
        beam_options,
        tmp_path,
        ReadCorpus(str(path), format=fmt, id_column="id"),
        [doc(i, text, int(label)) for i, text, label in GOOD_ROWS],
        [
            (f"broken.{fmt}:2", "unparseable_row", broken["b1"].rstrip("\n")),
            (f"broken.{fmt}:6", "unparseable_row", broken["b2"].rstrip("\n")),
            (f"broken.{fmt}:8", "unparseable_row", broken["b3"].rstrip("\n")),
        ],
    )
    # Per physical record: every record of the file is counted exactly once.
    assert metrics["rows_in"] == records_in_file


def test_broken_record_reason_says_where_reading_resumes(tmp_path):
    path = write_bytes(tmp_path / "c.csv", b'id,text,label\nb1,"open,1\ng1,fine,0\ng2,"quoted",1\n')
    outcomes = list(read_corpus_file(str(path), str(tmp_path), CorpusConfig(format=FORMAT_CSV, id_column="id")))
    assert [o.document["id"] for o in outcomes if o.document] == ["g1", "g2"]
    [dead] = [o.dead_letter for o in outcomes if o.dead_letter]
    assert dead[DEAD_SOURCE_KEY].endswith("c.csv:1")
    assert dead[DEAD_REASON_KEY] == (
        "unparseable_row: ',' expected after '\"' (record from line 2 to 4; "
        "line 2 dead-lettered, reading resumes at line 3)"
    )


def test_unterminated_quote_stops_at_the_record_bound(tmp_path):
    # No quote after the broken row: without a bound the record would run to the
    # end of the file, holding all of it in memory.  The bound is
    # 2 * max_document_chars + 1 MiB characters; the rows after it fill ~1.5 MiB.
    config = CorpusConfig(format=FORMAT_CSV, max_document_chars=10)
    rows = [f"row number {i:07d} padded to a fair length,{i % 2}\n" for i in range(36_000)]
    assert sum(map(len, rows)) > 1.4 * config.max_record_chars
    path = write_bytes(tmp_path / "c.csv", ("text,label\n" + '"never closed,1\n' + "".join(rows)).encode())
    outcomes = list(read_corpus_file(str(path), str(tmp_path), config))
    dead = [o.dead_letter for o in outcomes if o.dead_letter]
    docs = [o.document for o in outcomes if o.document]
    # Every row after the broken one is a document (its text is over the limit of
    # 10 characters, so they are dead letters here: what matters is one per row).
    assert len(outcomes) == 1 + len(rows)
    assert docs == []
    assert reason_code(dead[0][DEAD_REASON_KEY]) == "unparseable_row"
    assert f"the record runs past {config.max_record_chars} characters" in dead[0][DEAD_REASON_KEY]
    assert dead[0]["row"] == '"never closed,1'
    assert all(reason_code(d[DEAD_REASON_KEY]) == "document_too_large" for d in dead[1:])
    assert [d[DEAD_SOURCE_KEY].rsplit(":", 1)[1] for d in dead] == [str(n) for n in range(1, len(rows) + 2)]


# --------------------------------------------------------------------------
# 2. Truncated or corrupt compressed files
# --------------------------------------------------------------------------
def jsonl_lines(n, start=0):
    return [json.dumps({"text": f"review {i}", "label": i % 2}).encode() + b"\n" for i in range(start, start + n)]


def gzip_cut_on_line_boundary(lines, keep):
    """A gzip stream holding exactly `keep` whole lines and no end: what a partial download looks like."""
    compressor = zlib.compressobj(wbits=31)  # gzip container
    data = compressor.compress(b"".join(lines[:keep])) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data


def test_truncated_and_corrupt_compressed_files(tmp_path, beam_options, caplog):
    lines = jsonl_lines(10)
    corpus = tmp_path / "corpus"
    # Cut exactly after line 4: the decompressed data ends with "\n"; only the
    # missing end-of-stream marker shows the damage.
    write_bytes(corpus / "a_line_boundary.jsonl.gz", gzip_cut_on_line_boundary(lines, 4))
    complete = gzip.compress(b"".join(lines))
    assert zlib.decompressobj(wbits=31).decompress(complete[:-8]) == b"".join(lines)
    write_bytes(corpus / "b_no_trailer.jsonl.gz", complete[:-8])  # all data, no CRC / size trailer
    write_bytes(corpus / "c_intact.jsonl.gz", complete)
    bz = bz2.compress(b"".join(jsonl_lines(3, start=20)))
    write_bytes(corpus / "d_cut.jsonl.bz2", bz[:-12])
    write_bytes(corpus / "e_garbage.jsonl.gz", b"this was never gzip\n")
    expected_docs = (
        [doc(f"a_line_boundary.jsonl.gz:{i + 1}", f"review {i}", i % 2) for i in range(4)]
        + [doc(f"b_no_trailer.jsonl.gz:{i + 1}", f"review {i}", i % 2) for i in range(10)]
        + [doc(f"c_intact.jsonl.gz:{i + 1}", f"review {i}", i % 2) for i in range(10)]
    )
    p = BeamTestPipeline(options=beam_options)
    docs, dead = p | ReadCorpus(str(corpus / "*"), format=FORMAT_JSONL)
    assert_that(docs, equal_to(expected_docs), label="Docs")
    reasons = dead | beam.Map(lambda d: (d[DEAD_SOURCE_KEY].rsplit("/", 1)[1], d["row"], d[DEAD_REASON_KEY]))
    result_reasons = []

    def check(records):
        result_reasons.extend(records)
        by_file = {source: reason for source, row, reason in records}
        assert sorted(by_file) == ["a_line_boundary.jsonl.gz", "b_no_trailer.jsonl.gz", "d_cut.jsonl.bz2",
                                   "e_garbage.jsonl.gz"], records
        assert all(row == "" for _, row, _ in records)
        assert by_file["a_line_boundary.jsonl.gz"].startswith("truncated_file: gzip data ends before its end-of-stream")
        assert "rows read before it: 4" in by_file["a_line_boundary.jsonl.gz"]
        assert "compressed byte " in by_file["a_line_boundary.jsonl.gz"]
        assert by_file["b_no_trailer.jsonl.gz"].startswith("truncated_file:")
        assert "rows read before it: 10" in by_file["b_no_trailer.jsonl.gz"]
        assert by_file["d_cut.jsonl.bz2"].startswith("truncated_file: bzip2 data ends")
        assert by_file["e_garbage.jsonl.gz"].startswith("unreadable_file: corrupt gzip data")
        assert "rows read before it: 0" in by_file["e_garbage.jsonl.gz"]

    assert_that(reasons, check, label="Dead")
    with caplog.at_level(logging.WARNING):
        result = p.run()
        result.wait_until_finish()
    metrics = counters(result)
    assert metrics["files_truncated"] == 3
    assert metrics["files_unreadable"] == 1
    assert metrics["rows_in"] == len(expected_docs) + 4 == metrics["documents_out"] + metrics["dead_letter"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "Corpus file" in r.getMessage()]
    assert len(warned) == 4 and any("a_line_boundary.jsonl.gz: truncated_file" in w for w in warned)


@pytest.mark.parametrize("fmt, name, payload", [
    (FORMAT_CSV, "c.csv.gz", b"text,label\n" + b"".join(f"row {i},{i % 2}\n".encode() for i in range(50))),
    (FORMAT_TEXT, "t.txt.gz", b"".join(f"line {i}\n".encode() for i in range(50))),
])
def test_truncated_gzip_in_other_formats(tmp_path, fmt, name, payload):
    complete = gzip.compress(payload)
    path = write_bytes(tmp_path / name, complete[: len(complete) * 2 // 3])
    config = CorpusConfig(format=fmt, labelled=fmt != FORMAT_TEXT)
    outcomes = list(read_corpus_file(str(path), str(tmp_path), config))
    docs = [o.document for o in outcomes if o.document]
    assert 0 < len(docs) < 50
    # Rows before the damage are kept in order, none is invented.
    assert [d["text"] for d in docs] == [f"{'row' if fmt == FORMAT_CSV else 'line'} {i}" for i in range(len(docs))]
    [last] = [o for o in outcomes if o.dead_letter]
    assert last is outcomes[-1] and last.file_error == "truncated_file"
    assert f"rows read before it: {len(docs)}" in last.dead_letter[DEAD_REASON_KEY]


def test_intact_multi_member_and_zero_padded_gzip_read_completely(tmp_path):
    lines = jsonl_lines(6)
    data = gzip.compress(b"".join(lines[:3])) + gzip.compress(b"".join(lines[3:])) + b"\0" * 16
    path = write_bytes(tmp_path / "m.jsonl.gz", data)
    outcomes = list(read_corpus_file(str(path), str(tmp_path), CorpusConfig(format=FORMAT_JSONL)))
    assert [o.document["text"] for o in outcomes] == [f"review {i}" for i in range(6)]


def test_io_errors_are_not_dead_letters(tmp_path, monkeypatch):
    # A failing read (network, disk) must fail the bundle so the runner retries;
    # only damaged contents become a dead letter.
    path = write_bytes(tmp_path / "x.jsonl.gz", gzip.compress(b"".join(jsonl_lines(5))))

    class Failing(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, buffer):
            raise ConnectionResetError("connection reset")

    monkeypatch.setattr(FileSystems, "open", lambda *a, **k: io.BufferedReader(Failing()))
    with pytest.raises(ConnectionResetError):
        list(read_corpus_file(str(path), str(tmp_path), CorpusConfig(format=FORMAT_JSONL)))


# --------------------------------------------------------------------------
# 3. One document-size limit, no hidden parser limit
# --------------------------------------------------------------------------
def test_csv_field_of_200k_characters_is_a_document(tmp_path, beam_options):
    big = "word " * 40_000  # 200,000 characters: over the csv module's default 131,072 limit
    assert len(big) == 200_000 > 131_072
    path = tmp_path / "big.csv"
    write_delimited(path, [("big", big, "1"), ("after", "the row after", "0")])
    run_read(beam_options, tmp_path, ReadCorpus(str(path), format=FORMAT_CSV, id_column="id"),
             [doc("big", big, 1), doc("after", "the row after", 0)])


@pytest.mark.parametrize("fmt", [FORMAT_CSV, FORMAT_TSV, FORMAT_JSONL, FORMAT_TEXT])
def test_documents_over_the_limit_are_dead_letters_in_every_format(tmp_path, beam_options, fmt):
    limit = 1000
    texts = ["short one", "x" * limit, "y" * (limit + 1), "the row after"]
    if fmt in (FORMAT_CSV, FORMAT_TSV):
        write_delimited(tmp_path / f"c.{fmt}", [(f"r{i}", t, "1") for i, t in enumerate(texts)],
                        delimiter="," if fmt == FORMAT_CSV else "\t")
        kwargs = {"id_column": "id"}
        ids = [f"r{i}" for i in range(4)]
    elif fmt == FORMAT_JSONL:
        write_bytes(tmp_path / f"c.{fmt}", "".join(json.dumps({"text": t, "label": 1}) + "\n" for t in texts).encode())
        kwargs, ids = {}, [f"c.{fmt}:{i + 1}" for i in range(4)]
    else:
        write_bytes(tmp_path / f"c.{fmt}", "".join(t + "\n" for t in texts).encode())
        kwargs, ids = {"labelled": False}, [f"c.{fmt}:{i + 1}" for i in range(4)]
    label = None if fmt == FORMAT_TEXT else 1
    p = BeamTestPipeline(options=beam_options)
    docs, dead = p | ReadCorpus(str(tmp_path / f"c.{fmt}"), format=fmt, max_document_chars=limit, **kwargs)
    assert_that(docs, equal_to([doc(ids[i], texts[i], label) for i in (0, 1, 3)]), label="Docs")
    assert_that(dead | beam.Map(lambda d: (d[DEAD_REASON_KEY], len(d["row"]) < 1100)),
                equal_to([("document_too_large: 1001 chars > limit 1000 (max_document_chars)", True)]), label="Dead")
    p.run().wait_until_finish()


@pytest.mark.parametrize("fmt", [FORMAT_TEXT, FORMAT_CSV])
def test_a_line_past_the_read_bound_is_skipped_unread(tmp_path, fmt):
    # max_document_chars=10 reads lines of at most 4 * 10 + 1 MiB bytes; a longer
    # line is not held in memory: it becomes a dead letter and the next line is read.
    config = CorpusConfig(format=fmt, labelled=False, max_document_chars=10)
    huge = b"z" * (config.max_line_bytes + 5000)
    header = b"text\n" if fmt == FORMAT_CSV else b""
    path = write_bytes(tmp_path / f"h.{fmt}", header + b"before\n" + huge + b"\n" + b"after\n")
    outcomes = list(read_corpus_file(str(path), str(tmp_path), config))
    assert [o.document["text"] if o.document else None for o in outcomes] == ["before", None, "after"]
    dead = outcomes[1].dead_letter
    assert dead[DEAD_REASON_KEY].startswith(f"document_too_large: line {2 + len(header) // 5} has {len(huge) + 1} bytes")
    assert dead["row"].endswith(f"... [{len(huge) + 1} bytes in all]") and len(dead["row"]) < 1100


def test_max_document_chars_must_be_positive():
    with pytest.raises(ValueError, match="--max-document-chars must be >= 1, got 0"):
        ReadCorpus("x", format=FORMAT_CSV, max_document_chars=0)
    with pytest.raises(ValueError, match="max_document_chars must be a positive integer"):
        ReadCorpus("x", format=FORMAT_CSV, max_document_chars=True)
    assert ReadCorpus("x", format=FORMAT_CSV).config.max_document_chars == corpus_io.DEFAULT_MAX_DOCUMENT_CHARS


# --------------------------------------------------------------------------
# 4. Labels are class ids
# --------------------------------------------------------------------------
def test_negative_int_labels_are_dead_letters(tmp_path, beam_options):
    path = write_bytes(tmp_path / "l.csv", b"text,label\nfine,0\nnegative,-1\nalso fine,1\n")
    run_read(beam_options, tmp_path, ReadCorpus(str(path), format=FORMAT_CSV),
             [doc("l.csv:1", "fine", 0), doc("l.csv:3", "also fine", 1)],
             [("l.csv:2", "invalid_label", "negative,-1")])
    outcomes = list(read_corpus_file(str(path), str(tmp_path), CorpusConfig(format=FORMAT_CSV)))
    assert outcomes[1].dead_letter[DEAD_REASON_KEY] == (
        "invalid_label: negative label -1: int labels are class ids 0..K-1")


def test_oversized_tfrecord_and_aclimdb_file_are_skipped_unread(tmp_path):
    from tests.io_fixtures import make_aclimdb, make_example, write_tfrecord

    config = CorpusConfig(format="tfrecord", max_document_chars=10)  # read bound: 40 bytes + 1 MiB
    huge = b"w" * (config.max_line_bytes + 10)
    path = write_tfrecord(tmp_path / "t.tfrecord", [make_example({"text": b"small", "label": 1}),
                                                    make_example({"text": huge, "label": 0}),
                                                    make_example({"text": b"after", "label": 0})])
    outcomes = list(read_corpus_file(str(path), str(tmp_path), config))
    assert [o.document["text"] if o.document else None for o in outcomes] == ["small", None, "after"]
    assert outcomes[1].dead_letter[DEAD_REASON_KEY].startswith("document_too_large: record of ")
    root = make_aclimdb(tmp_path / "aclImdb")
    big = write_bytes(root / "train" / "pos" / "9_9.txt", huge)
    acl = CorpusConfig(format="aclimdb", max_document_chars=10)
    [outcome] = read_corpus_file(str(big), str(root), acl)
    assert outcome.dead_letter[DEAD_REASON_KEY].startswith(f"document_too_large: file has {len(huge)} bytes")
    assert len(outcome.dead_letter["row"]) < 1100


def test_truncated_gzip_tfrecord_is_a_truncated_file(tmp_path):
    from tests.io_fixtures import make_example, write_tfrecord

    path = write_tfrecord(tmp_path / "t.tfrecord.gz", [make_example({"text": f"doc {i}".encode(), "label": i % 2})
                                                       for i in range(200)], gzip=True)
    path.write_bytes(path.read_bytes()[:-4])  # the gzip size trailer is cut
    outcomes = list(read_corpus_file(str(path), str(tmp_path), CorpusConfig(format="tfrecord")))
    assert [o.document["text"] for o in outcomes[:-1]] == [f"doc {i}" for i in range(200)]
    assert outcomes[-1].file_error == "truncated_file"
    assert "gzip data ends before its end-of-stream marker" in outcomes[-1].dead_letter[DEAD_REASON_KEY]
