"""The README's flag tables, generated from the drivers' parsers so that the two cannot drift.

    python -m beam_rnn.cli.docs            # rewrite the tables in README.md
    python -m beam_rnn.cli.docs --check    # exit 1 when README.md's tables differ (tests/test_readme.py)

A table lives between ``<!-- flags: COMMAND -->`` and ``<!-- /flags -->`` in the
README.  Each row is one flag of ``beam-rnn COMMAND --help``: its spellings, its
default (from the help text's ``(default X)``, which the config dataclasses
write) and its help.  The corpus flags are listed in full under ``preprocess``;
the other commands that read a corpus list only those that differ there.
No TensorFlow and no Beam are imported (the parsers are built before any heavy import).
"""

import argparse
import importlib
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from beam_rnn.cli import COMMANDS

_DEFAULT_RE = re.compile(r"\s*\((?:default|Default:?) ([^()]*(?:\([^()]*\)[^()]*)*)\)\.?$")
_DEFAULT_SENTENCE_RE = re.compile(r"\s*Default:? ([^.]*(?:\.\d[^.]*)*)\.?$")
_BLOCK_RE = re.compile(r"(<!-- flags: (?P<command>[a-z-]+) -->\n)(?P<body>.*?)(<!-- /flags -->)", re.S)
CORPUS_GROUP = "corpus"
FULL_CORPUS_COMMAND = "preprocess"


def parser_of(command: str) -> argparse.ArgumentParser:
    """``beam-rnn COMMAND``'s parser (the driver's `build_parser`)."""
    return importlib.import_module(COMMANDS[command]).build_parser()


def _cell(text: str) -> str:
    return " ".join(str(text).replace("%%", "%").replace("|", "\\|").split())


def _row(action: argparse.Action) -> tuple[str, str, str]:
    """(flags, default, meaning) of one action."""
    spellings = [s for s in action.option_strings if s.startswith("--")]
    help_text = _cell(action.help or "")
    default = None
    for pattern in (_DEFAULT_RE, _DEFAULT_SENTENCE_RE):
        match = pattern.search(help_text)
        if match:
            default, help_text = match.group(1), help_text[: match.start()].rstrip()
            break
    if default is None:
        if action.required:
            default = "required"
        elif isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):  # noqa: SLF001
            default = "off"
        elif action.default is None:
            default = "—"
        else:
            default = str(action.default)
    if help_text and not help_text.endswith((".", "?", ")")):
        help_text += "."
    return " / ".join(f"`{s}`" for s in spellings), _cell(default), help_text


def _actions(parser: argparse.ArgumentParser) -> list[tuple[str | None, argparse.Action]]:
    out = []
    for group in parser._action_groups:  # noqa: SLF001  argparse has no public list of groups
        for action in group._group_actions:  # noqa: SLF001
            if action.help == argparse.SUPPRESS or not action.option_strings or "--help" in action.option_strings:
                continue
            out.append((group.title, action))
    return out


def flag_table(command: str) -> str:
    """The markdown table of ``beam-rnn COMMAND``'s flags."""
    rows = []
    shared = {}
    if command != FULL_CORPUS_COMMAND:
        shared = {_row(a) for g, a in _actions(parser_of(FULL_CORPUS_COMMAND)) if g == CORPUS_GROUP}
    same_as_preprocess = []
    for group, action in _actions(parser_of(command)):
        row = _row(action)
        if group == CORPUS_GROUP and row in shared:
            same_as_preprocess.append(row[0])
            continue
        rows.append(row)
    if same_as_preprocess:
        rows.insert(0, (", ".join(same_as_preprocess), "as for `preprocess`", "The corpus flags (see `preprocess`)."))
    lines = ["| flag | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| {flags} | {default} | {meaning} |" for flags, default, meaning in rows]
    return "\n".join(lines) + "\n"


def render(readme: str) -> str:
    """`readme` with every flag table regenerated."""
    return _BLOCK_RE.sub(lambda m: m.group(1) + flag_table(m.group("command")) + m.group(4), readme)


def commands_documented(readme: str) -> list[str]:
    return [m.group("command") for m in _BLOCK_RE.finditer(readme)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beam_rnn.cli.docs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", default=str(Path(__file__).resolve().parents[2] / "README.md"))
    parser.add_argument("--check", action="store_true", help="Only compare; exit 1 when the tables differ.")
    args = parser.parse_args(argv)
    path = Path(args.readme)
    text = path.read_text(encoding="utf-8")
    new = render(text)
    if args.check:
        if new != text:
            print(f"{path}: flag tables differ from the parsers; run python -m beam_rnn.cli.docs", file=sys.stderr)
            return 1
        return 0
    path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
