"""The ASGI app of ``beam-rnn serve`` (Starlette): routes, sessions, reloads.

    GET  /                   the type-ahead page (static/index.html)
    WS   /v1/ws              a session per socket: hello, then one frame per client message
    POST /v1/classify        {"text": ...} or {"texts": [...]} -> every model's prediction per text
    POST /v1/stream/{id}     a session for clients without sockets: {"text": chunk} / {"finish": true}
    GET  /v1/stream/{id}     its current prediction;  DELETE closes it
    GET  /healthz, /readyz   alive; models loaded (503 before, and while the last reload failed)
    GET  /metrics            Prometheus text (`beam_rnn.service.metrics`)

With ``--workers N`` the app of each worker also has `Peers`: /v1/stream requests for a
session another worker holds are passed to it, /metrics sums every worker's and /readyz
asks them all (`beam_rnn.service.cluster`).

`Service` holds the state: the current `ModelSet` (replaced whole by `Service.reload`:
new sessions get the new models, open ones keep the classifier they started with),
the `SessionTable`, the `Batcher` task, the idle sweeper and the ``--watch`` poller.
"""

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from importlib import resources
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from beam_rnn.service.cluster import WORKER_SCOPE, Peers
from beam_rnn.service.config import ServiceConfig
from beam_rnn.service.metrics import CONTENT_TYPE, ServiceMetrics, merge_expositions
from beam_rnn.service.models import ModelSet, incompatibility, load_models, manifest_fingerprint
from beam_rnn.service.protocol import MessageError, Streams, error_frame
from beam_rnn.service.sessions import Batcher, Quota, Session, SessionTable
from beam_rnn.stream.events import one_line, repair_text

LOG = logging.getLogger(__name__)
SESSION_ID_RE = re.compile(r"[A-Za-z0-9_.~-]{1,128}")
CLOSE_IDLE = 1001  # "going away"
CLOSE_TRY_LATER = 1013
CLOSE_NO_MODEL = 1011
NOT_READY = "the models are not loaded yet"
NO_STREAM = "no streaming model is loaded (give an lstm export, one with step_weights.npz); /v1/classify still works"


