"""A handle's copy of ``GRAVES`` follows the file, also when a new one reuses its inode."""

import os

from castore.file.graves import Graveyard
from castore.file.tree import UNCONFINED


def test_a_handle_sees_appends_of_another(tmp_path):
    path = str(tmp_path / "GRAVES")
    mine, other = Graveyard(path, UNCONFINED), Graveyard(path, UNCONFINED)
    other.bury([("a", 3)])
    assert mine.version_of("a") == 3
    other.bury([("b", 7)])
    assert (mine.version_of("a"), mine.version_of("b")) == (3, 7)


def test_a_new_file_with_the_parsed_files_inode_is_read_whole(tmp_path):
    # A repair renames a new GRAVES over the old one; the new file may get the old
    # one's inode number back. Simulated in place: same inode, at least as long.
    path = str(tmp_path / "GRAVES")
    writer = Graveyard(path, UNCONFINED)
    writer.bury([("a", 3)])
    mine = Graveyard(path, UNCONFINED)
    assert mine.version_of("a") == 3
    other_path = str(tmp_path / "OTHER")
    Graveyard(other_path, UNCONFINED).bury([("a", 9), ("b", 2)])
    with open(other_path, "rb") as fh:
        new = fh.read()
    before = os.stat(path)
    with open(path, "r+b") as fh:
        fh.write(new)
    assert os.stat(path).st_ino == before.st_ino
    assert os.stat(path).st_size >= before.st_size
    assert (mine.version_of("a"), mine.version_of("b")) == (9, 2)
