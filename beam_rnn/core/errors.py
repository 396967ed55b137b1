"""One exception hierarchy, and the exit status of each kind (mapped in `beam_rnn.cli`).

* `InputError` (exit 2): bad arguments, inputs or artifacts, found before any work.
* `ArtifactError` (exit 2): an artifact directory is missing, incomplete or damaged.
* `RunFailed` (exit 1): the work ran and failed as a whole (no documents, labels that
  are not class ids, too many dead letters); the message says why in one line.

Every message is one line, meant for the person at the terminal.
"""

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2


class BeamRnnError(Exception):
    """Base of every error the project raises on purpose."""

    exit_code = EXIT_RUN_FAILED


class InputError(BeamRnnError, ValueError):
    """Bad arguments or inputs, found before any work started."""

    exit_code = EXIT_USAGE


class ArtifactError(InputError):
    """An artifact directory (preprocess output, exported model) is missing, incomplete or damaged."""


class RunFailed(BeamRnnError):
    """The run finished its work but failed as a whole."""

    exit_code = EXIT_RUN_FAILED


def exit_code(error: BaseException) -> int:
    """The process exit status for `error`."""
    return getattr(error, "exit_code", EXIT_RUN_FAILED) if isinstance(error, BeamRnnError) else EXIT_RUN_FAILED


def reason_counts_text(reasons: dict[str, int] | None, limit: int | None = 3) -> str:
    """The commonest dead-letter reasons first, as ``"empty_text 3, invalid_label 1"`` (at most `limit`; "" if none)."""
    top = sorted((reasons or {}).items(), key=lambda kv: -kv[1])[:limit]
    return ", ".join(f"{k} {v:,}" for k, v in top)


def dead_letter_problem(dead_lettered: int, rows: int, limit: float, reasons: dict[str, int] | None = None) -> str | None:
    """Why a run whose rows were mostly dead-lettered failed (None: at most `limit` of `rows` were).

    The one line names the share, the limit's flag and the commonest reasons, so
    that a run that mostly failed never exits 0 silently.
    """
    if rows <= 0 or dead_lettered / rows <= limit:
        return None
    top = reason_counts_text(reasons)
    why = f" (most: {top})" if top else ""
    return (f"{dead_lettered:,} of {rows:,} rows ({dead_lettered / rows:.0%}) were dead-lettered{why}, "
            f"more than --max-dead-letter-fraction {limit:g}")