class Service:
    """The state behind the routes (one per app).

    Args:
        config: The settings.
        models: The loaded models (None: loaded in the background when the app starts; `beam-rnn serve`
            loads them first, so that a bad model is exit 2 before anything listens).
        model_values: The ``--model`` values, read again by `reload`.
        loader: ``loader(model_values, max_pending_chars=...) -> ModelSet`` (`load_models`).
        peers: The other workers (``--workers`` > 1; None: this process is the whole service).
        quota: The session limit shared with them (None: `config.max_sessions` is this process's).
    """

    def __init__(self, config: ServiceConfig, models: ModelSet | None, model_values: Sequence[str],
                 loader: Callable[..., ModelSet] = load_models, peers: Peers | None = None,
                 quota: Quota | None = None):
        self.config = config
        self.models = models
        self.model_values = list(model_values)
        self.loader = loader
        self.problem: str | None = None  # why /readyz says 503 although models are loaded
        self.metrics = ServiceMetrics()
        self.peers = peers
        self.sessions = SessionTable(config.max_sessions, config.session_ttl, self._session_change, quota=quota)
        self.batcher = Batcher(self.metrics.step_rows.observe)
        self.streams = Streams(config, self.batcher, self.metrics)
        self._reload_lock = asyncio.Lock()
        self._watched = models.fingerprint if models is not None else ()
        self._tasks: list[asyncio.Task] = []
        self._sockets: dict[str, WebSocket] = {}  # WebSocket sessions' sockets, for the sweeper
        self.stopping = False

    def _session_change(self, transport: str, reason: str, open_count: int) -> None:
        self.metrics.sessions_open.labels(transport).set(open_count)
        if reason:
            self.metrics.sessions_closed.labels(reason).inc()

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Starts the batcher and the sweeper (and the watcher); loads the models in the background if not given."""
        self._tasks = [asyncio.create_task(self.batcher.run(), name="batcher"),
                       asyncio.create_task(self._sweep(), name="sweeper")]
        if self.models is None:  # /readyz says 503 until they are loaded
            self._tasks.append(asyncio.create_task(self.reload("startup"), name="load"))
        if self.config.watch is not None:
            self._tasks.append(asyncio.create_task(self._watch(), name="watch"))

    async def stop(self) -> None:
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for transport in ("ws", "http"):
            for session in self.sessions.all(transport):
                self.sessions.close(session, "shutdown")
        if self.peers is not None:
            await self.peers.close()

    async def _sweep(self) -> None:
        """Closes the sessions idle past the TTL (a WebSocket with 1001 "idle timeout"), every TTL / 4 at most."""
        interval = min(max(self.config.session_ttl / 4, 0.01), 5.0)
        while True:
            await asyncio.sleep(interval)
            for session in self.sessions.expired("http"):
                self.sessions.close(session, "idle_timeout")
            for session in self.sessions.expired("ws"):
                self.sessions.close(session, "idle_timeout")
                websocket = self._sockets.pop(session.id, None)
                if websocket is not None:
                    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):  # the client just left
                        await websocket.close(code=CLOSE_IDLE, reason="idle timeout")

    async def _watch(self) -> None:
        """Reloads when a model directory's manifest.json changes (polled every ``--watch`` seconds)."""
        while True:
            await asyncio.sleep(self.config.watch)
            if self.models is None:
                continue
            seen = await asyncio.to_thread(manifest_fingerprint, self.models.model_dirs)
            if seen != self._watched:
                self._watched = seen  # one attempt per change, refused or not
                await self.reload("watch")

    # --- reload ---------------------------------------------------------------------------------
    async def reload(self, trigger: str) -> bool:
        """Loads the ``--model`` directories again; True when the new models now serve new sessions.

        A load that fails (missing or damaged files) or that would change the classes is
        refused: one log line, counted, /readyz 503 until a reload succeeds, and the
        current models keep serving.
        """
        async with self._reload_lock:
            try:
                new = await asyncio.to_thread(self.loader, self.model_values,
                                              max_pending_chars=self.config.max_pending_chars)
            except Exception as e:  # pylint: disable=broad-except  # any failure keeps the old models
                return self._refuse(trigger, one_line(e)[:300])
            why = incompatibility(self.models, new) if self.models is not None else None
            if why is not None:
                return self._refuse(trigger, why)
            self.models, self.problem = new, None
            self._watched = new.fingerprint
            self.metrics.reloads.labels("loaded").inc()
            LOG.info("Loaded the models (%s): new sessions use %s; %d open session(s) finish on theirs.",
                     trigger, ", ".join(f"{m.name}={m.info.model_dir}" for m in new.models), len(self.sessions))
            return True

    def _refuse(self, trigger: str, why: str) -> bool:
        self.problem = f"the last reload was refused: {why}"
        self.metrics.reloads.labels("refused").inc()
        served = ", ".join(self.models.names) if self.models is not None else "nothing"
        LOG.error("Reload (%s) refused, still serving %s: %s", trigger, served, why)
        return False

    # --- messages -------------------------------------------------------------------------------
    async def answer(self, session: Session, message: Any) -> list[dict[str, Any]]:
        """`Streams.answer`, with an unexpected failure answered as an error frame (never a dead session)."""
        if session.closed:  # swept or deleted while this message waited
            return []
        self.sessions.touch(session)
        try:
            return await self.streams.answer(session, message)
        except Exception as e:  # pylint: disable=broad-except
            LOG.error("Session %s: message failed: %s", session.id, one_line(e)[:300])
            self.metrics.errors.labels("internal_error").inc()
            return [error_frame("internal_error", type(e).__name__, session.messages)]

    async def websocket(self, websocket: WebSocket) -> None:
        await websocket.accept()
        models = self.models
        if models is None:
            await send_frame(websocket, error_frame("not_ready", NOT_READY))
            await websocket.close(code=CLOSE_TRY_LATER, reason="not ready")
            return
        if models.stream is None:
            await send_frame(websocket, error_frame("no_streaming_model", NO_STREAM))
            await websocket.close(code=CLOSE_NO_MODEL, reason="no streaming model")
            return
        session = self.sessions.open("ws", uuid.uuid4().hex, models.stream.streaming)
        if session is None:
            self.metrics.errors.labels("max_sessions").inc()
            await websocket.close(code=CLOSE_TRY_LATER, reason="max sessions reached")
            return
        self._sockets[session.id] = websocket
        messages, latency = self.metrics.messages, self.metrics.latency["ws"]
        try:
            await send_frame(websocket, {
                "type": "hello", "session": session.id, "model": models.stream.name,
                "classes": list(session.classifier.class_names), "decide_at": self.config.decide_at,
                "min_tokens": self.config.min_tokens})
            while not session.closed:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                started = time.perf_counter()
                for frame in await self.answer(session, message):
                    await send_frame(websocket, frame)
                messages["ws"] += 1
                latency.observe(time.perf_counter() - started)
        except (WebSocketDisconnect, OSError):  # the client left (uvicorn's ClientDisconnected is an OSError)
            pass
        except RuntimeError:  # Starlette refuses a send after the sweeper's close
            if not session.closed:
                raise
        finally:
            self._sockets.pop(session.id, None)
            self.sessions.close(session, "shutdown" if self.stopping else "client_closed")  # no-op once swept


