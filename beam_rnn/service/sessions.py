"""Sessions and the batcher: every open text's state, and one batched NumPy step per round for all of them.

A session keeps what `StreamingClassifier` keeps in a `StreamState` — tokenizer
state, tokens seen, the decision's position, the last logits — except the
recurrent state, which lives in a row of its model's `StatePool` (the states of
all that model's sessions, stacked), so that a round of the `Batcher` is one
gather, one `StreamingClassifier.step_batch_arrays` call and one scatter
however many sessions have a token pending.

The batcher runs on the event loop: a round is tens of microseconds of NumPy for
hundreds of rows, less than handing it to a thread would cost.
"""

import asyncio
import codecs
import dataclasses
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from beam_rnn.stream import step as rnn_step
from beam_rnn.stream.classifier import StreamingClassifier, StreamState
from beam_rnn.stream.tokenizer import TokenizerState

INITIAL_POOL_ROWS = 16


class StatePool:
    """The recurrent states of one streaming classifier's sessions: one row per session, grown by doubling."""

    def __init__(self, classifier: StreamingClassifier, rows: int = INITIAL_POOL_ROWS):
        self.classifier = classifier
        self._zero = classifier.start().rnn
        self.arrays = [np.zeros((rows, z.shape[0]), np.float32) for z in self._zero]
        self._free = list(range(rows - 1, -1, -1))
        self.in_use = 0

    def acquire(self) -> int:
        """A free row, set to the empty text's state."""
        if not self._free:
            rows = self.arrays[0].shape[0]
            self.arrays = [np.concatenate([a, np.zeros_like(a)]) for a in self.arrays]
            self._free = list(range(2 * rows - 1, rows - 1, -1))
        row = self._free.pop()
        self.reset(row)
        self.in_use += 1
        return row

    def reset(self, row: int) -> None:
        for array, zero in zip(self.arrays, self._zero):
            array[row] = zero

    def release(self, row: int) -> None:
        self._free.append(row)
        self.in_use -= 1

    def step(self, rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Advances the sessions in `rows` by one token each (`ids`); returns their logits ``[len(rows), out]``."""
        logits, new = self.classifier.step_batch_arrays(ids, [a[rows] for a in self.arrays])
        for array, values in zip(self.arrays, new):
            array[rows] = values
        return logits


class Session:
    """One text being typed: its classifier, its row of state and the rest of a `StreamState`.

    Attributes:
        id: The session id (server-made for WebSockets, the client's for /v1/stream).
        transport: "ws" or "http".
        classifier: The streaming classifier it started with (kept across reloads).
        messages: Client messages so far (the ``seq`` of the answers).
        last_active: `time.monotonic` of the last client message.
        lock: Serialises the messages of one session (HTTP clients may send concurrently).
    """

    def __init__(self, session_id: str, transport: str, pool: StatePool, now: float):
        self.id = session_id
        self.transport = transport
        self.pool = pool
        self.classifier = pool.classifier
        self.row = pool.acquire()
        self.messages = 0
        self.last_active = now
        self.closed = False
        self.lock = asyncio.Lock()
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.state = self.classifier.start()  # rnn unused: the pool row holds it

    def restart(self) -> None:
        """A new, empty text (after ``finish`` or ``reset``)."""
        self.state = self.classifier.start()
        self.decoder.reset()
        self.pool.reset(self.row)

    def advanced(self, tokenizer: TokenizerState, logits: np.ndarray, dropped: int) -> StreamState:
        """The state after `logits` (one row per token, possibly none) and `dropped` tokens beyond max_tokens."""
        state = self.state
        return dataclasses.replace(
            state, tokenizer=tokenizer, tokens_seen=state.tokens_seen + len(logits),
            tokens_dropped=state.tokens_dropped + dropped, logits=logits[-1] if len(logits) else state.logits)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.release(self.row)


class Quota(Protocol):
    """A limit shared with other processes (`beam_rnn.service.workers.SessionQuota`): one unit per open session."""

    def take(self) -> bool: ...  # a unit, if one is free

    def give(self) -> None: ...  # the unit of a closed session back


class SessionTable:
    """The open sessions: at most `max_sessions` of both transports, each idle for at most `ttl` seconds.

    WebSocket sessions and /v1/stream sessions have separate id spaces (a client of
    one cannot reach the other's sessions).  With several workers, `quota` holds the
    limit of the whole service and each open session takes one unit of it.
    """

    def __init__(self, max_sessions: int, ttl: float, on_change: Callable[[str, str, int], None],
                 clock: Callable[[], float] = time.monotonic, quota: Quota | None = None):
        self.max_sessions = max_sessions
        self.ttl = ttl
        self.clock = clock
        self.quota = quota
        self._by_transport: dict[str, dict[str, Session]] = {"ws": {}, "http": {}}
        self._pools: dict[int, StatePool] = {}  # id(classifier) -> its pool, while it has sessions
        self._on_change = on_change  # (transport, close reason or "", open count of the transport)

    def __len__(self) -> int:
        return sum(len(s) for s in self._by_transport.values())

    def get(self, transport: str, session_id: str) -> Session | None:
        return self._by_transport[transport].get(session_id)

    def open(self, transport: str, session_id: str, classifier: StreamingClassifier) -> Session | None:
        """A new session on `classifier`; None when `max_sessions` are open."""
        if len(self) >= self.max_sessions or (self.quota is not None and not self.quota.take()):
            return None
        pool = self._pools.get(id(classifier))
        if pool is None:
            pool = self._pools[id(classifier)] = StatePool(classifier)
        session = Session(session_id, transport, pool, self.clock())
        self._by_transport[transport][session_id] = session
        self._on_change(transport, "", len(self._by_transport[transport]))
        return session

    def close(self, session: Session, reason: str) -> None:
        """Closes `session` (once) and frees its row; a model's pool goes with its last session."""
        sessions = self._by_transport[session.transport]
        if sessions.get(session.id) is not session:
            return
        del sessions[session.id]
        session.close()
        if self.quota is not None:
            self.quota.give()
        if not session.pool.in_use:
            self._pools.pop(id(session.classifier), None)
        self._on_change(session.transport, reason, len(sessions))

    def touch(self, session: Session) -> None:
        session.last_active = self.clock()

    def all(self, transport: str) -> list[Session]:
        return list(self._by_transport[transport].values())

    def expired(self, transport: str) -> list[Session]:
        """The sessions of `transport` idle for longer than the TTL."""
        now = self.clock()
        return [s for s in self._by_transport[transport].values() if now - s.last_active > self.ttl]


@dataclasses.dataclass(eq=False)
class _Job:
    session: Session
    ids: np.ndarray
    logits: np.ndarray
    probs: np.ndarray
    future: asyncio.Future
    done: int = 0

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return self.logits[: self.done], self.probs[: self.done]


class Batcher:
    """The one task that advances every session: per round, one batched step per model for all pending tokens.

    `step` queues a session's token ids and waits for their logits and class probabilities
    (`beam_rnn.stream.step.probabilities` of the round's rows at once: the same float32
    values row by row, without a NumPy call per message); each round takes
    the next token of every queued job (rows = sessions with a pending token), so a
    long message does not hold the others back and throughput grows with load.
    Jobs of closed sessions are dropped before their row could be reused.
    """

    def __init__(self, on_round: Callable[[int], None] = lambda rows: None):
        self._queue: list[_Job] = []
        self._wake: asyncio.Event | None = None
        self._on_round = on_round  # called with the rows of each step

    async def step(self, session: Session, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The logits and the probabilities after each of `ids` (both ``[len(ids), out]``), the session's row
        advanced past them (fewer rows when the session closed meanwhile)."""
        out_width = session.classifier.weights.num_outputs
        if not ids or session.closed:
            return np.zeros((0, out_width), np.float32), np.zeros((0, out_width), np.float32)
        if self._wake is None:
            raise RuntimeError("the batcher is not running")
        job = _Job(session, np.asarray(ids, np.int64), np.empty((len(ids), out_width), np.float32),
                   np.empty((len(ids), out_width), np.float32), asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._wake.set()
        return await job.future

    async def run(self) -> None:
        self._wake = asyncio.Event()
        active: list[_Job] = []
        while True:
            if not active and not self._queue:
                self._wake.clear()
                await self._wake.wait()
            active += self._queue
            self._queue = []
            for job in active:
                if job.session.closed and not job.future.done():  # its row may be another session's now
                    job.future.set_result(job.result())
            active = [job for job in active if not job.future.done()]
            by_pool: dict[int, list[_Job]] = {}
            for job in active:
                by_pool.setdefault(id(job.session.pool), []).append(job)
            for jobs in by_pool.values():
                rows = np.fromiter((job.session.row for job in jobs), np.int64, len(jobs))
                ids = np.fromiter((job.ids[job.done] for job in jobs), np.int64, len(jobs))
                pool = jobs[0].session.pool
                try:
                    logits = pool.step(rows, ids)
                    probs = rnn_step.probabilities(logits, pool.classifier.num_classes)
                except Exception as e:  # pylint: disable=broad-except  # a bug fails those messages, not the task
                    for job in jobs:
                        job.future.set_exception(e)
                    continue
                for job, row, prob in zip(jobs, logits, probs):
                    job.logits[job.done] = row
                    job.probs[job.done] = prob
                    job.done += 1
                self._on_round(len(jobs))
            remaining = []
            for job in active:
                if job.future.done():
                    continue
                if job.done == len(job.ids):
                    job.future.set_result((job.logits, job.probs))
                else:
                    remaining.append(job)
            active = remaining
            await asyncio.sleep(0)  # let the sessions answered in this round queue their next tokens
