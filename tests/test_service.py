"""`beam-rnn serve` in-process (Starlette's TestClient): the WebSocket protocol, /v1/stream, /v1/classify,
limits, metrics, reloads, and the batcher.

The models are hand-built streaming exports (`tests.helpers.build_streaming_model_dir`: random step
weights, vocabulary, card and manifest; no TensorFlow), so this file is fast: ``a`` and ``b`` share a
vocabulary and differ in weights, ``multi`` has 3 classes.  tests/test_service_models.py holds the
checks against real SavedModel exports (serving_default, the BiLSTM), tests/test_service_cli.py the
command line.

The batched step is NumPy's, but BLAS rounds a batch of rows differently from one row (gemm vs gemv:
up to ~5e-7 in a logit at 128 units), so the service's probabilities are compared with
`StreamingClassifier`'s within `TOL` (and labels and token counts exactly).
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import threading
import time
import warnings

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.websockets import WebSocketDisconnect

from beam_rnn.core.errors import InputError
from beam_rnn.service.app import create_app
from beam_rnn.service.config import ServiceConfig, is_loopback
from beam_rnn.service.models import load_models
from beam_rnn.service.metrics import LATENCY_BUCKETS, PREFIX, ServiceMetrics
from beam_rnn.service.sessions import Batcher, SessionTable
from beam_rnn.stream import step as rnn_step
from beam_rnn.stream.classifier import StreamingClassifier
from tests.helpers import WORDS, build_streaming_model_dir

with warnings.catch_warnings():  # Starlette 1.x prefers the httpx2 fork; httpx (the test extra) still works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

TOL = 1e-6
WORDS_PLUS = WORDS + ["café", "naïve", "film🎬"]  # multi-byte characters in the vocabulary too
TEXT = ("Good movie, GREAT plot!<br /><br />The actor... was fine; café naïve film🎬 — <i>awful</i> poor "
        "the a and of bad unknownword ÉCOLE film")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("service")
    return {
        "a": build_streaming_model_dir(str(root / "a"), WORDS_PLUS, seed=1, units=16),
        "b": build_streaming_model_dir(str(root / "b"), WORDS_PLUS, seed=2, units=16),
        "multi": build_streaming_model_dir(str(root / "multi"), WORDS_PLUS, seed=3, num_classes=3),
    }


@pytest.fixture(scope="module")
def clf(dirs) -> StreamingClassifier:
    return StreamingClassifier.load(dirs["a"])


def make_app(model_dirs: list[str], **settings):
    config = ServiceConfig(**settings)
    return create_app(config, load_models(model_dirs, max_pending_chars=config.max_pending_chars), model_dirs)


@pytest.fixture
def client(dirs):
    with TestClient(make_app([dirs["a"]])) as c:
        yield c


def stream_reference(clf: StreamingClassifier, chunks: list[str], finish: bool = True) -> list[dict]:
    """`StreamingClassifier`'s prediction after each chunk (and after finishing), as dicts of `current`."""
    state, out = clf.start(), []
    for chunk in chunks:
        _, state = clf.feed(state, chunk)
        out.append(clf.current(state))
    if finish:
        _, state = clf.finish(state)
        out.append(clf.current(state))
    return out


def assert_same_prediction(frame: dict, want: dict) -> None:
    assert frame["type"] == "prediction"
    assert frame["tokens_seen"] == want["tokens_seen"]
    assert frame["predicted_label"] == want["predicted_label"]
    assert frame["predicted_label_name"] == want["predicted_label_name"]
    assert list(frame["probabilities"]) == list(want["probabilities"])
    for name, p in want["probabilities"].items():
        assert abs(frame["probabilities"][name] - p) <= TOL, (name, frame["probabilities"][name], p)


def chunks_of(text: str, seed: int, max_len: int = 5) -> list[str]:
    rng, out, i = random.Random(seed), [], 0
    while i < len(text):
        j = i + rng.randint(1, max_len)
        out.append(text[i:j])
        i = j
    return out


def metric(client: TestClient, name: str, **labels) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


# --- The WebSocket ---------------------------------------------------------------------------------


