"""Load test of `beam-rnn serve`: concurrent WebSocket sessions typing IMDB reviews word by word.

    python -m benchmarks.load_service --model MODELS/lstm [--sessions 1000] [--seconds 60]
        [--max-messages 2000000] [--imdb ../shared/data/imdb/train.csv] [--json out.json] [--figure out.png]

Starts ``beam-rnn serve --model DIR --port 0`` on 127.0.0.1 (a subprocess, stopped with SIGTERM
at the end), opens ``--sessions`` WebSocket sessions (all open before any types), and each session
types IMDB reviews one word a message (``{"text": word + " "}``), waiting for the server's
prediction before the next word; at the end of a review it sends ``{"finish": true}``, keeps the
final prediction and ``{"reset": true}``s to the next review.  Typing stops after ``--seconds``
or ``--max-messages`` text messages, whichever comes first; every session then finishes its
current text.  Every request goes to 127.0.0.1 only, and the run is bounded in time and count.

Prints: sessions opened and lost; messages; tokens/s over the typing window (client side: the
increments of ``tokens_seen``; server side: the tokens counter of ``/metrics``); latency
p50/p95/p99 of a typing message (send to prediction, measured by the client); server RSS at
start, peak and end; the CPU used by the client and the server; and the check that every final
prediction equals the exported model's ``serving_default`` on the same text (max |difference| of
the class probabilities, overall and by length).

The alternative a user would pick without per-session state is restart-incremental: re-classify
the whole text so far on every keystroke.  In the same run (same server, same model, same
reviews) ``--alt-sessions`` clients do that through ``POST /v1/classify`` for ``--alt-seconds``,
and the in-process NumPy full pass (`StreamingClassifier.predict_text` of each prefix) is timed
too; the tokens/s ratios are printed.

``--compare VARIANT`` (repeatable) runs only the typing load, ``--rounds`` times, against a fresh server
of this tree and of each VARIANT: ``rev:REV`` (the server of another commit, from ``git archive``) or
``uvicorn:KEY=VALUE[,...]`` (this tree with `beam_rnn.service.server.UVICORN_OPTIONS` overridden, e.g.
``uvicorn:loop=asyncio``), and prints each one's server CPU per message (process CPU seconds / typing
messages: far less moved by other jobs than wall-clock numbers) with its ratio to this tree.
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
import resource
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_IMDB = ROOT.parent / "shared" / "data" / "imdb" / "train.csv"
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
        total = 0.0
        for p in [self.ps, *self.ps.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

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
    cpu_client0, cpu_server0, cpu_all0 = sum(me.cpu_times()[:2]), server.cpu_seconds(), busy_cpu_seconds()
    load_start = os.getloadavg()[0]
    run.t_start = time.perf_counter()  # the sessions start typing now
    while not run.stop and time.perf_counter() - run.t_start < args.seconds:  # or --max-messages halts it
        await asyncio.sleep(0.05)
    run.halt()
    window = run.t_stop - run.t_start
    cpu_client = (sum(me.cpu_times()[:2]) - cpu_client0) / window
    cpu_server = (server.cpu_seconds() - cpu_server0) / window
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


# --- Servers compared in the same run (--compare) -----------------------------------------------


@dataclass
class Variant:
    """A server to compare: this tree, another commit's tree, or this tree with uvicorn options overridden."""

    name: str
    root: Path = ROOT
    prelude: str = ""


def parse_variant(spec: str, workdir: Path) -> Variant:
    """``rev:REV`` (the server of commit REV, from ``git archive``) or ``uvicorn:KEY=VALUE[,KEY=VALUE]``
    (`beam_rnn.service.server.UVICORN_OPTIONS` overridden, e.g. ``uvicorn:loop=asyncio,ws=wsproto``)."""
    kind, _, value = spec.partition(":")
    if kind == "rev" and value:
        root = workdir / re.sub(r"[^A-Za-z0-9_.-]", "_", value)
        root.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", value], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
        return Variant(spec, root=root)
    if kind == "uvicorn" and value:
        options = dict(item.split("=", 1) for item in value.split(","))
        return Variant(spec, prelude=f"import beam_rnn.service.server as s; s.UVICORN_OPTIONS.update({options!r}); ")
    raise SystemExit(f"load_service: --compare {spec!r}: give rev:REV or uvicorn:KEY=VALUE[,KEY=VALUE]")


def server_us_per_message(ws: dict[str, Any]) -> float:
    return 1e6 * ws["cpu_cores_server"] * ws["window_seconds"] / max(ws["messages"], 1)


