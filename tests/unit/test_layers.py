"""Modules import only from lower layers (docs/DESIGN.md, "Layers").

Modules are named by their dotted path below ``castore``: ``store`` is
castore/store.py, ``cli.state`` is castore/cli/state.py, ``cli`` is
castore/cli/__init__.py and ``__init__`` is castore/__init__.py.
"""

import ast
import pathlib
from collections.abc import Iterator

import castore

PACKAGE = pathlib.Path(castore.__file__).parent

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
    "checktree": 8,
    "blobread": 3,
    "damage": 2,
    "backend": 2,
    "listing": 7,
    "formatfile": 2,
    "__init__": 10,  # the public API; the CLI uses the modules themselves
    # castore/cli/: the top, above every library module; nothing below imports it.
    "cli.args": 10,
    "cli.render": 10,
    "cli.invocation": 10,
    "cli.state": 11,
    "cli.history": 11,
    "cli.maintenance": 11,
    "cli": 12,
    "__main__": 13,
}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()  # a subpackage's __init__.py is the subpackage itself
    return ".".join(parts)


def modules() -> dict[str, pathlib.Path]:
    return {
        module_name(path): path
        for path in PACKAGE.rglob("*.py")
        if "__pycache__" not in path.relative_to(PACKAGE).parts
    }


def _package_of(name: str, path: pathlib.Path) -> list[str]:
    parts = [] if name == "__init__" else name.split(".")
    return parts if path.name == "__init__.py" else parts[:-1]


def castore_imports(name: str, path: pathlib.Path) -> Iterator[str]:
    """The castore modules that ``name`` imports, as names of :data:`LAYERS`."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "castore" or alias.name.startswith("castore."):
                    yield alias.name.removeprefix("castore").lstrip(".") or "__init__"
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                package = _package_of(name, path)
                target = ".".join([*package[: len(package) - node.level + 1], module]).strip(".")
            elif module == "castore" or module.startswith("castore."):
                target = module.removeprefix("castore").lstrip(".")
            else:
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}" if target else alias.name
                yield submodule if submodule in LAYERS else target or "__init__"


def test_every_module_has_a_layer():
    assert set(modules()) == set(LAYERS)


def test_the_cli_subpackage_is_checked():
    assert {"cli", "cli.args", "cli.render", "cli.state"} <= set(modules())
    assert "cli.args" in set(castore_imports("cli", modules()["cli"]))


def test_imports_go_downward_only():
    for name, path in modules().items():
        mine = LAYERS[name]
        for imported in castore_imports(name, path):
            assert imported in LAYERS, f"{name} imports unknown module {imported}"
            assert LAYERS[imported] < mine, (
                f"{name} (layer {mine}) imports {imported} (layer {LAYERS[imported]})"
            )


def test_nothing_imports_cli():
    for name, path in modules().items():
        if name != "__main__" and name != "cli" and not name.startswith("cli."):
            imported = set(castore_imports(name, path))
            assert not {m for m in imported if m == "cli" or m.startswith("cli.")}, name
