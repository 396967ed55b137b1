"""Hostile events, conflicting duplicates and damaged model directories for the stream pipeline.

Issue 11, items 6 and 7 (streaming part).  Every test here uses a streaming model
directory built by hand (`tests.helpers.build_streaming_model_dir`: random step
weights, no TensorFlow), so the module is fast; the equivalence of the NumPy
classifier with the exported TF graph is tests/test_streaming.py's job.

* `parse_event` over a table of hostile payloads and over seeded random mutations:
  it never raises, repairs lone surrogates (counted) and names a reason otherwise.
* The stateful DoFn driven directly (fake state and timer): conflicting duplicates,
  the bounded hash window, counters that reconcile after every event.
* A TestStream run (DirectRunner, streaming) and a `pipelines.stream
  --input-events` replay in a subprocess, each with poison events among good
  streams: the good streams' outputs are all there and equal a clean run.
* Damaged model directories: `StreamingClassifier.load` raises `ArtifactError`
  naming the file; the CLI prints one line and exits 2 before any work.
"""

import collections
import copy
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from beam_rnn.core import constants as C
from beam_rnn.stream import step as rnn_step
from beam_rnn import stream as streaming
from beam_rnn.stream import config, events, transform
from beam_rnn.core.manifest import ArtifactError, write_manifest
from beam_rnn.stream import StreamingClassifier
from tests.helpers import p_or_list
from tests.helpers import build_streaming_model_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return build_streaming_model_dir(str(tmp_path_factory.mktemp("hostile") / "lstm"), seed=3)


@pytest.fixture(scope="module")
def clf(model_dir) -> StreamingClassifier:
    return StreamingClassifier.load(model_dir)


