"""A ``KeyboardInterrupt`` inside httpx during an ``http://`` store's call: the handle goes on.

tests/unit/test_interrupts.py raises it at each call and return of castore's own
code; a signal's handler may as well run inside the HTTP client's. Oracle: the same
handle's next call, from another thread too, answers as before the interrupt, never
an exception of the client's.
"""

from __future__ import annotations

import glob
import os
import threading
from pathlib import Path

import h11
import httpcore
import pytest

from castore import Store
from tests.conftest import remote_file_location
from tests.unit.test_interrupts import _where

pytestmark = pytest.mark.integration

# h11's connection state and httpcore's HTTP/1.1 connection (not its pool's lock: an
# interrupt just after httpcore took that lock leaves it held, and httpcore's own
# cleanup of the interrupted call then waits for it forever, which no caller can mend)
_H11 = os.path.dirname(str(h11.__file__))
_CLIENT = (*glob.glob(os.path.join(_H11, "*.py")), os.path.join("_sync", "http11.py"))
assert httpcore.__version__


def test_a_call_interrupted_inside_the_http_client_leaves_the_next_call_answering(
    tmp_path: Path,
) -> None:
    # Interrupted as httpcore readied the connection for the next request (inside h11's
    # start_next_cycle), the connection went back to the pool half-readied: the next call
    # on it, in any thread of the handle, raised h11's AssertionError (a traceback).
    with remote_file_location(tmp_path) as location:
        store = Store(location, dag="d")
        store.set("k", {"v": 1})
        n = 0
        while True:
            n += 1
            kept, where = _where(lambda: store.get("k"), n, _CLIENT)
            got: list[object] = []
            other = threading.Thread(target=lambda: got.append(store.get("k").value))  # noqa: B023
            other.start()
            other.join()
            assert got == [{"v": 1}], where
            assert store.set("k", {"v": 1}).version == n + 1, where
            del kept
            if where == "":
                break
        store.close()
    assert n > 100
