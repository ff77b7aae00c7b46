"""Modules import only from lower layers (docs/DESIGN.md, "Layers")."""

import ast
import pathlib
from collections.abc import Iterator

import castore

LAYERS = {
    "errors": 0,
    "keys": 1,
    "codec": 1,
    "frames": 1,
    "records": 1,
    "results": 1,
    "_fs": 1,
    "reflog": 2,
    "indexes": 2,
    "keyindex": 2,
    "versions": 3,
    "fileread": 4,
    "rewrite": 5,
    "filestore": 6,
    "history": 7,
    "store": 8,
    "audit": 9,
    "transfer": 9,
    "dagu": 9,
    "compact": 9,
    "gc": 9,
    "check": 9,
    "upgrade": 9,
    "stats": 9,
    "blobread": 3,
    "damage": 2,
    "backend": 2,
    "listing": 7,
    "formatfile": 2,
    "render": 9,
    "args": 9,
    "cli": 10,
    "__init__": 11,
    "__main__": 11,
}


def castore_imports(path: pathlib.Path) -> Iterator[str]:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("castore"):
            parts = node.module.split(".")
            if len(parts) > 1:
                yield parts[1]
            else:
                yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("castore."):
                    yield alias.name.split(".")[1]


def test_every_module_has_a_layer():
    package = pathlib.Path(castore.__file__).parent
    assert {p.stem for p in package.glob("*.py")} == set(LAYERS)


def test_imports_go_downward_only():
    package = pathlib.Path(castore.__file__).parent
    for path in package.glob("*.py"):
        mine = LAYERS[path.stem]
        for imported in castore_imports(path):
            if path.stem in ("__init__", "__main__"):
                continue
            assert LAYERS[imported] < mine, (
                f"{path.stem} (layer {mine}) imports {imported} (layer {LAYERS[imported]})"
            )


def test_nothing_imports_cli():
    package = pathlib.Path(castore.__file__).parent
    for path in package.glob("*.py"):
        if path.stem not in ("__main__", "cli"):
            assert "cli" not in set(castore_imports(path)), path.stem
