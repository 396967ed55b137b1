"""``beam-rnn serve --workers N``: one service from several processes on one port.

Subprocess tests like tests/test_service_cli.py (same `Server` helper, the hand-built streaming model of
`tests.helpers`): many WebSocket sessions at once against two workers; /v1/stream sessions driven by
requests on fresh connections (which land on either worker) answered as by one worker; /metrics and
/readyz for the whole service; --max-sessions shared; SIGHUP, a killed worker, SIGTERM; bad --workers.
And in-process: the metrics merge, the session owner hash and the shared session quota.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import time
import urllib.error
import urllib.request

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from beam_rnn.cli import run_command
from beam_rnn.service.cluster import Peers
from beam_rnn.service.metrics import ServiceMetrics, merge_expositions
from beam_rnn.service.workers import SessionQuota
from beam_rnn.stream.classifier import StreamingClassifier
from tests.helpers import WORDS, build_streaming_model_dir
from tests.test_service import TOL, assert_same_prediction, chunks_of, stream_reference
from tests.test_service_cli import SERVING_LINE, Server

MAX_SESSIONS = 40
STREAM_IDS = [f"s{i}" for i in range(8)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return build_streaming_model_dir(str(tmp_path_factory.mktemp("serve_workers") / "lstm"))


def start(args: list[str]) -> tuple[Server, str]:
    server = Server(args)
    line = server.serving_line()
    match = SERVING_LINE.fullmatch(line)
    if match is None:
        server.stop()
        pytest.fail(f"serving line {line!r}; stderr: {server.proc.stderr.read()}")
    return server, match["url"]


@pytest.fixture(scope="module")
def servers(model_dir):
    """Two workers, and one process for comparison (each started once for the module)."""
    two, two_url = start(["--model", model_dir, "--workers", "2", "--max-sessions", str(MAX_SESSIONS)])
    one, one_url = start(["--model", model_dir])
    yield {"two": two_url, "one": one_url, "two_server": two}
    for server in (two, one):
        code, stderr = server.stop()
        assert code == 0, stderr


def request(url: str, method: str = "GET", body: dict | None = None) -> tuple[int, dict]:
    """One request on a connection of its own (urllib does not keep connections)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def metrics(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url + "metrics", timeout=30) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(values: dict, name: str, **labels) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


def worker_pids(server: Server) -> list[int]:
    """The running worker processes (not the resource tracker, not a dead worker not yet reaped)."""
    pids = []
    for p in psutil.Process(server.proc.pid).children():
        try:
            if "spawn_main" in " ".join(p.cmdline()):
                pids.append(p.pid)
        except psutil.Error:  # a zombie
            pass
    return sorted(pids)


async def _sessions(url: str, texts: list[list[str]], extra: int) -> tuple[list[list[dict]], list[str]]:
    """Opens a WebSocket per text (all open at once), then `extra` more (their close reasons), then all type."""
    import websockets

    uri = url.replace("http://", "ws://") + "v1/ws"
    sockets = [await websockets.connect(uri) for _ in texts]
    hellos = [json.loads(await ws.recv()) for ws in sockets]
    refused = []
    for _ in range(extra):
        async with websockets.connect(uri) as ws:
            try:
                await ws.recv()
                refused.append("accepted")
            except websockets.ConnectionClosed as e:
                refused.append(f"{e.rcvd.code} {e.rcvd.reason}")

    async def type_(ws, chunks: list[str]) -> list[dict]:
        frames = []
        for chunk in chunks:
            await ws.send(json.dumps({"text": chunk}))
            frames.append(json.loads(await ws.recv()))
        await ws.send(json.dumps({"finish": True}))
        frames.append(json.loads(await ws.recv()))
        await ws.close()
        return frames

    frames = await asyncio.gather(*(type_(ws, chunks) for ws, chunks in zip(sockets, texts)))
    assert all(h["type"] == "hello" for h in hellos)
    return list(frames), refused


