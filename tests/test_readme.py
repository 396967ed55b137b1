"""The README cannot drift from the command line: its flag tables are the parsers' (beam_rnn.cli.docs)."""

import re

import pytest

from beam_rnn.cli import COMMANDS
from beam_rnn.cli import docs
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_command_has_a_generated_flag_table():
    assert sorted(docs.commands_documented(README)) == sorted(COMMANDS)


def test_readme_tables_equal_the_parsers():
    """Fails when a flag, a default or a help text changed without `python -m beam_rnn.cli.docs`."""
    assert docs.render(README) == README, "run: python -m beam_rnn.cli.docs"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_visible_flag_is_in_its_table(command):
    block = re.search(rf"<!-- flags: {command} -->\n(.*?)<!-- /flags -->", README, re.S).group(1)
    listed = set(re.findall(r"`(--[a-z0-9-]+)`", block))
    parser = docs.parser_of(command)
    visible = {s for a in parser._actions if a.help != "==SUPPRESS==" for s in a.option_strings
               if s.startswith("--") and s != "--help"}
    assert visible == listed


def test_a_changed_default_is_caught(tmp_path):
    """The check is not vacuous: a README whose default differs from the parser's fails `--check`."""
    readme = tmp_path / "README.md"
    readme.write_text(README.replace("| `--vocab-size` | 20000 |", "| `--vocab-size` | 30000 |", 1), encoding="utf-8")
    assert readme.read_text(encoding="utf-8") != README
    assert docs.main(["--readme", str(readme), "--check"]) == 1
    assert docs.main(["--readme", str(readme)]) == 0 and readme.read_text(encoding="utf-8") == README
