"""The load generator of `benchmarks.load_service`: what talks to `beam-rnn serve` and checks its answers.

`Server` (``beam-rnn serve`` in a subprocess on 127.0.0.1, port 0) and `RssSampler`; a small keep-alive
HTTP/1.1 client for ``/metrics``, ``/readyz`` and ``/v1/classify``; the IMDB reviews; the WebSocket typing
sessions (`websocket_run`); the restart-incremental alternative (`Keystrokes`, `restart_run` over HTTP,
`restart_in_process`); and `check_finals`, every final prediction against the exported model's
``serving_default``.  `benchmarks.load_service` parses the command line, drives these and reports.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
LENGTH_BINS = (0, 100, 300, 1000)  # tokens: the drift check is reported per bin
SERVING_LINE = re.compile(r"^serving (?P<names>.*) on http://(?P<host>[^/]+):(?P<port>\d+)/\s*$")


# --- The server -------------------------------------------------------------------------------


class Server:
    """``beam-rnn serve`` in a subprocess on 127.0.0.1, port 0; its URL from the one stdout line."""

    def __init__(self, model_dirs: list[str], extra: list[str], startup_seconds: float, root: Path = ROOT,
                 prelude: str = ""):
        """`root`: the source tree the server runs from; `prelude`: Python run before the command (overrides)."""
        args = [a for d in model_dirs for a in ("--model", d)]
        cmd = [sys.executable, "-c", prelude + "from beam_rnn.cli import main; main()", "serve", *args,
               "--host", "127.0.0.1", "--port", "0", *extra]
        self.stderr = tempfile.NamedTemporaryFile("w+", prefix="serve-stderr-", suffix=".log", delete=False)
        env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.stderr, stdin=subprocess.DEVNULL,
                                     text=True, cwd=str(root), env=env)
        lines: queue.Queue[str | None] = queue.Queue()
        self.stdout_lines: list[str] = []

        def drain() -> None:  # keeps reading so that later output can never block the server
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.stdout_lines.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=drain, daemon=True).start()
        try:
            first = lines.get(timeout=startup_seconds)
        except queue.Empty:
            first = None
        match = SERVING_LINE.match(first or "")
        if match is None:
            self.stop()
            raise SystemExit(f"load_service: the server did not print 'serving ... on http://HOST:PORT/' "
                             f"(got {first!r}); stderr: {self.stderr_tail()}")
        self.host, self.port, self.names = match["host"], int(match["port"]), match["names"]
        self.ps = psutil.Process(self.proc.pid)

    def stderr_tail(self, chars: int = 2000) -> str:
        self.stderr.flush()
        return Path(self.stderr.name).read_text(errors="replace")[-chars:]

    def rss(self) -> int:
        """Resident bytes of the server and any children it started."""
        total = 0
        for p in [self.ps, *self.ps.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def cpu_seconds(self) -> float:
        return sum(self.cpu_by_process().values())

    def cpu_by_process(self) -> dict[int, float]:
        """CPU seconds (user + system) of the server and of each process it started (``--workers``), by pid."""
        out = {}
        for p in [self.ps, *self.ps.children(recursive=True)]:
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        return out

    def stop(self) -> int | None:
        """SIGTERM and the exit status (None if it had to be killed after 30 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode


class RssSampler(threading.Thread):
    """Samples the server's RSS every `interval` seconds: (seconds since start, bytes)."""

    def __init__(self, server: Server, interval: float = 0.2):
        super().__init__(daemon=True)
        self.server, self.interval = server, interval
        self.samples: list[tuple[float, int]] = []
        self.t0 = time.perf_counter()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((time.perf_counter() - self.t0, self.server.rss()))
            self._stop_event.wait(self.interval)

    def halt(self) -> None:
        self._stop_event.set()
        self.join()


# --- A small HTTP/1.1 client (keep-alive) for /metrics and /v1/classify -------------------------


class HttpConnection:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        status = int((await self.reader.readline()).split()[1])
        length, chunked, close = 0, False, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            length = int(value) if name == "content-length" else length
            chunked |= name == "transfer-encoding" and "chunked" in value
            close |= name == "connection" and value == "close"
        if chunked:
            parts = []
            while size := int((await self.reader.readline()).split(b";")[0], 16):
                parts.append(await self.reader.readexactly(size))
                await self.reader.readline()
            await self.reader.readline()
            payload = b"".join(parts)
        else:
            payload = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


def parse_metric(text: str, name: str) -> float | None:
    """Sum of the samples of Prometheus metric `name` (any labels); None when absent."""
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)", re.M)
    values = [float(m.group(2)) for m in pattern.finditer(text)]
    return sum(values) if values else None


