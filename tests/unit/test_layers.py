"""Modules import only from lower layers (docs/DESIGN.md, "Layers").

Modules are named by their dotted path below ``castore``: ``store`` is
castore/store.py, ``cli.state`` is castore/cli/state.py, ``cli`` is
castore/cli/__init__.py, ``file.tree`` is castore/file/tree.py, ``file`` is
castore/file/__init__.py and ``__init__`` is castore/__init__.py.

The file backend (castore/file/) is one band of layers: each of its modules
has a layer inside the band from :data:`FILE_LAYERS`. Imports under
``if TYPE_CHECKING:`` do not count for the layers (they never run: a
maintenance module names the ``FileBackend`` that calls it only for its
types), but every other rule checks them too.
"""

import ast
import functools
import pathlib
from collections.abc import Iterator

import pytest

import castore

PACKAGE = pathlib.Path(castore.__file__).parent

LAYERS = {
    "errors": 0,
    "decoding": 0,  # whether results decode their values (off where they are only printed)
    "defaults": 0,  # defaults every backend shares (the lock timeout)
    "digests": 0,  # sha256: CPython's own for names and the CLI's quick get, else OpenSSL
    "waits": 1,  # a thread that refuses to wait for locks, or bounds its waits (castore serve)
    "forks": 0,  # a forked child's new locks, none of its parent's descriptors (at-fork hooks)
    "exits": 0,  # contextmanager whose cleanup an interrupted ``with`` runs at once, not at GC
    "inuse": 1,  # the calls running on a handle: its close waits for none, runs after all
    "keys": 1,
    "records": 1,  # what every backend shares
    "urls": 1,  # store locations: the default one; URLs and their redaction
    "cluster": 2,  # who owns a keyspace: rendezvous hashing over a member list
    "valuecodec": 2,  # how every backend packs a value (raw or zstd), verified on read
    "jsonrules": 1,
    "argcheck": 0,  # the Python types of the public API's arguments (TypeError)
    "goerrors": 0,  # Go's words for a JSON syntax error
    "jsonparse": 2,
    "pyvalues": 2,
    "literals": 3,  # JSON decoded with its numbers as written (edits, version diffs)
    "diffbound": 0,  # how far a version diff compares arrays item by item
    "pointers": 2,  # JSON Pointer parts, and why one cannot be followed
    "reports": 2,
    "identity": 2,  # who writes: the audit record
    "audits": 3,  # a handle's audit records, built once per distinct input
    "stdjson": 1,  # plain JSON text normalized with the standard library (the CLI's quick set)
    "fastjson": 3,
    "codec": 4,
    "lines": 5,  # how results are written as JSON (Go strings, raw values)
    "results": 6,  # the result types and their lines (to_json: the CLI's bytes)
    "backend": 7,  # the contract between Store and a backend (its records, results)
    "wire": 8,  # the backend protocol's messages (an http:// store and castore serve)
    # castore/file/: layers FILE_BASE + FILE_LAYERS[...] (10 to 19), below.
    "backends": 20,  # the registry: the only module above the band that imports it
    "history": 20,
    "listing": 20,
    "decisions": 20,  # Store's write decisions: guards, what set/delete/diff append
    "edits": 20,  # read-modify-write's value edits: JSON Patch, merge patch, incr
    "modify": 21,  # read-modify-write over the contract (Store.update/patch/incr call it)
    "handle": 20,  # a store handle's life: backend, close, not pickled (a base class of Store)
    "maintenance": 21,  # Store's maintenance calls (a base class of Store)
    "store": 22,
    "audit": 23,
    "exportfile": 20,  # the export file's lines: bounded, validated (no store)
    "transfer": 23,
    "dagurecord": 5,  # one Dagu record file, read as Go reads it (no store)
    "dagu": 23,
    "__init__": 24,  # the public API; the CLI uses the modules themselves
    # castore/cli/: the top, above every library module; nothing below imports it.
    "cli.errors": 22,  # the command line's own errors and their exit codes
    "cli.streams": 22,  # stdin, stdout, stderr read and written whole
    "cli.options": 23,  # the parser class, the help formatter and the store options
    "cli.args": 24,
    "cli.render": 24,
    "cli.invocation": 24,
    "cli.quick": 25,  # a plain `get` or `set` done before the library is loaded
    "cli.state": 25,
    "cli.history": 25,
    "cli.maintenance": 25,
    "cli.modify": 25,
    "cli.usage": 25,  # the error for an option the command does not take
    # castore/server/: `castore serve`, above the library; only cli.serve imports it.
    "server": 23,  # the package: a docstring
    "server.errors": 23,  # exceptions -> statuses and stable codes
    "server.checks": 23,  # what a worker sends (backend protocol, JSON bodies), checked
    "server.peers": 23,  # what the other members of a cluster run (their /healthz)
    "server.membership": 24,  # a clustered server's check of each request
    "server.operations": 24,  # the operation table (imports audit)
    "server.rpc": 25,  # the backend protocol's calls on the store's backend
    "server.middleware": 25,  # request ids, access log, metrics, the token
    "server.incoming": 25,  # what a request brings: body, operation, member list, lock timeout
    "server.app": 26,
    "server.prefork": 26,  # forked server processes on one port, supervised
    "server.onesend": 23,  # uvicorn's protocol, one send per response
    "server.streaming": 23,  # a streamed answer whose client must keep reading
    "server.openapi": 26,
    "server.run": 27,  # token, listening checks, uvicorn
    "cli.serve": 28,
    "cli": 29,
    "__main__": 30,
}

