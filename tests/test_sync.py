"""Sync-back of a remote experiment directory over a real sshd (SPEC H5)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import sshd
from mlrunner import sync


def test_h5_changed_compares_size_and_mtime_and_skips_records_and_excludes(tmp_path: Path):
    (tmp_path / "same.log").write_text("abc")
    os.utime(tmp_path / "same.log", (100, 100))
    (tmp_path / "older.log").write_text("abc")
    os.utime(tmp_path / "older.log", (100, 100))
    listing = [("same.log", 3, 100), ("older.log", 3, 200), ("new/deep.txt", 5, 1), ("param", 9, 1),
               ("stat", 9, 1), ("model.pt", 9, 1), ("sub/param", 4, 1)]
    assert sync.changed(listing, str(tmp_path), ["*.pt"]) == [
        ("older.log", 3, 200), ("new/deep.txt", 5, 1), ("sub/param", 4, 1)]


@pytest.fixture
def host(tmp_path_factory, tmp_path, monkeypatch):
    sshd.require_sshd()
    sshd.require_paramiko()
    server, = sshd.start_servers(1, tmp_path_factory, prefix="sync")
    monkeypatch.setenv("HOME", str(sshd.make_home(tmp_path / "home", [server])))
    from mlrunner.executors.ssh import Connection
    from mlrunner.hosts import HostSpec
    connection = Connection(HostSpec(server.alias, workdir=str(server.workdir), exclude=["*.pt"]), False, 2)
    connection.connect()
    yield server, connection
    connection.close()
    server.stop()


@pytest.mark.parametrize("small_files", [3, 40])  # one by one, and as one bundle
def test_h5_pull_copies_what_changed_and_nothing_else(host, tmp_path: Path, monkeypatch, small_files):
    server, connection = host
    remote = Path(server.workdir) / "output" / "Exp_1"
    for i in range(small_files):
        path = remote / f"d{i % 3}" / f"log.{i}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"line {i}\n" * (i + 1))
    (remote / "big.bin").write_bytes(os.urandom(2 << 20))
    (remote / "weights.pt").write_text("excluded")
    (remote / "param").write_text("remote: copy\n")
    local_root = tmp_path / "local"
    (local_root / "output" / "Exp_1").mkdir(parents=True)
    (local_root / "output" / "Exp_1" / "param").write_text("local: record\n")
    monkeypatch.chdir(local_root)

    connection.pull("output/Exp_1")
    local = local_root / "output" / "Exp_1"
    for path in remote.rglob("*"):
        relative = path.relative_to(remote)
        if path.is_file() and path.name not in ("weights.pt", "param"):
            assert (local / relative).read_bytes() == path.read_bytes()
            assert int((local / relative).stat().st_mtime) == int(path.stat().st_mtime)
    assert not (local / "weights.pt").exists()
    assert (local / "param").read_text() == "local: record\n"
    assert list(Path("/tmp").glob("mlrunner-sync-*.tar")) == []  # the bundle was removed

    inode = (local / "d0" / "log.0").stat().st_ino
    assert sync.pull(connection.request, connection._sftp, f"{connection.workdir}/output/Exp_1",
                     "output/Exp_1", ["*.pt"]) == []
    assert (local / "d0" / "log.0").stat().st_ino == inode
    (remote / "d1" / "log.1").write_text("grown\n" * 50)
    assert sync.pull(connection.request, connection._sftp, f"{connection.workdir}/output/Exp_1",
                     "output/Exp_1", ["*.pt"]) == ["d1/log.1"]
    assert (local / "d1" / "log.1").read_text() == "grown\n" * 50
