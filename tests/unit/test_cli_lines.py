"""The CLI's lines are declared once: each line field is an attribute of its result."""

import msgspec

from castore.cli import COMMANDS
from castore.cli.args import build_parser
from castore.results import LINE_TYPES


def test_every_line_field_is_a_result_field():
    for result_type, line_type in LINE_TYPES.items():
        result_fields = set(result_type.__struct_fields__)
        for field in msgspec.structs.fields(line_type):
            assert field.name in result_fields, f"{line_type.__name__}.{field.name}"


def test_every_command_has_a_handler():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)  # type: ignore[arg-type]  # subparsers' choices
