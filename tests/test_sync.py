"""Sync-back of a remote experiment directory over a real sshd (SPEC H5, H11).

`validate`, `plan` and `check_member` are pure and tested with hostile input here; the pull tests
run against a real agent, and the hostile-host tests patch its replies at the protocol boundary
(the `request` function sync.pull is given), so that the real SFTP channel carries the bytes.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

import sshd
from mlrunner.backends import sync


@pytest.mark.parametrize("row, why", [
    (["../../PWNED.txt", 3, 1, "f"], "'..'"),
    (["x/../stat", 3, 1, "f"], "'..'"),
    (["/etc/passwd", 3, 1, "f"], "absolute"),
    (["a//b", 3, 1, "f"], "empty part"),
    (["./a", 3, 1, "f"], "'.'"),
    (["", 3, 1, "f"], "not a path"),
    ([7, 3, 1, "f"], "not a path"),
    (["a\0b", 3, 1, "f"], "character"),
    (["link", 3, 1, "l"], "a symlink"),
    (["fifo", 0, 1, "o"], "not a regular file"),
    (["a", -1, 1, "f"], "size and mtime"),
    (["a", 3, "1", "f"], "size and mtime"),
    (["a", 3, 1], "not a listing row"),
    ("a", "not a listing row"),
])
def test_h11_validate_refuses_what_could_leave_the_directory(row, why):
    accepted, refused = sync.validate([row, ["ok/log.1", 3, 1_500_000_000_123_456_789, "f"]])
    assert accepted == [("ok/log.1", 3, 1_500_000_000_123_456_789)]
    assert len(refused) == 1 and why in refused[0][1]


def test_h5_h11_plan_compares_size_and_nanosecond_mtime_and_skips_records_and_excludes(tmp_path: Path):
    (tmp_path / "same.log").write_text("abc")
    os.utime(tmp_path / "same.log", ns=(100_000_000_123, 100_000_000_123))
    (tmp_path / "subsecond.log").write_text("abc")
    os.utime(tmp_path / "subsecond.log", ns=(100_000_000_000, 100_000_000_000))
    (tmp_path / "linked.log").symlink_to(tmp_path / "same.log")
    entries = [("same.log", 3, 100_000_000_123), ("subsecond.log", 3, 100_500_000_000), ("new/deep.txt", 5, 1),
               ("param", 9, 1), ("stat", 9, 1), ("model.pt", 9, 1), ("sub/param", 4, 1),
               ("linked.log", 3, 100_000_000_123)]
    assert sync.plan(entries, str(tmp_path), ["*.pt"]) == [
        ("subsecond.log", 3, 100_500_000_000), ("new/deep.txt", 5, 1), ("sub/param", 4, 1),
        ("linked.log", 3, 100_000_000_123)]


def _member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 3) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.size = kind, size
    return member


@pytest.mark.parametrize("member, why", [
    (_member("../PWNED.txt"), "'..'"),
    (_member("/tmp/PWNED.txt"), "absolute"),
    (_member("log.1", tarfile.SYMTYPE, 0), "not a regular file"),
    (_member("log.1", tarfile.LNKTYPE, 0), "not a regular file"),
    (_member("log.1", tarfile.CHRTYPE, 0), "not a regular file"),
    (_member("log.1", tarfile.FIFOTYPE, 0), "not a regular file"),
    (_member("log.1", tarfile.DIRTYPE, 0), "not a regular file"),
    (_member("other.log"), "not asked for"),
    (_member("log.1"), None),
])
def test_h11_check_member(member, why):
    found = sync.check_member(member, {"log.1": ("log.1", 3, 1)})
    assert (found is None) if why is None else (why in found)


@pytest.fixture
def host(tmp_path_factory, tmp_path, monkeypatch):
    sshd.require_sshd()
    sshd.require_paramiko()
    scratch = tmp_path / "host-tmp"  # the host's TMPDIR, where the agent packs bundles
    scratch.mkdir()
    server, = sshd.start_servers(1, tmp_path_factory, prefix="sync", env={"TMPDIR": str(scratch)})
    server.scratch = scratch
    monkeypatch.setenv("HOME", str(sshd.make_home(tmp_path / "home", [server])))
    from mlrunner.backends.ssh import Host
    from mlrunner.plan.hosts import HostSpec
    connection = Host(HostSpec(server.alias, workdir=str(server.workdir), exclude=["*.pt"]), False, 2)
    connection.connect()
    yield server, connection
    connection.close()
    server.stop()


def _pull(connection, request=None):
    return sync.pull(request or connection.request, connection._sftp, f"{connection.workdir}/output/Exp_1",
                     "output/Exp_1", ["*.pt"])


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
            assert (local / relative).stat().st_mtime_ns == path.stat().st_mtime_ns
    assert not (local / "weights.pt").exists()
    assert (local / "param").read_text() == "local: record\n"
    assert list(server.scratch.iterdir()) == []  # the bundle was removed

    inode = (local / "d0" / "log.0").stat().st_ino
    assert _pull(connection).copied == []
    assert (local / "d0" / "log.0").stat().st_ino == inode
    (remote / "d1" / "log.1").write_text("grown\n" * 50)
    assert _pull(connection).copied == ["d1/log.1"]
    assert (local / "d1" / "log.1").read_text() == "grown\n" * 50


def test_h11_a_same_size_rewrite_within_a_second_is_synced(host, tmp_path: Path, monkeypatch):
    server, connection = host
    remote = Path(server.workdir) / "output" / "Exp_1" / "log.train"
    remote.parent.mkdir(parents=True)
    remote.write_text("epoch 1\n")
    os.utime(remote, ns=(1_700_000_000_100_000_000, 1_700_000_000_100_000_000))
    monkeypatch.chdir(tmp_path)
    assert _pull(connection).copied == ["log.train"]
    remote.write_text("epoch 2\n")  # same size, same whole second
    os.utime(remote, ns=(1_700_000_000_600_000_000, 1_700_000_000_600_000_000))
    assert _pull(connection).copied == ["log.train"]
    local = tmp_path / "output" / "Exp_1" / "log.train"
    assert local.read_text() == "epoch 2\n" and local.stat().st_mtime_ns == 1_700_000_000_600_000_000


def _everything(top: Path):
    return sorted(str(p.relative_to(top)) for p in top.rglob("*"))


def test_h11_real_symlinks_and_special_files_on_the_host_are_refused_and_reported(host, tmp_path: Path,
                                                                                  monkeypatch, capsys):
    server, connection = host
    remote = Path(server.workdir) / "output" / "Exp_1"
    remote.mkdir(parents=True)
    (remote / "log.ok").write_text("fine\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("host file")
    (remote / "leak").symlink_to(secret)
    (remote / "up").symlink_to(tmp_path, target_is_directory=True)
    os.mkfifo(remote / "fifo")
    local_root = tmp_path / "local"
    local_root.mkdir()
    monkeypatch.chdir(local_root)
    result = _pull(connection)
    assert result.copied == ["log.ok"]
    assert sorted(result.refused) == [("fifo", "not a regular file"), ("leak", "a symlink"), ("up", "a symlink")]
    assert _everything(local_root) == ["output", "output/Exp_1", "output/Exp_1/log.ok"]
    capsys.readouterr()
    connection.pull("output/Exp_1")  # as a worker does: each refusal is a warning line
    assert "warning: host sync1: output/Exp_1: refused 'leak' from the host: a symlink\n" in capsys.readouterr().err


def test_h11_hostile_listing_and_bundle_write_nothing_outside(host, tmp_path: Path, monkeypatch):
    """A compromised host: its agent's `list` and `pack` replies are replaced at the protocol boundary."""
    server, connection = host
    remote = Path(server.workdir) / "output" / "Exp_1"
    remote.mkdir(parents=True)
    for i in range(20):
        (remote / f"log.{i}").write_text("ok\n")
    local_root = tmp_path / "project"
    (local_root / "output" / "Exp_1").mkdir(parents=True)
    (local_root / "output" / "Exp_1" / "stat").write_text("train: finished\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (local_root / "output" / "Exp_1" / "sub").symlink_to(outside, target_is_directory=True)
    monkeypatch.chdir(local_root)
    hostile = Path(server.workdir) / "hostile.tar"
    with tarfile.open(hostile, "w") as archive:
        def add(member: tarfile.TarInfo, data: bytes = b"") -> None:
            member.size = len(data) if member.isfile() else 0
            archive.addfile(member, io.BytesIO(data) if member.isfile() else None)
        add(_member("../../PWNED.txt"), b"pwned")
        add(_member(str(tmp_path / "ABS_PWNED.txt")), b"pwned")
        link = _member("log.3", tarfile.SYMTYPE)
        link.linkname = str(tmp_path / "LINK_PWNED.txt")
        add(link)
        add(_member("log.4", tarfile.CHRTYPE))
        add(_member("log.5"), b"ok\n")
        add(_member("sub/PWNED.txt"), b"pwned")

    def request(op, **fields):
        if op == "list":
            files = connection.request(op, **fields)["files"]
            files += [["../../PWNED.txt", 5, 1, "f"], ["x/../stat", 5, 1, "f"], [str(tmp_path / "ABS.txt"), 5, 1, "f"],
                      ["sub/PWNED.txt", 5, 1, "f"]]
            return {"files": files}
        if op == "pack":
            return {"path": str(hostile)}
        if op == "discard":
            return {}
        return connection.request(op, **fields)

    result = _pull(connection, request)
    refused = dict(result.refused)
    assert "'..'" in refused["../../PWNED.txt"] and "'..'" in refused["x/../stat"]
    assert "absolute" in refused[str(tmp_path / "ABS.txt")]
    assert "not a directory" in refused["sub/PWNED.txt"]  # through a local symlink: refused, not followed
    assert "not a regular file" in refused["log.3"] and "not a regular file" in refused["log.4"]
    assert "log.5" in result.copied
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "host-tmp", "outside", "project"]
    assert list(outside.iterdir()) == [] and not list(tmp_path.rglob("*PWNED*"))
    assert (local_root / "output" / "Exp_1" / "stat").read_text() == "train: finished\n"
    assert sorted(p.name for p in (local_root / "output").iterdir()) == ["Exp_1"]
