"""Progress of long work on the console: one live line on a terminal, plain lines otherwise.

    with progress.task("preprocess"):          # a stage of a command
        ...                                     # anything calls progress.count("read")
    progress.count("read", 1, unit="documents") # from a DoFn (beam_rnn.io.progress.Progress)
    progress.step("SavedModel")                 # a named step of a task without counts

A task's line names the task, its elapsed time and its counters::

    preprocess 0:42 · read 12,000 documents (950/s) · transformed 8,000 examples (900/s)
    training bilstm (1 of 2) 1:10 · epoch 2/5 120/391 batches (31%, 4.1/s, ETA 1:06)

Nothing is shown until the command line enables it (`enable`, called by
`beam_rnn.cli.run_command`): library users and tests only pay for the counting.  On a
terminal the line is rewritten in place (``\\r``) every `REDRAW_SECONDS`, also when no
counter moved, so the elapsed time never stops; log records are written above it
(`ConsoleHandler`).  When stderr is not a terminal a plain line is logged every
`LOG_SECONDS`, and when a counter with a known total passes another tenth (at most
every `MIN_LOG_SECONDS`).  A task that ends logs one summary line.

No Beam, no TensorFlow (tqdm is not a dependency of the project, and one line of
several counters across Beam stages is not what its bars are for).
"""

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

REDRAW_SECONDS = 1.0  # terminal: the line is rewritten at least this often
MIN_REDRAW_SECONDS = 0.2  # terminal: and at most this often on updates
LOG_SECONDS = 30.0  # not a terminal: a plain line this often,
MIN_LOG_SECONDS = 5.0  # and when a counter with a known total passed another tenth, if this long after the last
ACTIVE_SECONDS = 3.0  # a counter updated this recently shows its rate

logger = logging.getLogger(__name__)

_CLEAR = "\r\x1b[K"


