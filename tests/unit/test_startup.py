"""CLI start-up imports only what the command uses (issue 14; docs/PERFORMANCE.md).

Each command runs in a subprocess through a small wrapper that calls
``castore.cli.main`` (what the ``castore`` script runs) and then writes the
names in ``sys.modules`` to a file; the store is named by ``CASTORE_DIR`` and
``DAG_NAME``, as in a Dagu step. The state commands must not load progress
bars, JSON Patch, zstd, the maintenance code, package metadata, or a server
or database stack; the commands that use them must load them (so the check
can fail). ``python -X importtime -m castore get k`` is checked the same way.
"""

from __future__ import annotations

import pathlib

import pytest

from tests.helpers import Cli, json_line

pytestmark = pytest.mark.integration

# What no state command and no plain `import castore` may load.
NEVER_AT_START = frozenset(
    {
        "tqdm",  # progress bars: audit, export, import, maintenance
        "jsonpatch",  # version diffs
        "jsonpointer",
        "zstandard",  # compressed values only
        "importlib.metadata",  # package scans (tqdm loaded it)
        "psycopg",  # database drivers and the server stack (none exist yet)
        "psycopg2",
        "httpx",
        "uvicorn",
        "starlette",
        "castore.file.check",  # maintenance of the file format
        "castore.file.checklog",
        "castore.file.gc",
        "castore.file.compact",
        "castore.file.stats",
        "castore.file.upgrade",
        "castore.cli.history",  # the other commands' modules
        "castore.cli.maintenance",
        "castore.audit",
        "castore.transfer",
        "castore.dagu",
        "castore.jsonparse",  # the exact JSON path: only values that leave the fast path
        "socket",  # the audit's host name comes from os.uname()
        "shutil",  # argparse's terminal width is found without it
    }
)

# Writes the module names after main() to $MODULES_OUT (imports nothing but os and sys,
# which every interpreter has loaded at start).
_RUN = """\
import os, sys
from castore.cli import main
code = main(sys.argv[1:])
sys.stdout.flush()
with open(os.environ["MODULES_OUT"], "w") as fh:
    fh.write("\\n".join(sorted(sys.modules)))
sys.exit(code)
"""
# What a plain `get` of a live key (the quick path, castore.cli.quick) loads none of: the
# library (msgspec and the result types), OpenSSL (hashlib), typing.
NEVER_IN_A_QUICK_GET = frozenset(
    {"msgspec", "typing", "hashlib", "_hashlib", "castore.store", "castore.cli.state"}
)
BIG = '{"rows": [' + ", ".join(['"a repeated row of text"'] * 40) + "]}"  # zstd-compressed


@pytest.fixture
def step(tmp_path: pathlib.Path) -> Cli:
    """The CLI as a workflow step runs it: store and DAG from the environment."""
    runner = Cli(tmp_path, entry=("-c", _RUN))
    runner.env.update(
        CASTORE_DIR=str(tmp_path / "store"),
        DAG_NAME="d",
        MODULES_OUT=str(tmp_path / "modules.txt"),
    )
    return runner


def modules_after(step: Cli, *args: str, code: int = 0) -> set[str]:
    """Run ``castore ARGS`` in ``step``; the modules loaded when it finished."""
    proc = step.raw(*args)
    assert proc.returncode == code, (args, proc.returncode, proc.stderr)
    return set(pathlib.Path(step.env["MODULES_OUT"]).read_text().split("\n"))


def assert_lean(loaded: set[str], what: str) -> None:
    assert "castore.cli" in loaded or what == "import castore", loaded  # the list is real
    extra = sorted(NEVER_AT_START & loaded)
    assert not extra, f"{what} loads {extra}"


@pytest.mark.parametrize(
    "args",
    [
        ("get", "k"),
        ("get", "missing"),
        ("set", "k", '{"cursor": 2}'),
        ("--no-sync", "set", "k", "3"),
        ("diff", "k", '{"cursor": 3}'),
        ("diff", "k", "4", "--no-update"),
        ("list",),
        ("list", "--include-values"),
        ("delete", "k"),
    ],
    ids=" ".join,
)
def test_a_state_command_loads_only_what_it_uses(step, args):
    json_line(step.raw("set", "k", '{"cursor": 1}'))
    assert_lean(modules_after(step, *args), f"castore {' '.join(args)}")


def test_a_missing_required_key_fails_lean(step):
    assert_lean(modules_after(step, "get", "k", "--required", code=4), "get --required")