def test_hello_frame_names_the_model_classes_and_policy(dirs):
    with TestClient(make_app([dirs["a"]], decide_at=0.75, min_tokens=3)) as c, c.websocket_connect("/v1/ws") as ws:
        hello = ws.receive_json()
    assert hello["type"] == "hello" and len(hello["session"]) >= 16
    assert hello == {**hello, "model": "lstm", "classes": ["0", "1"], "decide_at": 0.75, "min_tokens": 3}


def test_text_chunks_split_anywhere_give_the_classifiers_predictions(client, clf):
    chunks = chunks_of(TEXT, seed=0)
    assert any(c[:1].isalpha() and c[-1:].isalpha() for c in chunks)  # splits inside words
    want = stream_reference(clf, chunks)
    with client.websocket_connect("/v1/ws") as ws:
        ws.receive_json()
        for i, chunk in enumerate(chunks):
            ws.send_json({"text": chunk})
            frame = ws.receive_json()
            assert frame["seq"] == i + 1 and frame["final"] is False
            assert_same_prediction(frame, want[i])
        ws.send_json({"finish": True})
        final = ws.receive_json()
    assert final["final"] is True and final["seq"] == len(chunks) + 1
    assert_same_prediction(final, want[-1])
    whole = clf.predict_text(TEXT)
    assert final["tokens_seen"] == len(clf.text_ids(TEXT)) and final["predicted_label"] == whole["predicted_label"]
    assert all(abs(final["probabilities"][k] - p) <= TOL for k, p in whole["probabilities"].items())


def test_binary_frames_split_inside_utf8_sequences(client, clf):
    data = TEXT.encode("utf-8")
    cuts = [i for i in range(1, len(data)) if (data[i] & 0xC0) == 0x80][::2]  # inside multi-byte characters
    assert len(cuts) >= 4
    pieces = [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)])]
    with client.websocket_connect("/v1/ws") as ws:
        ws.receive_json()
        for piece in pieces:
            ws.send_bytes(piece)
            assert ws.receive_json()["type"] == "prediction"
        ws.send_json({"finish": True})
        final = ws.receive_json()
        # The session starts again from the empty text after finishing.
        ws.send_json({"text": "good film "})
        again = ws.receive_json()
    assert_same_prediction(final, stream_reference(clf, [TEXT])[-1])
    assert_same_prediction(again, stream_reference(clf, ["good film "], finish=False)[-1])


def test_reset_starts_a_fresh_text(client, clf):
    with client.websocket_connect("/v1/ws") as ws:
        ws.receive_json()
        ws.send_json({"text": "awful awful bad "})
        ws.receive_json()
        ws.send_json({"reset": True})
        empty = ws.receive_json()
        ws.send_json({"text": "great film", "finish": True})
        final = ws.receive_json()
    assert_same_prediction(empty, clf.current(clf.start()))
    assert empty["tokens_seen"] == 0 and empty["seq"] == 2
    assert_same_prediction(final, stream_reference(clf, ["great film"])[-1])


def _policy(clf: StreamingClassifier, words: list[str]) -> tuple[float, int]:
    """A threshold that fires inside `words` (the median top probability after token 2) and where it fires."""
    predictions, _ = clf.feed(clf.start(), " ".join(words) + " ")
    decide_at = float(np.median([max(p.probabilities.values()) for p in predictions[2:]]))
    fired, _ = clf.decide(clf.start(), predictions, decide_at, 3)
    assert fired is not None
    return decide_at, fired.tokens_seen


def test_decision_frame_once_per_text_right_after_its_prediction(dirs, clf):
    words = (WORDS * 3)[:30]
    decide_at, position = _policy(clf, words)
    with TestClient(make_app([dirs["a"]], decide_at=decide_at, min_tokens=3)) as c, c.websocket_connect("/v1/ws") as ws:
        ws.receive_json()
        for _ in range(2):  # two texts: one decision each
            frames = []
            for word in words:
                ws.send_json({"text": word + " "})
                frames.append(ws.receive_json())
                if frames[-1]["tokens_seen"] == position:
                    frames.append(ws.receive_json())
            ws.send_json({"finish": True})
            frames.append(ws.receive_json())
            decisions = [f for f in frames if f["type"] == "decision"]
            assert len(decisions) == 1 and decisions[0]["position"] == position
            before = frames[frames.index(decisions[0]) - 1]
            assert before["type"] == "prediction" and before["tokens_seen"] == position
            assert decisions[0]["predicted_label_name"] == before["predicted_label_name"]
            assert abs(decisions[0]["probability"] - max(before["probabilities"].values())) <= TOL
            assert frames[-1]["final"] is True


