"""A store path that is (or passes through) a symbolic link to nothing.

Found by the review of the command line: ``set`` exited 1 with a bare "No such
file or directory" (``mkdir`` of a dangling link fails as "exists", and the
store's files then could not be made). As ``mkdir -p`` does, castore makes
nothing through such a link, and says what it is. A link to a directory is
a store's path like any other.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from castore import FormatVersionError, Store

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("below", ["", "sub"])
def test_a_link_to_nothing_on_the_way_to_a_store_is_named(tmp_path: Path, below: str) -> None:
    link = tmp_path / "link"
    os.symlink(tmp_path / "nowhere", link)
    root = link / below if below else link
    with pytest.raises(FormatVersionError, match=r"link is a symbolic link to .*nowhere"):
        Store(str(root), dag="d").set("k", 1)
    cmd = [sys.executable, "-m", "castore", "--dir", str(root), "--dag", "d", "set", "k", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith(f"castore: {link} is a symbolic link to "), result.stderr
    assert not (tmp_path / "nowhere").exists()  # nothing made through it
    assert Store(str(root), dag="d").get("k").found is False  # a read: a store not made yet


def test_a_link_to_a_directory_is_a_store_path(tmp_path: Path) -> None:
    (tmp_path / "there").mkdir()
    os.symlink(tmp_path / "there", tmp_path / "link")
    Store(str(tmp_path / "link"), dag="d").set("k", 1)
    assert Store(str(tmp_path / "there"), dag="d").get("k").value == 1
