"""The constants table in docs/FORMAT.md matches the code."""

import importlib
import pathlib
import re

DOC = pathlib.Path(__file__).parents[2] / "docs" / "FORMAT.md"


def constants_table() -> list[tuple[str, str, str]]:
    rows = re.findall(
        r"^\| `(\w+)` \| `([^`]*)` \| `castore/((?:file/)?\w+)\.py` \|", DOC.read_text(), re.M
    )
    assert len(rows) >= 10
    return rows


def test_format_constants_match_code():
    for name, value, module in constants_table():
        actual = getattr(importlib.import_module(f"castore.{module.replace('/', '.')}"), name)
        assert str(actual) == value, f"{module}.{name} is {actual!r}, FORMAT.md says {value}"