def test_bad_messages_get_an_error_frame_and_the_session_goes_on(dirs, clf):
    bad = [
        ("text", "not json", "invalid_json"),
        ("text", "[1, 2]", "not_an_object"),
        ("text", '{"txt": "a"}', "unknown_keys"),
        ("text", "{}", "empty_message"),
        ("text", '{"text": 5}', "bad_text"),
        ("text", '{"finish": false}', "bad_finish"),
        ("text", '{"reset": true, "text": "a"}', "conflicting_keys"),
        ("text", json.dumps({"text": "x" * 41}), "text_too_large"),
        ("text", " " * (12 * 40 + 65537), "message_too_large"),
        ("bytes", b"good \xff film", "invalid_utf8"),
    ]
    with TestClient(make_app([dirs["a"]], max_message_chars=40)) as c, c.websocket_connect("/v1/ws") as ws:
        ws.receive_json()
        ws.send_json({"text": "good movie "})
        ws.receive_json()
        for seq, (kind, payload, reason) in enumerate(bad, start=2):
            ws.send_text(payload) if kind == "text" else ws.send_bytes(payload)
            frame = ws.receive_json()
            assert frame["type"] == "error" and frame["reason"] == reason and frame["seq"] == seq, frame
            assert frame["detail"]
        # Half of "é" and then a JSON text: the pending byte can never become valid.
        ws.send_bytes("caf".encode() + "é".encode()[:1])
        assert ws.receive_json()["type"] == "prediction"
        ws.send_json({"text": "x"})
        assert ws.receive_json()["reason"] == "invalid_utf8"
        ws.send_json({"text": " plot", "finish": True})
        final = ws.receive_json()
        errors = metric(c, "beam_rnn_serve_errors_total", reason="invalid_utf8")
    # Rejected messages changed nothing (the pending "caf" was kept, the lone byte dropped).
    assert_same_prediction(final, stream_reference(clf, ["good movie ", "caf", " plot"])[-1])
    assert errors == 2


def test_lone_surrogates_in_json_are_repaired_not_fatal(client, clf):
    with client.websocket_connect("/v1/ws") as ws:
        ws.receive_json()
        ws.send_text('{"text": "good \\ud83d film", "finish": true}')
        frame = ws.receive_json()
    assert_same_prediction(frame, stream_reference(clf, ["good \ufffd film"])[-1])


# --- Limits --------------------------------------------------------------------------------------------


def test_max_sessions_closes_a_new_socket_with_1013(dirs):
    with TestClient(make_app([dirs["a"]], max_sessions=2)) as c:
        with c.websocket_connect("/v1/ws") as one, c.websocket_connect("/v1/ws") as two:
            one.receive_json(), two.receive_json()
            with c.websocket_connect("/v1/ws") as three, pytest.raises(WebSocketDisconnect) as closed:
                three.receive_json()
            assert closed.value.code == 1013 and closed.value.reason == "max sessions reached"
            assert c.post("/v1/stream/s1", json={"text": "a"}).status_code == 503
            one.send_json({"text": "good "})  # the open sessions are unaffected
            assert one.receive_json()["tokens_seen"] == 1
        with c.websocket_connect("/v1/ws") as again:  # closed sessions free their places
            assert again.receive_json()["type"] == "hello"
        assert metric(c, "beam_rnn_serve_errors_total", reason="max_sessions") == 2


