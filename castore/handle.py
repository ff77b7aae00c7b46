"""A store handle's life: its backend, closing it, and why it is not pickled (base of ``Store``).

A handle holds what one process opened (descriptors, locks, connections), so it
stays in that process: another process opens its own from the location.
"""

from __future__ import annotations

from typing import NoReturn, Self

from castore.backend import Backend
from castore.keys import RefCache

__all__ = ["Handle"]


class Handle:
    """The life of a :class:`~castore.store.Store` handle (``Store`` sets ``_backend``)."""

    _backend: Backend
    _refs: RefCache  # its refs resolved (shared with its for_caller copies)

    @property
    def backend(self) -> Backend:
        """The storage behind this store, through the backend contract (castore's own tools)."""
        return self._backend

    def close(self) -> None:
        """Drop cached state and close the cached descriptors and connections.

        The handle stays usable (they are opened again on use). Safe while other
        threads use the handle: what their calls use is closed when the last ends.
        """
        self._backend.close()
        self._refs.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __copy__(self) -> Self:  # a handle on the same storage (Store.for_caller)
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        return other

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            f"a {type(self).__name__} cannot be pickled (it holds this process's locks, "
            "descriptors and connections): pass its location and open one in the other process"
        )
