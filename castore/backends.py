"""Which storage backend a store location names, and how to open it.

:class:`~castore.store.Store` opens its storage here, through
:func:`open_backend`, and talks to it only through the
:class:`~castore.backend.Backend` contract. This is the one module outside
``castore/file/`` that knows the file backend exists; it imports it only
when a location names a directory.

Locations:

* none given: :func:`default_root`, a directory;
* a directory path: the file backend (docs/FORMAT.md);
* ``postgresql://…``, ``postgres://…``: the PostgreSQL backend
  (``castore/postgres/``; ``pip install 'castore[postgres]'``);
* ``http://host:port``, ``https://…``: a coordinator (``castore serve``),
  through the backend protocol (``castore/remote/``); several URLs,
  comma-separated, are a cluster that routes each keyspace to its owner.
"""

from __future__ import annotations

import os
import re
from typing import Final

from castore.argcheck import check_text
from castore.backend import Backend
from castore.errors import BackendUnavailableError, InvalidValueError
from castore.reports import UpgradeReport
from castore.urls import absolute, default_root, is_url, location_of, redacted, store_location

__all__ = [
    "STORE_MODES",
    "backend_kind",
    "default_root",
    "is_postgres",
    "is_remote",
    "location_of",
    "open_backend",
    "redacted",
    "store_mode",
    "upgrade",
]

STORE_MODES: Final = ("private", "group")  # what castore creates: 0600/0700, 0660/2770

_POSTGRES: Final = ("postgresql://", "postgres://")
_HTTP: Final = ("http://", "https://")


def store_mode(mode: str | None) -> str | None:
    """``mode``, else ``$CASTORE_MODE``; None (neither given) follows the store directory.

    ``private`` makes files 0600 and directories 0700, ``group`` files 0660
    and directories 2770 (setgid); with neither, a store follows its root
    directory: ``group`` when it is setgid and group-writable, else
    ``private`` (docs/FORMAT.md §1).

    Raises:
        TypeError: ``mode`` is not a str or None.
        ValueError: not one of :data:`STORE_MODES` (the message shows at most its
            first 100 characters: a variable may hold anything).
    """
    check_text(mode, "mode", optional=True)
    given = mode if mode is not None else os.environ.get("CASTORE_MODE") or None
    if given is not None and given not in STORE_MODES:
        where = "" if mode is not None else " ($CASTORE_MODE)"
        shown = repr(given) if len(given) <= 100 else f"{given[:100]!r}… ({len(given)} characters)"
        raise ValueError(f"invalid mode {shown}{where}: use private or group")
    return given


def backend_kind(backend: Backend) -> str:
    """The kind of storage behind a backend, as ``repr(store)`` shows it: ``file``, ``postgres``.

    It is the castore package that implements it (``castore.file``).
    """
    return type(backend).__module__.split(".")[1]


def is_postgres(location: str) -> bool:
    """True when ``location`` is a PostgreSQL URL."""
    return location.lower().startswith(_POSTGRES)


def is_remote(location: str) -> bool:
    """True when ``location`` names a coordinator (or a cluster of them) by URL."""
    return location.lower().startswith(_HTTP)


def _require_driver() -> None:
    """Make sure the PostgreSQL driver is installed.

    Raises:
        BackendUnavailableError: psycopg is not installed (one line: what to install).
    """
    import importlib.util

    if importlib.util.find_spec("psycopg") is None:
        raise BackendUnavailableError(
            "a postgresql:// location needs the PostgreSQL driver: pip install 'castore[postgres]'"
        )


_ADDRESS: Final = r"[A-Za-z0-9][A-Za-z0-9.-]*:[0-9]{1,5}"
_ADDRESSES: Final = re.compile(f"{_ADDRESS}(,{_ADDRESS})*")
"""``host:port`` (or a list): a server's address without ``http://``, not a directory."""


def _known_scheme(location: str) -> None:
    """Refuse a URL of no store's scheme (``htps://``): a typo never becomes a directory.

    Raises:
        InvalidValueError: naming the scheme.
    """
    if is_url(location) and not (is_remote(location) or is_postgres(location)):
        scheme = location.partition("://")[0]
        raise InvalidValueError(
            f"{redacted(location)}: no store has the scheme {scheme!r}: give a directory, "
            "a postgresql:// URL or a castore server's http:// or https:// URL"
        )
    if _ADDRESSES.fullmatch(location) and not os.path.lexists(location):
        urls = ",".join(f"http://{address}" for address in location.split(","))
        raise InvalidValueError(
            f"{location} names no directory and looks like a server's address: give it as "
            f"{urls} (a castore server's URL), or as ./{location} for a new directory"
        )


def open_backend(
    location: str, *, durable: bool, lock_timeout: float, mode: str | None = None
) -> Backend:
    """Open the storage a store location names; opening creates nothing.

    Args:
        location: a store directory (created by the first write), or a
            ``postgresql://`` URL (the store's tables are made by the first write).
        durable: when True a returned write survives a power loss.
        lock_timeout: seconds to wait for a ref's lock.
        mode: the permissions of what a file store creates (:func:`store_mode`;
            a database store ignores it).

    Returns:
        The backend, behind the :class:`~castore.backend.Backend` contract.

    Raises:
        ValueError: ``mode`` (or ``$CASTORE_MODE``) is not one of :data:`STORE_MODES`.
        BackendUnavailableError: ``postgresql://`` without psycopg.
        InvalidValueError: a ``postgresql://`` location's schema is not valid, or a
            URL of another scheme (``htps://``: a typo never becomes a directory).
        FormatVersionError: the directory holds another format, is a
            non-empty directory that is not a castore store, or is not a directory.
    """
    location = store_location(location, "location")
    mode = store_mode(mode)
    _known_scheme(location)
    if is_remote(location):
        from castore.remote.backend import RemoteBackend

        return RemoteBackend(location, lock_timeout=lock_timeout)
    if is_postgres(location):
        _require_driver()
        from castore.postgres.backend import PostgresBackend

        return PostgresBackend(location, durable=durable, lock_timeout=lock_timeout)
    from castore.file.backend import FileBackend

    return FileBackend(absolute(location), durable=durable, lock_timeout=lock_timeout, mode=mode)


def upgrade(location: str | os.PathLike[str], mode: str | None = None) -> UpgradeReport:
    """Convert the store at ``location`` to the current format (docs/FORMAT.md §10).

    Run it while no other castore process uses the store; it is idempotent.
    ``location`` is what :class:`~castore.Store` takes (a path as str, bytes or
    ``os.PathLike``, or a URL). ``mode`` is what the files it writes get, as for
    :func:`open_backend`.

    Raises:
        TypeError: ``location`` is not a str, bytes or os.PathLike, or ``mode`` not a str.
        ValueError: ``location`` is empty (not the current directory), or ``mode``
            (or ``$CASTORE_MODE``) is not one of :data:`STORE_MODES`.
        BackendUnavailableError: ``location`` is a coordinator (upgrade on the server),
            or ``postgresql://`` without psycopg.
        FormatVersionError: ``location`` is not a castore store, or is newer.
        InvalidValueError: a URL of no store's scheme.
    """
    location = store_location(location, "location")
    mode = store_mode(mode)
    _known_scheme(location)
    if is_remote(location):
        raise BackendUnavailableError(
            f"{redacted(location)}: upgrade the server's store on the server (castore upgrade)"
        )
    if is_postgres(location):
        _require_driver()
        from castore.postgres.backend import upgrade as upgrade_schema

        return upgrade_schema(location)
    from castore.file.upgrade import upgrade as upgrade_files

    return upgrade_files(absolute(location), mode)
