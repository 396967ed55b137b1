"""``beam-rnn serve --workers N``: N server processes on one port, supervised by the first.

The parent binds the port and checks the models as with one process (a taken port or a
bad model: one line, exit 2, before any worker starts), then `supervise` starts N
workers with the *spawn* method (TensorFlow may be loaded: no fork).  Each worker
loads the models, and serves the app (`beam_rnn.service.server.run_app`) on the
inherited listening socket — the kernel hands each new connection to one of them, and
a WebSocket session lives in the worker that accepted it — and on a Unix socket of its
own, in a directory the parent creates (mode 0700) and removes, through which the
workers reach each other (`beam_rnn.service.cluster`).

* The one ``serving ... on URL`` line is printed when every worker serves.
* SIGINT / SIGTERM: every worker stops gracefully (as one process does), then exit 0.
* SIGHUP: passed to every worker, which reloads its models (``--watch`` polls in each).
* A worker that dies is logged and started again; `MAX_FAST_CRASHES` deaths in a row
  of one worker, each within `FAST_CRASH_SECONDS` of its start, end the service (exit 1).
* ``--max-sessions`` is the whole service's: `SessionQuota`, a semaphore the workers share.
* A worker stops by itself if the parent is gone (no orphans after a SIGKILL).
"""

import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Sequence
from typing import Any, TextIO

from beam_rnn.core.errors import RunFailed
from beam_rnn.service.config import ServiceConfig
from beam_rnn.service.server import GRACEFUL_SHUTDOWN_SECONDS, url

LOG = logging.getLogger(__name__)
FAST_CRASH_SECONDS = 30.0  # a worker that dies this soon after its start counts as a fast crash
MAX_FAST_CRASHES = 3  # fast crashes in a row of one worker before the service gives up
STOP_SECONDS = GRACEFUL_SHUTDOWN_SECONDS + 10  # then a worker still running is killed
POLL_SECONDS = 0.2
UNIX_BACKLOG = 128


class SessionQuota:
    """``--max-sessions`` for all workers: a semaphore of that many units, and the units each worker holds.

    A session takes a unit when it opens and gives it back when it closes; the parent
    gives back the units of a worker that died (its sessions went with it).  Built by
    the parent; each worker sets `index` to its own in the copy it is given.
    """

    def __init__(self, context: Any, limit: int, workers: int):
        self._free = context.BoundedSemaphore(limit)
        self._held = context.Array("i", workers, lock=False)  # each slot written by its worker only
        self.index: int | None = None

    def take(self) -> bool:
        if not self._free.acquire(False):
            return False
        self._held[self.index] += 1  # a unit taken but not yet counted is lost if the worker dies here: never one too many
        return True

    def give(self) -> None:
        self._held[self.index] -= 1
        self._free.release()

    def held(self, index: int) -> int:
        return self._held[index]

    def reclaim(self, index: int) -> None:
        """Gives back the units of worker `index`, which is no longer running."""
        units, self._held[index] = self._held[index], 0
        for _ in range(units):
            try:
                self._free.release()
            except ValueError:  # already all free
                break


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """What a worker process is given (pickled to it by the spawn method)."""

    index: int
    config: ServiceConfig
    model_values: tuple[str, ...]
    sock: socket.socket
    unix_sock: socket.socket
    paths: tuple[str, ...]
    quota: SessionQuota
    ready: Any  # a shared byte per worker (multiprocessing Array): the worker sets its own to 1 once it serves
    parent_pid: int
    verbose: bool