def _encodable(value) -> None:
    """Every string in `value` encodes as strict UTF-8 (what every writer does)."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for k, v in value.items():
            _encodable(k)
            _encodable(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _encodable(v)


# --- parse_event: a table of hostile payloads ----------------------------------------------------

BIG = config.DEFAULT_MAX_EVENT_CHARS + 1


def _j(obj) -> str:
    return json.dumps(obj)


# (payload, expected): expected is a dead-letter reason code, or the parsed
# (stream_id, text, end, replaced_chars, lead, trail) of an event that is kept
# (possibly repaired); lead / trail: a lone low surrogate starting the text, a lone
# high one ending it (half a character cut between chunks, left for the stateful step).
HOSTILE = [
    # Lone surrogates (JSON escapes, as a client sends them): repaired, counted.
    ('{"stream_id": "s", "seq": 0, "text": "good \\ud83d x"}', ("s", "good \ufffd x", False, 1, "", "")),
    ('{"stream_id": "s", "seq": 0, "text": "\\ude00a\\ud83d\\ud83d"}', ("s", "a\ufffd", False, 1, "\ude00", "\ud83d")),
    ('{"stream_id": "s", "seq": 0, "text": "good \\ud83d"}', ("s", "good ", False, 0, "", "\ud83d")),
    ('{"stream_id": "s", "seq": 0, "text": "\\ude00"}', ("s", "", False, 0, "\ude00", "")),
    ('{"stream_id": "s", "seq": 0, "text": "\\ud83d\\ud83d"}', ("s", "\ufffd", False, 1, "", "\ud83d")),
    ('{"stream_id": "s", "seq": 0, "token": "\\udfff"}', ("s", " \ufffd ", False, 1, "", "")),
    ('{"stream_id": "s", "seq": 0, "token": "\\ud83d"}', ("s", " \ufffd ", False, 1, "", "")),
    ('{"stream_id": "\\ud83d", "seq": 0, "text": "x\\ud83dy"}', ("\ufffd", "x\ufffdy", False, 2, "", "")),
    # A valid escaped pair is one character, not a repair.
    ('{"stream_id": "s", "seq": 0, "text": "\\ud83d\\ude00 ok"}', ("s", "\U0001F600 ok", False, 0, "", "")),
    # The same as bytes (Pub/Sub), with a UTF-8 BOM first.
    (b'\xef\xbb\xbf{"stream_id": "s", "seq": 1, "text": "\\ud83d", "end": true}', ("s", "", True, 0, "", "\ud83d")),
    # NUL and other control characters are ordinary characters (the TFT graph keeps them in words).
    ('{"stream_id": "s\\u0000", "seq": 0, "text": "a\\u0000b \\u0001"}', ("s\x00", "a\x00b \x01", False, 0, "", "")),
    # null optional fields are absent fields.
    ('{"stream_id": 7, "seq": 0, "text": null, "end": null, "ts": null}', ("7", "", False, 0, "", "")),
    # Too large.
    (_j({"stream_id": "s", "seq": 0, "text": "a" * BIG}), "event_too_large"),
    (_j({"stream_id": "s", "seq": 0, "token": "a" * BIG}), "event_too_large"),
    (" " * (12 * config.DEFAULT_MAX_EVENT_CHARS + 65537), "event_too_large"),
    (b" " * (12 * config.DEFAULT_MAX_EVENT_CHARS + 65537), "event_too_large"),
    # Wrong types.
    (_j({"stream_id": "s", "seq": 0, "text": 5}), "bad_field"),
    (_j({"stream_id": "s", "seq": 0, "text": ["a"]}), "bad_field"),
    (_j({"stream_id": "s", "seq": 0, "text": {"a": 1}}), "bad_field"),
    (_j({"stream_id": "s", "seq": 0, "text": True}), "bad_field"),
    (_j({"stream_id": "s", "seq": 0, "token": 3.5}), "bad_field"),
    (_j({"stream_id": "s", "seq": 0, "text": "a", "token": "b"}), "bad_field"),
    (_j({"stream_id": 1.5, "seq": 0}), "bad_field"),
    (_j({"stream_id": True, "seq": 0}), "bad_field"),
    (_j({"stream_id": ["s"], "seq": 0}), "bad_field"),
    (_j({"stream_id": {"id": "s"}, "seq": 0}), "bad_field"),
    (_j({"stream_id": "", "seq": 0}), "bad_field"),
    (_j({"stream_id": "x" * (events.MAX_STREAM_ID_CHARS + 1), "seq": 0}), "bad_field"),
    ('{"stream_id": 100000000000000000000000, "seq": 0}', "bad_field"),
    (_j({"stream_id": "s", "seq": 1.0}), "bad_field"),
    (_j({"stream_id": "s", "seq": 1.5}), "bad_field"),
    (_j({"stream_id": "s", "seq": True}), "bad_field"),
    (_j({"stream_id": "s", "seq": "1"}), "bad_field"),
    (_j({"stream_id": "s", "seq": -1}), "bad_field"),
    (_j({"stream_id": "s", "seq": 2**63}), "bad_field"),
    (_j({"stream_id": "s", "seq": [0]}), "bad_field"),
    (_j({"stream_id": "s", "seq": 0, "end": "true"}), "bad_field"),
    (_j({"stream_id": "s", "seq": 0, "end": 1}), "bad_field"),
    (_j({"stream_id": "s", "seq": 0, "ts": "yesterday"}), "bad_field"),
    (_j({"stream_id": "s", "seq": 0, "ts": False}), "bad_field"),
    ('{"stream_id": "s", "seq": 0, "ts": 1e400}', "bad_field"),
    (_j({"stream_id": "s", "seq": 0, "ts": -1e20}), "bad_field"),
    (_j({"stream_id": "s", "seq": 0, "ts": 1e15}), "bad_field"),
    # Missing fields.
    (_j({"seq": 0, "text": "x"}), "missing_field"),
    (_j({"stream_id": "s", "text": "x"}), "missing_field"),
    (_j({"stream_id": None, "seq": 0}), "missing_field"),
    # Not JSON / not an object.
    (b"\xff\xfe{}", "invalid_json"),
    (b'{"stream_id": "s", "seq": 0, "text": "\xed\xa0\xbd"}', "invalid_json"),  # a surrogate as raw bytes (CESU)
    (b'{"stream_id": "s", "seq": 0, "text": "caf\xe9"}', "invalid_json"),  # Latin-1
    (b"", "invalid_json"),
    ("", "invalid_json"),
    ("   ", "invalid_json"),
    ('{"stream_id": "s", "seq": 0, "text": "cut', "invalid_json"),
    ('{"stream_id": "s", "seq": NaN}', "invalid_json"),
    ('{"stream_id": "s", "seq": Infinity}', "invalid_json"),
    ('{"stream_id": "s", "seq": ' + "9" * 5000 + "}", "invalid_json"),
    ("[" * 200_000 + "]" * 200_000, "invalid_json"),
    ('{"a":' * 100_000 + "1" + "}" * 100_000, "invalid_json"),
    ("[1, 2]", "not_an_object"),
    ('"just a string"', "not_an_object"),
    ("42", "not_an_object"),
    ("null", "not_an_object"),
    ("true", "not_an_object"),
    (42, "not_an_object"),
    (None, "not_an_object"),
    (["stream_id", "seq"], "not_an_object"),
]


@pytest.mark.parametrize("payload,expected", HOSTILE, ids=[f"hostile{i}" for i in range(len(HOSTILE))])
def test_parse_event_repairs_or_names_a_reason(payload, expected):
    parsed, error = events.parse_event(payload)
    if isinstance(expected, str):
        assert parsed is None and error is not None
        assert error[0] == expected, error
        # The dead letter for it is always encodable, whatever the payload held.
        dead = events.dead_letter("event", payload, *error)
        _encodable(dead)
        streaming.to_json_line(dead).encode("utf-8")
        assert len(dead["row"]) <= 4000 and len(dead["reason"]) <= 1000
    else:
        assert error is None, error
        stream_id, event = parsed
        edges = tuple(chr(event[k]) if k in event else "" for k in (events.LEAD_SURROGATE, events.TRAIL_SURROGATE))
        assert (stream_id, event["text"], event["end"], event.get(events.REPLACED_CHARS, 0), *edges) == expected
        _encodable(parsed)


def test_repair_text_counts_each_lone_surrogate():
    cases = [
        ("plain", ("plain", 0)),
        ("é\U0001F600", ("é\U0001F600", 0)),
        ("a\ud83db", ("a\ufffdb", 1)),
        ("\ud83d\ude00", ("\U0001F600", 0)),  # a pair held as two code points is joined
        ("\ude00\ud83d", ("\ufffd\ufffd", 2)),  # low before high: two lone ones
        ("\ud83d\ud83d\ude00\udfff", ("\ufffd\U0001F600\ufffd", 2)),
    ]
    for raw, want in cases:
        assert events.repair_text(raw) == want, ascii(raw)


def test_outputs_are_always_valid_utf8_json():
    record = {"stream_id": "a\ud83d", "token": "\udc00", "probability": 0.5}
    line = streaming.to_json_line(record)
    assert json.loads(line.encode("utf-8")) == {"stream_id": "a\ufffd", "token": "\ufffd", "probability": 0.5}
    assert json.loads(streaming.to_json_bytes(record)) == json.loads(line)


def _mutations(rng: random.Random, count: int) -> list:
    """Seeded random damage to good events: byte flips, cuts, splices, escapes, retyped fields."""
    goods = [
        {"stream_id": "m", "seq": 0, "text": "Good movie, great plot<br />"},
        {"stream_id": 12, "seq": 3, "token": "awful", "end": True, "ts": 100.5},
        {"stream_id": "é\U0001F600", "seq": 1, "text": "ÉCOLE \u00a0 x"},
    ]
    junk = ["\\ud83d", "\\udc00", "\\u0000", "\\", '"', "{", "}", "[", "]", ",", ":", "null", "true", "1e999",
            "-0", "NaN", "\u2028", "\U0001F600", "\\uZZZZ", "\\u12", "\x00", "\x7f"]
    values = [None, True, 0, -1, 2**70, 1.5, float("1e300"), "", "x" * 300, [], {}, [1], {"a": None}, "\ud83d"]
    out = []
    for _ in range(count):
        base = dict(rng.choice(goods))
        kind = rng.randrange(4)
        if kind == 0:  # retype a field
            base[rng.choice(["stream_id", "seq", "text", "token", "end", "ts", "other"])] = rng.choice(values)
            try:
                out.append(json.dumps(base, ensure_ascii=rng.random() < 0.5))
            except ValueError:
                out.append(base)  # a dict the caller hands over as is
            continue
        text = json.dumps(base)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(text) + 1)
            if kind == 1:
                text = text[:pos] + rng.choice(junk) + text[pos:]
            elif kind == 2:
                text = text[:pos] if rng.random() < 0.3 else text[:pos] + text[pos + rng.randint(1, 5):]
        data = text.encode("utf-8", "surrogatepass")
        if kind == 3:
            data = bytearray(data)
            for _ in range(rng.randint(1, 3)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        out.append(data if rng.random() < 0.5 else data.decode("utf-8", "surrogateescape"))
    return out


def test_parse_event_never_raises_on_random_damage():
    reasons = collections.Counter()
    for payload in _mutations(random.Random(11), 3000):
        parsed, error = events.parse_event(payload)
        assert (parsed is None) != (error is None)
        if error is not None:
            reasons[error[0]] += 1
            _encodable(events.dead_letter("event", payload, *error))
        else:
            _encodable(parsed)
    # The generator really reaches the dead-letter paths, and some events survive it.
    assert {"invalid_json", "bad_field"} <= set(reasons)
    assert sum(reasons.values()) < 3000


# --- The stateful DoFn, driven directly -----------------------------------------------------------


class _State:
    def __init__(self):
        self.value = None

    def read(self):
        return self.value

    def write(self, value):
        # Beam pickles the state (PickleCoder): nothing unpicklable may go in.  read()
        # then hands out this very object (as Beam's state cache may).
        self.value = pickle.loads(pickle.dumps(value))

    def clear(self):
        self.value = None


class _Timer:
    def __init__(self):
        self.at = None

    def set(self, ts):
        self.at = ts


class Harness:
    """`_ParseEventsFn` then `_StreamFn` per event, with fake per-key state and timers; counters gathered."""

    def __init__(self, clf: StreamingClassifier, **config):
        self.cfg = streaming.StreamConfig(**config)
        self.parse = transform._ParseEventsFn(self.cfg, use_event_ts=False)
        self.fn = transform._StreamFn("unused", self.cfg, classifier=clf)
        self.counts: collections.Counter = collections.Counter()
        self.fn._flush = lambda n: self.counts.update({k: v for k, v in n.items() if v})
        self.states: dict[str, _State] = collections.defaultdict(_State)
        self.timers: dict[str, _Timer] = collections.defaultdict(_Timer)
        self.outputs: list[dict] = []
        self.dead: list[dict] = []

    def _collect(self, items):
        for item in items:
            if isinstance(item, transform.beam.pvalue.TaggedOutput):
                self.dead.append(item.value)
            else:
                self.outputs.append(item)

    def send(self, payload, t: float = 0.0):
        self.counts["events_in"] += 1
        for item in self.parse.process(payload):
            if isinstance(item, transform.beam.pvalue.TaggedOutput):
                self.counts["dead_lettered"] += 1
                self.dead.append(item.value)
                continue
            key = item[0]
            self._collect(self.fn.process(item, timestamp=t, state=self.states[key], expiry=self.timers[key]))

    def expire(self, key: str):
        self._collect(self.fn.on_expiry(key=key, state=self.states[key], expiry=self.timers[key]))

    def reconciled(self) -> bool:
        """events_in = applied + duplicate + dead-lettered + still buffered (out of order, waiting)."""
        waiting = sum(len(s.value.get("early", {})) for s in self.states.values() if s.value is not None)
        r = streaming.reconcile(self.counts)
        return r["events_in"] == r["events_applied"] + r["events_duplicate"] + r["dead_lettered"] + waiting


def _ev(sid, seq, text=None, **kw):
    ev = {"stream_id": sid, "seq": seq, **kw}
    if text is not None:
        ev["text"] = text
    return json.dumps(ev)


def _tokens(outputs, sid):
    return [(r["seq"], r["token"]) for r in outputs if r["stream_id"] == sid and not r.get("final")]


def test_same_seq_different_content_is_a_conflicting_duplicate(clf):
    h = Harness(clf)
    h.send(_ev("a", 0, "good mo"))
    h.send(_ev("a", 0, "good mo"))  # exact redelivery
    h.send(_ev("a", 0, "bad plot"))  # conflict with an applied event
    h.send(_ev("a", 0, "good mo", end=True))  # same text, different end: a conflict too
    h.send(_ev("a", 2, "film "))  # buffered (seq 1 missing)
    h.send(_ev("a", 2, "film "))  # duplicate of a buffered event
    h.send(_ev("a", 2, "actor "))  # conflict with a buffered event
    h.send(_ev("a", 1, "vie "))
    h.send(json.dumps({"stream_id": "a", "seq": 3, "token": "plot"}))
    h.send(_ev("a", 3, " plot "))  # the same chunk as token "plot": same content
    h.send(_ev("a", 4, "", end=True))
    h.send(_ev("a", 4, "", end=True))  # after the end (tombstone): still checked
    h.send(_ev("a", 1, "VIE "))  # after the end, conflict
    assert _tokens(h.outputs, "a") == [(0, "good"), (1, "movie"), (2, "film"), (3, "plot")]
    conflicts = [d for d in h.dead if d["reason"].startswith("conflicting_duplicate")]
    assert [json.loads(d["row"])["text"] for d in conflicts] == ["bad plot", "good mo", "actor ", "VIE "]
    assert [d["source"] for d in conflicts] == ["a:0", "a:0", "a:2", "a:1"]
    assert "already applied" in conflicts[0]["reason"] and "already buffered" in conflicts[2]["reason"]
    assert h.counts["events_duplicate"] == 4 and h.counts["events_conflicting"] == 4
    assert h.counts["events_applied"] == 5 and h.counts.get("duplicates_unchecked", 0) == 0
    assert len(h.dead) == 4 and h.reconciled()


def _utf16_cuts(text: str, rng: random.Random, pieces: int) -> list[str]:
    """`text` cut at random UTF-16 code-unit positions (as a JS client slicing a string would):
    a cut inside an astral character leaves each half as a lone surrogate."""
    units = text.encode("utf-16-le")
    cuts = sorted({0, len(units) // 2, *(rng.randrange(len(units) // 2 + 1) for _ in range(pieces - 1))})
    return [units[2 * a : 2 * b].decode("utf-16-le", "surrogatepass") for a, b in zip(cuts, cuts[1:])]


def test_a_character_cut_between_two_events_is_joined(clf):
    rng = random.Random(21)
    alphabet = ["good", "movie", " ", " ", "\U0001F600", "\U0001F44D", "é", "ÉCOLE", ".", "<br />", "\u00a0", "zz"]
    joined = 0
    for trial in range(100):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 25)))
        chunks = _utf16_cuts(text, rng, rng.randint(1, 12))
        joined += sum(1 for c in chunks[1:] if c and "\udc00" <= c[0] <= "\udfff")
        events = [json.dumps({"stream_id": "e", "seq": i, "text": c, **({"end": True} if i == len(chunks) - 1 else {})})
                  for i, c in enumerate(chunks)]  # ensure_ascii: lone halves travel as \udXXX escapes
        order = events + [rng.choice(events) for _ in range(3)]  # redeliveries
        rng.shuffle(order)
        h = Harness(clf, max_buffered_events=64)
        for payload in order:
            h.send(payload)
        if h.states["e"].read()["status"] == "open":
            h.expire("e")
        state = clf.start()
        want, state = clf.feed(state, text)
        want += clf.finish(state)[0]
        got = sorted((r for r in h.outputs if not r.get("final")), key=lambda r: r["tokens_seen"])
        assert [(r["token"], p_or_list(r)) for r in got] == [(p.token, p.probability) for p in want], (trial, chunks)
        assert h.dead == [] and h.counts.get("replaced_chars", 0) == 0 and h.reconciled()
    assert joined >= 15  # the generator really cuts characters in half


def test_halves_that_cannot_be_joined_become_replacement_characters(clf):
    h = Harness(clf)
    for payload in [
        _ev("a", 0, "ok\ud83d"),  # high half, then an event without the low half
        _ev("a", 1, "next \ude00z"),  # a low half inside the text (not at its start)
        _ev("a", 2, "\ude00tail\ud83d", end=True),  # a low half first in the stream's event, a high half at the end
        _ev("b", 0, "\ude00start"),  # a low half with nothing before it
        _ev("c", 0, "abc\ud83d"),  # a high half, then the stream expires
        _ev("a", 0, "ok\ud83d"),  # a redelivery: the same content, lone half included
        _ev("a", 0, "ok\ud83e"),  # a different half: a conflicting duplicate
    ]:
        h.send(payload)
    h.expire("b")
    h.expire("c")
    for sid, text in (("a", "ok\ufffdnext \ufffdz\ufffdtail\ufffd"), ("b", "\ufffdstart"), ("c", "abc\ufffd")):
        state = clf.start()
        want, state = clf.feed(state, text)
        want += clf.finish(state)[0]
        assert [t for _, t in _tokens(h.outputs, sid)] == [p.token for p in want], sid
    assert h.counts["replaced_chars"] == 5  # in the DoFn: ok/next, tail (lead, end), b (lead), c (expiry)
    assert [d["reason"].split(":")[0] for d in h.dead] == ["conflicting_duplicate"]
    assert "ok\ufffd" in h.dead[0]["row"] and h.reconciled()


def test_conflict_window_is_bounded(clf):
    h = Harness(clf, conflict_window=4)
    for seq in range(10):
        h.send(_ev("w", seq, f"w{seq} "))
        record = h.states["w"].read()
        assert len(record["hashes"]) == 8 * min(seq + 1, 4)  # 8 bytes per remembered event, at most 4
    h.send(_ev("w", 6, "other "))  # inside the window (seqs 6..9): checked
    h.send(_ev("w", 5, "other "))  # outside: cannot be checked, counted as an unchecked duplicate
    h.send(_ev("w", 9, "w9 "))
    assert [d["source"] for d in h.dead] == ["w:6"]
    assert h.counts["duplicates_unchecked"] == 1 and h.counts["events_duplicate"] == 2 and h.reconciled()
    off = Harness(clf, conflict_window=0)
    off.send(_ev("w", 0, "a "))
    off.send(_ev("w", 0, "b "))
    assert off.dead == [] and off.counts["duplicates_unchecked"] == 1 and off.states["w"].read()["hashes"] == b""


def test_hostile_events_among_good_streams_in_the_dofn(clf):
    h = Harness(clf)
    good = {"g1": ["The movie was GR", "EAT, truly go", "od.<b", "r />Bad plot"], "g2": ["awful ", "film"]}
    poison = [payload for payload, _ in HOSTILE] + _mutations(random.Random(5), 500)
    rng = random.Random(9)
    rng.shuffle(poison)
    steps = []
    for sid, chunks in good.items():
        steps += [(sid, i, c, i == len(chunks) - 1) for i, c in enumerate(chunks)]
    i = 0
    for payload in poison:
        h.send(payload)
        if rng.random() < 0.02 and i < len(steps):
            sid, seq, text, end = steps[i]
            h.send(_ev(sid, seq, text, end=end))
            i += 1
        assert h.reconciled()  # after every single event
    for sid, seq, text, end in steps[i:]:
        h.send(_ev(sid, seq, text, end=end))
    for key in list(h.states):
        if h.states[key].read() is not None and h.states[key].read()["status"] == "open":
            h.expire(key)
    for sid, chunks in good.items():
        preds, _ = clf.feed(clf.start(), "".join(chunks))
        preds += clf.finish(_)[0]
        got = [r for r in h.outputs if r["stream_id"] == sid and not r.get("final")]
        assert [r["token"] for r in got] == [p.token for p in preds]
        assert [p_or_list(r) for r in got] == [p.probability for p in preds]
    for record in h.outputs + h.dead:
        _encodable(record)
        streaming.to_json_line(record).encode("utf-8")
    assert h.counts.get("internal_errors", 0) == 0 and h.reconciled()


def test_an_unexpected_error_dead_letters_the_event_and_keeps_the_stream(clf, monkeypatch):
    h = Harness(clf)
    h.send(_ev("a", 0, "good "))
    h.send(_ev("a", 2, "plot "))  # buffered
    before = copy.deepcopy(h.states["a"].read())
    original = h.fn._apply
    failures = [1]

    def broken(stream_id, record, seq, *args):
        if seq == 1 and failures:
            failures.pop()
            record["early"].clear()  # half-done changes that must not reach the stored state
            record["next_seq"] = 99
            raise RuntimeError("boom")
        return original(stream_id, record, seq, *args)

    monkeypatch.setattr(h.fn, "_apply", broken)
    h.send(_ev("a", 1, "bad "))
    assert h.states["a"].read() == before
    assert [d["reason"] for d in h.dead] == ["internal_error: RuntimeError: boom"]
    h.send(_ev("a", 3, "", end=True))
    h.send(_ev("a", 1, "film "))
    assert _tokens(h.outputs, "a") == [(0, "good"), (1, "film"), (2, "plot")]
    assert h.counts["internal_errors"] == 1 and h.reconciled()


def test_seq_below_first_seq_is_a_dead_letter(clf):
    h = Harness(clf, first_seq=5)
    h.send(_ev("a", 4, "x "))
    h.send(_ev("a", 5, "good ", end=True))
    assert [d["reason"].split(":")[0] for d in h.dead] == ["bad_field"]
    assert _tokens(h.outputs, "a") == [(5, "good")] and h.reconciled()


# --- Beam: TestStream (DirectRunner, streaming) ----------------------------------------------------


def _append(record: dict, path: str) -> None:
    # The writer's encoding: strict UTF-8 of to_json_line (a lone surrogate would raise here).
    with open(path, "ab") as f:
        f.write(streaming.to_json_line(record).encode("utf-8") + b"\n")


def _lines(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        return [json.loads(line.decode("utf-8")) for line in f]


POISON = [
    '{"stream_id": "p", "seq": 0, "text": "half an emoji \\ud83d and more"}',  # repaired, not dead
    b'{"stream_id": "q", "seq": 0, "text": "\xff\xfe"}',
    '{"stream_id": "g1", "seq": 0, "text": "not the first text"}',  # conflicting duplicate of g1:0
    '{"stream_id": "g1", "seq": 1, "text": "\\ud83d"}',  # ... of g1:1, after repair
    json.dumps({"stream_id": "r", "seq": 0, "text": "x" * BIG}),
    json.dumps({"stream_id": ["g1"], "seq": 2}),
    json.dumps({"stream_id": "g2", "seq": 1.0, "text": "film"}),
    json.dumps({"stream_id": "g2", "seq": 1, "end": "yes"}),
    json.dumps(["g1", 0, "text"]),
    "",
    b"",
    "[" * 100_000,
    '{"stream_id": "n\\u0000", "seq": 0, "text": "nul\\u0000 inside", "end": true}',  # kept: NUL is a character
]


@pytest.mark.parametrize("events_as", ["str", "bytes"])
def test_test_stream_poison_events_do_not_touch_good_streams(clf, model_dir, events_as):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.testing.test_stream import TestStream
    from apache_beam.transforms.window import TimestampedValue

    def as_payload(ev):
        text = json.dumps(ev) if isinstance(ev, dict) else ev
        return text.encode("utf-8") if events_as == "bytes" and isinstance(text, str) else text

    g1 = [{"stream_id": "g1", "seq": i, "text": t} for i, t in enumerate(["Good mo", "vie, GREAT plot", "<br />bad"])]
    g1[-1]["end"] = True
    g2 = [{"stream_id": "g2", "seq": 0, "token": "awful"}, {"stream_id": "g2", "seq": 1, "token": "film", "end": True}]
    ts = (
        TestStream()
        # A conflicting duplicate comes in a later bundle than the event it conflicts with
        # (within one bundle, arrival order per key is up to the runner).
        .add_elements([TimestampedValue(as_payload(x), 1) for x in [g1[0], POISON[0], POISON[1], g2[0]]])
        .advance_watermark_to(2)
        .add_elements([TimestampedValue(as_payload(x), 3) for x in [POISON[2], g1[1], g1[1], *POISON[4:9], g2[1]]])
        .advance_watermark_to(4)
        .add_elements([TimestampedValue(as_payload(x), 5) for x in [POISON[3], *POISON[9:], g1[2]]])
        .advance_watermark_to_infinity()
    )
    options = PipelineOptions(["--runner=DirectRunner"])
    options.view_as(StandardOptions).streaming = True
    out = tempfile.mkdtemp(prefix="hostile_ts_")
    try:
        p = beam.Pipeline(options=options)
        result = p | ts | streaming.StreamPredictions(model_dir, ttl_seconds=10, use_event_ts=False)
        _ = result["predictions"] | "P" >> beam.Map(_append, os.path.join(out, "p.jsonl"))
        _ = result["dead_letter"] | "D" >> beam.Map(_append, os.path.join(out, "d.jsonl"))
        p.run().wait_until_finish()
        preds, dead = _lines(os.path.join(out, "p.jsonl")), _lines(os.path.join(out, "d.jsonl"))
    finally:
        shutil.rmtree(out)

    def expected(text: str) -> list:
        state = clf.start()
        got, state = clf.feed(state, text)
        return [(p.token, p.probability) for p in got + clf.finish(state)[0]]

    for sid, text in (("g1", "Good movie, GREAT plot<br />bad"), ("g2", " awful  film "),
                      ("p", "half an emoji \ufffd and more"), ("n\x00", "nul\x00 inside")):
        got = sorted((r for r in preds if r["stream_id"] == sid and not r.get("final")), key=lambda r: r["tokens_seen"])
        assert [(r["token"], p_or_list(r)) for r in got] == expected(text), sid
        [final] = [r for r in preds if r["stream_id"] == sid and r.get("final")]
        assert final["tokens_seen"] == len(got)
    assert {r["stream_id"] for r in preds} == {"g1", "g2", "p", "n\x00"}
    reasons = sorted(d["reason"].split(":")[0] for d in dead)
    assert reasons == sorted(["invalid_json", "conflicting_duplicate", "conflicting_duplicate", "event_too_large",
                              "bad_field", "bad_field", "bad_field", "not_an_object", "invalid_json",
                              "invalid_json", "invalid_json"])


# --- The driver: a JSON Lines replay with poison lines ------------------------------------------------


def _cli(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([PYTHON, "-m", "pipelines.stream", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=env, cwd=str(REPO_ROOT), timeout=timeout)


def test_replay_with_poison_lines_exits_0_with_every_good_stream(clf, model_dir, tmp_path):
    good = []
    for sid, chunks in (("s1", ["The movie was GR", "EAT, truly go", "od.", " Bad plot"]), ("s2", ["awful film ", "xyzzy"]),
                        ("s7", ["smile\ud83d", "\ude00 wide"])):  # an emoji cut between two events
        good += [{"stream_id": sid, "seq": i, "text": c, "ts": 100 + i, **({"end": True} if i == len(chunks) - 1 else {})}
                 for i, c in enumerate(chunks)]
    lines = [json.dumps(ev).encode() for ev in good]
    # In a batch replay the order of one stream's events is up to the runner, so the
    # conflicting pair gets a stream of its own: whichever comes first stands.
    poison = [
        b'{"stream_id": "s3", "seq": 0, "text": "cut emoji \\ud83d here", "end": true, "ts": 100}',  # repaired
        b'{"stream_id": "s6", "seq": 0, "text": "good film", "end": true, "ts": 100}',
        b'{"stream_id": "s6", "seq": 0, "text": "bad plot", "end": true, "ts": 101}',  # conflicting duplicate
        json.dumps(good[1]).encode(),  # an exact duplicate
        b'{"stream_id": "s4", "seq": 0, "text": "latin-1 caf\xe9"}',  # not UTF-8
        b'{"stream_id": "s4", "seq": 0, "text": "nul \\u0000", "end": true, "ts": 100}',  # kept (NUL)
        json.dumps({"stream_id": "s5", "seq": 0, "text": "y" * 50}).encode(),  # over --max-event-chars 40
        json.dumps({"stream_id": "s5", "seq": "0"}).encode(),
        json.dumps({"stream_id": {"a": 1}, "seq": 0}).encode(),
        json.dumps({"stream_id": "s5", "seq": 0, "end": 0}).encode(),
        json.dumps({"stream_id": "s5", "seq": 0, "ts": "noon"}).encode(),
        b"[1, 2, 3]",
        b'"a string"',
        b"{" * 50_000,
        b'{"stream_id": "s5", "seq": 0, "text": NaN}',
    ]
    rng = random.Random(4)
    for line in poison:
        lines.insert(rng.randrange(len(lines) + 1), line)
    first_good = json.dumps(good[0]).encode()
    lines[lines.index(first_good)] = b"\xef\xbb\xbf" + first_good  # a UTF-8 BOM (harmless)
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n\n")
    out = tmp_path / "out" / "preds"
    proc = _cli(["--model", model_dir, "--input-events", str(tmp_path / "ev" / "*.jsonl"), "--output", str(out),
                 "--max-event-chars", "40"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    stats = json.loads((tmp_path / "out" / "preds-stats.json").read_text())
    assert stats["reconciled"] is True
    assert stats["events_in"] == len(lines) == len(good) + len(poison)
    assert stats["events_applied"] == len(good) + 3  # + s3 (repaired), s4 (NUL), one of s6's
    assert stats["events_duplicate"] == 1 and stats["events_conflicting"] == 1
    assert stats["dead_lettered"] == len(poison) - 4
    assert stats["replaced_chars"] == 1 and stats["events_repaired"] == 1
    assert stats["counters"]["surrogates_joined"] == 1
    assert json.loads(proc.stdout.strip().splitlines()[-1])["reconciled"] is True

    rows = [json.loads(line) for f in (tmp_path / "out").glob("preds-0*.jsonl") for line in f.read_bytes().decode("utf-8").splitlines()]
    dead = [json.loads(line) for f in (tmp_path / "out").glob("preds-dead_letter-*.jsonl")
            for line in f.read_bytes().decode("utf-8").splitlines()]
    for sid, text in (("s1", "The movie was GREAT, truly good. Bad plot"), ("s2", "awful film xyzzy"),
                      ("s3", "cut emoji \ufffd here"), ("s4", "nul \x00"), ("s7", "smile\U0001F600 wide")):
        state = clf.start()
        want, state = clf.feed(state, text)
        want += clf.finish(state)[0]
        got = sorted((r for r in rows if r["stream_id"] == sid and not r.get("final")), key=lambda r: r["tokens_seen"])
        assert [(r["token"], p_or_list(r)) for r in got] == [(p.token, p.probability) for p in want], sid
        [final] = [r for r in rows if r["stream_id"] == sid and r.get("final")]
        assert final["reason"] == "end" and final["tokens_seen"] == len(want)
    s6 = [r["token"] for r in rows if r["stream_id"] == "s6" and not r.get("final")]
    [conflict] = [d for d in dead if d["reason"].startswith("conflicting_duplicate")]
    assert {" ".join(s6), json.loads(conflict["row"])["text"]} == {"good film", "bad plot"}
    assert conflict["source"] == "s6:0"
    assert sorted(d["reason"].split(":")[0] for d in dead) == sorted(
        ["conflicting_duplicate", "invalid_json", "event_too_large", "bad_field", "bad_field", "bad_field", "bad_field",
         "not_an_object", "not_an_object", "invalid_json", "invalid_json"])
    latin = next(d for d in dead if "not UTF-8" in d["reason"])
    assert "caf\ufffd" in latin["row"]


# --- Damaged model directories and inputs: one line, exit 2, before work ---------------------------


def _copy_model(model_dir: str, tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(model_dir, dst)
    return dst


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_load_verifies_the_manifest_before_reading(model_dir, tmp_path):
    npz = C.STEP_WEIGHTS_FILE
    # Truncated: the size differs from the manifest.
    d = _copy_model(model_dir, tmp_path, "truncated")
    _truncate(d / npz)
    with pytest.raises(ArtifactError, match=rf"{npz} is damaged \(\d+ bytes, expected \d+\)"):
        StreamingClassifier.load(str(d))
    # Garbage of the same size: the sha256 differs.
    d = _copy_model(model_dir, tmp_path, "garbage")
    (d / npz).write_bytes(os.urandom((d / npz).stat().st_size))
    with pytest.raises(ArtifactError, match=rf"{npz} is damaged \(sha256"):
        StreamingClassifier.load(str(d))
    # Each file load reads is covered.
    for name in ("vocab.txt", C.PREPROCESS_CONFIG_FILE, C.MODEL_CARD_FILE):
        d = _copy_model(model_dir, tmp_path, "bad_" + name)
        with open(d / name, "ab") as f:
            f.write(b"x")
        with pytest.raises(ArtifactError, match=name.replace(".", r"\.") + " is damaged"):
            StreamingClassifier.load(str(d))
    # No manifest (an export that did not finish, or an old one).
    d = _copy_model(model_dir, tmp_path, "no_manifest")
    (d / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest.json"):
        StreamingClassifier.load(str(d))
    # A manifest that does not list the step weights.
    d = _copy_model(model_dir, tmp_path, "unlisted")
    manifest = json.loads((d / "manifest.json").read_text())
    del manifest["files"]["vocab.txt"]
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="vocab.txt is not part of it"):
        StreamingClassifier.load(str(d))
    assert issubclass(streaming.ModelDirError, ArtifactError) and issubclass(ArtifactError, ValueError)


def test_a_damaged_file_the_manifest_vouches_for_is_still_named(model_dir, tmp_path):
    # The manifest rewritten after the damage (e.g. a broken export): parsing must fail cleanly too.
    cases = {
        C.STEP_WEIGHTS_FILE: lambda p: _truncate(p, 0.7),
        "vocab.txt": lambda p: p.write_bytes(b"good\n\xff\xfe\n"),
        C.PREPROCESS_CONFIG_FILE: lambda p: p.write_text('{"num_oov_buckets": '),
    }
    for name, damage in cases.items():
        d = _copy_model(model_dir, tmp_path, "vouched_" + name)
        damage(d / name)
        write_manifest(str(d))
        with pytest.raises(ArtifactError, match=f"{name.replace('.', '[.]')} is damaged") as info:
            StreamingClassifier.load(str(d))
        assert "\n" not in str(info.value)
    d = _copy_model(model_dir, tmp_path, "vouched_zip")
    _truncate(d / C.STEP_WEIGHTS_FILE, 0.7)
    with pytest.raises(ValueError, match="not a readable .npz file"):
        rnn_step.StepWeights.load(d / C.STEP_WEIGHTS_FILE)


def test_cli_damaged_model_exits_2_with_one_line_before_work(model_dir, tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"stream_id": "a", "seq": 0, "text": "good", "end": True}) + "\n")
    truncated = _copy_model(model_dir, tmp_path, "truncated")
    _truncate(truncated / C.STEP_WEIGHTS_FILE)
    garbage = _copy_model(model_dir, tmp_path, "garbage")
    size = (garbage / C.STEP_WEIGHTS_FILE).stat().st_size
    (garbage / C.STEP_WEIGHTS_FILE).write_bytes(b"\0" * size)
    vouched = _copy_model(model_dir, tmp_path, "vouched")
    _truncate(vouched / C.STEP_WEIGHTS_FILE, 0.7)
    write_manifest(str(vouched))
    for bad in (truncated, garbage, vouched):
        for args in (["--input-events", str(events), "--output", str(tmp_path / "o" / "p")], ["--json"]):
            proc = _cli(["--model", str(bad), *args], timeout=120)
            assert proc.returncode == 2, (bad, proc.stderr[-2000:])
            err = proc.stderr.strip()
            assert err.count("\n") == 0 and "Traceback" not in err, err
            assert C.STEP_WEIGHTS_FILE in err and "is damaged" in err and str(bad) in err, err
            assert proc.stdout == ""
    assert not (tmp_path / "o").exists()  # nothing was started


def test_cli_input_events_must_match_readable_files(model_dir, tmp_path):
    out = ["--output", str(tmp_path / "o" / "p")]
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.jsonl").write_text("")
    for pattern, message in (
        (str(tmp_path / "nothing-*.jsonl"), "matches no files"),
        (str(tmp_path / "missing.jsonl"), "matches no files"),
        (str(tmp_path / "dir"), "is a directory"),
    ):
        proc = _cli(["--model", model_dir, "--input-events", pattern, *out], timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        err = proc.stderr.strip()
        assert err.count("\n") == 0 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_building_the_transform_logs_no_type_hint_complaints(model_dir, caplog):
    # No `from __future__ import annotations` in the module: Beam sees real type hints on
    # the DoFns (string hints are logged once each and not checked), and none it rejects.
    import inspect
    import logging
    import typing

    import apache_beam as beam

    for module in (transform, events):  # the DoFns and the types they use
        assert "from __future__ import annotations" not in inspect.getsource(module)
    assert typing.get_type_hints(transform._StreamFn.process)["element"] == tuple[str, dict[str, typing.Any]]
    with caplog.at_level(logging.INFO):
        p = beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(["--runner=DirectRunner"]))
        result = p | beam.Create([b"{}"]) | streaming.StreamPredictions(model_dir)
        _ = result["predictions"] | beam.Map(streaming.to_json_line)
    complaints = [r.getMessage() for r in caplog.records if "type hint" in r.getMessage()]
    assert complaints == []
