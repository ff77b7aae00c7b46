from __future__ import annotations

import os
import pathlib

import pytest
from hypothesis import HealthCheck, settings

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


# Environment variables castore reads (docs/CLI.md): no test sees the caller's values.
CASTORE_ENV = (
    "DAG_NAME",
    "DAG_RUN_ID",
    "DAG_RUN_STEP_NAME",
    "DAG_RUN_ATTEMPT_ID",
    "CASTORE_ACTOR",
    "CASTORE_ROOT_DAG",
    "CASTORE_DIR",
    "CASTORE_FAILPOINTS",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CASTORE_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def store_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "store"
