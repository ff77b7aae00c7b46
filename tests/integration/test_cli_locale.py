"""Names are the UTF-8 text of their bytes, whatever the locale (docs/CLI.md).

Python decodes argv and the environment with the locale's encoding: in an
ISO-8859-1 locale ``--dag dé`` was the namespace ``dÃ©``, a keyspace no UTF-8
process or Dagu uses; in the C locale without UTF-8 mode a valid UTF-8 key was
refused. Paths (``--dir``) keep the filesystem's encoding.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
from typing import Any

import pytest

from castore import Store
from tests.helpers import CASTORE_PATH

pytestmark = pytest.mark.integration

C_LOCALE = {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}


@pytest.fixture(scope="module")
def latin1(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of an ISO-8859-1 locale, compiled below a temporary directory."""
    if shutil.which("localedef") is None:
        pytest.skip("no localedef to compile an ISO-8859-1 locale")
    where = tmp_path_factory.mktemp("locales")
    made = subprocess.run(
        ["localedef", "--no-archive", "-i", "en_US", "-f", "ISO-8859-1", str(where / "L1")],
        capture_output=True,
        check=False,
    )
    env = {"LOCPATH": str(where), "LC_ALL": "L1", "PYTHONUTF8": "0"}
    probe = _python(["-c", "import sys; print(sys.getfilesystemencoding())"], env)
    if made.returncode not in (0, 1) or probe.stdout.strip() != b"iso8859-1":
        pytest.skip(f"no ISO-8859-1 locale: {made.stderr!r} {probe.stdout!r}")
    return env


def _python(args: list[Any], env: dict[str, Any]) -> subprocess.CompletedProcess[bytes]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": CASTORE_PATH}
    return subprocess.run(
        [sys.executable, *args], env={**base, **env}, capture_output=True, timeout=60, check=False
    )


def _castore(store: pathlib.Path, locale: dict[str, str], *args: Any, **env: Any) -> Any:
    """``castore --dir STORE ARGS`` (bytes as given) in ``locale``; (exit code, stdout, stderr)."""
    proc = _python(["-m", "castore", "--dir", store, *args], {**locale, **env})
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("locale", ["C", "latin1"])
def test_names_from_argv_are_their_utf8_bytes(tmp_path, request, locale):
    env = C_LOCALE if locale == "C" else request.getfixturevalue("latin1")
    store = tmp_path / "store"
    code, out, err = _castore(store, env, "--dag", "dé".encode(), "set", "ké".encode(), "1")
    assert (code, err) == (0, b"")
    assert b'"namespace":"d\xc3\xa9","key":"k\xc3\xa9"' in out  # UTF-8, as written
    assert Store(store, dag="dé").get("ké").value == 1  # the keyspace a UTF-8 process reads
    code, out, err = _castore(store, env, "--dag", "dé".encode(), "get", "ké".encode())
    assert (code, err) == (0, b"")
    assert b'"found":true' in out
    custom = ["--scope", "custom", "--namespace", "né".encode()]
    key = "köln".encode()
    assert _castore(store, env, *custom, "set", key, "2", "--reason", "pourquoi é".encode())[0] == 0
    assert Store(store).get("köln", scope="custom", namespace="né").value == 2
    code, out, _ = _castore(store, env, *custom, "list", "--prefix", "kö".encode())
    assert '"key":"köln"'.encode() in out
    (entry,) = Store(store).history("köln", scope="custom", namespace="né").entries
    assert entry.reason == "pourquoi é"


@pytest.mark.parametrize("locale", ["C", "latin1"])
def test_names_from_the_environment_are_their_utf8_bytes(tmp_path, request, locale):
    env = C_LOCALE if locale == "C" else request.getfixturevalue("latin1")
    store = tmp_path / "store"
    dagu = {"DAG_NAME": "dé".encode(), "DAG_RUN_ID": "rün".encode(), "CASTORE_ACTOR": "é".encode()}
    code, out, err = _castore(store, env, "set", "k", "1", **dagu)
    assert (code, err) == (0, b"")
    assert b'"namespace":"d\xc3\xa9"' in out
    (entry,) = Store(store, dag="dé").history("k").entries
    assert (entry.dag_name, entry.run_id, entry.actor) == ("dé", "rün", "é")
    code, out, err = _castore(store, env, "--scope", "root_dag", "get", "k", **dagu)
    assert b'"namespace":"d\xc3\xa9"' in out  # the root DAG: the DAG name, as read


@pytest.mark.parametrize("locale", ["C", "latin1"])
def test_bytes_that_are_not_utf8_stay_refused(tmp_path, request, locale):
    env = C_LOCALE if locale == "C" else request.getfixturevalue("latin1")
    store = tmp_path / "store"
    code, _, err = _castore(store, env, "--dag", "d", "set", b"k\xe9", "1")
    assert code == 2
    assert err.startswith(b"castore: invalid ref: invalid key")
    code, _, err = _castore(store, env, "set", "k", "1", DAG_NAME=b"d\xe9")
    assert code == 2
    assert not store.exists()


def test_a_store_path_keeps_the_filesystem_encoding(tmp_path, latin1):
    store = os.path.join(os.fsencode(tmp_path), "stö".encode())  # UTF-8 bytes, as given
    proc = _python(["-m", "castore", "--dir", store, "--dag", "d", "set", "k", "1"], latin1)
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert os.path.isfile(os.path.join(store, b"FORMAT"))  # the same bytes, not re-encoded


@pytest.mark.parametrize("locale", ["C", "latin1"])
def test_main_called_with_text_takes_its_names_as_given(tmp_path, request, locale):
    # Found by the review of this session's fixes: main(argv) from Python transcoded the
    # text it was given as if it were argv the locale decoded: 'k😀' raised a
    # UnicodeEncodeError traceback, 'ké' was refused. A caller's text is the name.
    env = C_LOCALE if locale == "C" else request.getfixturevalue("latin1")
    store = tmp_path / "store"
    for key in ("k\U0001f600", "ké"):
        program = (  # ASCII source: the key written as escapes
            "import sys; from castore.cli import main; "
            f"sys.exit(main(['--dir', {str(store)!a}, '--dag', 'd', 'set', {key!a}, '1']))"
        )
        proc = _python(["-c", program], env)
        assert (proc.returncode, proc.stderr) == (0, b""), key
    keys = [entry.key for entry in Store(store, dag="d").list().entries]
    assert sorted(keys) == sorted(["k\U0001f600", "ké"])


@pytest.mark.parametrize("locale", ["C", "latin1"])
def test_the_user_name_is_its_utf8_bytes(tmp_path, request, locale):
    # The user recorded in the audit record was the locale's reading of $LOGNAME: in the
    # C locale a user josé was lone surrogates and every write exited 2 ("audit field
    # user is not valid text"); in an ISO-8859-1 locale it was recorded as josÃ©.
    env = C_LOCALE if locale == "C" else request.getfixturevalue("latin1")
    store = tmp_path / "store"
    user = {"LOGNAME": "josé".encode(), "USER": "josé".encode()}
    code, _, err = _castore(store, env, "--dag", "d", "set", "k", "1", **user)
    assert (code, err) == (0, b"")
    (entry,) = Store(store, dag="d").history("k").entries
    assert entry.user == "josé"
    code, _, err = _castore(store, env, "--dag", "d", "set", "k", "2", LOGNAME=b"jos\xe9")
    assert code == 2  # bytes that are not UTF-8 stay refused, in every locale
    assert b"audit field user (from $LOGNAME" in err
    assert b"is not valid text" in err