FILE_BASE = 10
FILE_LAYERS = {
    # primitives: descriptors, frames, the file backend's records
    "file": 0,  # the package itself
    "fileio": 0,
    "frames": 0,
    "records": 0,
    "modes": 0,  # the permission bits of what a store creates
    # confined paths; damage in one log
    "wholefiles": 0,  # atomic whole-file writes, a base of Tree
    "tree": 1,
    "keptfile": 2,  # a small file read again and again: descriptor kept, lstat per look
    "damage": 1,
    "chained": 1,  # a log's frames read in bounded chunks while they chain to its end
    "namesync": 1,  # names made durable before a durable write depends on them
    # the files of the format, each on its own
    "logread": 2,
    "formatfile": 2,
    "rewrite": 2,
    "keyindex": 2,
    "graves": 2,
    "blobindex": 2,
    "stateappend": 1,  # one append to STATE (shared with the CLI's quick set)
    "staterecords": 2,
    "statefile": 3,
    # the version index; the store's layout; blobs across logs; encoding new versions
    "versionindex": 3,
    "layout": 3,
    "gcshare": 4,  # a write's shared hold of gc.lock, taken only if free
    "peek": 3,  # the newest value of one log, without the library (the CLI's quick get)
    "quickset": 4,  # a set of a small value on an existing key, without the library
    "blobs": 3,
    "blobsearch": 3,  # a value's intact copy in any log, for check
    "encode": 3,
    # a namespace's keys; one ref's log; the tree checks
    "confirm": 3,  # evidence against a log, confirmed under its shared lock
    "putback": 4,  # an older copy of a removed key's log, put back (GRAVES' evidence)
    "behind": 4,  # a log behind the version its namespace's STATE records
    "logkeys": 3,  # keys and namespace names from the logs' headers (a KEYS lost)
    "namespaces": 5,
    "statemarks": 4,  # a rewrite's mark in STATE
    "cuts": 4,  # a version index's evidence that bytes were cut off its log
    "reflog": 5,
    "logrewrite": 6,  # one log's atomic rewrite under its lock (nested: compaction)
    "readers": 4,  # the logs kept open for version reads
    "checktree": 5,
    "checkread": 4,  # a log and its version index as one state, for check
    # reading and writing; maintenance (handed the FileBackend that calls it)
    "kept": 6,
    "logversions": 6,  # every version of one log, for export
    "settled": 6,  # keys' newest versions recorded in STATE after a list read them
    "readcache": 1,  # each log's newest entry and value, bounded
    "writer": 7,
    "checkremoved": 5,  # logs of keys compaction removed: GRAVES, an older copy put back
    "checklost": 5,  # STATE's evidence: lost logs, an older STATE (handed the LogChecker)
    "checklog": 6,
    "checkkeys": 6,  # a namespace's KEYS header (handed the checker)
    "check": 7,
    "gc": 5,
    "compact": 5,
    "stats": 5,
    "upgrade": 5,
    # the backend, through the contract
    "backend": 8,
}
assert max(FILE_LAYERS.values()) < 10  # the band stays between "backend" and "backends"

