from __future__ import annotations

import contextlib
import functools
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.helpers import CASTORE_ENV, Cli

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


# Each backend: a fresh, empty store location of it below a directory, dropped on exit.
# A second backend is one more entry here (docs/DESIGN.md, "The backend contract").
STORE_BACKENDS: dict[str, Callable[[pathlib.Path], contextlib.AbstractContextManager[str]]] = {
    "file": file_store_location,
}


@pytest.fixture(params=list(STORE_BACKENDS), ids=list(STORE_BACKENDS))
def fresh_store_location(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> Callable[[], contextlib.AbstractContextManager[str]]:
    """Opens a fresh store location of the backend under test, dropped on exit."""
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
