"""Process-level helpers shared by the drivers: console output, metrics, clean exits, arg checks."""

from __future__ import annotations

import contextlib
import importlib.abc
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

from beam_rnn.core import progress


def hard_exit(code: int) -> None:
    """Flush and leave the process without running interpreter teardown.

    A process that ran a TFT pipeline can segfault while Python tears down
    TensorFlow/Beam threads *after* the work finished correctly (rc 139).  The
    drivers' work is complete and flushed by the time they call this, so skipping
    teardown is safe and keeps a good run's exit code honest.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# --- Console output: the project's lines by default, everything with --verbose -------------
VERBOSE_FLAG = "--verbose"
PROJECT_LOGGERS = ("beam_rnn", "pipelines")  # INFO and up always shown
# Libraries that log INFO (or set their own levels): WARNING and up unless --verbose.
LIBRARY_LOGGERS = ("tensorflow", "absl", "apache_beam", "tensorflow_transform", "tfx_bsl", "matplotlib")
# Third-party warnings that say nothing a user can act on; shown with --verbose.
KNOWN_NOISE = (
    # apache_beam.ml.inference.base: its `resource` import fails without torch (Beam 2.77).
    "Resource module is not available for current platform",
    # Beam on a PTransform.expand return annotation that is not a PCollection.
    "This output type hint will be ignored and not used for type-checking purposes",
)
# TensorFlow's C++ logging (absl format) printed while `import tensorflow` loads libraries
# that ignore TF_CPP_MIN_LOG_LEVEL (oneDNN, CUDA probing), and absl's banner before them.
_IMPORT_NOISE = re.compile(rb"^([IW]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] |"
                           rb"WARNING: All log messages before absl::InitializeLog\(\) is called)")


class _QuietFormatter(logging.Formatter):
    """Project INFO lines as they are; warnings and errors with their level (and library name)."""

    _project = logging.Formatter("%(levelname)s: %(message)s")
    _library = logging.Formatter("%(levelname)s:%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno < logging.WARNING:
            return super().format(record)
        project = record.name.split(".", 1)[0] in PROJECT_LOGGERS
        return (self._project if project else self._library).format(record)


def _not_noise(record: logging.LogRecord) -> bool:
    return not any(noise in str(record.msg) for noise in KNOWN_NOISE)


@contextlib.contextmanager
def _quiet_fd2() -> Iterator[None]:
    """Captures file descriptor 2 (C++ writes too) and writes back what is not `_IMPORT_NOISE`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured, progress.BOARD.paused():  # no live redraws into the capture
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = b"".join(_kept_output(line) for line in captured)
            if kept:
                os.write(2, kept)


def _kept_output(line: bytes) -> bytes:
    """`line` without the `_IMPORT_NOISE` in it (parts after a ``\\r`` are checked too)."""
    kept = [part for part in line.split(b"\r") if not _IMPORT_NOISE.match(part)]
    text = b"\r".join(kept)
    return text if text.strip() else b""


class _QuietImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs the first ``import tensorflow`` under `_quiet_fd2` (then gets out of the way)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loader: Any = None

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self.loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__spec__.loader = module.__loader__ = self.loader  # the real loader from now on
        with _quiet_fd2():
            self.loader.exec_module(module)


def _quiet_tensorflow_import() -> None:
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport("tensorflow"))