async def read_tokens_metric(server: Server, name: str) -> tuple[float, float | None]:
    """(time, server tokens counter) read from /metrics."""
    conn = HttpConnection(server.host, server.port)
    try:
        status, body = await conn.request("GET", "/metrics")
    finally:
        await conn.close()
    return time.perf_counter(), parse_metric(body.decode(), name) if status == 200 else None


async def wait_ready(server: Server, seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    while True:
        conn = HttpConnection(server.host, server.port)
        try:
            status, _ = await conn.request("GET", "/readyz")
            if status == 200:
                return
        except OSError:
            pass
        finally:
            await conn.close()
        if time.perf_counter() > deadline:
            raise SystemExit(f"load_service: /readyz not 200 after {seconds:.0f} s; stderr: {server.stderr_tail()}")
        await asyncio.sleep(0.2)


# --- The reviews ------------------------------------------------------------------------------


def read_reviews(path: Path, limit: int) -> list[list[str]]:
    """The first `limit` reviews of the IMDB csv, each as its whitespace-separated words."""
    csv.field_size_limit(sys.maxsize)
    with open(path, newline="", encoding="utf-8") as f:
        rows = itertools.islice(csv.DictReader(f), limit)
        return [words for row in rows if (words := row["text"].split())]


class ReviewPool:
    """Hands out reviews in order, cycling, so that every session always has text to type."""

    def __init__(self, reviews: list[list[str]]):
        self.reviews, self.next_index = reviews, 0

    def take(self) -> list[str]:
        review = self.reviews[self.next_index % len(self.reviews)]
        self.next_index += 1
        return review


# --- The WebSocket sessions -------------------------------------------------------------------


class SessionLost(Exception):
    pass


@dataclass
class Run:
    """What the sessions of one run share and count."""

    max_messages: int
    message_timeout: float
    stop: bool = False
    opened: int = 0
    lost: Counter = field(default_factory=Counter)
    messages: int = 0
    tokens: int = 0
    positions: int = 0  # sum over typing messages of the tokens seen before it (the prefix length)
    decisions: int = 0
    latencies: list[float] = field(default_factory=list)
    per_second: Counter = field(default_factory=Counter)  # second of the window -> tokens
    latency_by_second: dict[int, list[float]] = field(default_factory=dict)
    finals: list[tuple[str, dict[str, float], int]] = field(default_factory=list)
    t_start: float = 0.0
    t_stop: float = 0.0
    tokens_at_stop: int = 0  # messages in flight when typing stops still answer; their tokens are not in the window
    all_open: asyncio.Event = field(default_factory=asyncio.Event)
    pending_opens: int = 0

    def count_message(self, latency: float, tokens: int, position: int, now: float) -> None:
        self.messages += 1
        self.tokens += tokens
        self.positions += position
        self.latencies.append(latency)
        second = int(now - self.t_start)
        self.per_second[second] += tokens
        self.latency_by_second.setdefault(second, []).append(latency)
        if self.messages >= self.max_messages:
            self.halt()

    def halt(self) -> None:
        if not self.stop:
            self.stop, self.t_stop, self.tokens_at_stop = True, time.perf_counter(), self.tokens


async def next_prediction(ws: Any, run: Run) -> dict[str, Any]:
    """The next ``prediction`` frame (a ``decision`` frame before it is counted; an error ends the session)."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), run.message_timeout))
        kind = message.get("type")
        if kind == "prediction":
            return message
        if kind == "decision":
            run.decisions += 1
        else:
            raise SessionLost(f"{kind}: {message.get('reason')}")


async def typing_session(uri: str, pool: ReviewPool, run: Run, opening: asyncio.Semaphore, compression: bool) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import WebSocketException

    stage = "open"
    try:
        async with opening:
            ws = await connect(uri, compression="deflate" if compression else None, ping_interval=None,
                               open_timeout=run.message_timeout, close_timeout=5, max_size=2**22)
        async with ws:
            hello = json.loads(await asyncio.wait_for(ws.recv(), run.message_timeout))
            if hello.get("type") != "hello":
                raise SessionLost(f"first frame {hello.get('type')!r}, not hello")
            run.opened += 1
            run.pending_opens -= 1
            if run.pending_opens == 0:
                run.all_open.set()
            stage = "type"
            await run.all_open.wait()
            while not run.stop:
                sent: list[str] = []
                seen = 0
                for word in pool.take():
                    if run.stop:
                        break
                    chunk = word + " "
                    t0 = time.perf_counter()
                    await ws.send(json.dumps({"text": chunk}))
                    prediction = await next_prediction(ws, run)
                    t1 = time.perf_counter()
                    run.count_message(t1 - t0, prediction["tokens_seen"] - seen, seen, t1)
                    seen = prediction["tokens_seen"]
                    sent.append(chunk)
                await ws.send(json.dumps({"finish": True}))
                final = await next_prediction(ws, run)
                if not final.get("final"):
                    raise SessionLost("the answer to finish is not final")
                run.tokens += final["tokens_seen"] - seen
                run.finals.append(("".join(sent), final["probabilities"], final["tokens_seen"]))
                if not run.stop:
                    await ws.send(json.dumps({"reset": True}))
                    if (await next_prediction(ws, run))["tokens_seen"] != 0:
                        raise SessionLost("reset did not start a new text")
    except (SessionLost, WebSocketException, OSError, asyncio.TimeoutError, KeyError, ValueError) as e:
        run.lost[f"{stage}: {type(e).__name__}: {str(e)[:80]}"] += 1
        if stage == "open":
            run.pending_opens -= 1
            if run.pending_opens == 0:
                run.all_open.set()


async def websocket_run(server: Server, pool: ReviewPool, args: argparse.Namespace) -> dict[str, Any]:
    run = Run(args.max_messages, args.message_timeout, pending_opens=args.sessions)
    uri = f"ws://{server.host}:{server.port}/v1/ws"
    opening = asyncio.Semaphore(args.open_concurrency)
    me = psutil.Process()
    t_open = time.perf_counter()
    tasks = [asyncio.create_task(typing_session(uri, pool, run, opening, args.compression))
             for _ in range(args.sessions)]
    await run.all_open.wait()
    open_seconds = time.perf_counter() - t_open
    rss_open = server.rss()
    metric_start = await read_tokens_metric(server, args.tokens_metric)
    cpu_client0, cpu_server0, cpu_all0 = sum(me.cpu_times()[:2]), server.cpu_by_process(), busy_cpu_seconds()
    load_start = os.getloadavg()[0]
    run.t_start = time.perf_counter()  # the sessions start typing now
    while not run.stop and time.perf_counter() - run.t_start < args.seconds:  # or --max-messages halts it
        await asyncio.sleep(0.05)
    run.halt()
    window = run.t_stop - run.t_start
    cpu_client = (sum(me.cpu_times()[:2]) - cpu_client0) / window
    cpu_server1 = server.cpu_by_process()  # a process started in the window counts from 0; one gone takes its time
    cpu_server = sum(cpu - cpu_server0.get(pid, 0.0) for pid, cpu in cpu_server1.items()) / window
    cpu_all = (busy_cpu_seconds() - cpu_all0) / window
    load_stop = os.getloadavg()[0]
    metric_stop = await read_tokens_metric(server, args.tokens_metric)
    await asyncio.gather(*tasks)
    server_rate = None
    if metric_start[1] is not None and metric_stop[1] is not None:
        server_rate = (metric_stop[1] - metric_start[1]) / (metric_stop[0] - metric_start[0])
    full = [run.per_second[s] for s in range(int(window))]  # whole seconds of the window only
    return {
        "sessions": args.sessions, "opened": run.opened, "lost": sum(run.lost.values()), "lost_reasons": dict(run.lost),
        "open_seconds": open_seconds, "rss_all_open": rss_open, "window_seconds": window,
        "messages": run.messages, "texts_finished": len(run.finals), "decisions": run.decisions,
        "tokens_per_s_client": run.tokens_at_stop / window, "tokens_per_s_server": server_rate,
        "tokens_per_s_by_second": full, "mean_prefix_tokens": run.positions / max(run.messages, 1),
        "latency_ms": percentiles(run.latencies),
        "p99_ms_by_second": [1e3 * float(np.percentile(run.latency_by_second.get(s, [0.0]), 99)) for s in range(int(window))],
        "cpu_cores_client": cpu_client, "cpu_cores_server": cpu_server, "cpu_cores_machine": cpu_all,
        "server_processes": len(cpu_server1),
        "load_average_1min": [load_start, load_stop],
        "finals": run.finals,
    }


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all processes, all cores)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan")}
    a = np.asarray(values) * 1e3
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max())}


# --- The alternative: restart-incremental ------------------------------------------------------


class Keystrokes:
    """The word-by-word keystrokes of typing whole reviews, in a seeded random order.

    Restart-incremental costs more the longer the text so far, so its throughput depends on
    where in a review a keystroke falls.  It keeps no state, so the keystrokes of fully typed
    reviews can be replayed in any order: each is (the text so far, the tokens before it, the
    tokens it adds), drawn uniformly over every word of `reviews`, whatever the time bound.
    """

    def __init__(self, reviews: list[list[str]], clf: Any, seed: int = 0):
        from beam_rnn.stream.tokenizer import TokenizerState

        self.reviews = reviews
        self.cumulative: list[list[int]] = []  # tokens after each word of a review
        for words in reviews:
            state, seen, cum = TokenizerState(), 0, []
            for word in words:
                done, state = clf.tokenizer.feed(state, word + " ")
                seen += len(done)
                cum.append(seen)
            self.cumulative.append(cum)
        self.order = [(r, k) for r, words in enumerate(reviews) for k in range(len(words))]
        np.random.default_rng(seed).shuffle(self.order)
        self.next_index = 0

    def take(self) -> tuple[str, int, int] | None:
        """(text so far, tokens before this keystroke, tokens it adds); None when all were taken."""
        if self.next_index >= len(self.order):
            return None
        r, k = self.order[self.next_index]
        self.next_index += 1
        cum = self.cumulative[r]
        before = cum[k - 1] if k else 0
        return " ".join(self.reviews[r][: k + 1]) + " ", before, cum[k] - before

    def mean_prefix(self) -> float:
        """Mean tokens before a keystroke over every keystroke (what a long enough run converges to)."""
        return float(np.mean([c[k - 1] if k else 0 for c in self.cumulative for k in range(len(c))]))


async def restart_run(server: Server, keystrokes: Keystrokes, args: argparse.Namespace) -> dict[str, Any]:
    """`--alt-sessions` clients, each POSTing the whole text so far of a keystroke to /v1/classify."""
    t0 = time.perf_counter()
    stop_at = t0 + args.alt_seconds
    latencies: list[float] = []
    counts: Counter = Counter()

    async def client() -> None:
        conn = HttpConnection(server.host, server.port)
        try:
            while time.perf_counter() < stop_at and counts["messages"] < args.alt_max_messages:
                if (keystroke := keystrokes.take()) is None:
                    return
                text, before, adds = keystroke
                start = time.perf_counter()
                status, body = await conn.request("POST", "/v1/classify", json.dumps({"text": text}).encode())
                latencies.append(time.perf_counter() - start)
                if status != 200 or "results" not in json.loads(body):
                    counts[f"http {status}"] += 1
                    return
                counts["messages"] += 1
                counts["positions"] += before
                counts["tokens"] += adds
        finally:
            await conn.close()

    await asyncio.gather(*(client() for _ in range(args.alt_sessions)))
    seconds = time.perf_counter() - t0
    return {"sessions": args.alt_sessions, "seconds": seconds, "messages": counts["messages"],
            "errors": {k: v for k, v in counts.items() if k.startswith("http")},
            "tokens_per_s": counts["tokens"] / seconds,
            "mean_prefix_tokens": counts["positions"] / max(counts["messages"], 1), "latency_ms": percentiles(latencies)}


def restart_in_process(keystrokes: Keystrokes, clf: Any, seconds: float) -> dict[str, Any]:
    """`StreamingClassifier.predict_text` of the text so far of each keystroke (one thread, no network), for
    `seconds` of predict_text time (the whole-text tokenisation is part of it)."""
    messages = tokens = positions = 0
    busy = 0.0
    while busy < seconds and (keystroke := keystrokes.take()) is not None:
        text, before, adds = keystroke
        start = time.perf_counter()
        clf.predict_text(text)
        busy += time.perf_counter() - start
        messages += 1
        positions += before
        tokens += adds
    return {"seconds": busy, "messages": messages, "tokens_per_s": tokens / max(busy, 1e-9),
            "mean_prefix_tokens": positions / max(messages, 1)}


# --- The check against serving_default ---------------------------------------------------------


def check_finals(model_dir: str, finals: list[tuple[str, dict[str, float], int]], clf: Any,
                 batch: int = 32) -> dict[str, Any]:
    """Each final prediction against the SavedModel's ``serving_default`` on the same text."""
    import tensorflow as tf

    from beam_rnn.train import export

    serve = export.load_exported(model_dir).signatures["serving_default"]
    order = sorted(range(len(finals)), key=lambda i: finals[i][2])  # similar lengths in one batch
    drift = np.zeros(len(finals))
    labels_differ = tokens_differ = 0
    for start in range(0, len(order), batch):
        rows = [finals[i] for i in order[start : start + batch]]
        out = serve(text=tf.constant([text for text, _, _ in rows]))
        probs = out["class_probabilities"].numpy()
        names = [n.decode() for n in out["class_names"].numpy()[0]]
        for j, (text, got, seen) in enumerate(rows):
            values = np.array([got[name] for name in names])
            drift[order[start + j]] = np.abs(values - probs[j]).max()
            labels_differ += int(np.argmax(values) != np.argmax(probs[j]))
            tokens_differ += int(seen != len(clf.text_ids(text)))
    lengths = np.array([seen for _, _, seen in finals])
    by_length = []
    for low, high in zip(LENGTH_BINS, (*LENGTH_BINS[1:], None)):
        mask = (lengths >= low) & (lengths < high if high is not None else True)
        if mask.any():
            by_length.append({"tokens": f"{low}-{high - 1}" if high else f">={low}", "texts": int(mask.sum()),
                              "max_drift": float(drift[mask].max())})
    return {"texts": len(finals), "max_drift": float(drift.max()) if len(finals) else float("nan"),
            "within_1e-5": int((drift <= 1e-5).sum()), "labels_differ": labels_differ,
            "tokens_seen_differ": tokens_differ, "by_length": by_length}
