"""Which storage backend a store location names, and how to open it.

:class:`~castore.store.Store` opens its storage here, through
:func:`open_backend`, and talks to it only through the
:class:`~castore.backend.Backend` contract. This is the one module outside
``castore/file/`` that knows the file backend exists; it imports it only
when a location names a directory.

Locations:

* none given: :func:`default_root`, a directory;
* a directory path (the only kind available today): the file backend
  (docs/FORMAT.md);
* ``postgresql://``, ``postgres://``, ``http://``, ``https://``: reserved for
  the PostgreSQL backend and a coordinator; refused with
  :class:`BackendUnavailableError` until they exist.
"""

from __future__ import annotations

import os
from typing import Final

from castore.backend import Backend
from castore.errors import BackendUnavailableError
from castore.reports import UpgradeReport

__all__ = [
    "STORE_MODES",
    "backend_kind",
    "default_root",
    "location_of",
    "open_backend",
    "redacted",
    "store_mode",
    "upgrade",
]

STORE_MODES: Final = ("private", "group")  # what castore creates: 0600/0700, 0660/2770

_UNAVAILABLE: Final = {
    "postgresql://": "PostgreSQL",
    "postgres://": "PostgreSQL",
    "http://": "coordinator (HTTP)",
    "https://": "coordinator (HTTP)",
}


def default_root() -> str:
    """``$CASTORE_DIR``, else ``$XDG_DATA_HOME/castore``, else ``~/.local/share/castore``."""
    if os.environ.get("CASTORE_DIR"):
        return os.environ["CASTORE_DIR"]
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(base, "castore")


def location_of(path: str | os.PathLike[str] | None) -> str:
    """The store location ``path`` names; None (or empty) means :func:`default_root`."""
    return os.fspath(path) if path else default_root()


def store_mode(mode: str | None) -> str | None:
    """``mode``, else ``$CASTORE_MODE``; None (neither given) follows the store directory.

    ``private`` makes files 0600 and directories 0700, ``group`` files 0660
    and directories 2770 (setgid); with neither, a store follows its root
    directory: ``group`` when it is setgid and group-writable, else
    ``private`` (docs/FORMAT.md §1).

    Raises:
        ValueError: not one of :data:`STORE_MODES`.
    """
    given = mode if mode is not None else os.environ.get("CASTORE_MODE") or None
    if given is not None and given not in STORE_MODES:
        where = "" if mode is not None else " ($CASTORE_MODE)"
        raise ValueError(f"invalid mode {given!r}{where}: use private or group")
    return given


def redacted(location: str) -> str:
    """``location`` as errors and logs may show it: a URL without user or password.

    >>> redacted("postgresql://alice:s3cret@db.example:5432/state?sslmode=require")
    'postgresql://db.example:5432/state'
    """
    if "://" not in location:
        return location
    scheme, _, rest = location.partition("://")
    host = rest.split("/", 1)[0].rpartition("@")[2]
    path = rest[len(rest.split("/", 1)[0]) :].split("?", 1)[0].split("#", 1)[0]
    return f"{scheme}://{host}{path}"


def backend_kind(backend: Backend) -> str:
    """The kind of storage behind a backend, as ``repr(store)`` shows it: ``file`` today.

    It is the castore package that implements it (``castore.file``).
    """
    return type(backend).__module__.split(".")[1]


def _refuse_unavailable(location: str) -> None:
    """Raise if ``location`` names a backend that is not available.

    Raises:
        BackendUnavailableError: the location starts with a reserved scheme.
    """
    lowered = location.lower()
    for prefix, name in _UNAVAILABLE.items():
        if lowered.startswith(prefix):
            raise BackendUnavailableError(
                f"{redacted(location)}: the {name} backend is not available yet "
                "(give a store directory instead)"
            )


def open_backend(
    location: str, *, durable: bool, lock_timeout: float, mode: str | None = None
) -> Backend:
    """Open the storage a store location names; opening creates nothing.

    Args:
        location: a store directory (created by the first write), or a URL.
        durable: when True a returned write survives a power loss.
        lock_timeout: seconds to wait for a ref's lock.
        mode: the permissions of what a file store creates (:func:`store_mode`).

    Returns:
        The backend, behind the :class:`~castore.backend.Backend` contract.

    Raises:
        ValueError: ``mode`` (or ``$CASTORE_MODE``) is not one of :data:`STORE_MODES`.
        BackendUnavailableError: ``location`` names a backend that is not
            available yet (``postgresql://``, ``postgres://``, ``http://``,
            ``https://``).
        FormatVersionError: the directory holds another format, is a
            non-empty directory that is not a castore store, or is not a directory.
    """
    mode = store_mode(mode)
    _refuse_unavailable(location)
    from castore.file.backend import FileBackend

    return FileBackend(
        os.path.abspath(location), durable=durable, lock_timeout=lock_timeout, mode=mode
    )


def upgrade(location: str, mode: str | None = None) -> UpgradeReport:
    """Convert the store at ``location`` to the current format (docs/FORMAT.md §10).

    Run it while no other castore process uses the store; it is idempotent.
    ``mode`` is what the files it writes get, as for :func:`open_backend`.

    Raises:
        ValueError: ``mode`` (or ``$CASTORE_MODE``) is not one of :data:`STORE_MODES`.
        BackendUnavailableError: ``location`` names a backend that is not available yet.
        FormatVersionError: ``location`` is not a castore store, or is newer.
    """
    mode = store_mode(mode)
    _refuse_unavailable(location)
    from castore.file.upgrade import upgrade as upgrade_files

    return upgrade_files(os.path.abspath(location), mode)