@contextlib.contextmanager
def console_output(verbose: bool = False) -> Iterator[None]:
    """The console of one command: quiet (the project's lines and progress) or `verbose` (everything).

    Quiet: TensorFlow's C++ logging off (``TF_CPP_MIN_LOG_LEVEL=3`` unless set; the
    lines printed while TensorFlow loads are dropped), library loggers at WARNING,
    `KNOWN_NOISE` dropped; the project's loggers (`PROJECT_LOGGERS`) at INFO, written
    as plain lines.  Verbose: every logger at INFO in ``LEVEL:name:message`` form,
    TensorFlow's environment untouched.  Both: live progress on stderr
    (`beam_rnn.core.progress`), with stdout's lines written above it on a terminal.
    Logging levels, the handler, stdout and progress are put back on exit (tests run
    commands in-process).
    """
    root = logging.getLogger()
    names = ("", *PROJECT_LOGGERS, *LIBRARY_LOGGERS)
    levels = {name: logging.getLogger(name).level for name in names}
    handler = progress.ConsoleHandler(sys.stderr)
    if verbose:
        handler.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
        root.setLevel(logging.INFO)
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        _quiet_tensorflow_import()
        handler.setFormatter(_QuietFormatter())
        handler.addFilter(_not_noise)
        root.setLevel(logging.WARNING)
        for name in LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    root.addHandler(handler)
    progress.enable(sys.stderr)
    stdout = sys.stdout
    if stdout.isatty() and sys.stderr.isatty():  # printed lines go above the live line
        sys.stdout = progress.AboveProgress(stdout)
    try:
        yield
    finally:
        progress.BOARD.close_all()
        progress.BOARD.disable()
        sys.stdout = stdout
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def counters(result: Any, namespace: str) -> dict[str, int]:
    """Committed (or attempted, where committed is unsupported) counter values of a run."""
    from apache_beam.metrics.metric import MetricsFilter

    out: dict[str, int] = {}
    try:
        query = result.metrics().query(MetricsFilter().with_namespace(namespace))
    except Exception:  # Some runners do not support metrics queries; stats then omit them.
        return out
    for counter in query.get("counters", []):
        value = counter.committed if counter.committed is not None else counter.attempted
        out[counter.key.metric.name] = out.get(counter.key.metric.name, 0) + int(value or 0)
    return out


def input_matches(patterns: Sequence[str]) -> list[str]:
    """Patterns (files, globs, directories) that match nothing, via Beam FileSystems."""
    from apache_beam.io.filesystems import FileSystems

    missing = []
    for pattern in patterns:
        if FileSystems.exists(pattern):
            continue
        try:
            [result] = FileSystems.match([pattern])
            if not result.metadata_list:
                missing.append(pattern)
        except Exception:
            missing.append(pattern)
    return missing



# --- Choosing the runner ------------------------------------------------------------------
LOCAL_RUNNER = "beam_rnn.cli.runtime.LocalRunner"
_ANNOUNCED: set[str] = set()  # runner lines already logged


def _local_runner_class():
    from apache_beam.runners.direct.direct_runner import SwitchingDirectRunner

    class LocalRunner(SwitchingDirectRunner):
        """Beam's DirectRunner without its Prism attempt.

        With no --runner, Beam 2.77 first tries Prism, which downloads a Go binary
        (fails offline, then falls back) and serves its worker pool on all
        interfaces.  This runner makes the DirectRunner's own fallback choice
        directly: the in-process FnApiRunner for batch pipelines, the
        BundleBasedDirectRunner for streaming ones.  ``_is_interactive`` is the
        flag SwitchingDirectRunner consults only to skip Prism (direct_runner.py);
        tests/test_runtime.py fails if that stops being true.
        """

        _is_interactive = True

    LocalRunner.__module__ = __name__
    LocalRunner.__qualname__ = "LocalRunner"
    return LocalRunner


