"""``beam-rnn serve`` on the command line: the serving line, real HTTP and WebSocket, SIGHUP, SIGTERM, exit 2.

The model is a hand-built streaming export (`tests.helpers.build_streaming_model_dir`), so the server
starts without TensorFlow.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from beam_rnn.cli import run_command
from tests.helpers import build_streaming_model_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVING_LINE = re.compile(r"serving (?P<names>.+) on (?P<url>http://127\.0\.0\.1:(?P<port>\d+)/)\n")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return build_streaming_model_dir(str(tmp_path_factory.mktemp("serve_cli") / "lstm"))


class Server:
    """``beam-rnn serve ... --port 0`` as a subprocess; its stdout lines arrive on a queue."""

    def __init__(self, args: list[str], uvicorn_options: dict | None = None):
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        prelude = ("import beam_rnn.service.server as s; s.UVICORN_OPTIONS.update(%r); " % uvicorn_options
                   if uvicorn_options else "")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", prelude + "from beam_rnn.cli import main; main()", "serve", *args, "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=str(REPO_ROOT),
            env=env)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.proc.stdout], daemon=True).start()

    def serving_line(self) -> str:
        try:
            return self.lines.get(timeout=60)
        except queue.Empty:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return code, self.proc.stderr.read()


def _get(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, json.loads(response.read())


async def _type(url: str, text: str) -> list[dict]:
    import websockets

    async with websockets.connect(url.replace("http://", "ws://") + "v1/ws") as ws:
        frames = [json.loads(await ws.recv())]
        for word in text.split():
            await ws.send(json.dumps({"text": word + " "}))
            frames.append(json.loads(await ws.recv()))
        await ws.send(json.dumps({"finish": True}))
        frames.append(json.loads(await ws.recv()))
    return frames


# The defaults (uvloop and httptools when installed), and the asyncio loop with h11 (what serves without them).
@pytest.mark.parametrize("sig, uvicorn_options", [(signal.SIGTERM, None), (signal.SIGINT, None),
                                                  (signal.SIGTERM, {"loop": "asyncio", "http": "h11"})])
def test_serve_prints_its_url_answers_over_the_network_and_exits_0(model_dir, sig, uvicorn_options):
    from beam_rnn.stream.classifier import StreamingClassifier

    server = Server(["--model", model_dir], uvicorn_options)
    try:
        line = server.serving_line()
        match = SERVING_LINE.fullmatch(line)
        assert match, f"serving line {line!r}; stderr: {server.proc.stderr.read() if server.proc.poll() else ''}"
        assert match["names"] == "lstm" and int(match["port"]) > 0
        url = match["url"]
        assert _get(url + "healthz") == (200, {"status": "ok"})
        assert _get(url + "readyz")[0] == 200
        frames = asyncio.run(_type(url, "good movie awful plot"))
        assert frames[0]["type"] == "hello" and frames[-1]["final"] is True
        want = StreamingClassifier.load(model_dir).predict_text("good movie awful plot")
        assert frames[-1]["predicted_label_name"] == want["predicted_label_name"]
        assert abs(frames[-1]["probabilities"]["1"] - want["probabilities"]["1"]) < 1e-6
        with urllib.request.urlopen(url, timeout=10) as page:
            assert b'<textarea id="text"' in page.read()
    finally:
        code, stderr = server.stop(sig)
    assert code == 0, stderr
    assert server.lines.empty()  # exactly one stdout line
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr


def test_sighup_reloads_the_models(model_dir, tmp_path):
    served = str(tmp_path / "lstm")
    shutil.copytree(model_dir, served)
    server = Server(["--model", served])
    try:
        url = SERVING_LINE.fullmatch(server.serving_line())["url"]
        build_streaming_model_dir(served, seed=5)  # another export in place
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while True:
            with urllib.request.urlopen(url + "metrics", timeout=10) as response:
                text = response.read().decode()
            if 'beam_rnn_serve_model_reloads_total{outcome="loaded"} 1.0' in text:
                break
            assert time.monotonic() < deadline, "SIGHUP did not reload"
            time.sleep(0.1)
        assert _get(url + "readyz")[0] == 200
    finally:
        code, stderr = server.stop()
    assert code == 0
    reload_lines = [line for line in stderr.splitlines() if "Loaded the models" in line]
    assert len(reload_lines) == 1 and "SIGHUP" in reload_lines[0]


def _run(args: list[str], capsys) -> tuple[int, str]:
    code = run_command("serve", [*args, "--port", "0"] if "--port" not in args else args)
    captured = capsys.readouterr()
    assert captured.out == ""
    return code, captured.err


def test_remote_host_without_allow_remote_is_exit_2(model_dir, capsys):
    code, err = _run(["--model", model_dir, "--host", "0.0.0.0"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--allow-remote" in err


def test_missing_or_damaged_model_is_exit_2(model_dir, tmp_path, capsys):
    code, err = _run(["--model", str(tmp_path / "nope")], capsys)
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err
    damaged = str(tmp_path / "damaged")
    shutil.copytree(model_dir, damaged)
    with open(os.path.join(damaged, "vocab.txt"), "a", encoding="utf-8") as f:
        f.write("extra\n")
    code, err = _run(["--model", damaged], capsys)
    assert code == 2 and err.count("\n") == 1 and "vocab.txt" in err


def test_taken_port_and_bad_flags_are_exit_2(model_dir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        code, err = _run(["--model", model_dir, "--port", str(taken.getsockname()[1])], capsys)
    assert code == 2 and err.count("\n") == 1 and "cannot listen" in err
    code, err = _run(["--model", model_dir, "--session-ttl", "0"], capsys)
    assert code == 2 and "--session-ttl must be > 0" in err
    code, err = _run(["--model", model_dir, "--no-such-flag"], capsys)
    assert code == 2 and "unrecognized arguments" in err