# castore/postgres/: the PostgreSQL backend, a band of its own in the same layers (10 to 19).
POSTGRES_LAYERS = {
    "postgres": 0,  # the package itself
    "postgres.location": 0,  # the URL: schema, what errors show
    "postgres.schema": 1,  # the tables, their version, creation and upgrade
    "postgres.pool": 1,  # a handle's connections, up to a bound, shared by its threads
    "postgres.connection": 2,  # a handle's connections: errors, reconnects, transactions
    "postgres.rows": 2,  # rows <-> entries, values
    "postgres.statements": 3,  # the SQL of reads and writes; what a decision reads
    "postgres.chains": 4,  # a key's chain of version rows: pages that prove none was lost
    "postgres.versionrows": 4,  # check of every version row; a damaged one to quarantine
    "postgres.integrity": 4,  # check of the rows, their chains, each key's newest copy; repair
    "postgres.refnames": 4,  # check of the refs rows' names and floors; repair
    "postgres.compaction": 4,  # retention, one key per transaction
    "postgres.appends": 4,  # a write's rows: versions, blobs (in digest order), the copy
    "postgres.maintenance": 5,  # check, gc, stats
    "postgres.backend": 6,
}
assert max(POSTGRES_LAYERS.values()) < 10
# castore/remote/: the http:// backend, a band of its own in the same layers (10 to 19).
REMOTE_LAYERS = {
    "remote": 0,  # the package itself
    "remote.failures": 1,  # error answers back into exceptions; what an error shows of a URL
    "remote.proxies": 1,  # the proxy variables httpx reads, checked before use
    "remote.replies": 2,  # how much of an answer is read: the largest legitimate one
    "remote.frames": 3,  # a streamed reply, decoded a frame at a time
    "remote.transport": 4,  # httpx: routing, retries
    "remote.answers": 4,  # what an answer must hold to be believed (hashes, order, shape)
    "remote.backend": 5,  # the contract over the backend protocol
}
BANDS = {  # each backend's own modules
    "file": FILE_LAYERS,
    "postgres": POSTGRES_LAYERS,
    "remote": REMOTE_LAYERS,
}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()  # a subpackage's __init__.py is the subpackage itself
    return ".".join(parts)


@functools.cache
def modules() -> dict[str, pathlib.Path]:
    return {
        module_name(path): path
        for path in PACKAGE.rglob("*.py")
        if "__pycache__" not in path.relative_to(PACKAGE).parts
    }


def in_file_backend(name: str) -> bool:
    return name == "file" or name.startswith("file.")


def band_of(name: str) -> str | None:
    """The backend package ``name`` belongs to (``file``, ``postgres``), if any."""
    top = name.split(".", 1)[0]
    return top if top in BANDS else None


def layer(name: str) -> int:
    """The layer of a module; a clear failure for a module no table names."""
    if in_file_backend(name):
        short = name.removeprefix("file.")
        if short not in FILE_LAYERS:
            pytest.fail(
                f"castore/file/ module {name!r} has no layer: add {short!r} to FILE_LAYERS "
                "in tests/unit/test_layers.py (above every module it imports, below backend)"
            )
        return FILE_BASE + FILE_LAYERS[short]
    band = band_of(name)
    if band in ("postgres", "remote"):
        table = BANDS[band]
        if name not in table:
            pytest.fail(f"castore/{band}/ module {name!r} has no layer: add it to its band's table")
        return FILE_BASE + table[name]
    if name not in LAYERS:
        pytest.fail(f"module {name!r} has no layer: add it to LAYERS in tests/unit/test_layers.py")
    return LAYERS[name]


