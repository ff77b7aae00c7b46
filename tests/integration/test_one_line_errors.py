"""An error is one line on stderr, whatever file name it quotes.

Found by a review: a link planted in a store under the name
``"\\ncastore: forged line.log"`` made ``stats`` and ``gc`` print a second,
forged ``castore: ...`` line. Control characters in a message are escaped.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from castore import Store
from tests.helpers import Cli, ns_dir

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("command", [("stats",), ("gc", "--grace", "0")])
def test_a_planted_name_cannot_forge_a_line(tmp_path: Path, command: tuple[str, ...]) -> None:
    root = tmp_path / "store"
    Store(root, dag="d").set("k", 1)
    os.symlink("/nonexistent", os.path.join(ns_dir(root, "dag", "d"), "\ncastore: forged.log"))
    proc = Cli(tmp_path, root, dag="d").run(*command)
    assert proc.returncode == 5, proc
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert "\\ncastore: forged.log is a symbolic link" in lines[0]