def client_us_per_message(ws: dict[str, Any]) -> float:
    return 1e6 * ws["cpu_cores_client"] * ws["window_seconds"] / max(ws["messages"], 1)


def compare_run(args: argparse.Namespace, reviews: list[list[str]], extra: list[str]) -> dict[str, list[dict[str, Any]]]:
    """`--rounds` rounds; in each, the same typing load against a fresh server of every variant (this tree first
    in even rounds, last in odd ones, so that a drift of the machine's load does not favour one)."""
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="load-service-variants-") as workdir:
        variants = [Variant("this tree")] + [parse_variant(spec, Path(workdir)) for spec in args.compare]
        for name in (v.name for v in variants):
            results[name] = []
        for round_index in range(args.rounds):
            for variant in variants if round_index % 2 == 0 else variants[::-1]:
                print(f"load_service: round {round_index + 1}/{args.rounds}, {variant.name}: {args.sessions} sessions "
                      f"for up to {args.seconds:.0f} s", file=sys.stderr)
                server = Server([args.model], extra, args.startup_seconds, root=variant.root, prelude=variant.prelude)
                try:
                    asyncio.run(wait_ready(server, args.startup_seconds))
                    ws = asyncio.run(websocket_run(server, ReviewPool(reviews), args))
                    ws.pop("finals")
                finally:
                    ws_exit = server.stop()
                ws["server_exit"] = ws_exit
                results[variant.name].append(ws)
    return results


def compare_report(results: dict[str, list[dict[str, Any]]], sessions: int) -> str:
    """Per variant, the median over rounds; the ratio of server CPU per message against this tree."""
    base = float(np.median([server_us_per_message(ws) for ws in results["this tree"]]))
    lines = [f"beam-rnn serve variants, {sessions} WebSocket sessions, {len(results['this tree'])} round(s) each "
             "(median over rounds; every round in brackets)",
             f"  {'variant':<34} {'server us CPU/msg':>34} {'x this tree':>11} {'tokens/s':>8} "
             f"{'client us/msg':>13} {'p99 ms':>7} {'lost':>4} {'server cores':>12} {'load avg':>8}"]
    for name, runs in results.items():
        per_msg = [server_us_per_message(ws) for ws in runs]
        median = float(np.median(per_msg))
        lines.append(
            f"  {name:<34} {median:>7.0f} [{', '.join(f'{v:.0f}' for v in per_msg):>24}] {median / base:>11.2f} "
            f"{np.median([ws['tokens_per_s_client'] for ws in runs]):>8,.0f} "
            f"{np.median([client_us_per_message(ws) for ws in runs]):>13.0f} "
            f"{np.median([ws['latency_ms']['p99'] for ws in runs]):>7.1f} {sum(ws['lost'] for ws in runs):>4} "
            f"{np.median([ws['cpu_cores_server'] for ws in runs]):>12.2f} "
            f"{np.median([np.mean(ws['load_average_1min']) for ws in runs]):>8.1f}")
    return "\n".join(lines)


