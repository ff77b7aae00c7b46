"""``castore get KEY`` answered before the library is loaded, when it can be (CLI start-up).

A workflow step runs ``castore get`` as a new process, so loading the library
(msgspec, the file backend, the result types) costs more than the read. For a
plain ``get`` of the latest version of a key in a store directory,
:func:`quick_get` reads the key's log with :func:`castore.file.peek.peek` and
writes the line itself. Whenever anything is not the common case it returns
None and the command runs as every other one does: another option
(``--version``, ``--mode`` or ``$CASTORE_MODE``; ``--required`` or ``--default``
for a key without a live version: ``--default`` is used, and checked, only
then), a URL, a ref the store would refuse, a name that is not printable
ASCII, or anything :func:`~castore.file.peek.peek` declines (no store, a tail
it does not read as the store does). The line is the
one ``castore get`` writes (tests/integration/test_quick_get.py compares the two).
"""

from __future__ import annotations

import argparse
import json
import os

from castore.cli.invocation import Invocation
from castore.errors import InvalidRefError
from castore.file.peek import peek
from castore.keys import Ref, dag_names, resolve_namespace, validate_key
from castore.urls import is_url, location_of

__all__ = ["quick_get"]

_NAMES = ('"scope"', '"namespace"', '"key"')  # the line's fields, in Dagu's order


def _plain(text: str) -> bool:
    """True when Go and Python's ``json`` write ``text`` alike: printable ASCII."""
    return text.isascii() and text.isprintable()


def quick_get(args: argparse.Namespace) -> bytes | None:
    """The line of ``castore get`` for ``args``, or None: run the command instead."""
    if args.version is not None or args.mode is not None:
        return None
    if os.environ.get("CASTORE_MODE"):  # the store checks it, even to read
        return None
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
    found = peek(os.path.abspath(location), ref)
    if found is None:
        return None
    version, digest, value = found
    names = ",".join(f"{field}:{json.dumps(text)}" for field, text in zip(_NAMES, ref, strict=True))
    if not version:  # no live version
        if args.required or args.default is not None:
            return None  # the command words the error, or normalizes the default
        return f'{{"operation":"get",{names},"found":false}}'.encode("ascii")
    head = f'{{"operation":"get",{names},"found":true,"version":{version},"hash":"{digest}",'
    return b"".join((head.encode("ascii"), b'"value":', value, b"}"))
