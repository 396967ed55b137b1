"""Running the app with uvicorn: the listening socket, the serving line, signals.

The socket is bound before the models load (a taken port is one error line, exit 2),
and once uvicorn accepts connections exactly one line goes to stdout::

    serving lstm, bilstm on http://127.0.0.1:8080/

(with the real port for ``--port 0``).  SIGHUP reloads the models; SIGINT and SIGTERM
stop the server gracefully (open WebSockets are closed with 1012) and the process
exits 0.  Logging stays quiet unless ``--verbose`` (then uvicorn's lines and its
access log too).
"""

import asyncio
import importlib.util
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from beam_rnn.core.errors import InputError, RunFailed
from beam_rnn.core.threads import limit_blas_threads
from beam_rnn.service.config import ServiceConfig
from beam_rnn.service.models import ModelSet

GRACEFUL_SHUTDOWN_SECONDS = 5
ORPHAN_POLL_SECONDS = 0.5


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# uvicorn's implementations (`benchmarks/load_service.py --compare`, RESULTS.md): uvloop's event loop when installed
# (the pause/resume of reading around every message and the socket writes in C: less server CPU per WebSocket
# message), httptools for HTTP, and uvicorn's choice of WebSocket protocol (wsproto and the legacy websockets one
# measured no cheaper).
UVICORN_OPTIONS = {
    "loop": "uvloop" if _installed("uvloop") else "asyncio",
    "http": "httptools" if _installed("httptools") else "h11",
    "ws": "auto",
}


def bind_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) (port 0: a free one).

    Raises:
        InputError: the address cannot be resolved or bound (taken port, foreign address).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as e:
        raise InputError(f"--host {host}: {e}") from e
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    return sock


def url(host: str, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def serve(config: ServiceConfig, models: ModelSet, model_values: Sequence[str], sock: socket.socket, *,
          verbose: bool = False, out: TextIO | None = None) -> int:
    """Serves until SIGINT / SIGTERM; returns the exit status (0).

    With ``config.workers`` > 1 the processes of `beam_rnn.service.workers` serve on `sock` instead.
    """
    if config.workers > 1:
        from beam_rnn.service.workers import supervise  # pylint: disable=import-outside-toplevel

        return supervise(config, models.names, model_values, sock, verbose=verbose, out=out or sys.stdout)
    from beam_rnn.service.app import create_app  # pylint: disable=import-outside-toplevel

    limit_blas_threads()  # a batched step is a few small matrix products (beam_rnn.core.threads)
    app = create_app(config, models, model_values)
    line = f"serving {', '.join(models.names)} on {url(config.host, sock)}"
    out = out or sys.stdout
    run_app(app, config, [sock], lambda: print(line, file=out, flush=True), verbose=verbose)
    return 0


def run_app(app, config: ServiceConfig, sockets: Sequence[socket.socket], on_started: Callable[[], None], *,
            verbose: bool = False, parent_pid: int | None = None) -> None:
    """Runs `app` with uvicorn on `sockets` until SIGINT / SIGTERM (graceful) and calls `on_started` once it
    accepts connections; SIGHUP reloads its models.  `parent_pid`: stop as well when that process is gone
    (a worker whose supervisor was killed)."""
    import uvicorn  # pylint: disable=import-outside-toplevel

    server = uvicorn.Server(uvicorn.Config(
        app, log_config=None, access_log=verbose, lifespan="on", ws_max_size=config.max_body_bytes,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS, server_header=False,
        http=UVICORN_OPTIONS["http"], ws=UVICORN_OPTIONS["ws"]))
    # uvicorn raises the stopping signal again after its graceful shutdown, with the handler it found:
    # a no-op one here, so that Ctrl-C / SIGTERM end in exit status 0 rather than a KeyboardInterrupt.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    run = asyncio.run
    if UVICORN_OPTIONS["loop"] == "uvloop":
        import uvloop  # pylint: disable=import-outside-toplevel

        run = uvloop.run
    run(_run(server, app.state.service, list(sockets), on_started, parent_pid))


async def _run(server, service, sockets: list[socket.socket], on_started: Callable[[], None],
               parent_pid: int | None) -> None:
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()

    def keep(task: asyncio.Task) -> None:
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def on_sighup() -> None:
        keep(asyncio.ensure_future(service.reload("SIGHUP")))

    async def orphaned() -> None:
        while os.getppid() == parent_pid:
            await asyncio.sleep(ORPHAN_POLL_SECONDS)
        server.should_exit = True

    task = asyncio.create_task(server.serve(sockets=sockets))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
        if parent_pid is not None:
            keep(asyncio.create_task(orphaned()))
        on_started()
    await task
    if not server.started:
        raise RunFailed("the service did not start (its lifespan failed; --verbose shows why)")