def __getattr__(name: str) -> Any:
    # Lazy, so that importing beam_rnn.cli.runtime does not import Beam (fast --help).
    if name == "LocalRunner":
        cls = _local_runner_class()
        globals()["LocalRunner"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def pipeline_options(pipeline_args: Sequence[str], *, streaming: bool = False) -> Any:
    """PipelineOptions from the flags a driver did not parse, with the runner chosen on purpose.

    Without ``--runner`` the pipeline runs on `LocalRunner` (in-process, nothing
    downloaded, nothing listening on the network); ``--runner`` overrides.  The
    choice is logged as one line, once per process.

    Args:
      pipeline_args: The leftover command-line flags (Beam's).
      streaming: Set ``streaming=True`` (Pub/Sub sources).

    Returns:
      A `PipelineOptions`.
    """
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    options = PipelineOptions(list(pipeline_args))
    standard = options.view_as(StandardOptions)
    if streaming:
        standard.streaming = True
    if standard.runner is None:
        standard.runner = LOCAL_RUNNER
        message = "Runner: LocalRunner (in-process DirectRunner, no Prism; pass --runner to choose another)"
    else:
        message = f"Runner: {standard.runner}"
    if message not in _ANNOUNCED:  # once per process (run-all runs several pipelines)
        _ANNOUNCED.add(message)
        logging.getLogger("beam_rnn").info("%s", message)
    return options


def driver_waits(options: Any) -> bool:
    """Whether the driver waits for the job it submits (and may read its outputs back afterwards).

    Not with ``--template_location`` (Beam writes the job description and returns
    without running it: a Dataflow Flex Template launcher runs the driver so, and
    submits the job once the program has exited) or ``--no_wait_until_finish``.
    The pipelines finish their outputs themselves, as their last stage; a driver
    that does not wait only reports where they will appear (`staged_message`).
    """
    from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions

    return not (options.view_as(GoogleCloudOptions).template_location
                or options.view_as(StandardOptions).no_wait_until_finish)


def staged_message(options: Any, outputs: str) -> str:
    """The one line a driver prints when it submitted (or staged) a job without waiting for it."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    template = options.view_as(GoogleCloudOptions).template_location
    job = f"staged as a template at {template}" if template else "submitted, not waited for"
    return f"Job {job}; when it has run: {outputs}"


_MAX_LISTED_PROBLEMS = 3


def _is_local(path: str) -> bool:
    return "://" not in path


def corpus_input_problem(patterns: Sequence[str], *, directories: bool = False) -> str | None:
    """Checks corpus inputs before any pipeline starts; returns one line, or None when usable.

    Problems found (each would otherwise fail a pipeline minutes later, or give an
    empty model):

    * a pattern that matches no file (a dangling glob, a typo, a broken link);
    * a directory given where files are expected (every format but aclimdb);
    * a matched local file that cannot be opened, or is not a regular file;
    * every matched file is empty.

    Any Beam filesystem works (matching goes through `FileSystems`); whether a
    file can be opened is checked for local files only.

    Args:
      patterns: The --input patterns.
      directories: The inputs are directory trees (aclimdb): each must exist.

    Returns:
      None, or one line naming the inputs at fault.
    """
    import glob

    from apache_beam.io.filesystems import FileSystems

    problems: list[str] = []
    sizes: list[int] = []
    for pattern in patterns:
        if directories:
            if input_matches([pattern]):
                problems.append(f"{pattern} does not exist")
            elif _is_local(pattern) and not os.path.isdir(pattern):
                problems.append(f"{pattern} is not a directory (aclimdb reads a tree such as aclImdb/ or aclImdb/train)")
            continue
        if _is_local(pattern) and os.path.isdir(pattern):
            problems.append(f"{pattern} is a directory; give files or a glob such as {pattern.rstrip('/')}/*")
            continue
        try:
            [result] = FileSystems.match([pattern])
            matched = result.metadata_list
        except Exception:  # a filesystem that raises instead of matching nothing
            matched = []
        skipped = []
        if _is_local(pattern):
            # Beam's local match silently skips what it cannot stat (broken links).
            found = {m.path for m in matched}
            skipped = [path for path in sorted(glob.glob(pattern, recursive=True))
                       if path not in found and not os.path.isdir(path)]
            problems += [f"{path} cannot be read (not a regular file, or a broken link)" for path in skipped]
        if not matched:
            if not skipped:
                problems.append(f"{pattern} matches no files")
            continue
        for metadata in matched:
            if _is_local(metadata.path):
                if not os.path.isfile(metadata.path):  # a FIFO or device: opening it could block
                    problems.append(f"{metadata.path} cannot be read (not a regular file)")
                    continue
                try:
                    with open(metadata.path, "rb") as handle:
                        handle.read(1)
                except OSError as e:
                    problems.append(f"{metadata.path} cannot be read ({e.strerror or e})")
                    continue
            sizes.append(metadata.size_in_bytes)
    if problems:
        more = len(problems) - _MAX_LISTED_PROBLEMS
        listed = "; ".join(problems[:_MAX_LISTED_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")
        return f"--input: {listed}"
    if sizes and not any(sizes):
        return f"--input: every matched file is empty ({len(sizes)} file{'s' if len(sizes) > 1 else ''}): no corpus to read"
    return None