def test_many_websocket_sessions_at_once_get_the_classifiers_predictions(servers, model_dir):
    clf = StreamingClassifier.load(model_dir)
    rng = random.Random(7)
    texts = [chunks_of(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20))) + ".", seed=i)
             for i in range(MAX_SESSIONS)]
    before = metrics(servers["two"])
    frames, refused = asyncio.run(_sessions(servers["two"], texts, extra=2))
    # the limit is the whole service's: with MAX_SESSIONS open across both workers, the next ones are refused
    assert refused == ["1013 max sessions reached"] * 2
    for chunks, got in zip(texts, frames):
        want = stream_reference(clf, chunks)
        assert len(got) == len(want)
        for frame, expected in zip(got, want):
            assert_same_prediction(frame, expected)
    after = metrics(servers["two"])  # whichever worker answers, the totals of both
    sent = sum(len(chunks) + 1 for chunks in texts)
    assert sample(after, "beam_rnn_serve_messages_total", transport="ws") - \
        sample(before, "beam_rnn_serve_messages_total", transport="ws") == sent
    assert sample(after, "beam_rnn_serve_errors_total", reason="max_sessions") - \
        sample(before, "beam_rnn_serve_errors_total", reason="max_sessions") == 2
    deadline = time.monotonic() + 10
    while sample(metrics(servers["two"]), "beam_rnn_serve_sessions_open", transport="ws") != 0:
        assert time.monotonic() < deadline, "closed sockets still counted open"
        time.sleep(0.1)