async def send_frame(websocket: WebSocket, frame: dict[str, Any]) -> None:
    """One JSON text frame (what Starlette's ``send_json`` sends), encoded by orjson rather than the json module."""
    await websocket.send_text(orjson.dumps(frame).decode())


def _fail(status: int, reason: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": reason, "detail": detail}, status_code=status)


async def _raw_body(request: Request, limit: int) -> bytes:
    """The request's body, read up to `limit` bytes (MessageError beyond)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise MessageError("body_too_large", f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _json_body(request: Request, limit: int) -> Any:
    """The request's JSON body, read up to `limit` bytes (MessageError beyond, or when it is not JSON)."""
    body = await _raw_body(request, limit)
    try:
        return json.loads(body)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise MessageError("invalid_json", one_line(e)[:200]) from e


def classify_texts(body: Any, config: ServiceConfig) -> list[str]:
    """The texts of a /v1/classify body (MessageError when it is not one)."""
    if not isinstance(body, dict) or set(body) not in ({"text"}, {"texts"}):
        raise MessageError("bad_body", 'the body is {"text": "..."} or {"texts": ["...", ...]}')
    texts = [body["text"]] if "text" in body else body["texts"]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise MessageError("bad_text", "texts must be strings")
    if not texts:
        raise MessageError("no_texts", "texts is empty")
    if len(texts) > config.max_classify_texts:
        raise MessageError("too_many_texts", f"{len(texts)} texts; at most {config.max_classify_texts}")
    long = next((i for i, t in enumerate(texts) if len(t) > config.max_message_chars), None)
    if long is not None:
        raise MessageError("text_too_large", f"text {long} has {len(texts[long])} characters; at most "
                           f"{config.max_message_chars}")
    return [repair_text(t)[0] for t in texts]


def create_app(config: ServiceConfig, models: ModelSet | None, model_values: Sequence[str],
               loader: Callable[..., ModelSet] = load_models, peers: Peers | None = None,
               quota: Quota | None = None) -> Starlette:
    """The Starlette app; ``app.state.service`` is its `Service` (`peers`, `quota`: see `Service`)."""
    service = Service(config, models, model_values, loader, peers, quota)
    page = resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def own_readiness() -> tuple[int, dict[str, Any]]:
        if service.models is None:
            return 503, {"ready": False, "reason": service.problem or NOT_READY}
        body = {"ready": service.problem is None, "models": list(service.models.names),
                "streaming_model": service.models.stream.name if service.models.stream else None}
        if service.problem is not None:
            return 503, {**body, "reason": service.problem}
        return 200, body

    def whole_service(request: Request) -> bool:
        """Whether to answer for every worker (not for a peer's ``?scope=worker`` request, nor with one worker)."""
        return service.peers is not None and request.query_params.get("scope") != WORKER_SCOPE

    async def readyz(request: Request) -> Response:
        status, body = own_readiness()
        if not whole_service(request):
            return JSONResponse(body, status_code=status)
        peers = service.peers
        reasons = {peers.index: body.get("reason")} if status != 200 else {}
        for index, answer in (await peers.ask_others("/readyz")).items():
            if isinstance(answer, httpx.HTTPError):
                reasons[index] = f"it does not answer ({type(answer).__name__})"
            elif answer.status_code != 200:
                reasons[index] = answer.json().get("reason", f"HTTP {answer.status_code}")
        body["workers"] = peers.count
        if reasons:
            why = "; ".join(f"worker {i}: {reason}" for i, reason in sorted(reasons.items()))
            return JSONResponse({**body, "ready": False, "reason": why}, status_code=503)
        return JSONResponse(body)

    async def metrics(request: Request) -> Response:
        own = service.metrics.exposition()
        if not whole_service(request):
            return Response(own, media_type=CONTENT_TYPE)
        texts = [own]
        for index, answer in (await service.peers.ask_others("/metrics")).items():
            if isinstance(answer, httpx.HTTPError) or answer.status_code != 200:
                # a partial sum would read as a counter reset: no answer rather than a wrong one
                return Response(f"worker {index} did not answer its metrics\n", status_code=503,
                                media_type="text/plain")
            texts.append(answer.content)
        return Response(merge_expositions(texts), media_type=CONTENT_TYPE)

    async def classify(request: Request) -> Response:
        models = service.models
        if models is None:
            return _fail(503, "not_ready", NOT_READY)
        started = time.perf_counter()
        try:
            texts = classify_texts(await _json_body(request, config.max_body_bytes), config)
        except MessageError as e:
            service.metrics.errors.labels(e.reason).inc()
            return _fail(400, e.reason, e.detail)
        rows = await run_in_threadpool(models.classify, texts)
        service.metrics.classified.inc(len(texts))
        service.metrics.latency["classify"].observe(time.perf_counter() - started)
        return JSONResponse({"results": [{"text_index": i, "models": row} for i, row in enumerate(rows)]})

    def _session_id(request: Request) -> str | None:
        session_id = request.path_params["session_id"]
        return session_id if SESSION_ID_RE.fullmatch(session_id) else None

    def _owner_elsewhere(session_id: str) -> int | None:
        """The worker that holds `session_id` when it is another one (else None)."""
        if service.peers is None:
            return None
        owner = service.peers.owner(session_id)
        return owner if owner != service.peers.index else None

    async def forward(request: Request, owner: int, session_id: str) -> Response:
        """The owner worker's answer to this /v1/stream request, unchanged."""
        body = None
        if request.method == "POST":
            try:
                body = await _raw_body(request, config.max_body_bytes)
            except MessageError as e:
                service.metrics.errors.labels(e.reason).inc()
                return _fail(400, e.reason, e.detail)
        try:
            answer = await service.peers.request(owner, request.method, f"/v1/stream/{session_id}", body)
        except httpx.HTTPError as e:
            LOG.error("Worker %d did not answer a /v1/stream request: %s", owner, one_line(e)[:200] or type(e).__name__)
            return _fail(503, "worker_unavailable", f"the worker holding session {session_id} did not answer")
        service.metrics.forwarded.inc()
        return Response(answer.content, status_code=answer.status_code,
                        media_type=answer.headers.get("content-type"))

    async def stream_post(request: Request) -> Response:
        session_id = _session_id(request)
        if session_id is None:
            return _fail(400, "bad_session_id", f"a session id matches {SESSION_ID_RE.pattern}")
        owner = _owner_elsewhere(session_id)
        if owner is not None:
            return await forward(request, owner, session_id)
        models = service.models
        if models is None:
            return _fail(503, "not_ready", NOT_READY)
        if models.stream is None:
            return _fail(501, "no_streaming_model", NO_STREAM)
        started = time.perf_counter()
        try:
            body = await _json_body(request, config.max_body_bytes)
        except MessageError as e:
            service.metrics.errors.labels(e.reason).inc()
            return _fail(400, e.reason, e.detail)
        session = service.sessions.get("http", session_id)
        if session is None:
            session = service.sessions.open("http", session_id, models.stream.streaming)
            if session is None:
                service.metrics.errors.labels("max_sessions").inc()
                return _fail(503, "max_sessions", "max sessions reached")
        async with session.lock:
            frames = [] if session.closed else await service.answer(session, body)
        service.metrics.messages["http"] += 1
        service.metrics.latency["http"].observe(time.perf_counter() - started)
        if not frames:
            return _fail(404, "unknown_session", f"session {session_id} was closed")
        if frames[0]["type"] == "error":
            return _fail(400, frames[0]["reason"], frames[0]["detail"])
        return JSONResponse({**frames[0], **({"decision": frames[1]} if len(frames) > 1 else {})})

    async def stream_get_or_delete(request: Request) -> Response:
        session_id = _session_id(request)
        owner = _owner_elsewhere(session_id) if session_id else None
        if owner is not None:
            return await forward(request, owner, session_id)
        session = service.sessions.get("http", session_id) if session_id else None
        if session is None:
            return _fail(404, "unknown_session", f"no open session {request.path_params['session_id']!r}")
        if request.method == "DELETE":
            service.sessions.close(session, "deleted")
            return JSONResponse({"session": session_id, "closed": True})
        return JSONResponse(service.streams.current(session))  # reading is not activity: the TTL counts messages

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = Starlette(routes=[
        Route("/", index),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/v1/classify", classify, methods=["POST"]),
        Route("/v1/stream/{session_id}", stream_post, methods=["POST"]),
        Route("/v1/stream/{session_id}", stream_get_or_delete, methods=["GET", "DELETE"]),
        WebSocketRoute("/v1/ws", service.websocket),
    ], lifespan=lifespan)
    app.state.service = service
    return app
