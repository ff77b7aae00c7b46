"""Small modules and short functions (docs/DESIGN.md, "Layers"; STYLE.md).

Every module of the package stays under :data:`MODULE_MAX_LINES` lines (the
:data:`FACADES` a little more) and
every function under :data:`FUNCTION_MAX_LINES`; :data:`TABLES` may name a
function that reads as a table (none today: the argparse table is
``castore.cli.args.SPECS``, one small function per command).
"""

import ast
import pathlib

import castore

PACKAGE = pathlib.Path(castore.__file__).parent
MODULE_MAX_LINES = 400
FUNCTION_MAX_LINES = 60
TABLES: set[tuple[str, str]] = set()  # (module, function): one call per line, a table
# The public facade: one thin method per operation, each with its whole docstring. Split
# by a mixin it would be one class posing as two (issue 9); 500 is the general rule.
FACADES = {"store.py": 500}


def sources() -> dict[str, str]:
    return {
        path.relative_to(PACKAGE).as_posix(): path.read_text()
        for path in sorted(PACKAGE.rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def test_the_package_is_walked():
    assert {"store.py", "file/backend.py", "file/reflog.py", "cli/args.py"} <= set(sources())


def test_every_module_is_small():
    long = {
        name: len(text.splitlines())
        for name, text in sources().items()
        if len(text.splitlines()) > FACADES.get(name, MODULE_MAX_LINES)
    }
    assert not long, f"modules over {MODULE_MAX_LINES} lines: {long}"


def test_every_function_is_short():
    long = {}
    for name, text in sources().items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                size = node.end_lineno - node.lineno + 1
                if size > FUNCTION_MAX_LINES and (name, node.name) not in TABLES:
                    long[f"{name}:{node.name}"] = size
    assert not long, f"functions over {FUNCTION_MAX_LINES} lines: {long}"