# --- Report -----------------------------------------------------------------------------------


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def report(r: dict[str, Any]) -> str:
    ws, alt, inproc, check = r["websocket"], r.get("restart_http"), r.get("restart_in_process"), r["check"]
    lat = ws["latency_ms"]
    per_s = ws["tokens_per_s_by_second"]
    lines = [
        f"beam-rnn serve load test: {ws['sessions']} WebSocket sessions on 127.0.0.1, model {r['model']}, "
        f"{ws['window_seconds']:.1f} s typing window",
        f"  sessions opened / lost               {ws['opened']} / {ws['lost']}"
        + (f"  ({ws['lost_reasons']})" if ws["lost"] else "") + f"  (all open in {ws['open_seconds']:.1f} s)",
        f"  typing messages / texts finished     {ws['messages']:,} / {ws['texts_finished']:,}"
        f"  (decisions {ws['decisions']:,}; mean prefix {ws['mean_prefix_tokens']:.0f} tokens)",
        f"  tokens/s sustained, client side      {ws['tokens_per_s_client']:,.0f}"
        + (f"  (per whole second: min {min(per_s):,}, median {int(np.median(per_s)):,})" if per_s else ""),
        "  tokens/s sustained, server /metrics   "
        + (f"{ws['tokens_per_s_server']:,.0f}" if ws["tokens_per_s_server"] is not None
           else f"n/a (no {r['tokens_metric']} in /metrics)"),
        f"  latency per message p50/p95/p99/max  {lat['p50']:.1f} / {lat['p95']:.1f} / {lat['p99']:.1f} / {lat['max']:.1f} ms",
        f"  server RSS start / all open / peak / end   {mb(r['rss']['start'])} / {mb(ws['rss_all_open'])} / "
        f"{mb(r['rss']['peak'])} / {mb(r['rss']['end'])}",
        f"  CPU (cores of {psutil.cpu_count()}) client / server / others  {ws['cpu_cores_client']:.2f} / "
        f"{ws['cpu_cores_server']:.2f} / {max(0.0, ws['cpu_cores_machine'] - ws['cpu_cores_client'] - ws['cpu_cores_server']):.2f}"
        f"  (load average {ws['load_average_1min'][0]:.1f} -> {ws['load_average_1min'][1]:.1f})",
        f"  per message: client {client_us_per_message(ws):.0f} us CPU, server {server_us_per_message(ws):.0f} us CPU; "
        f"server tokens per server CPU-second {ws['tokens_per_s_client'] / max(ws['cpu_cores_server'], 1e-9):,.0f}",
        f"  final vs serving_default             {check['within_1e-5']} of {check['texts']} within 1e-5, "
        f"max |diff| {check['max_drift']:.2e}, labels differ {check['labels_differ']}, "
        f"tokens_seen differ {check['tokens_seen_differ']}",
        "    max |diff| by length: " + ", ".join(f"{b['tokens']} tokens ({b['texts']}) {b['max_drift']:.1e}"
                                               for b in check["by_length"]),
    ]
    if alt or inproc:
        lines.append(f"  restart-incremental: re-classify the text so far at each keystroke, keystrokes drawn uniformly "
                     f"over every word of whole reviews (mean prefix of all of them {r['keystroke_mean_prefix_tokens']:.0f} tokens)")
    if alt:
        lat = alt["latency_ms"]
        lines += [
            f"    POST /v1/classify, {alt['sessions']} clients, {alt['seconds']:.1f} s: {alt['messages']:,} keystrokes "
            f"(mean prefix {alt['mean_prefix_tokens']:.0f})" + (f", errors {alt['errors']}" if alt["errors"] else "")
            + f", {alt['tokens_per_s']:,.0f} tokens/s, latency p50/p95/p99 {lat['p50']:.1f} / {lat['p95']:.1f} / "
            f"{lat['p99']:.1f} ms",
            f"    -> the per-session service is {ws['tokens_per_s_client'] / alt['tokens_per_s']:.1f}x its tokens/s",
        ]
    if inproc:
        lines += [
            f"    in process, StreamingClassifier.predict_text, 1 thread, {inproc['seconds']:.1f} s: {inproc['messages']:,} "
            f"keystrokes (mean prefix {inproc['mean_prefix_tokens']:.0f}), {inproc['tokens_per_s']:,.0f} tokens/s",
            f"    -> the per-session service is {ws['tokens_per_s_client'] / inproc['tokens_per_s']:.1f}x its tokens/s",
        ]
    lines.append(f"  server exit status after SIGTERM     {r['server_exit']}")
    return "\n".join(lines)