def _package_of(name: str, path: pathlib.Path) -> list[str]:
    parts = [] if name == "__init__" else name.split(".")
    return parts if path.name == "__init__.py" else parts[:-1]


def _is_type_checking(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST, typing_only: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth; ``typing_only``: with ``if TYPE_CHECKING:`` ones."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        for child in ast.iter_child_nodes(node):
            if not typing_only and isinstance(child, ast.stmt) and _is_type_checking(child):
                stack.extend(getattr(child, "orelse", []))  # the else branch runs
                continue
            stack.append(child)


def _targets(
    name: str, path: pathlib.Path, *, typing_only: bool
) -> Iterator[tuple[str, ast.alias]]:
    """Each castore module an import statement names, with the imported alias."""
    for node in _import_nodes(ast.parse(path.read_text()), typing_only):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "castore" or alias.name.startswith("castore."):
                    yield alias.name.removeprefix("castore").lstrip(".") or "__init__", alias
        else:
            module = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                package = _package_of(name, path)
                target = ".".join([*package[: len(package) - node.level + 1], module]).strip(".")
            elif module == "castore" or module.startswith("castore."):
                target = module.removeprefix("castore").lstrip(".")
            else:
                continue
            known = modules()
            for alias in node.names:
                submodule = f"{target}.{alias.name}" if target else alias.name
                yield submodule if submodule in known else target or "__init__", alias


def castore_imports(name: str, path: pathlib.Path, *, typing_only: bool = True) -> Iterator[str]:
    """The castore modules that ``name`` imports (module names as :func:`module_name` gives)."""
    for target, _alias in _targets(name, path, typing_only=typing_only):
        yield target


def test_every_module_has_a_layer():
    found = modules()
    for name in found:
        layer(name)
    stale = {name for name in LAYERS if name not in found}
    assert not stale, f"LAYERS names modules that do not exist: {sorted(stale)}"


def test_the_cli_subpackage_is_checked():
    assert {"cli", "cli.args", "cli.render", "cli.state"} <= set(modules())
    assert "cli.args" in set(castore_imports("cli", modules()["cli"]))


def test_the_file_backend_is_checked():
    assert {"file", "file.backend", "file.check", "file.tree"} <= set(modules())
    assert "file.versionindex" in set(castore_imports("file.checklog", modules()["file.checklog"]))
    typing_only = set(castore_imports("file.checklog", modules()["file.checklog"]))
    at_run_time = set(
        castore_imports("file.checklog", modules()["file.checklog"], typing_only=False)
    )
    assert "file.backend" in typing_only - at_run_time


def test_imports_go_downward_only():
    for name, path in modules().items():
        mine = layer(name)
        for imported in castore_imports(name, path, typing_only=False):
            theirs = layer(imported)
            assert theirs < mine, f"{name} (layer {mine}) imports {imported} (layer {theirs})"


def test_nothing_imports_cli():
    for name, path in modules().items():
        if name != "__main__" and name != "cli" and not name.startswith("cli."):
            imported = set(castore_imports(name, path))
            assert not {m for m in imported if m == "cli" or m.startswith("cli.")}, name


def test_only_the_registry_imports_a_backend():
    """Outside a backend's package, only ``backends`` knows it; no backend imports another."""
    for name, path in modules().items():
        if name in ("backends", "cli.quick"):  # cli.quick: the file store, without the library
            continue
        mine = band_of(name)
        imported = {m for m in castore_imports(name, path) if band_of(m) not in (None, mine)}
        assert not imported, f"{name} imports {sorted(imported)}: go through castore.backends"


def test_no_private_names_cross_modules():
    """A name starting with ``_`` stays in its module: nothing imports one from another."""
    for name, path in modules().items():
        for target, alias in _targets(name, path, typing_only=True):
            private = [part for part in alias.name.split(".") if part.startswith("_")]
            assert not private, f"{name} imports the private name {alias.name} from {target}"