def test_stream_sessions_on_fresh_connections_answer_as_one_worker(servers):
    owners = Peers(0, ["a", "b"])
    assert {owners.owner(i) for i in STREAM_IDS} == {0, 1}  # sessions held by each worker
    rng = random.Random(3)
    plan = [(sid, {"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) + " "})
            for _ in range(4) for sid in STREAM_IDS]
    plan += [(sid, {"text": "the end", "finish": True}) for sid in STREAM_IDS[::2]]
    before = metrics(servers["two"])
    for sid, body in plan:
        answers = [request(servers[which] + f"v1/stream/{sid}", "POST", body) for which in ("one", "two")]
        (status_one, one), (status_two, two) = answers
        assert status_one == status_two == 200
        assert_same_prediction(two, one)
        assert two["seq"] == one["seq"] and two["final"] == one["final"]
    opened = metrics(servers["two"])
    for sid in STREAM_IDS:
        current = [request(servers[which] + f"v1/stream/{sid}") for which in ("one", "two")]
        assert current[0][0] == current[1][0] == 200
        assert current[1][1]["tokens_seen"] == current[0][1]["tokens_seen"]
        for name, p in current[0][1]["probabilities"].items():
            assert abs(current[1][1]["probabilities"][name] - p) <= TOL
        assert request(servers["two"] + f"v1/stream/{sid}", "DELETE") == (200, {"session": sid, "closed": True})
        assert request(servers["two"] + f"v1/stream/{sid}")[0] == 404
        assert request(servers["one"] + f"v1/stream/{sid}", "DELETE")[0] == 200
    assert request(servers["two"] + "v1/stream/bad%20id", "POST", {"text": "x"})[0] == 400
    after = metrics(servers["two"])

    def delta(name: str, **labels) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("beam_rnn_serve_messages_total", transport="http") == len(plan)
    assert sample(opened, "beam_rnn_serve_sessions_open", transport="http") == len(STREAM_IDS)
    assert sample(after, "beam_rnn_serve_sessions_open", transport="http") == 0
    assert delta("beam_rnn_serve_sessions_closed_total", reason="deleted") == len(STREAM_IDS)
    # every request on a worker that does not hold its session was passed on (whatever the kernel chose)
    assert delta("beam_rnn_serve_forwarded_requests_total") >= 1


def test_readyz_is_every_workers(servers):
    status, body = request(servers["two"] + "readyz")
    assert status == 200 and body["ready"] is True and body["workers"] == 2
    status, body = request(servers["two"] + "readyz?scope=worker")  # one worker's own answer
    assert status == 200 and "workers" not in body
    status, body = request(servers["one"] + "readyz")
    assert status == 200 and "workers" not in body


def test_sighup_reloads_every_worker_a_killed_worker_is_replaced_and_sigterm_stops_all(model_dir, tmp_path):
    served = str(tmp_path / "lstm")
    shutil.copytree(model_dir, served)
    server, url = start(["--model", served, "--workers", "2"])
    parent = psutil.Process(server.proc.pid)
    try:
        socket_dirs = {os.path.dirname(c.laddr) for c in parent.net_connections(kind="unix") if c.laddr}
        assert len(socket_dirs) == 1 and os.path.isdir(next(iter(socket_dirs)))
        pids = worker_pids(server)
        assert len(pids) == 2

        build_streaming_model_dir(served, seed=5)  # another export in place
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while sample(metrics(url), "beam_rnn_serve_model_reloads_total", outcome="loaded") != 2:
            assert time.monotonic() < deadline, "SIGHUP did not reload both workers"
            time.sleep(0.1)

        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            now = worker_pids(server)
            if len(now) == 2 and pids[0] not in now and request(url + "readyz")[0] == 200:
                break
            assert time.monotonic() < deadline, f"the killed worker was not replaced (workers {now})"
            time.sleep(0.2)
        assert server.proc.poll() is None and pids[1] in now
        new = StreamingClassifier.load(served)  # the new worker loaded what is on disk: the reloaded model
        for sid in STREAM_IDS:
            status, body = request(url + f"v1/stream/{sid}", "POST", {"text": "good movie", "finish": True})
            assert status == 200
            assert_same_prediction(body, stream_reference(new, ["good movie"])[-1])
        children = [psutil.Process(pid) for pid in now] + [p for p in parent.children() if p.pid not in now]
    finally:
        code, stderr = server.stop()
    assert code == 0, stderr
    assert server.lines.empty()  # the one serving line, not one per worker (nor for the replacement)
    lines = stderr.splitlines()
    assert sorted(line for line in lines if "Loaded the models (SIGHUP)" in line)[0].startswith("worker 0: ")
    assert sum("Loaded the models (SIGHUP)" in line for line in lines) == 2
    assert sum("was killed by SIGKILL" in line and "starting another" in line for line in lines) == 1
    assert "Traceback" not in stderr and "leaked" not in stderr
    psutil.wait_procs(children, timeout=10)
    assert not [p.pid for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # no orphans
    assert not os.path.exists(next(iter(socket_dirs)))


def test_watch_reloads_in_every_worker_and_workers_leave_with_a_killed_parent(model_dir, tmp_path):
    served = str(tmp_path / "lstm")
    shutil.copytree(model_dir, served)
    server, url = start(["--model", served, "--workers", "2", "--watch", "0.2"])
    try:
        parent = psutil.Process(server.proc.pid)
        socket_dir = {os.path.dirname(c.laddr) for c in parent.net_connections(kind="unix") if c.laddr}.pop()
        workers = [psutil.Process(pid) for pid in worker_pids(server)]
        build_streaming_model_dir(served, seed=6)  # a new manifest.json: each worker's poller sees it
        deadline = time.monotonic() + 30
        while sample(metrics(url), "beam_rnn_serve_model_reloads_total", outcome="loaded") != 2:
            assert time.monotonic() < deadline, "--watch did not reload both workers"
            time.sleep(0.1)
        server.proc.kill()  # no chance to stop its workers: they notice and stop by themselves
        server.proc.wait()
        gone, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive
        deadline = time.monotonic() + 5
        while os.path.exists(socket_dir):  # the last worker out removes the socket directory
            assert time.monotonic() < deadline, os.listdir(socket_dir)
            time.sleep(0.1)
    finally:
        server.stop()


def test_repeated_fast_crashes_end_the_service_with_exit_1(model_dir):
    server, _ = start(["--model", model_dir, "--workers", "2"])
    killed = set()
    try:
        deadline = time.monotonic() + 120
        while server.proc.poll() is None:
            assert time.monotonic() < deadline, f"still running after killing {len(killed)} workers"
            for pid in worker_pids(server):  # every worker as soon as it runs
                if pid not in killed:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
            time.sleep(0.05)
    finally:
        code, stderr = server.stop()
    assert code == 1, stderr
    assert stderr.strip().splitlines()[-1].startswith("beam-rnn serve: error: Worker ")
    assert "in a row; stopping the service" in stderr


def test_bad_workers_is_exit_2_before_anything_listens(model_dir, capsys):
    for value in ("0", "65"):
        code = run_command("serve", ["--model", model_dir, "--port", "0", "--workers", value])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "--workers must be in [1, 64]" in err, err
    with socket.socket() as taken:  # the parent binds before it starts any worker
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        code = run_command("serve", ["--model", model_dir, "--port", str(taken.getsockname()[1]), "--workers", "2"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and captured.err.count("\n") == 1 and "cannot listen" in captured.err
    assert not [p for p in psutil.Process().children() if "spawn_main" in " ".join(p.cmdline())]


# --- In process --------------------------------------------------------------------------------------


def test_merged_metrics_sum_counters_gauges_and_histograms():
    a, b = ServiceMetrics(), ServiceMetrics()
    a.messages["ws"] += 3
    b.messages["ws"] += 4
    b.messages["http"] += 1
    a.latency["ws"].observe(0.001)
    b.latency["ws"].observe(0.3)
    a.sessions_open.labels("ws").set(2)
    b.sessions_open.labels("ws").set(5)
    b.errors.labels("bad_text").inc()
    assert merge_expositions([a.exposition()]) == a.exposition()
    merged = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in text_string_to_metric_families(merge_expositions([a.exposition(), b.exposition()]).decode())
              for s in f.samples}
    assert sample(merged, "beam_rnn_serve_messages_total", transport="ws") == 7
    assert sample(merged, "beam_rnn_serve_messages_total", transport="http") == 1
    assert sample(merged, "beam_rnn_serve_sessions_open", transport="ws") == 7
    assert sample(merged, "beam_rnn_serve_errors_total", reason="bad_text") == 1
    latency = "beam_rnn_serve_message_latency_seconds"
    assert sample(merged, latency + "_count", transport="ws") == 2
    assert sample(merged, latency + "_bucket", transport="ws", le="0.001") == 1
    assert sample(merged, latency + "_bucket", transport="ws", le="0.5") == 2
    assert abs(sample(merged, latency + "_sum", transport="ws") - 0.301) < 1e-12
    created = [v for (name, _), v in merged.items() if name == "beam_rnn_serve_model_reloads_created"]
    assert created and all(1e9 < v < 1e11 for v in created)  # a timestamp (the earliest), not a sum of two


def test_the_session_owner_is_a_stable_hash_of_the_id():
    peers = Peers(1, ["w0", "w1", "w2"])
    assert [peers.owner(f"s{i}") for i in range(6)] == [Peers(0, ["w0", "w1", "w2"]).owner(f"s{i}") for i in range(6)]
    assert peers.owner("s0") == 2 and peers.owner("abc") == 0  # zlib.crc32: the same in every process and run
    counts = [0, 0, 0]
    for i in range(3000):
        counts[peers.owner(f"session-{i}")] += 1
    assert min(counts) > 900
    assert peers.others == [0, 2]
    with pytest.raises(ValueError):
        Peers(3, ["w0", "w1", "w2"])


def test_the_session_quota_is_shared_and_a_dead_workers_units_come_back():
    quota = SessionQuota(multiprocessing.get_context("spawn"), limit=3, workers=2)
    first, second = SessionQuota.__new__(SessionQuota), SessionQuota.__new__(SessionQuota)
    first.__dict__.update(quota.__dict__, index=0)  # what each worker's copy is
    second.__dict__.update(quota.__dict__, index=1)
    assert first.take() and first.take() and second.take()
    assert not second.take() and not first.take()
    first.give()
    assert second.take() and not first.take()
    assert (quota.held(0), quota.held(1)) == (1, 2)
    quota.reclaim(1)  # worker 1 died with its two sessions
    assert quota.held(1) == 0
    assert second.take() and second.take() and not first.take()
