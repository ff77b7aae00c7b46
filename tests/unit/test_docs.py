"""The docs keep up with the code: CLI.md covers every command, README has its commands."""

import argparse
import pathlib
import re

from castore import cli
from castore.cli.args import build_parser

ROOT = pathlib.Path(__file__).parents[2]


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    choices: dict[str, argparse.ArgumentParser] = sub.choices  # type: ignore[assignment]  # subparsers
    return choices


def test_every_command_has_a_section_and_help():
    text = (ROOT / "docs" / "CLI.md").read_text()
    headings = set(re.findall(r"^## ([\w-]+)$", text, re.M))
    for name, parser in commands().items():
        assert name in headings, f"docs/CLI.md lacks '## {name}'"
        assert parser.description
        assert "example:" in parser.description


def test_exit_code_table_matches_cli():
    text = (ROOT / "docs" / "CLI.md").read_text()
    for code in cli.EXIT_CODES.values():
        assert re.search(rf"^\| {code} \|", text, re.M), code


def test_readme_has_the_two_setup_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    run = "python3 -m pip install . && castore --dag demo set cursors/feed"
    test = "python3 -m pip install -e '.[dev]' && python3 -m pytest"
    assert run in readme
    assert test in readme
    assert test in (ROOT / ".ci" / "run").read_text()