def test_the_commands_that_need_them_load_them(step):
    """The negative checks can fail: each module is loaded where it is used."""
    json_line(step.raw("set", "k", "[1]"))
    json_line(step.raw("set", "k", "[2]"))
    assert {"tqdm", "castore.transfer"} <= modules_after(step, "export")
    assert "jsonpatch" in modules_after(step, "diff", "k", "--from-version", "1")
    assert "castore.cli.history" in modules_after(step, "history", "k")
    assert "castore.file.check" in modules_after(step, "check")
    assert "castore.file.gc" in modules_after(step, "gc", "--dry-run")
    assert "castore.file.compact" in modules_after(step, "compact", "--keep-last", "1")
    assert "castore.file.stats" in modules_after(step, "stats")
    assert "castore.file.upgrade" in modules_after(step, "upgrade")
    assert "castore.jsonparse" in modules_after(step, "set", "z", "-0")  # the exact path


def test_zstandard_only_for_a_compressed_value(step):
    assert "zstandard" in modules_after(step, "set", "big", BIG)
    assert "zstandard" in modules_after(step, "get", "big")
    json_line(step.raw("set", "small", '"x"'))
    assert "zstandard" not in modules_after(step, "get", "small")


def test_a_plain_get_loads_neither_the_library_nor_openssl(step):
    json_line(step.raw("set", "k", '{"cursor": 1}'))
    loaded = modules_after(step, "get", "k")
    assert {"castore.cli.quick", "castore.file.peek"} <= loaded  # the list is real
    assert not sorted((NEVER_AT_START | NEVER_IN_A_QUICK_GET) & loaded)


def test_a_get_the_quick_path_declines_loads_the_library(step):
    """A version, a default, a required key that is missing: the command runs in full."""
    json_line(step.raw("set", "k", "1"))
    for args, code in (
        (("get", "k", "--version", "1"), 0),
        (("get", "missing", "--default", "[]"), 0),
        (("get", "missing", "--required"), 4),
    ):
        loaded = modules_after(step, *args, code=code)
        assert {"castore.cli.state", "msgspec", "castore.store"} <= loaded, args
        assert not sorted(NEVER_AT_START & loaded), args


def test_a_plain_set_of_a_key_loads_neither_the_library_nor_openssl(step):
    json_line(step.raw("set", "k", '{"cursor": 1}'))  # a new key: the store writes it
    for args in (("set", "k", '{"cursor": 2}'), ("--no-sync", "set", "k", "[3, 4.5]")):
        loaded = modules_after(step, *args)
        assert {"castore.cli.quick", "castore.file.quickset"} <= loaded  # the list is real
        assert not sorted((NEVER_AT_START | NEVER_IN_A_QUICK_GET) & loaded), args
    assert json_line(step.raw("get", "k"))["value"] == [3, 4.5]


def test_a_value_on_stdin_is_read_once_whichever_path_writes_it(step):
    json_line(step.raw("set", "k", "1"))
    proc = step.raw("set", "k", "-", stdin=b'{"from": "stdin", "n": [1, 2.5]}\n')
    assert proc.returncode == 0, proc.stderr
    loaded = set(pathlib.Path(step.env["MODULES_OUT"]).read_text().split("\n"))
    assert "castore.file.quickset" in loaded
    assert not sorted((NEVER_AT_START | NEVER_IN_A_QUICK_GET) & loaded)
    assert json_line(step.raw("get", "k"))["value"] == {"from": "stdin", "n": [1, 2.5]}
    proc = step.raw("set", "k", stdin=b'"nul \\u0000 left to the store"')  # VALUE omitted: stdin
    assert proc.returncode == 0, proc.stderr
    assert "msgspec" in set(pathlib.Path(step.env["MODULES_OUT"]).read_text().split("\n"))
    assert json_line(step.raw("get", "k"))["value"] == "nul \u0000 left to the store"


def test_a_set_the_quick_path_declines_loads_the_library(step):
    """A new key, a NUL escape, a failed guard: the command runs in full, and says so."""
    json_line(step.raw("set", "k", "1"))
    for args, code in (
        (("set", "new", "1"), 0),
        (("set", "k", '"\\u0000"'), 0),
        (("set", "k", "2", "--expected-version", "1"), 3),
        (("set", "k", "3", "--create-only"), 3),
    ):
        loaded = modules_after(step, *args, code=code)
        assert {"castore.cli.state", "msgspec", "castore.store"} <= loaded, args
        assert not sorted(NEVER_AT_START & loaded), args


def _importtime_names(step: Cli, *args: str) -> set[str]:
    runner = Cli(step.cwd, entry=("-X", "importtime", "-m", "castore"))
    runner.env.update(CASTORE_DIR=step.env["CASTORE_DIR"], DAG_NAME="d")
    proc = runner.raw(*args)
    assert proc.returncode == 0, proc.stderr
    return {
        line.split("|")[-1].strip()
        for line in proc.stderr.decode().splitlines()
        if line.startswith("import time:") and not line.endswith("imported package")
    }


