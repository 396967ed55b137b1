"""The `beam-rnn` console script: one subcommand per driver in `pipelines/`.

    beam-rnn preprocess --output out/prep [--input ... --format ...] [Beam flags]
    beam-rnn <command> --help
    beam-rnn <command> --verbose ...    # every library's logging too (TensorFlow, Beam)

Nothing heavy is imported here: ``--help`` answers before TensorFlow or Beam load.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# Subcommand → driver module; each module exposes `main(argv) -> int` and `run(argv)`.
COMMANDS = {
    "preprocess": "pipelines.preprocess",
    "train": "pipelines.train",
    "score": "pipelines.score",
    "stream": "pipelines.stream",
    "evaluate": "pipelines.evaluate",
    "embeddings": "pipelines.embeddings",
    "run-all": "pipelines.run_all",
    "serve": "pipelines.serve",
}

# Commands that may read what the user types on the terminal, or run until stopped (a server):
# no live line under the typing, no elapsed-time lines every 30 s in a server's log.
INTERACTIVE = frozenset({"stream", "serve"})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("beam-rnn")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown (not installed)"


def _summary(module: str) -> str:
    """The first line of a driver's docstring, read from its source (importing it would load its dependencies)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec(module)
    try:
        with open(spec.origin, encoding="utf-8") as f:
            doc = ast.get_docstring(ast.parse(f.read()))
    except (OSError, SyntaxError, TypeError, AttributeError):  # no readable source: the module's name says enough
        doc = None
    return doc.splitlines()[0] if doc else f"python -m {module}"


def _usage() -> str:
    lines = ["usage: beam-rnn [--version] <command> [options] [--verbose] [Beam pipeline flags]", "", "commands:"]
    for name, module in COMMANDS.items():
        lines.append(f"  {name:<12} {_summary(module)}")
    lines += ["", "Start with: beam-rnn run-all --output runs/imdb   (IMDB end to end; add --quick for a ~2-minute run)",
              "Flags of a command: beam-rnn <command> --help",
              "--verbose (any command): also show TensorFlow's and Beam's logging, which is hidden by default."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Dispatch to a driver and exit with its status (see runtime.hard_exit for why)."""
    from beam_rnn.cli.runtime import hard_exit

    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-V", "--version"):
        print(f"beam-rnn {_version()}")
        hard_exit(0)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        hard_exit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"beam-rnn: error: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        hard_exit(2)
    hard_exit(run_command(command, rest))


def _verbose(arg: str) -> bool | None:
    """What `arg` says about ``--verbose`` (True, False), None when it is another argument.

    A value other than true/false stays in the arguments, for the parser's error.
    """
    from beam_rnn.cli.flags import FALSE_WORDS, TRUE_WORDS
    from beam_rnn.cli.runtime import VERBOSE_FLAG

    name, eq, value = arg.partition("=")
    if name != VERBOSE_FLAG:
        return None
    word = value.strip().lower()
    if not eq or word in TRUE_WORDS:
        return True
    return False if word in FALSE_WORDS else None


def run_command(command: str, argv: Sequence[str]) -> int:
    """Runs one driver's ``main(argv)``; the project's errors become one line and their exit code.

    `beam_rnn.core.errors` maps each kind of error to its status (2: bad input
    found before work; 1: the run failed); argparse's own exits keep theirs.
    ``--verbose`` (or ``--verbose=true|false``) anywhere in `argv` is taken out and
    shows every library's logging; without it only the project's lines and progress
    are shown (`beam_rnn.cli.runtime.console_output`).
    """
    from beam_rnn.cli.runtime import console_output
    from beam_rnn.core import progress
    from beam_rnn.core.errors import BeamRnnError, exit_code

    args = [arg for arg in argv if _verbose(arg) is None]
    with console_output(verbose=any(_verbose(arg) for arg in argv)):
        if command not in INTERACTIVE:  # the elapsed time shows (or is logged) between the stages' own lines
            progress.BOARD.open(command)
        module = importlib.import_module(COMMANDS[command])
        try:
            code = module.main(args)
        except SystemExit as e:  # argparse errors (exit 2) and explicit exits keep their code
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BeamRnnError as e:
            progress.BOARD.close_all()  # the error is the last line
            print(f"beam-rnn {command}: error: {e}", file=sys.stderr)
            code = exit_code(e)
    return int(code or 0)


