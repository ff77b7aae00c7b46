"""U+2028 and U+2029 are escaped in every line castore writes, as Go writes them.

Values were always written so (normalized JSON), and Dagu's result lines'
keys too; but a key, an actor or a reason in ``history``, ``audit`` and
``export`` lines was written raw, so a reader splitting lines as JavaScript
or Python's ``str.splitlines`` does cut such a line in two. The oracle: no
line holds either character raw, and each line parses back to the same text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from castore import Store
from castore.server.app import create_app
from castore.transfer import export_lines
from tests.helpers import loopback_server

pytestmark = pytest.mark.integration

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY, ACTOR, REASON = "k\u2028ey", "act\u2029or", "why\u2028"
RAW = ("\u2028".encode(), "\u2029".encode())


def _castore(root: str, *argv: str) -> bytes:
    env = dict(os.environ, PYTHONPATH=CHECKOUT)
    proc = subprocess.run(
        [sys.executable, "-m", "castore", "--dir", root, "--dag", "d", *argv],
        env=env,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _lines_hold_the_texts(out: bytes) -> None:
    assert not any(raw in out for raw in RAW), out
    texts = json.dumps([json.loads(line) for line in out.splitlines()], ensure_ascii=False)
    assert KEY in texts, texts
    assert ACTOR in texts, texts


@pytest.fixture
def root(tmp_path: os.PathLike[str]) -> str:
    location = os.path.join(tmp_path, "s")
    with Store(location, dag="d", actor=ACTOR) as store:
        store.set(KEY, {"v": 1})
        store.set(KEY, {"v": 2})
        store.rollback(KEY, to_version=1, reason=REASON)
    return location


@pytest.mark.parametrize("argv", [["history", KEY], ["audit"], ["export"]])
def test_the_command_line_escapes_line_separators(root: str, argv: list[str]) -> None:
    _lines_hold_the_texts(_castore(root, *argv))


def test_an_export_escapes_line_separators(root: str) -> None:
    _lines_hold_the_texts(b"".join(export_lines(Store(root))))


@pytest.mark.parametrize("path", ["/v1/history", "/v1/audit"])
def test_the_server_escapes_line_separators(root: str, path: str) -> None:
    server = loopback_server()
    store = Store(root)
    url = server.mount(create_app(store, access_log=server.log))
    try:
        body = {"dag": "d", "key": KEY} if path.endswith("history") else {"dag": "d"}
        answer = httpx.post(url + path, json=body, timeout=60)
        assert answer.status_code == 200, answer.text[:300]
        _lines_hold_the_texts(answer.content)
    finally:
        server.unmount(url)
        store.close()


def test_a_text_diff_escapes_line_separators(tmp_path: os.PathLike[str]) -> None:
    """Mutation testing found no test of ``diff --format text``'s values (``render._show``)."""
    location = os.path.join(tmp_path, "s")
    with Store(location, dag="d") as store:
        store.set("k", {"a": "x\u2028y", "b\u2029": 1})
        store.set("k", {"a": "z", "c": "w\u2029v"})
    out = _castore(location, "diff", "k", "--from-version", "1", "--format", "text")
    assert not any(raw in out for raw in RAW), out
    for shown in (b'"x\\u2028y"', b'"w\\u2029v"', b'"/b\\u2029"'):
        assert shown in out, out
