"""Every error a route answers is one its OpenAPI description lists, with that status's codes.

A client generated from docs/openapi.json handles the statuses listed for each
operation; an answer outside them is one it was not told of. The oracle: the
document (``castore serve --openapi``) against the answers of a real app, for each
class of error a route can give. A review found the backend protocol's
``version`` answering 404 ``not_found`` (a version compacted away) where the
document listed no 404 for any backend call.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from castore import Store
from castore.server.app import create_app
from castore.server.openapi import openapi
from castore.wire import HistoryCall, RefCall, VersionCall
from tests.helpers import loopback_server

pytestmark = pytest.mark.integration

REF: dict[str, Any] = {"scope": "custom", "namespace": "n", "key": "k"}
MSGPACK = {"content-type": "application/msgpack"}


@pytest.fixture
def url(tmp_path: pathlib.Path) -> Iterator[str]:
    """A served store whose key ``k`` had versions 1 and 2 compacted away (3 is kept)."""
    store = Store(str(tmp_path / "s"))
    for n in range(3):
        store.set("k", n, scope="custom", namespace="n")
    store.compact(keep_last=1)
    server = loopback_server()
    served = server.mount(create_app(store, access_log=server.log))
    try:
        yield served
    finally:
        server.unmount(served)
        store.close()


def _assert_described(path: str, answer: httpx.Response) -> None:
    """``answer``'s status is listed for ``POST path``, and its error code under that status."""
    document = openapi()
    responses = document["paths"][path]["post"]["responses"]
    status = str(answer.status_code)
    assert status in responses, (path, status, sorted(responses), answer.text)
    name = responses[status]["$ref"].rsplit("/", 1)[1]
    codes = document["components"]["responses"][name]["description"]
    assert f"`{answer.json()['error']['code']}`" in codes, (path, codes, answer.text)


@pytest.mark.parametrize(
    ("call", "message", "status"),
    [
        ("version", VersionCall(**REF, version=1), 404),  # compacted away
        ("current", {**REF, "unknown": 1}, 400),
        ("current", RefCall(scope="custom", namespace="n", key="../k"), 400),
        ("history", HistoryCall(**REF, before=-1, limit=1), 400),
    ],
)
def test_a_backend_calls_errors_are_described(
    url: str, call: str, message: object, status: int
) -> None:
    path = f"/v1/backend/{call}"
    answer = httpx.post(url + path, content=msgspec.msgpack.encode(message), headers=MSGPACK)
    assert answer.status_code == status, answer.text
    _assert_described(path, answer)


@pytest.mark.parametrize(
    ("operation", "body", "status"),
    [
        ("get", {**REF, "version": 1}, 404),  # compacted away
        ("rollback", {**REF, "to_version": 1}, 404),
        ("set", {**REF, "value": 1, "expected_version": 1}, 409),
        ("get", {**REF, "unknown": 1}, 400),
    ],
)
def test_a_json_operations_errors_are_described(
    url: str, operation: str, body: dict[str, Any], status: int
) -> None:
    path = f"/v1/{operation}"
    answer = httpx.post(url + path, json=body)
    assert answer.status_code == status, answer.text
    _assert_described(path, answer)
