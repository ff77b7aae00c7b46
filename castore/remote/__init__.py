"""The ``http://`` backend: a store served by ``castore serve``, through the backend protocol.

:mod:`castore.remote.transport` sends the calls of :mod:`castore.wire` with
httpx (keep-alive, timeouts, bounded retries, routing over a cluster), reading
streamed replies with :mod:`castore.remote.frames` and error answers with
:mod:`castore.remote.failures`;
:mod:`castore.remote.backend` is the :class:`~castore.backend.Backend` over it.
"""