def test_python_m_castore_get_under_importtime(step):
    json_line(step.raw("set", "k", "1"))
    names = _importtime_names(step, "get", "k")
    assert {"castore.cli", "castore.cli.quick", "blake3"} <= names  # the profile is real
    extra = sorted((NEVER_AT_START | NEVER_IN_A_QUICK_GET) & names)
    assert not extra, f"python -X importtime -m castore get k loads {extra}"
    names = _importtime_names(step, "get", "k", "--version", "1")
    assert {"castore.cli.state", "msgspec"} <= names
    extra = sorted(NEVER_AT_START & names)
    assert not extra, f"python -X importtime -m castore get k --version 1 loads {extra}"


def loaded_by(cwd: pathlib.Path, code: str, *args: str) -> set[str]:
    """The modules loaded after ``python -c CODE ARGS``, which prints them."""
    proc = Cli(cwd, entry=("-c", code + "\nprint('\\n'.join(sorted(sys.modules)))")).raw(*args)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.decode().split("\n"))


def test_import_castore_alone_loads_nothing_until_a_name_is_used(tmp_path):
    only = loaded_by(tmp_path, "import sys, castore")
    assert "castore" in only
    # castore.errors too: ``castore.errors`` is stable API (a light module)
    assert sorted(m for m in only if m.startswith("castore.") or m == "msgspec") == [
        "castore.errors"
    ]
    only = loaded_by(tmp_path, "import sys\nfrom castore import Store")
    assert "castore.store" in only
    cli_parts = sorted(m for m in only if m == "castore.cli" or m.startswith("castore.cli."))
    assert not cli_parts, cli_parts
    assert "argparse" not in only  # the CLI's parser
    assert not sorted(NEVER_AT_START & only)


def test_the_library_stays_lean_through_a_set_and_a_get(tmp_path):
    code = (
        "import sys\n"
        "from castore import Store\n"
        "s = Store(sys.argv[1], dag='d')\n"
        "s.set('k', {'cursor': 1})\n"
        "assert s.get('k').value == {'cursor': 1}"
    )
    loaded = loaded_by(tmp_path, code, str(tmp_path / "store"))
    assert "castore.file.backend" in loaded
    assert not sorted(NEVER_AT_START & loaded)


def test_incr_and_a_merge_patch_stay_lean_and_a_json_patch_loads_jsonpatch(step):
    """patch and incr (issue 11) load their own modules; only an RFC 6902 patch loads jsonpatch."""
    json_line(step.raw("set", "k", '{"cursor": 1}'))
    lean = NEVER_AT_START - {"castore.cli.history"}  # sibling modules: none of these either
    for args in (
        ("incr", "n"),
        ("incr", "k", "--path", "/cursor"),
        ("patch", "k", "{}", "--merge"),
    ):
        loaded = modules_after(step, *args)
        assert {"castore.cli.modify", "castore.edits"} <= loaded, args
        extra = sorted(lean & loaded)
        assert not extra, f"castore {' '.join(args)} loads {extra}"
    assert "jsonpatch" in modules_after(step, "patch", "k", "[]")
    assert "castore.edits" not in modules_after(step, "set", "k", "2")


# Runs the console script's function with an atexit hook: the hook runs only if the
# interpreter tears down (what `castore.cli.run` skips when the library never loaded).
_RUN_EXIT = """\
import atexit, os, sys
atexit.register(lambda: open(os.environ["TORN_DOWN"], "w").close())
from castore.cli import run
sys.argv[0] = "castore"
run()
"""


@pytest.mark.parametrize(
    ("args", "code", "torn_down"),
    [
        (("get", "k"), 0, False),  # the quick path: nothing to finalize
        (("set", "k", "2"), 0, False),
        (("get", "k", "--version", "1"), 0, True),  # the library: exits as usual
        (("history", "k"), 0, True),
        (("get", "nope", "--required"), 4, True),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else str(v),
)
def test_the_command_skips_the_teardown_only_when_the_library_never_loaded(
    tmp_path, args, code, torn_down
):
    """Skipping the interpreter's teardown saves 2.7 ms per step; the output is whole."""
    runner = Cli(tmp_path, entry=("-c", _RUN_EXIT))
    runner.env.update(CASTORE_DIR=str(tmp_path / "store"), DAG_NAME="d")
    runner.env["TORN_DOWN"] = str(tmp_path / "torn-down")
    twin = Cli(tmp_path)  # `python -m castore`: the same lines and codes
    twin.env.update(runner.env)
    json_line(twin.raw("set", "k", "1"))
    proc = runner.raw(*args)
    assert (proc.returncode, (tmp_path / "torn-down").exists()) == (code, torn_down), proc.stderr
    (tmp_path / "torn-down").unlink(missing_ok=True)
    if args[0] == "set":
        assert json_line(proc)["version"] == 2
        assert json_line(twin.raw("get", "k"))["value"] == 2
    else:
        again = twin.raw(*args)
        assert (proc.returncode, proc.stdout, proc.stderr) == (
            again.returncode,
            again.stdout,
            again.stderr,
        )
        assert proc.stdout.endswith(b"\n") or code