def test_idle_sessions_are_closed_after_the_ttl(dirs):
    with TestClient(make_app([dirs["a"]], session_ttl=0.3)) as c:
        with c.websocket_connect("/v1/ws") as ws:
            ws.receive_json()
            for _ in range(4):  # activity keeps it open past the TTL
                time.sleep(0.1)
                ws.send_json({"text": "good "})
                ws.receive_json()
            assert c.post("/v1/stream/idle", json={"text": "film "}).status_code == 200
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 1001 and closed.value.reason == "idle timeout"
        deadline = time.monotonic() + 5
        while c.get("/v1/stream/idle").status_code != 404:
            assert time.monotonic() < deadline, "the idle /v1/stream session was never swept"
            time.sleep(0.05)
        assert metric(c, "beam_rnn_serve_sessions_closed_total", reason="idle_timeout") == 2
        assert metric(c, "beam_rnn_serve_sessions_open", transport="ws") == 0


# --- HTTP --------------------------------------------------------------------------------------------


def test_stream_endpoints_post_get_delete(client, clf):
    chunks = chunks_of(TEXT, seed=3)
    want = stream_reference(clf, chunks)
    for i, chunk in enumerate(chunks):
        r = client.post("/v1/stream/doc-1", json={"text": chunk})
        assert r.status_code == 200
        assert_same_prediction(r.json(), want[i])
    current = client.get("/v1/stream/doc-1").json()
    assert_same_prediction(current, want[len(chunks) - 1])
    assert current["seq"] == len(chunks)
    final = client.post("/v1/stream/doc-1", json={"finish": True}).json()
    assert final["final"] is True
    assert_same_prediction(final, want[-1])
    assert client.get("/v1/stream/other").status_code == 404  # ids are per session, never shared
    assert client.delete("/v1/stream/doc-1").json() == {"session": "doc-1", "closed": True}
    for method in (client.get, client.delete):
        r = method("/v1/stream/doc-1")
        assert r.status_code == 404 and r.json()["error"] == "unknown_session"


def test_stream_endpoint_bad_requests(client):
    assert client.post("/v1/stream/doc", content=b"{nope").json()["error"] == "invalid_json"
    r = client.post("/v1/stream/doc", json={"text": "a", "extra": 1})
    assert r.status_code == 400 and r.json()["error"] == "unknown_keys"
    r = client.post("/v1/stream/" + "x" * 200, json={"text": "a"})
    assert r.status_code == 400 and r.json()["error"] == "bad_session_id"
    assert client.get("/v1/stream/doc").status_code == 200  # the bad message left the session usable


def test_classify_answers_every_text_with_the_lstm(client, clf):
    texts = [TEXT, "", "awful film", "good"]
    body = client.post("/v1/classify", json={"texts": texts}).json()
    assert [r["text_index"] for r in body["results"]] == [0, 1, 2, 3]
    for result, text in zip(body["results"], texts):
        assert result["models"] == {"lstm": clf.predict_text(text)}
    one = client.post("/v1/classify", json={"text": "good"}).json()
    assert one["results"] == [body["results"][3] | {"text_index": 0}]


@pytest.mark.parametrize("body, reason", [
    ({"texts": "good"}, "bad_text"),
    ({"texts": ["good", 3]}, "bad_text"),
    ({"texts": []}, "no_texts"),
    ({"text": "a", "texts": ["b"]}, "bad_body"),
    ([], "bad_body"),
    ({"texts": ["a"] * 4}, "too_many_texts"),
    ({"text": "y" * 41}, "text_too_large"),
])
def test_classify_bad_bodies_are_400(dirs, body, reason):
    with TestClient(make_app([dirs["a"]], max_classify_texts=3, max_message_chars=40)) as c:
        r = c.post("/v1/classify", json=body)
        assert r.status_code == 400 and r.json()["error"] == reason
        assert c.post("/v1/classify", content=b"\xff\xfe").json()["error"] == "invalid_json"


