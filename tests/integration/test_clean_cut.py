"""A log cut exactly at a frame boundary, while its version index proves the cut.

Such a log ends in an intact entry and is byte-identical to an earlier
state; its ``.vix`` (built by readers from the log only) still records the
versions cut off. Readers, writers and both quick CLI paths must treat it as
damage after the newest entry (FORMAT.md §7): the newest version is not
served as an older one, and no version number is given twice. Each oracle is
the same call on the undamaged copy of the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import threading

import pytest

from castore import ConflictError, CorruptionError, NotFoundError, Store
from castore.backend import NewVersion
from castore.file.reflog import RefLog
from castore.records import Audit
from tests.helpers import Cli, file_backend, log_path, snapshot

DAG = "d"


def _store(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, str, int]:
    """A store whose key ``k`` has v1..v4, indexed; its twin; k's log; its size before v4."""
    root = tmp_path / "store"
    with Store(root, dag=DAG) as store:
        for n in range(1, 4):
            store.set("k", {"n": n})
        path = log_path(root, "dag", DAG, "k")
        before_v4 = os.path.getsize(path)
        store.set("k", {"n": 4})
        assert store.get("k", version=1).value == {"n": 1}  # a reader indexes v1..v4
    twin = tmp_path / "twin"
    shutil.copytree(root, twin)
    return root, twin, path, before_v4


