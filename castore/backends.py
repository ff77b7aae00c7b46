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

__all__ = ["default_root", "location_of", "open_backend", "redacted", "upgrade"]

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


def open_backend(location: str, *, durable: bool, lock_timeout: float) -> Backend:
    """Open the storage a store location names.

    Args:
        location: a store directory (created on first use), or a URL.
        durable: when True a returned write survives a power loss.
        lock_timeout: seconds to wait for a ref's lock.

    Returns:
        The backend, behind the :class:`~castore.backend.Backend` contract.

    Raises:
        BackendUnavailableError: ``location`` names a backend that is not
            available yet (``postgresql://``, ``postgres://``, ``http://``,
            ``https://``).
        FormatVersionError: the directory holds another format, or is a
            non-empty directory that is not a castore store.
    """
    _refuse_unavailable(location)
    from castore.file.backend import FileBackend

    return FileBackend(os.path.abspath(location), durable=durable, lock_timeout=lock_timeout)


def upgrade(location: str) -> UpgradeReport:
    """Convert the store at ``location`` to the current format (docs/FORMAT.md §10).

    Run it while no other castore process uses the store; it is idempotent.

    Raises:
        BackendUnavailableError: ``location`` names a backend that is not available yet.
        FormatVersionError: ``location`` is not a castore store, or is newer.
    """
    _refuse_unavailable(location)
    from castore.file.upgrade import upgrade as upgrade_files

    return upgrade_files(os.path.abspath(location))