def test_health_ready_page_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"ready": True, "models": ["lstm"], "streaming_model": "lstm"}
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    for needle in ('<textarea id="text"', 'id="label"', 'id="tokens"', 'id="decision"', "/v1/ws", 'class = "bar'):
        assert needle in page.text.replace("className", "class"), needle
    assert "http://" not in page.text and "https://" not in page.text  # self-contained: no CDN
    with client.websocket_connect("/v1/ws") as ws:
        ws.receive_json()
        ws.send_json({"text": "good movie the plot "})
        ws.receive_json()
        ws.send_text("{")
        ws.receive_json()
        assert metric(client, "beam_rnn_serve_sessions_open", transport="ws") == 1
    assert metric(client, "beam_rnn_serve_tokens_total") == 4
    assert metric(client, "beam_rnn_serve_messages_total", transport="ws") == 2
    assert metric(client, "beam_rnn_serve_message_latency_seconds_count", transport="ws") == 2
    assert metric(client, "beam_rnn_serve_errors_total", reason="invalid_json") == 1
    assert metric(client, "beam_rnn_serve_sessions_closed_total", reason="client_closed") == 1
    assert metric(client, "beam_rnn_serve_sessions_open", transport="ws") == 0
    assert metric(client, "beam_rnn_serve_step_batch_rows_count") == 4
    assert metric(client, "beam_rnn_serve_model_reloads_total", outcome="loaded") == 0