def worker_main(spec: WorkerSpec) -> None:
    """A worker process: load the models, serve until SIGTERM (or the parent's end); exit 0, or 1 on a failure."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until its reload handler is in place
    from beam_rnn.cli.runtime import console_output, hard_exit  # pylint: disable=import-outside-toplevel

    with console_output(spec.verbose):
        for handler in logging.getLogger().handlers:  # every line says which worker wrote it
            handler.addFilter(_WorkerPrefix(spec.index))
        try:
            _serve_worker(spec)
            code = 0
        except KeyboardInterrupt:  # Ctrl-C reached the worker before its server took the signal
            code = 0
        except Exception as e:  # pylint: disable=broad-except  # one line in the parent's stderr, then restarted
            from beam_rnn.stream.events import one_line  # pylint: disable=import-outside-toplevel

            LOG.error("failed: %s", one_line(e)[:300] or type(e).__name__)
            code = 1
    hard_exit(code)


class _WorkerPrefix(logging.Filter):
    def __init__(self, index: int):
        super().__init__()
        self.prefix = f"worker {index}: "

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and not record.msg.startswith(self.prefix):
            record.msg = self.prefix + record.msg
        return True


def _serve_worker(spec: WorkerSpec) -> None:
    # pylint: disable=import-outside-toplevel
    from beam_rnn.core.threads import limit_blas_threads
    from beam_rnn.service.app import create_app
    from beam_rnn.service.cluster import Peers
    from beam_rnn.service.models import load_models
    from beam_rnn.service.server import run_app

    limit_blas_threads()
    models = load_models(spec.model_values, max_pending_chars=spec.config.max_pending_chars)
    quota = spec.quota  # this process's copy
    quota.index = spec.index
    app = create_app(spec.config, models, spec.model_values, peers=Peers(spec.index, spec.paths), quota=quota)

    def on_started() -> None:
        spec.ready[spec.index] = 1

    run_app(app, spec.config, [spec.sock, spec.unix_sock], on_started, verbose=spec.verbose,
            parent_pid=spec.parent_pid)
    if os.getppid() != spec.parent_pid:  # the parent was killed and cannot remove the socket directory
        with contextlib.suppress(OSError):
            os.unlink(spec.paths[spec.index])
            os.rmdir(os.path.dirname(spec.paths[spec.index]))  # the last worker to leave removes it


@dataclasses.dataclass
class _Worker:
    process: Any
    started: float
    fast_crashes: int = 0


def _exit_description(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class Supervisor:
    """The parent of ``--workers N``: starts, watches, restarts, signals and stops the workers."""

    def __init__(self, config: ServiceConfig, model_values: Sequence[str], sock: socket.socket, verbose: bool):
        self.config = config
        self.model_values = tuple(model_values)
        self.sock = sock
        self.verbose = verbose
        self.context = multiprocessing.get_context("spawn")
        self.quota: SessionQuota | None = SessionQuota(self.context, config.max_sessions, config.workers)
        self.directory = tempfile.mkdtemp(prefix="beam-rnn-serve-")  # mode 0700: only this user reaches the workers
        self.paths = tuple(os.path.join(self.directory, f"worker-{i}.sock") for i in range(config.workers))
        self.unix_socks: list[socket.socket] = []
        self.workers: list[_Worker | None] = [None] * config.workers
        self.ready = self.context.Array("b", config.workers, lock=False)
        self.stopping = False

    def _bind_unix(self) -> None:
        for path in self.paths:  # bound here, so that requests to a restarting worker wait in the backlog
            unix_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            unix_sock.bind(path)
            unix_sock.listen(UNIX_BACKLOG)
            self.unix_socks.append(unix_sock)

    def _start(self, index: int) -> None:
        self.ready[index] = 0
        spec = WorkerSpec(index, self.config, self.model_values, self.sock, self.unix_socks[index], self.paths,
                          self.quota, self.ready, os.getpid(), self.verbose)
        process = self.context.Process(target=worker_main, args=(spec,), name=f"beam-rnn-serve-worker-{index}")
        process.start()
        previous = self.workers[index]
        self.workers[index] = _Worker(process, time.monotonic(), previous.fast_crashes if previous else 0)

    def _replace_dead(self) -> None:
        """Starts a new worker for each one that died (RunFailed after `MAX_FAST_CRASHES` fast ones in a row)."""
        for index, worker in enumerate(self.workers):
            if worker is None or worker.process.is_alive() or self.stopping:
                continue
            worker.process.join()
            self.quota.reclaim(index)
            lived = time.monotonic() - worker.started
            worker.fast_crashes = worker.fast_crashes + 1 if lived < FAST_CRASH_SECONDS else 0
            what = f"Worker {index} (pid {worker.process.pid}) {_exit_description(worker.process.exitcode)}"
            if worker.fast_crashes >= MAX_FAST_CRASHES:
                raise RunFailed(f"{what}: {worker.fast_crashes} crashes, each within {FAST_CRASH_SECONDS:.0f} s of its "
                                "start, in a row; stopping the service")
            LOG.error("%s after %.1f s; starting another (its sessions are lost)", what, lived)
            self._start(index)

    def _on_stop(self, *_: Any) -> None:
        self.stopping = True

    def _on_hup(self, *_: Any) -> None:
        for worker in self.workers:
            if worker is not None and worker.process.is_alive():
                with contextlib.suppress(ProcessLookupError):  # it died meanwhile: its successor loads afresh
                    os.kill(worker.process.pid, signal.SIGHUP)

    def _wait(self) -> None:
        sentinels = [w.process.sentinel for w in self.workers if w is not None]
        multiprocessing.connection.wait(sentinels, timeout=POLL_SECONDS)

    def run(self, line: str, out: TextIO) -> int:
        """Serves until SIGINT / SIGTERM (0); RunFailed when a worker cannot be kept running."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        try:
            self._bind_unix()
            for index in range(self.config.workers):
                self._start(index)
            while not self.stopping and not all(self.ready):
                for index, worker in enumerate(self.workers):
                    if not worker.process.is_alive() and not self.stopping:
                        raise RunFailed(f"worker {index} {_exit_description(worker.process.exitcode)} before it "
                                        "served (its error is above)")
                self._wait()
            if not self.stopping:
                print(line, file=out, flush=True)
            while not self.stopping:
                self._replace_dead()
                self._wait()
        finally:
            self._stop_all()
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        return 0

    def _stop_all(self) -> None:
        self.stopping = True
        running = [w.process for w in self.workers if w is not None and w.process.is_alive()]
        for process in running:
            try:
                os.kill(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_SECONDS
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                LOG.error("%s (pid %d) did not stop within %d s; killed", process.name, process.pid, STOP_SECONDS)
                process.kill()
                process.join()
        for unix_sock in self.unix_socks:
            unix_sock.close()
        shutil.rmtree(self.directory, ignore_errors=True)
        self.quota = None  # its semaphore goes now: unregistered, the resource tracker has nothing to warn about


def supervise(config: ServiceConfig, names: Sequence[str], model_values: Sequence[str], sock: socket.socket, *,
              verbose: bool, out: TextIO) -> int:
    """Serves with ``config.workers`` worker processes on `sock` until SIGINT / SIGTERM; the exit status (0)."""
    supervisor = Supervisor(config, model_values, sock, verbose)
    try:
        return supervisor.run(f"serving {', '.join(names)} on {url(config.host, sock)}", out)
    finally:
        sock.close()
