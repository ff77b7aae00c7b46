"""The test harness itself under the environments CI may give it.

CI clones the project somewhere unknown, on a machine whose ``TMPDIR``,
descriptors, users and load are its own: a harness that works only here turns a
run red for no fault of castore's. Each test puts the harness under one such
condition and compares with what it does without it.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import pytest

import castore
from tests import forkedcli
from tests.helpers import Cli

pytestmark = pytest.mark.integration

# A directory this long puts any ``AF_UNIX`` path below it past the 108 bytes of one.
LONG_NAME = "t" * 110


def test_the_cli_fork_server_starts_under_a_tmpdir_too_long_for_a_socket_path(
    tmp_path, monkeypatch
):
    """The fork server's socket was a path below ``TMPDIR``: a long one failed every
    CLI test (``the CLI fork server did not start``)."""
    long_tmp = tmp_path / LONG_NAME
    long_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long_tmp))
    server = forkedcli._Server()  # not the session's: this one starts below long_tmp
    monkeypatch.setattr(forkedcli, "_SERVER", server)
    cli = Cli(tmp_path, tmp_path / "store")
    assert forkedcli.serves(cli.env, None)
    try:
        assert cli.ok("set", "k", "1")["version"] == 1
        assert server.proc is not None  # the command went through the fork server
    finally:
        server.stop()
    store = castore.Store(tmp_path / "store", dag="d")
    assert store.get("k").value == 1  # the oracle: the library reads what the command wrote
    store.close()
    assert os.listdir(long_tmp) == []  # nothing left below TMPDIR


def _pgserver_answers(name: str) -> None:
    """tools/pgserver.py starts a server in a new directory ``name`` below ``TMPDIR``; it
    answers a query; it is stopped and its directory removed."""
    from tests.conftest import POSTGRES_DIR, _need_postgres
    from tools import pgserver

    if not POSTGRES_DIR:  # where tools/pgserver.py started the test server, it works here
        _need_postgres("CASTORE_TEST_POSTGRES_DIR is not set (tools/pgserver.py start)")
    import psycopg

    base = pathlib.Path(tempfile.mkdtemp(prefix="castore-pg-env-"))
    base.chmod(0o711)  # as root the server runs as another user, who must pass through
    directory = base / name
    try:
        server = pgserver.start(directory)
        try:
            with psycopg.connect(server.url, connect_timeout=30) as conn:
                row = conn.execute("SELECT current_database()").fetchone()
            assert row == ("castore_test",)
        finally:
            pgserver.stop(directory)
        assert not directory.exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_pgserver_starts_below_a_directory_too_long_for_a_unix_socket():
    """tools/pgserver.py refused a directory whose socket path would pass 108 bytes, and
    tests/conftest.py makes the second xdist worker's server below ``TMPDIR``: a long
    ``TMPDIR`` failed the whole run. The server is reached over TCP only."""
    _pgserver_answers(LONG_NAME)


def test_pgserver_starts_under_umask_077():
    """As root, tools/pgserver.py wrote the server's ``castore.conf`` as root's: under
    umask 077 the server's user could not read it, and every start failed (CI's
    ``.ci/run``, and the second xdist worker's server)."""
    old = os.umask(0o077)
    try:
        _pgserver_answers("server")
    finally:
        os.umask(old)
