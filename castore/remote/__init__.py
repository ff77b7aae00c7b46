"""The ``http://`` backend: a store served by ``castore serve``, through the backend protocol.

:mod:`castore.remote.transport` sends the calls of :mod:`castore.wire` with
httpx (keep-alive, timeouts, bounded retries, routing over a cluster);
:mod:`castore.remote.backend` is the :class:`~castore.backend.Backend` over it.
"""
