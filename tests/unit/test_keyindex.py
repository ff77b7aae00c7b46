import os
import random

from hypothesis import given
from hypothesis import strategies as st

from castore.file import keyindex
from castore.file.keyindex import KeyIndex, namespace_of
from castore.file.tree import UNCONFINED


def brute(keys: list[str], prefix: str) -> list[str]:
    pb = prefix.encode()
    return sorted({k for k in keys if k.encode().startswith(pb)}, key=lambda k: k.encode())


def test_sorted_region_and_tail_answer_every_prefix(tmp_path, monkeypatch):
    monkeypatch.setattr(keyindex, "TAIL_MAX_BYTES", 2000)  # force several re-sorts
    monkeypatch.setattr(keyindex, "TAIL_MAX_LINES", 50)
    rng = random.Random(3)
    alphabet = "ab/é\x00Z"
    keys = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))) for _ in range(1500)]
    keys += ["k" * 4096, "k" * 4095 + "a"]
    index = KeyIndex(str(tmp_path / "KEYS"), UNCONFINED)
    for n, key in enumerate(keys):
        index.add(key, "ns/é", durable=False)
        if n % 97 == 0:
            probe = key[: rng.randint(0, len(key))]
            assert index.keys(probe) == brute(keys[: n + 1], probe)
    prefixes = ["", "a", "ab", "b/", "é", "\x00", "Z", "zz", "k" * 4000, "k" * 4095]
    prefixes += [k[:2] for k in keys[:50]]
    fresh = KeyIndex(str(tmp_path / "KEYS"), UNCONFINED)
    for prefix in prefixes:
        assert fresh.keys(prefix) == brute(keys, prefix), prefix
    assert all(k in fresh for k in keys[:200])
    assert "never-added" not in fresh
    assert namespace_of(str(tmp_path / "KEYS"), UNCONFINED) == "ns/é"


def test_remove_rewrites_sorted(tmp_path):
    index = KeyIndex(str(tmp_path / "KEYS"), UNCONFINED)
    for key in ["b", "a", "c", "ab"]:
        index.add(key, "ns", durable=False)
    index.remove({"a", "c"}, durable=False)
    assert index.keys() == ["ab", "b"]
    index.add("aa", "ns", durable=False)
    assert index.keys("a") == ["aa", "ab"]
    assert namespace_of(str(tmp_path / "KEYS"), UNCONFINED) == "ns"


utf8_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=5)


@given(st.lists(utf8_text.filter(bool), max_size=60), utf8_text)
def test_prefix_listing_matches_brute_force(tmp_path_factory, keys, prefix):
    path = tmp_path_factory.mktemp("k") / "KEYS"
    index = KeyIndex(str(path), UNCONFINED)
    for key in keys:
        index.add(key, "n", durable=False)
    assert index.keys(prefix) == brute(keys, prefix)


def test_a_handles_copy_of_every_key_follows_other_handles_changes(tmp_path):
    path = str(tmp_path / "KEYS")
    mine, other = KeyIndex(path, UNCONFINED), KeyIndex(path, UNCONFINED)
    for key in ["a1", "a2", "b1"]:
        other.add(key, "ns", durable=False)
    for _ in range(3):  # the second prefix asked of one file builds the copy
        assert mine.keys("a") == ["a1", "a2"]
    assert mine.keys() == ["a1", "a2", "b1"]
    other.add("a0", "ns", durable=False)
    assert mine.keys("a") == ["a0", "a1", "a2"]
    other.remove({"a1"}, durable=False)  # a rewrite: a new file
    assert mine.keys("a") == ["a0", "a2"]
    assert mine.keys() == ["a0", "a2", "b1"]
    assert mine.keys("zz") == []


def test_a_rewrite_with_the_same_size_and_inode_is_read_again(tmp_path):
    # A rewrite's new file may get the old one's inode number; with the same size
    # and times (one clock tick), only the bytes tell them apart.
    path = tmp_path / "KEYS"
    index = KeyIndex(str(path), UNCONFINED)
    for key in ["aa", "ab"]:
        index.add(key, "ns", durable=False)
    assert index.keys() == ["aa", "ab"]
    before = path.stat()
    data = path.read_bytes()
    with open(path, "r+b") as fh:  # same inode, same size: "ab" becomes "ac"
        fh.write(data.replace(b"6162", b"6163"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    signature = index._signature()
    assert signature is not None
    assert signature[:3] == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert index.keys() == ["aa", "ac"]


def test_a_rewrite_of_a_long_namespace_with_its_old_inode_is_not_read_on(tmp_path):
    # 128 bytes of a long namespace's KEYS are all its namespace line: the tail a
    # handle read of one file must not be taken for the tail of a rewrite of it that
    # got the same inode number (the sorted line tells them apart).
    path = str(tmp_path / "KEYS")
    namespace = "n" * 80
    mine, other = KeyIndex(path, UNCONFINED), KeyIndex(path, UNCONFINED)
    for key in ["gone", "kept"]:
        other.add(key, namespace, durable=False)
    assert "gone" in mine  # reads the unsorted tail
    other.remove({"gone"}, durable=False)  # a new file, sorted, without it
    for key in ["new1", "new2"]:  # grows past where mine read
        other.add(key, namespace, durable=False)
    mine._ino = os.stat(path).st_ino  # as if the new file had got the old inode number
    assert "gone" not in mine
    assert "new2" in mine


def test_listing_many_long_keys_rewrites_a_bounded_multiple_of_the_file(tmp_path, monkeypatch):
    # Writing thousands of new keys of 4 KiB was quadratic: the tail is re-sorted when it
    # passes TAIL_MAX_BYTES, 64 KiB, which eight such keys fill, and each re-sort rewrites
    # the whole file. The tail may now grow to an eighth of the sorted region, so what the
    # re-sorts write in all is a bounded multiple of the final file (amortized linear).
    written: list[int] = []
    real = UNCONFINED.atomic_write

    def counted(path, data, **kwargs):
        written.append(len(data))
        return real(path, data, **kwargs)

    monkeypatch.setattr(UNCONFINED, "atomic_write", counted)
    path = tmp_path / "KEYS"
    index = KeyIndex(str(path), UNCONFINED)
    keys = [f"{n:05d}" + "k" * 3995 for n in range(400)]
    for key in keys:
        index.add(key, "ns", durable=False)
    assert sum(written) <= 12 * path.stat().st_size, (len(written), sum(written))
    fresh = KeyIndex(str(path), UNCONFINED)
    assert fresh.keys() == keys
    assert fresh.keys("0012") == keys[120:130]
