from __future__ import annotations

import atexit
import contextlib
import functools
import os
import pathlib
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Final

import pytest
from hypothesis import HealthCheck, settings

from tests.helpers import CASTORE_ENV, Cli, served_location, stop_loopback_server

# Store tests touch the file system: fsync and page-cache timing make deadlines noisy.
settings.register_profile(
    "dev",
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
)
settings.register_profile(
    "ci",
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "deep",
    max_examples=5000,
    stateful_step_count=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the caller's values of the variables castore reads."""
    for name in CASTORE_ENV:
        monkeypatch.delenv(name, raising=False)


# -- store locations: the behaviour suite runs once per backend ----------------------------


@contextlib.contextmanager
def file_store_location(base: pathlib.Path) -> Iterator[str]:
    """A store directory below ``base`` that does not exist yet; removed afterwards."""
    parent = tempfile.mkdtemp(prefix="store-", dir=base)
    try:
        yield os.path.join(parent, "store")
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def _own_postgres_for_this_worker() -> None:
    """Give a pytest-xdist worker past the first its own PostgreSQL server.

    Tests restart their server abruptly (``restart_postgres``): on a server the
    workers shared, that would cut the other worker's connections mid-test. Only
    where the first server was started by tools/pgserver.py (its directory is in
    ``CASTORE_TEST_POSTGRES_DIR``), so the binaries are known to be there; the
    server is stopped and its directory removed when the worker exits.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker in ("", "gw0") or not os.environ.get("CASTORE_TEST_POSTGRES_DIR"):
        return
    from tools import pgserver

    directory = tempfile.mkdtemp(prefix=f"castore-pg-{worker}-")
    server = pgserver.start(directory)
    atexit.register(pgserver.stop, directory)
    os.environ["CASTORE_TEST_POSTGRES"] = server.url
    os.environ["CASTORE_TEST_POSTGRES_DIR"] = directory


_own_postgres_for_this_worker()
# A PostgreSQL server's URL for the "postgresql" backend (tools/pgserver.py starts one).
# Read at import: the autouse fixture ``clean_env`` runs before any test reads the env.
POSTGRES_URL = os.environ.get("CASTORE_TEST_POSTGRES", "")
# CI sets CASTORE_REQUIRE_POSTGRES=1: the PostgreSQL tests must run there, never skip.
REQUIRE_POSTGRES = os.environ.get("CASTORE_REQUIRE_POSTGRES", "") == "1"
POSTGRES_DROP_TIMEOUT = "30s"  # a leaked connection's lock fails the drop, not hangs it


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "not_remote(reason): not run on the remote store backends (the test needs the local"
        " store itself: its files, its process's settings); the reason says which",
    )
    config.addinivalue_line(
        "markers",
        "remote_postgresql: also run the store tests on a server over PostgreSQL",
    )
    if REQUIRE_POSTGRES and not POSTGRES_URL:
        raise pytest.UsageError(
            "CASTORE_REQUIRE_POSTGRES=1 but CASTORE_TEST_POSTGRES is not set: start a server"
            " with `python3 tools/pgserver.py start` and export its URL (see README)"
        )


@contextlib.contextmanager
def postgres_store_location(base: pathlib.Path) -> Iterator[str]:
    """A schema of the test server that does not exist yet; dropped afterwards.

    ``base`` is unused: the location is ``CASTORE_TEST_POSTGRES`` with ``schema=t_<hex>``.
    """
    import psycopg
    from psycopg import sql

    schema = f"t_{secrets.token_hex(8)}"
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}schema={schema}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=30) as conn:
            conn.execute(
                sql.SQL("SET lock_timeout = {}").format(sql.Literal(POSTGRES_DROP_TIMEOUT))
            )
            with contextlib.suppress(psycopg.errors.InvalidSchemaName):
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )


def remote_file_location(base: pathlib.Path) -> contextlib.AbstractContextManager[str]:
    """A castore server's URL, serving a fresh file store below ``base`` (tests.helpers)."""
    return served_location(file_store_location(base))


def remote_postgres_location(base: pathlib.Path) -> contextlib.AbstractContextManager[str]:
    """A castore server's URL, serving a fresh PostgreSQL store (its own schema)."""
    return served_location(postgres_store_location(base))


# Each backend: a fresh, empty store location of it below a directory, dropped on exit.
# A second backend is one more entry here (docs/DESIGN.md, "The backend contract").
# The remote ones are ``http://127.0.0.1:PORT`` of a real castore server (uvicorn,
# Starlette, the castore app) running in a thread of this process, over a fresh store
# of the other kind: tests.helpers.LoopbackServer.
STORE_BACKENDS: dict[str, Callable[[pathlib.Path], contextlib.AbstractContextManager[str]]] = {
    "file": file_store_location,
    "remote": remote_file_location,
}
if POSTGRES_URL:
    STORE_BACKENDS["postgresql"] = postgres_store_location
    STORE_BACKENDS["remote-postgresql"] = remote_postgres_location
REMOTE_BACKENDS = frozenset({"remote", "remote-postgresql"})
# A server over PostgreSQL runs only in the modules marked ``remote_postgresql``.
OPT_IN_BACKENDS = {"remote-postgresql": "remote_postgresql"}
_LOCATION_FIXTURES = ("fresh_store_location", "module_fresh_store_location")


def _backend_of(item: pytest.Item) -> str | None:
    """The store backend a test runs on (None: it takes no store location fixture)."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    for name in _LOCATION_FIXTURES:
        if name in params:
            backend: str = params[name]
            return backend
    return None


# The longest tests (``--durations`` of a full run, 15-120 s each), longest first. They go
# first in each half of the run (:func:`_heavy_first`), so that neither worker ends the run
# alone with one of them.
HEAVY_FIRST: Final = (
    "tests/integration/test_damage_matrix.py::test_damage_matrix_sample",
    "tests/property/test_store_model.py::test_store_model",
    "tests/integration/test_torn_tail.py::test_every_cut_of_the_last_set_reads_previous_and_is_repaired",
    "tests/integration/test_multiprocess_cas.py::test_cas_increments_lose_no_update",
    "tests/integration/test_threads.py::test_threads_never_lose_an_update",
    "tests/integration/test_quick_get.py::test_on_every_damaged_copy_it_answers_the_truth_or_declines",
    "tests/integration/test_cli_modify.py::test_concurrent_shell_loops_of_incr_end_exact",
    "tests/integration/test_kill.py::test_random_moment_kills_lose_no_acknowledged_write",
    "tests/integration/test_threads.py::test_list_while_threads_create_keys",
    "tests/integration/test_corruption.py::test_flip_every_byte_of_the_last_two_records",
    "tests/integration/test_corruption.py::test_truncate_at_every_offset_of_the_last_two_records",
    "tests/integration/test_check_races.py::test_check_finds_no_error_while_keys_are_made_deleted_and_compacted",
    "tests/integration/test_clean_cut.py::test_check_never_reports_a_cut_on_a_healthy_store_being_written",
    "tests/integration/test_threads.py::test_concurrent_first_use_of_fresh_stores",
)


def _heavy_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """``items`` with the :data:`HEAVY_FIRST` tests at the head of each half, dealt in turn.

    pytest-xdist's ``worksteal`` gives each of the two workers one half of the
    list and lets an idle worker take tests from the end of the other's, so a
    long test left near the end of a half may run alone at the end of the run.
    Anything else keeps its order (the outcome of no test depends on it).
    """
    rank = {name: n for n, name in enumerate(HEAVY_FIRST)}
    heavy = sorted(
        (item for item in items if item.nodeid.split("[")[0] in rank),
        key=lambda item: rank[item.nodeid.split("[")[0]],
    )
    if not heavy:
        return items
    light = [item for item in items if item.nodeid.split("[")[0] not in rank]
    first, second = heavy[0::2], heavy[1::2]
    split = max(0, len(items) // 2 - len(first))
    return first + light[:split] + second + light[split:]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out ``not_remote`` tests on the remote backends (a combination that does not
    apply: never a skip, which CI would count); run opt-in backends where marked.

    The longest tests go first in each worker's half (:func:`_heavy_first`).
    """
    kept, dropped = [], []
    for item in items:
        backend = _backend_of(item)
        marker = OPT_IN_BACKENDS.get(backend or "")
        if marker is not None and item.get_closest_marker(marker) is None:
            dropped.append(item)
            continue
        if backend in REMOTE_BACKENDS and item.get_closest_marker("not_remote") is not None:
            dropped.append(item)
            continue
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = _heavy_first(kept)


def pytest_sessionfinish(session: pytest.Session) -> None:
    stop_loopback_server()


@pytest.fixture(params=list(STORE_BACKENDS), ids=list(STORE_BACKENDS))
def fresh_store_location(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> Callable[[], contextlib.AbstractContextManager[str]]:
    """Opens a fresh store location of the backend under test, dropped on exit.

    ``file`` and ``postgresql`` are a directory and a schema. ``remote`` and
    ``remote-postgresql`` are ``http://127.0.0.1:PORT``: a real castore server
    (uvicorn, Starlette, ``castore.server.app.create_app``) on a loopback socket,
    run by one uvicorn server in a thread of the test process for the whole
    session, serving a fresh file store (a schema) of this test; CLI subprocesses
    reach it too (tests.helpers.LoopbackServer). ``tests.helpers.underlying``
    names the store behind such a URL.
    """
    backend: str = request.param
    return functools.partial(STORE_BACKENDS[backend], tmp_path)


@pytest.fixture
def new_store_location(
    fresh_store_location: Callable[[], contextlib.AbstractContextManager[str]],
) -> Iterator[Callable[[], str]]:
    """Makes fresh store locations of the backend under test, dropped after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda: stack.enter_context(fresh_store_location())


@pytest.fixture
def store_location(new_store_location: Callable[[], str]) -> str:
    """A fresh, empty store location (``Store(store_location)``, ``--dir``), per backend."""
    return new_store_location()


@pytest.fixture
def cli(request: pytest.FixtureRequest, tmp_path: pathlib.Path, store_location: str) -> Cli:
    """The command line on ``store_location``, with ``--dag`` the test module's ``DAG``."""
    return Cli(tmp_path, store_location, dag=getattr(request.module, "DAG", "d"))


@pytest.fixture
def store_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    """A file store's directory (tests of the file backend)."""
    return tmp_path / "store"


@pytest.fixture(params=[0o022, 0o000], ids=["umask022", "umask000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The process's umask (inherited by the CLI's subprocesses) for the test."""
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


@pytest.fixture(scope="module", params=list(STORE_BACKENDS), ids=list(STORE_BACKENDS))
def module_fresh_store_location(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[], contextlib.AbstractContextManager[str]]:
    """Opens fresh store locations of one backend for a whole module (data built once).

    A module that builds a store once per backend overrides ``fresh_store_location``
    with this, so that its tests' other stores are of the same backend.
    """
    backend: str = request.param
    return functools.partial(STORE_BACKENDS[backend], tmp_path_factory.mktemp("stores"))


# -- tests that need the PostgreSQL backend itself (tests/integration/test_postgres.py) ----

# The directory tools/pgserver.py started that server in (CI exports it): tests that
# restart the server need it; without it they skip (fail when PostgreSQL is required).
POSTGRES_DIR = os.environ.get("CASTORE_TEST_POSTGRES_DIR", "")


def _need_postgres(what: str) -> None:
    """Skip the test for lack of ``what``, or fail it where PostgreSQL is required."""
    if REQUIRE_POSTGRES:
        pytest.fail(f"CASTORE_REQUIRE_POSTGRES=1 but {what}")
    pytest.skip(what)


@pytest.fixture
def new_postgres_location(tmp_path: pathlib.Path) -> Iterator[Callable[[], str]]:
    """Makes fresh PostgreSQL store locations (one schema each), dropped after the test.

    Skips without a server (``CASTORE_TEST_POSTGRES``) unless CASTORE_REQUIRE_POSTGRES=1.
    """
    if not POSTGRES_URL:
        _need_postgres("CASTORE_TEST_POSTGRES is not set (tools/pgserver.py start gives one)")
    with contextlib.ExitStack() as stack:
        yield lambda: stack.enter_context(postgres_store_location(tmp_path))


@pytest.fixture
def postgres_location(new_postgres_location: Callable[[], str]) -> str:
    """A fresh PostgreSQL store location: ``CASTORE_TEST_POSTGRES`` with its own schema."""
    return new_postgres_location()


@pytest.fixture
def restart_postgres(new_postgres_location: Callable[[], str]) -> Callable[[], None]:
    """Restarts the test server abruptly (tools/pgserver.py restart, as a crash would).

    Needs ``CASTORE_TEST_POSTGRES_DIR``, the directory the server of
    ``CASTORE_TEST_POSTGRES`` was started in: skips without it (fails where
    PostgreSQL is required), and never restarts a server of another URL.
    """
    if not POSTGRES_DIR:
        _need_postgres(
            "CASTORE_TEST_POSTGRES_DIR is not set: the test restarts the server and needs "
            "the directory tools/pgserver.py started it in"
        )
    try:
        url = (pathlib.Path(POSTGRES_DIR) / "url").read_text().strip()
    except OSError as exc:
        url = f"unreadable ({exc.strerror})"
    if url != POSTGRES_URL:
        _need_postgres(
            f"CASTORE_TEST_POSTGRES_DIR={POSTGRES_DIR} holds another server than "
            "CASTORE_TEST_POSTGRES: not restarting it"
        )

    def restart() -> None:
        from tools import pgserver

        pgserver.restart(POSTGRES_DIR)

    return restart
