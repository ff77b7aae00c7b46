"""``castore get KEY`` and ``castore set KEY VALUE`` before the library is loaded, when they can be.

A workflow step runs ``castore get`` or ``set`` as a new process, so loading the
library (msgspec, the file backend, the result types) costs more than the read
or the write (docs/PERFORMANCE.md, "CLI start-up"). For a plain ``get`` of the
latest version of a key in a store directory, :func:`quick_get` reads the key's
log with :func:`castore.file.peek.peek` and writes the line itself; for a
``set`` of small JSON text (:mod:`castore.stdjson`) on a live key,
:func:`quick_set` writes the version with
:func:`castore.file.quickset.quick_set`. Whenever anything is not the common
case they return None, having written nothing, and the command runs as every
other one does: another option (``--version``, ``--mode`` or ``$CASTORE_MODE``;
``--required`` or ``--default`` for a key without a live version: ``--default``
is used, and checked, only then), a URL, a ref the store
would refuse, a name or audit field that is not printable ASCII, or anything
:func:`~castore.file.peek.peek` or the quick writer declines (no store, a tail
it does not read as the store does, a guard that fails). The lines are the
ones the commands write (tests/integration/test_quick_get.py and
test_quick_set.py compare them).
"""

from __future__ import annotations

import argparse
import json
import os

from castore.cli.errors import OptionError
from castore.cli.invocation import Invocation, value_bytes
from castore.digests import small_sha256
from castore.errors import InvalidRefError, LockTimeoutError
from castore.file.peek import is_store, peek
from castore.file.quickset import QUICK_MAX_BYTES
from castore.file.quickset import quick_set as write_quickly
from castore.file.tree import Tree
from castore.identity import ProcessIdentity, audit_fields
from castore.keys import Ref, dag_names, resolve_namespace, validate_key
from castore.stdjson import plain_normalized
from castore.urls import absolute, is_url, location_of

__all__ = ["quick_get", "quick_set"]

_NAMES = ('"scope"', '"namespace"', '"key"')  # the line's fields, in Dagu's order


def _plain(text: str) -> bool:
    """True when Go and Python's ``json`` write ``text`` alike: printable ASCII."""
    return text.isascii() and text.isprintable()


def _quick_ref(args: argparse.Namespace) -> tuple[str, Ref] | None:
    """The store directory (absolute) and the ref ``args`` name, if the quick path may answer.

    None for another option the store must see (``--mode``, ``$CASTORE_MODE``),
    a URL, a ref the store would refuse (it words the error), or a name that is
    not printable ASCII.
    """
    if args.mode is not None or os.environ.get("CASTORE_MODE") or args.dir == "":
        return None  # the store checks the mode; the command refuses an empty --dir
    location = location_of(args.dir)
    if is_url(location):
        return None
    cmd = Invocation(args)
    dag, root_dag = dag_names(args.dag, args.root_dag)
    try:
        namespace = resolve_namespace(cmd.scope, cmd.namespace, dag=dag, root_dag=root_dag)
        ref = Ref(cmd.scope, namespace, validate_key(cmd.key()))
    except InvalidRefError:
        return None  # the store words the error
    if not all(map(_plain, ref)):
        return None
    return absolute(location), ref


def _lock_timeout(args: argparse.Namespace) -> float | None:
    """``--lock-timeout`` in seconds; None if the command must refuse it (in its own order)."""
    try:
        return Invocation(args).lock_timeout
    except OptionError:
        return None


def _names(ref: Ref) -> str:
    """The line's scope, namespace and key members."""
    return ",".join(f"{field}:{json.dumps(text)}" for field, text in zip(_NAMES, ref, strict=True))


def quick_get(args: argparse.Namespace) -> bytes | None:
    """The line of ``castore get`` for ``args``, or None: run the command instead."""
    if args.version is not None or args.default is not None:
        return None  # the command checks --default before it reads
    where = _quick_ref(args)
    if where is None or _lock_timeout(args) is None:
        return None
    found = peek(*where)
    if found is None:
        return None
    version, digest, value = found
    names = _names(where[1])
    if not version:  # no live version
        if args.required:
            return None  # the command words the error
        return f'{{"operation":"get",{names},"found":false}}'.encode("ascii")
    head = f'{{"operation":"get",{names},"found":true,"version":{version},"hash":"{digest}",'
    return b"".join((head.encode("ascii"), b'"value":', value, b"}"))


def quick_set(args: argparse.Namespace) -> bytes | None:
    """Write the version of ``castore set`` for ``args`` and return its line, or None.

    None: nothing was written; run the command instead (a value
    :mod:`castore.stdjson` leaves to the codec, anything
    :func:`castore.file.quickset.quick_set` declines).
    """
    where = _quick_ref(args)
    if where is None or (args.value == "-" and not is_store(Tree(where[0]), where[0])):
        return None  # the command checks the store before it reads a value from stdin
    timeout = _lock_timeout(args)
    if timeout is None:
        return None
    normalized = plain_normalized(value_bytes(args))  # stdin is read once, and kept
    if normalized is None or len(normalized) >= QUICK_MAX_BYTES:
        return None
    digest = small_sha256(normalized)
    who = (args.actor, args.run_id, args.step, args.reason)
    audit = audit_fields(ProcessIdentity(), *who, dag=args.dag)
    try:
        version = write_quickly(
            *where,
            normalized,
            digest,
            audit,
            durable=not args.no_sync,
            expected_version=args.expected_version,
            create_only=args.create_only,
            lock_timeout=timeout,
        )
    except LockTimeoutError as exc:
        if exc.path.endswith(".log"):  # not STATE's: the full command names that file alone
            exc.ref = str(where[1])  # a user names keys, not their logs' hashed paths
        raise
    if version is None:
        return None
    line = (
        f'{{"operation":"set",{_names(where[1])},"version":{version},"hash":"{digest}",'
        '"created":false}'  # the key was live
    )
    return line.encode("ascii")
