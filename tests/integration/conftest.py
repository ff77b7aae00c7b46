"""Fixtures of the tests that start ``castore serve`` processes of their own."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from tests.integration.fakeserver import FakeServer
from tests.integration.test_cluster import Launcher


@pytest.fixture
def launcher(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Launcher]:
    """Starts servers below ``tmp_path``; every one of them is killed at teardown."""
    monkeypatch.delenv("CASTORE_TOKEN", raising=False)  # library clients send none
    launch = Launcher(tmp_path)
    try:
        yield launch
    finally:
        for node in launch.nodes:
            node.kill()


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    """A fake castore server on loopback whose answers the test chooses."""
    server = FakeServer()
    yield server
    server.close()