def _cut_store(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """:func:`_store` whose log then lost v4's append whole, exactly at a frame boundary."""
    root, twin, path, before_v4 = _store(tmp_path)
    os.truncate(path, before_v4)
    return root, twin


def test_a_reader_refuses_the_newest_version_of_a_proven_cut(tmp_path):
    root, twin = _cut_store(tmp_path)
    with Store(twin, dag=DAG) as store:
        assert (store.get("k").version, store.get("k").value) == (4, {"n": 4})
        assert store.get("k", version=3).value == {"n": 3}
    with Store(root, dag=DAG) as store:
        with pytest.raises(CorruptionError, match="version index records"):
            store.get("k")
        with pytest.raises(CorruptionError, match="version index records"):
            store.history("k")
        assert store.get("k", version=3).value == {"n": 3}  # older versions still read
        assert "k" in store.list().skipped


def test_a_handle_that_served_the_newest_version_refuses_it_after_the_cut(tmp_path):
    root, _, path, before_v4 = _store(tmp_path)
    with Store(root, dag=DAG) as store:
        assert store.get("k").version == 4  # cached with the log's stat
        os.truncate(path, before_v4)
        with pytest.raises(CorruptionError, match="version index records"):
            store.get("k")


def test_no_writer_gives_a_cut_version_again(tmp_path):
    root, twin = _cut_store(tmp_path)
    with Store(twin, dag=DAG) as store:
        assert store.set("k", {"n": 5}).version == 5
    before = snapshot(root)
    with Store(root, dag=DAG) as store:
        with pytest.raises(CorruptionError, match="nothing was written"):
            store.set("k", {"n": 5})
        with pytest.raises(CorruptionError, match="nothing was written"):
            store.delete("k")
    cli = Cli(tmp_path, root, dag=DAG)
    assert "version index records" in cli.fail(5, "set", "k", "5")  # the quick writer declines
    assert "version index records" in cli.fail(5, "get", "k")  # the quick reader declines
    assert snapshot(root) == before
    cli.run("check", "--repair")
    with Store(root, dag=DAG) as store:
        assert store.set("k", {"n": 5}).version > 4
        with pytest.raises(CorruptionError):
            store.get("k", version=4)  # lost, and said so: never another value
        versions = [e.version for e in store.history("k").entries]
    assert len(versions) == len(set(versions))


@pytest.mark.parametrize(
    "command",
    [("compact", "--keep-last", "2"), ("gc", "--grace", "0s"), ("compact", "--keep-last", "9")],
)
def test_maintenance_refuses_a_proven_cut_and_keeps_the_evidence(tmp_path, command):
    """A rewrite rebuilds the index: it must not run on a cut log, or the evidence goes."""
    root, twin = _cut_store(tmp_path)
    cli = Cli(tmp_path, root, dag=DAG)
    with Store(twin, dag=DAG) as store:
        assert store.set("k", {"n": 5}).version == 5
    before = snapshot(root)
    proc = cli.run(*command)
    assert proc.returncode == 5, proc.stderr
    assert b"version index records" in proc.stderr
    assert b"Traceback" not in proc.stderr
    after = snapshot(root)
    after.pop("gc.lock", None)  # gc's own lock file, made before it reads any log
    assert after == before
    assert "version index records" in cli.fail(5, "set", "k", "5")


def test_export_refuses_a_proven_cut(tmp_path):
    root, twin = _cut_store(tmp_path)
    cli = Cli(tmp_path, root, dag=DAG)
    assert b'"version":4' in Cli(tmp_path, twin, dag=DAG).raw_ok("export")
    proc = cli.run("export")  # the stream's first line may be out: the exit status says
    assert proc.returncode == 5, proc.stderr
    assert b"version index records" in proc.stderr
    assert b'"version":3' not in proc.stdout  # never the earlier state as the whole history


def test_a_cut_version_is_damage_not_absent(tmp_path):
    root, twin = _cut_store(tmp_path)
    with Store(twin, dag=DAG) as store:
        assert store.get("k", version=4).value == {"n": 4}
        assert store.diff_versions("k", from_version=3, to_version=4).patch
    with Store(root, dag=DAG) as store:
        with pytest.raises(CorruptionError, match="version index records"):
            store.get("k", version=4)
        with pytest.raises(CorruptionError, match="version index records"):
            store.diff_versions("k", from_version=3, to_version=4)
        with pytest.raises(CorruptionError, match="version index records"):
            store.get("k", version=5)


def test_a_reader_of_a_log_replaced_under_it_sees_no_cut(tmp_path, monkeypatch):
    """The index next to the path is the new log's: it is no evidence about the old file.

    The interleaving is forced: between the reader's open and its read of the tail,
    compaction renames a new log over the one it holds, a write lands in the new log
    and another reader indexes it. Before, the reader "confirmed" a cut on its old
    descriptor and raised CorruptionError on a store that check finds ok.
    """
    root = tmp_path / "store"
    with Store(root, dag=DAG) as store:
        for n in range(1, 5):
            store.set("k", {"n": n})
    real = RefLog.newest

    def newest(self: RefLog, fd: int, st: os.stat_result) -> object:
        monkeypatch.setattr(RefLog, "newest", real)  # once
        with Store(root, dag=DAG) as other:
            other.compact(keep_last=2)
            other.set("k", {"n": 5})
        with Store(root, dag=DAG) as indexer:
            assert indexer.get("k", version=5).value == {"n": 5}
        return real(self, fd, st)

    with Store(root, dag=DAG) as reader:
        monkeypatch.setattr(RefLog, "newest", newest)
        assert reader.get("k").version in (4, 5)  # the old file's newest, or the new one's
        assert reader.get("k").version == 5
    assert Store(root, dag=DAG).check().ok


def test_a_repair_killed_before_its_rename_keeps_the_evidence(tmp_path):
    """The repaired log replaces the cut one; until it is in place, the index stays."""
    root, _ = _cut_store(tmp_path)
    cli = Cli(tmp_path, root, dag=DAG)
    killed = cli.run("check", "--repair", env={"CASTORE_FAILPOINTS": "rewrite-before-rename"})
    assert killed.returncode < 0  # SIGKILL at the failpoint
    assert "version index records" in cli.fail(5, "get", "k")
    assert "version index records" in cli.fail(5, "set", "k", "5")
    cli.run("check", "--repair")
    assert cli.ok("set", "k", "5")["version"] > 4
    assert json.loads(cli.line("check"))["ok"] is True


def test_replacing_the_history_of_a_cut_key_is_refused(tmp_path):
    """An import's overwrite goes through ``replace``, not a rewrite: it must refuse too."""
    root, twin = _cut_store(tmp_path)
    audit = Audit(user="u", host="h", pid=1)
    new = [NewVersion("set", b'{"m":%d}' % n, "", audit, version=n) for n in (1, 2, 3)]
    new = [v._replace(digest_hex=hashlib.sha256(v.normalized or b"").hexdigest()) for v in new]
    with Store(twin, dag=DAG) as store, pytest.raises(ConflictError):
        file_backend(store).replace(store.ref("k"), new, None)  # its newest, 4, is above 3
    before = snapshot(root)
    with (
        Store(root, dag=DAG) as store,
        pytest.raises(CorruptionError, match="nothing was replaced"),
    ):
        file_backend(store).replace(store.ref("k"), new, None)
    after = snapshot(root)
    assert after.pop("gc.lock", b"") == b""  # taken shared before the log (FORMAT.md §8)
    assert after == {k: v for k, v in before.items() if k != "gc.lock"}


def test_a_cut_and_a_damaged_index_record_are_repaired_together(tmp_path):
    """Readers refuse the key; check must see the same cut, and its repair must end it."""
    root, _ = _cut_store(tmp_path)
    vix = log_path(root, "dag", DAG, "k")[: -len(".log")] + ".vix"
    data = bytearray(pathlib.Path(vix).read_bytes())
    data[8] ^= 0x40  # v2's record now points elsewhere: the index is damaged too
    pathlib.Path(vix).write_bytes(bytes(data))
    cli = Cli(tmp_path, root, dag=DAG)
    assert "version index records" in cli.fail(5, "get", "k")
    assert json.loads(cli.run("check").stdout)["ok"] is False
    cli.run("check", "--repair")
    assert json.loads(cli.line("check"))["ok"] is True
    assert cli.ok("set", "k", "5")["version"] > 4


def test_a_version_below_an_imported_log_is_absent_even_with_a_damaged_tail(tmp_path):
    """No version below a log's first was ever in it: "not found", as before."""
    root = tmp_path / "store"
    with Store(root, dag=DAG) as store:
        audit = Audit(user="u", host="h", pid=1)
        value = b'{"n":1}'
        new = NewVersion("set", value, hashlib.sha256(value).hexdigest(), audit, version=100)
        file_backend(store).replace(store.ref("k"), [new], None)
        store.set("k", {"n": 2})
    path = log_path(root, "dag", DAG, "k")
    with open(path, "r+b") as log:
        log.seek(-10, os.SEEK_END)
        log.write(bytes(10))  # the newest entry's last bytes: damage after v100
    with Store(root, dag=DAG) as store:
        with pytest.raises(CorruptionError):
            store.get("k")
        with pytest.raises(NotFoundError):
            store.get("k", version=50)


def test_check_never_reports_a_cut_on_a_healthy_store_being_written(tmp_path):
    """check reads a log and its index as one state, under their locks.

    Without them a write and a reader indexing it between check's read of the
    log and its read of the index made the index name a version beyond the
    log check had read: check reported a healthy key's versions as lost (in
    about one check in ten here). The oracle is the store itself: nothing is
    damaged, so every check must find nothing.
    """
    root = tmp_path / "store"
    keys = ["k0", "k1", "k2"]
    with Store(root, dag=DAG, durable=False) as store:
        for key in keys:
            store.set(key, {"n": 0})
    stop = threading.Event()
    errors: list[BaseException] = []

    def write_and_index() -> None:
        try:
            with Store(root, dag=DAG, durable=False) as writer:
                n = 0
                while not stop.is_set():
                    n += 1
                    key = keys[n % len(keys)]
                    version = writer.set(key, {"n": n}).version
                    assert writer.get(key, version=version).value == {"n": n}  # indexes it
        except BaseException as exc:  # noqa: BLE001 - the main thread reports it
            errors.append(exc)

    thread = threading.Thread(target=write_and_index)
    thread.start()
    try:
        with Store(root, dag=DAG) as checker:
            reports = [checker.check() for _ in range(150)]
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert [r.findings for r in reports if r.findings] == []
    assert all(r.ok and r.logs == len(keys) for r in reports)
    with Store(root, dag=DAG) as store:  # and the writes all landed
        assert store.check().findings == []
        assert all(store.get(key).version > 1 for key in keys)