def figure(r: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = r["websocket"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    seconds = np.arange(len(ws["tokens_per_s_by_second"]))
    axes[0].plot(seconds, ws["tokens_per_s_by_second"], label="client side")
    axes[0].axhline(20000, color="grey", ls="--", lw=1, label="goal 20,000")
    if r.get("restart_http"):
        axes[0].axhline(r["restart_http"]["tokens_per_s"], color="C3", lw=1,
                        label="restart-incremental (POST /v1/classify)")
    axes[0].set(xlabel="second of the typing window", ylabel="tokens/s", ylim=(0, None),
                title=f"{ws['sessions']} sessions: tokens per second")
    axes[0].legend(fontsize=8)
    axes[1].plot(seconds, ws["p99_ms_by_second"], color="C1")
    axes[1].axhline(50, color="grey", ls="--", lw=1, label="goal 50 ms")
    axes[1].set(xlabel="second of the typing window", ylabel="ms", ylim=(0, None), title="p99 latency per message")
    axes[1].legend(fontsize=8)
    t, rss = zip(*r["rss"]["samples"]) if r["rss"]["samples"] else ((), ())
    axes[2].plot(t, np.asarray(rss) / 2**20, color="C2")
    axes[2].set(xlabel="seconds since the server was ready", ylabel="MiB", ylim=(0, 1.2 * max(rss, default=1) / 2**20),
                title="server RSS")
    fig.suptitle(f"beam-rnn serve on 2 cores, loopback, model {Path(r['model']).name}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- Main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="Exported streaming (lstm) model dir.")
    p.add_argument("--imdb", type=Path, default=DEFAULT_IMDB, help="IMDB csv with a text column.")
    p.add_argument("--reviews", type=int, default=5000, help="Reviews read (handed out in order, cycling).")
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=60.0, help="Typing window (then every session finishes).")
    p.add_argument("--max-messages", type=int, default=2_000_000, help="Typing messages in all, at most.")
    p.add_argument("--message-timeout", type=float, default=60.0, help="A session waiting longer is lost.")
    p.add_argument("--open-concurrency", type=int, default=100, help="WebSocket handshakes at once.")
    p.add_argument("--compression", action="store_true", help="Negotiate permessage-deflate (off: plain frames).")
    p.add_argument("--serve-arg", action="append", default=[], help="Extra `beam-rnn serve` flag (repeatable).")
    p.add_argument("--tokens-metric", default="beam_rnn_serve_tokens_total",
                   help="The /metrics counter of tokens stepped.")
    p.add_argument("--alt-sessions", type=int, default=50, help="Restart-incremental HTTP clients (0: skip).")
    p.add_argument("--alt-seconds", type=float, default=30.0)
    p.add_argument("--alt-max-messages", type=int, default=200_000)
    p.add_argument("--alt-reviews", type=int, default=1000,
                   help="The restart-incremental keystrokes are drawn from every word of the first this many reviews.")
    p.add_argument("--startup-seconds", type=float, default=180.0)
    p.add_argument("--compare", action="append", default=[], metavar="VARIANT",
                   help="Instead of the full run: the typing load (no restart-incremental, no serving_default check) "
                   "against this tree's server and against each VARIANT, rev:REV (another commit's server) or "
                   "uvicorn:KEY=VALUE[,...] (uvicorn options overridden), --rounds times; prints server CPU per message "
                   "and its ratio (repeatable).")
    p.add_argument("--rounds", type=int, default=3, help="With --compare: rounds (each runs every variant once).")
    p.add_argument("--json", help="Write the results (without per-text finals) here.")
    p.add_argument("--figure", help="Write tokens/s, p99 latency and RSS over time here (PNG).")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * (args.sessions + args.alt_sessions) + 1024
    if soft < want:  # the server inherits it: one socket per session on each side
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    from beam_rnn.stream import StreamingClassifier

    clf = StreamingClassifier.load(args.model)
    reviews = read_reviews(args.imdb, args.reviews)
    keystrokes = Keystrokes(reviews[: args.alt_reviews], clf) if args.alt_sessions and not args.compare else None
    extra = ["--max-sessions", str(args.sessions), *[a for arg in args.serve_arg for a in arg.split()]]
    if args.compare:
        results = compare_run(args, reviews, extra)
        print(compare_report(results, args.sessions))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(results, f, indent=1)
        return 0
    print(f"load_service: starting beam-rnn serve ({len(reviews)} reviews read)", file=sys.stderr)
    server = Server([args.model], extra, args.startup_seconds)
    sampler = RssSampler(server)
    result: dict[str, Any] = {"model": args.model, "tokens_metric": args.tokens_metric, "argv": sys.argv[1:],
                              "keystroke_mean_prefix_tokens": keystrokes.mean_prefix() if keystrokes else None}
    try:
        asyncio.run(wait_ready(server, args.startup_seconds))
        rss_start = server.rss()
        sampler.start()
        print(f"load_service: {args.sessions} sessions typing for up to {args.seconds:.0f} s", file=sys.stderr)
        result["websocket"] = asyncio.run(websocket_run(server, ReviewPool(reviews), args))
        time.sleep(1.0)  # the server notices the closed sockets
        sampler.halt()
        result["rss"] = {"start": rss_start, "peak": max(b for _, b in sampler.samples), "end": server.rss(),
                         "samples": sampler.samples}
        if args.alt_sessions:
            print(f"load_service: restart-incremental, {args.alt_sessions} HTTP clients for up to "
                  f"{args.alt_seconds:.0f} s", file=sys.stderr)
            result["restart_http"] = asyncio.run(restart_run(server, keystrokes, args))
    finally:
        if sampler.is_alive():
            sampler.halt()
        result["server_exit"] = server.stop()
    if args.alt_sessions:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):  # as the server runs its steps
            result["restart_in_process"] = restart_in_process(keystrokes, clf, args.alt_seconds)
    print(f"load_service: checking {len(result['websocket']['finals'])} final predictions against serving_default",
          file=sys.stderr)
    result["check"] = check_finals(args.model, result["websocket"].pop("finals"), clf)
    print(report(result))
    if args.figure:
        figure(result, args.figure)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
