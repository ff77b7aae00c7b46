"""The CLI's lines are declared once: each line field is an attribute of its result."""

import argparse
import pathlib

import msgspec
import pytest

from castore.cli import COMMANDS, history, main, maintenance, modify, serve, state
from castore.cli.args import SPECS, build_parser
from castore.cli.errors import UsageError
from castore.results import LINE_TYPES


def test_every_line_field_is_a_result_field():
    for result_type, line_type in LINE_TYPES.items():
        result_fields = set(result_type.__struct_fields__)
        for field in msgspec.structs.fields(line_type):
            assert field.name in result_fields, f"{line_type.__name__}.{field.name}"


def commands_action(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    action = next(a for a in parser._actions if a.dest == "command")
    assert isinstance(action, argparse._SubParsersAction)
    return action


def test_every_command_has_a_handler():
    sub = commands_action(build_parser())
    assert set(sub.choices) == set(COMMANDS) == set(SPECS)
    tables = {
        **state.COMMANDS,
        **modify.COMMANDS,
        **history.COMMANDS,
        **maintenance.COMMANDS,
        **serve.COMMANDS,
    }
    assert set(tables) == set(COMMANDS)
    for name in COMMANDS:
        assert COMMANDS[name] is tables[name], name  # each name's group is its module


def test_a_run_builds_only_the_parser_of_its_command():
    parser = build_parser()
    sub = commands_action(parser)
    args = parser.parse_args(["--dag", "get", "set", "k", "1", "--no-sync"])
    assert (args.command, args.dag, args.key, args.value, args.no_sync) == (
        "set",
        "get",
        "k",
        "1",
        True,
    )
    assert set(sub._name_parser_map) == {"set"}


def test_the_help_lists_every_command_without_building_it(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one line per command
    parser = build_parser()
    lines = parser.format_help().splitlines()
    for name, spec in SPECS.items():
        assert any(line.split() == [name, *spec.summary.split()] for line in lines), name
    assert not commands_action(parser)._name_parser_map


def test_usage_errors_name_the_commands():
    with pytest.raises(UsageError, match=r"invalid choice: 'nope' \(choose from 'get', 'set', "):
        build_parser().parse_args(["nope"])
    with pytest.raises(UsageError, match="the following arguments are required: COMMAND"):
        build_parser().parse_args([])


def test_an_unknown_option_without_a_command_is_named():
    # Found by a review: `castore --bogus` said only that COMMAND is required.
    parser = build_parser()
    parser.argv = ["--dir", "x", "--bogus", "--no-sync"]
    with pytest.raises(UsageError, match=r"^unrecognized arguments: --bogus$"):
        parser.parse_args(parser.argv)
    parser.argv = ["--dir", "x"]
    with pytest.raises(UsageError, match="the following arguments are required: COMMAND"):
        parser.parse_args(parser.argv)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (
            ["get", "k", "--by", "3"],
            "unrecognized arguments: --by 3: get takes no --by (incr does)",
        ),
        (
            ["set", "k", "1", "--to-version=3"],
            "unrecognized arguments: --to-version=3: set takes no --to-version "
            "(diff and rollback do)",
        ),
        (["get", "k", "--bogus"], "unrecognized arguments: --bogus: no command takes --bogus"),
        (
            ["set", "k", "1", "--expected", "1"],
            "unrecognized arguments: --expected 1: no command takes --expected "
            "(options are spelled in full: --expected-version)",
        ),
        (["get", "k", "extra"], "unrecognized arguments: extra"),
    ],
)
def test_an_option_of_another_command_is_named_with_its_commands(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], argv: list[str], said: str
) -> None:
    # argparse said only "unrecognized arguments: --by 3": which command takes it is told.
    store = tmp_path / "s"
    assert main(["--dir", str(store), "--namespace", "n", *argv]) == 2
    assert capsys.readouterr().err == f"castore: {said}\n"
    assert not store.exists()  # nothing was done


def test_a_version_diff_as_text_copies_each_value_once_not_once_per_change(monkeypatch):
    # Found by a review: each change was applied to a copy of the whole value, so a diff
    # of a 20,000-item array reversed (20,000 moves) took 2 minutes as text, 2 s as JSON.
    # Oracle: the items of the arrays deep-copied grow with the size, not with its square.
    import copy

    from castore.cli.render import render_patch_text
    from castore.results import VersionDiff

    size = 300
    before = list(range(size))
    patch = [{"op": "move", "from": f"/{size - 1}", "path": f"/{n}"} for n in range(size - 1)]
    diff = VersionDiff(
        scope="dag",
        namespace="d",
        key="k",
        from_version=1,
        to_version=2,
        from_hash="",
        to_hash="",
        patch=patch,
    )
    copied = 0
    deepcopy = copy.deepcopy

    def counted(value, memo=None):
        nonlocal copied
        copied += len(value) if isinstance(value, list) else 1
        return deepcopy(value, memo)

    monkeypatch.setattr(copy, "deepcopy", counted)
    text = render_patch_text(diff, before).splitlines()
    monkeypatch.undo()
    assert len(text) == size
    assert text[1] == f"> /{size - 1} -> /0"
    assert copied < 10 * size, copied
    assert before == list(range(size))  # the caller's value is left as it was