def duration(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Counter:
    """A count of something (documents, batches), with its rate and, given a total, its ETA."""

    def __init__(self, label: str, unit: str, total: int | None, now: float) -> None:
        self.label, self.unit, self.total = label, unit, total
        self.done = 0
        self.first = self.last = now
        self.tenths = 0  # tenths of `total` already logged

    def rate(self) -> float:
        elapsed = self.last - self.first
        return self.done / elapsed if elapsed > 0 else 0.0

    def text(self, now: float) -> str:
        active = now - self.last < ACTIVE_SECONDS
        rate = self.rate()
        if self.total:
            parts = [f"{100 * self.done / self.total:.0f}%"]
            if active and rate > 0:
                parts.append(f"{rate:,.1f}/s")
                if self.done < self.total:
                    parts.append(f"ETA {duration((self.total - self.done) / rate)}")
            return f"{self.label} {self.done:,}/{self.total:,} {self.unit} ({', '.join(parts)})"
        return f"{self.label} {self.done:,} {self.unit}" + (f" ({rate:,.0f}/s)" if active and rate > 0 else "")


class Task:
    """A named piece of work and its counters (see `task`)."""

    def __init__(self, name: str, now: float) -> None:
        self.name = name
        self.start = now
        self.counters: dict[str, Counter] = {}
        self.step = ""  # what the task is doing now, when no counter says it (see `step`)

    def line(self, now: float) -> str:
        shown = [c.text(now) for c in self.counters.values()]
        return " · ".join([f"{self.name} {duration(now - self.start)}", *([self.step] if self.step else []), *shown])

    def summary(self, now: float) -> str:
        counts = ", ".join(f"{c.label} {c.done:,} {c.unit}" for c in self.counters.values())
        return f"{self.name} done in {duration(now - self.start)}" + (f": {counts}" if counts else "")


class Board:
    """The open tasks and their display; one per process (`BOARD`).  Thread-safe."""

    def __init__(self, clock=time.monotonic, *, ticker: bool = True) -> None:
        self._clock = clock
        self._use_ticker = ticker  # redraw (terminal) or log (otherwise) when nothing is counted
        self._lock = threading.RLock()
        self._tasks: list[Task] = []
        self._stream: TextIO | None = None
        self._tty = False
        self._shown = False  # a live line is on the terminal (no newline after it)
        self._last_draw = 0.0
        self._last_log = 0.0
        self._ticker: threading.Thread | None = None
        self._paused = 0  # > 0: no drawing (stderr is being captured, see `paused`)

    # --- configuration ---------------------------------------------------------------
    def enable(self, stream: TextIO | None = None, *, tty: bool | None = None) -> None:
        """Shows progress on `stream` (default stderr): live if it is a terminal, else plain log lines."""
        with self._lock:
            self._stream = stream or sys.stderr
            self._tty = bool(self._stream.isatty()) if tty is None else tty

    def disable(self) -> None:
        with self._lock:
            self._clear_line()
            self._stream = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Nothing is drawn or logged meanwhile (counting goes on)."""
        with self._lock:
            self._clear_line()
            self._paused += 1
        try:
            yield
        finally:
            with self._lock:
                self._paused -= 1

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    # --- tasks and counters ----------------------------------------------------------
    def open(self, name: str) -> Task:
        with self._lock:
            now = self._clock()
            task = Task(name, now)
            self._tasks.append(task)
            self._last_log = now
            self._start_ticker()
            self._draw(now, force=True)
            return task

    def close(self, task: Task, *, summary: bool = True) -> None:
        with self._lock:
            if task not in self._tasks:
                return
            self._tasks.remove(task)
            self._clear_line()
            line = task.summary(self._clock()) if summary and self.enabled else None
            if self._tasks and self._tty:
                self._draw(self._clock(), force=True)
        if line:  # logged outside the lock: a handler's lock is never taken while holding ours
            logger.info("%s", line)

    def close_all(self) -> None:
        """Ends every open task without a summary (a command ended, perhaps by an error)."""
        with self._lock:
            for task in list(self._tasks):
                self.close(task, summary=False)

    def count(self, label: str, n: int = 1, *, unit: str = "documents", total: int | None = None,
              done: int | None = None) -> None:
        """Adds `n` to the counter `label` of the innermost open task (one is opened if none is).

        `done` sets the count instead; `total` (when known) gives a percentage and an ETA.
        """
        with self._lock:
            now = self._clock()
            if not self._tasks:
                self.open("working")
            counters = self._tasks[-1].counters
            counter = counters.get(label)
            if counter is None or (total is not None and counter.total != total):
                counter = counters[label] = Counter(label, unit, total, now)
            counter.done = done if done is not None else counter.done + n
            counter.last = now
            due = False
            if counter.total:
                tenths = min(10, int(10 * counter.done / counter.total))
                due, counter.tenths = tenths > counter.tenths, max(tenths, counter.tenths)
            line = self._draw(now, log_now=due)
        if line:
            logger.info("%s", line)

    def set_step(self, text: str) -> None:
        """Names what the innermost task is doing now (``SavedModel``, ``writing the report``)."""
        with self._lock:
            line = None
            if self._tasks:
                self._tasks[-1].step = text
                line = self._draw(self._clock(), force=True)
        if line:
            logger.info("%s", line)

    def remove(self, label: str) -> None:
        """Drops the counter `label` of the innermost task (a finished epoch)."""
        with self._lock:
            if self._tasks:
                self._tasks[-1].counters.pop(label, None)

    # --- display ---------------------------------------------------------------------
    def _line(self, now: float) -> str:
        return " | ".join(task.line(now) for task in self._tasks[-1:])

    def _draw(self, now: float, *, force: bool = False, log_now: bool = False) -> str | None:
        """Redraws the live line (terminal); returns the plain line to log when one is due (otherwise)."""
        if not self.enabled or not self._tasks or self._paused:
            return None
        if self._tty:
            if force or now - self._last_draw >= MIN_REDRAW_SECONDS:
                self._stream.write(_CLEAR + self._line(now))
                self._stream.flush()
                self._shown, self._last_draw = True, now
        elif now - self._last_log >= (MIN_LOG_SECONDS if log_now else LOG_SECONDS):
            self._last_log = now
            return self._line(now)
        return None

    def _clear_line(self) -> None:
        if self._shown and self._stream is not None:
            self._stream.write(_CLEAR)
            self._stream.flush()
        self._shown = False

    def before_log(self) -> None:
        """Called by `ConsoleHandler` before it writes a record: the live line makes room."""
        self._clear_line()

    def after_log(self) -> None:
        if self._tty and self._tasks:
            self._draw(self._clock(), force=True)

    def _start_ticker(self) -> None:
        if self._use_ticker and (self._ticker is None or not self._ticker.is_alive()):
            self._ticker = threading.Thread(target=self._tick, name="beam_rnn-progress", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        while True:
            time.sleep(REDRAW_SECONDS)
            with self._lock:
                if not self._tasks:
                    self._ticker = None
                    return
                now = self._clock()
                line = self._draw(now, force=now - self._last_draw >= REDRAW_SECONDS)
            if line:
                logger.info("%s", line)


BOARD = Board()


@contextlib.contextmanager
def task(name: str) -> Iterator[Task]:
    """A stage of work shown as one line; ends with a summary line (none when it raised)."""
    opened = BOARD.open(name)
    try:
        yield opened
    except BaseException:
        BOARD.close(opened, summary=False)
        raise
    BOARD.close(opened)


def count(label: str, n: int = 1, *, unit: str = "documents", total: int | None = None,
          done: int | None = None) -> None:
    """`Board.count` on `BOARD`."""
    BOARD.count(label, n, unit=unit, total=total, done=done)


def step(text: str) -> None:
    """`Board.set_step` on `BOARD`: the live line names the step (e.g. export's) until the next one."""
    BOARD.set_step(text)


def enable(stream: TextIO | None = None, *, tty: bool | None = None) -> None:
    """Shows progress on `stream` (default stderr); `beam_rnn.cli.run_command` calls this."""
    BOARD.enable(stream, tty=tty)


class ConsoleHandler(logging.StreamHandler):
    """A stderr log handler that writes above the live progress line instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        with BOARD._lock:  # pylint: disable=protected-access  (one lock for the line and the records)
            BOARD.before_log()
            super().emit(record)
            BOARD.after_log()


class AboveProgress:
    """A text stream (stdout on a terminal) whose writes go above the live progress line, not into it."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        with BOARD._lock:  # pylint: disable=protected-access
            BOARD.before_log()
            written = self._stream.write(text)
            self._stream.flush()
            if text.endswith("\n"):
                BOARD.after_log()
        return written

    def __getattr__(self, name: str):
        return getattr(self._stream, name)