def test_the_per_message_metrics_read_as_prometheus_client_would_export_them():
    """The plain-number counters and buckets export the samples a prometheus_client Counter / Histogram would."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    values = [0.0, 0.0005, 0.0004999, 0.00050001, 0.003, 0.05, 1.0, 1.5, 7.0, 0.0005]
    ours = ServiceMetrics()
    registry = CollectorRegistry()
    latency = Histogram(PREFIX + "message_latency_seconds", "x", ["transport"], buckets=LATENCY_BUCKETS,
                        registry=registry)
    messages = Counter(PREFIX + "messages", "x", ["transport"], registry=registry)
    tokens = Counter(PREFIX + "tokens", "x", registry=registry)
    for i, value in enumerate(values):
        transport = ("ws", "http", "classify")[i % 3]
        ours.latency[transport].observe(value)
        latency.labels(transport).observe(value)
        if transport != "classify":
            ours.messages[transport] += 1
            messages.labels(transport).inc()
        ours.tokens += i
        tokens.inc(i)

    def samples(text: str) -> dict:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples
                if not s.name.endswith("_created") and s.name.startswith(PREFIX)
                and s.name.split(PREFIX)[1].startswith(("message_latency", "messages", "tokens"))}

    got, want = samples(ours.exposition().decode()), samples(generate_latest(registry).decode())
    assert want and got == want


# --- Batching -------------------------------------------------------------------------------------------


def test_the_batcher_steps_all_pending_sessions_in_one_call_per_round(clf):
    rows: list[int] = []
    lengths = [5, 2, 0, 7, 5]

    async def run() -> list[np.ndarray]:
        batcher = Batcher(rows.append)
        task = asyncio.create_task(batcher.run())
        await asyncio.sleep(0)
        table = SessionTable(10, 60.0, lambda *_: None)
        sessions = [table.open("ws", str(i), clf) for i in range(len(lengths))]
        rng = np.random.default_rng(0)
        ids = [rng.integers(1, clf.weights.vocab_size, n).tolist() for n in lengths]
        out = await asyncio.gather(*(batcher.step(s, i) for s, i in zip(sessions, ids)))
        task.cancel()
        return ids, out

    ids, out = asyncio.run(run())
    # Round r advances every session with more than r tokens: one step_batch call each round.
    assert rows == [sum(n > r for n in lengths) for r in range(max(lengths))]
    for token_ids, (logits, probs) in zip(ids, out):
        assert logits.shape == probs.shape == (len(token_ids), 1)
        state = clf.start()
        for t, row, prob in zip(token_ids, logits, probs):
            _, state = clf.step(state, int(t))
            assert abs(float(state.logits[0]) - float(row[0])) <= TOL
            # The round's probabilities, computed for all its rows at once, are each row's own, bit for bit.
            assert prob.tobytes() == rnn_step.probabilities(row, clf.num_classes).tobytes()


def test_a_session_closed_mid_message_is_dropped_and_its_row_never_stepped_again(clf):
    async def run():
        rows: list[int] = []
        batcher = Batcher(rows.append)
        task = asyncio.create_task(batcher.run())
        await asyncio.sleep(0)
        table = SessionTable(10, 60.0, lambda *_: None)
        gone, stays = table.open("ws", "gone", clf), table.open("ws", "stays", clf)
        pending = asyncio.ensure_future(batcher.step(gone, [3] * 50))
        kept = asyncio.ensure_future(batcher.step(stays, [4] * 5))
        for _ in range(3):
            await asyncio.sleep(0)
        table.close(gone, "idle_timeout")
        newcomer = table.open("ws", "new", clf)  # takes the freed row
        assert newcomer.row == gone.row
        before = [a[newcomer.row].copy() for a in newcomer.pool.arrays]
        partial, partial_probs = await asyncio.wait_for(pending, 5)  # answered, not left hanging
        assert len(partial_probs) == len(partial)
        await kept
        assert all(np.array_equal(b, a[newcomer.row]) for b, a in zip(before, newcomer.pool.arrays))
        assert [len(a) for a in await batcher.step(gone, [1, 2])] == [0, 0]
        task.cancel()
        return partial, rows

    partial, rows = asyncio.run(run())
    assert 0 < len(partial) < 50 and sum(rows) == len(partial) + 5


def test_concurrent_sessions_are_batched_and_each_gets_its_own_prediction(dirs, clf):
    texts = [" ".join(random.Random(i).choice(WORDS_PLUS) for _ in range(40)) for i in range(12)]
    with TestClient(make_app([dirs["a"]])) as c:
        sockets = [c.websocket_connect("/v1/ws").__enter__() for _ in texts]
        for ws in sockets:
            ws.receive_json()
        for ws, text in zip(sockets, texts):  # every message is queued before any answer is read
            ws.send_json({"text": text, "finish": True})
        finals = [ws.receive_json() for ws in sockets]
        for ws in sockets:
            ws.__exit__(None, None, None)
        steps = metric(c, "beam_rnn_serve_step_batch_rows_count")
        rows = metric(c, "beam_rnn_serve_step_batch_rows_sum")
    for final, text in zip(finals, texts):
        assert_same_prediction(final, stream_reference(clf, [text])[-1])
    assert rows == 40 * len(texts) and steps < rows  # some rounds stepped several sessions at once


# --- Reload ---------------------------------------------------------------------------------------------


def _replace(target: str, source: str) -> None:
    shutil.rmtree(target)
    shutil.copytree(source, target)


def test_reload_new_sessions_get_the_new_model_open_ones_keep_theirs(dirs, tmp_path):
    served = str(tmp_path / "served")
    shutil.copytree(dirs["a"], served)
    a, b = StreamingClassifier.load(dirs["a"]), StreamingClassifier.load(dirs["b"])
    app = make_app([served])
    service = app.state.service
    with TestClient(app) as c:
        with c.websocket_connect("/v1/ws") as old:
            old.receive_json()
            old.send_json({"text": "good movie "})
            old.receive_json()
            assert c.post("/v1/stream/h", json={"text": "good movie "}).status_code == 200
            _replace(served, dirs["b"])
            assert c.portal.call(service.reload, "test") is True
            with c.websocket_connect("/v1/ws") as new:
                new.receive_json()
                new.send_json({"text": "good movie awful plot", "finish": True})
                assert_same_prediction(new.receive_json(), stream_reference(b, ["good movie awful plot"])[-1])
            old.send_json({"text": "awful plot", "finish": True})
            assert_same_prediction(old.receive_json(), stream_reference(a, ["good movie awful plot"])[-1])
            http = c.post("/v1/stream/h", json={"text": "awful plot", "finish": True}).json()
            assert_same_prediction(http, stream_reference(a, ["good movie awful plot"])[-1])
        assert c.post("/v1/classify", json={"text": "awful"}).json()["results"][0]["models"]["lstm"] == \
            b.predict_text("awful")
        assert metric(c, "beam_rnn_serve_model_reloads_total", outcome="loaded") == 1
        assert c.get("/readyz").status_code == 200


def test_reload_refuses_other_classes_and_damaged_models(dirs, tmp_path, caplog):
    served = str(tmp_path / "served")
    shutil.copytree(dirs["a"], served)
    a = StreamingClassifier.load(dirs["a"])
    app = make_app([served])
    service = app.state.service
    with TestClient(app) as c:
        _replace(served, dirs["multi"])
        with caplog.at_level("ERROR", logger="beam_rnn.service.app"):
            assert c.portal.call(service.reload, "test") is False
        assert [r.getMessage() for r in caplog.records if "refused" in r.getMessage()][0].count("\n") == 0
        assert "classes" in caplog.records[-1].getMessage()
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "classes" in ready.json()["reason"]
        with c.websocket_connect("/v1/ws") as ws:  # still the old model
            assert ws.receive_json()["classes"] == ["0", "1"]
            ws.send_json({"text": "good film", "finish": True})
            assert_same_prediction(ws.receive_json(), stream_reference(a, ["good film"])[-1])
        _replace(served, dirs["b"])
        with open(f"{served}/vocab.txt", "a", encoding="utf-8") as f:
            f.write("tampered\n")  # no longer what the manifest says
        assert c.portal.call(service.reload, "test") is False
        assert "vocab.txt" in c.get("/readyz").json()["reason"]
        _replace(served, dirs["b"])
        assert c.portal.call(service.reload, "test") is True
        assert c.get("/readyz").status_code == 200
        assert metric(c, "beam_rnn_serve_model_reloads_total", outcome="refused") == 2
        assert metric(c, "beam_rnn_serve_model_reloads_total", outcome="loaded") == 1


def test_not_ready_until_the_models_are_loaded(dirs):
    release = threading.Event()

    def slow_loader(values, **kwargs):
        assert release.wait(10)
        return load_models(values, **kwargs)

    with TestClient(create_app(ServiceConfig(), None, [dirs["a"]], loader=slow_loader)) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["reason"] == "the models are not loaded yet"
        assert c.get("/healthz").status_code == 200
        assert c.post("/v1/classify", json={"text": "a"}).json()["error"] == "not_ready"
        assert c.post("/v1/stream/s", json={"text": "a"}).status_code == 503
        with c.websocket_connect("/v1/ws") as ws:
            assert ws.receive_json()["reason"] == "not_ready"
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 1013
        release.set()
        deadline = time.monotonic() + 10
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.02)
        with c.websocket_connect("/v1/ws") as ws:
            assert ws.receive_json()["type"] == "hello"


def test_watch_reloads_when_a_manifest_changes(dirs, tmp_path):
    served = str(tmp_path / "served")
    shutil.copytree(dirs["a"], served)
    b = StreamingClassifier.load(dirs["b"])
    with TestClient(make_app([served], watch=0.05)) as c:
        time.sleep(0.2)
        assert metric(c, "beam_rnn_serve_model_reloads_total", outcome="loaded") == 0  # nothing changed
        _replace(served, dirs["b"])
        deadline = time.monotonic() + 10
        while metric(c, "beam_rnn_serve_model_reloads_total", outcome="loaded") < 1:
            assert time.monotonic() < deadline, "the watched change was never loaded"
            time.sleep(0.05)
        r = c.post("/v1/stream/w", json={"text": "good film", "finish": True}).json()
        assert_same_prediction(r, stream_reference(b, ["good film"])[-1])
        time.sleep(0.2)
        assert metric(c, "beam_rnn_serve_model_reloads_total", outcome="loaded") == 1  # once per change


# --- Config ---------------------------------------------------------------------------------------------


def test_remote_hosts_need_allow_remote():
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert is_loopback(host) and ServiceConfig(host=host).host == host
    for host in ("0.0.0.0", "::", "192.168.1.4", "example.com"):
        assert not is_loopback(host)
        with pytest.raises(InputError, match="--allow-remote"):
            ServiceConfig(host=host)
        assert ServiceConfig(host=host, allow_remote=True).host == host
    with pytest.raises(InputError, match="--max-sessions"):
        ServiceConfig(max_sessions=0)
