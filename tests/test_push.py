"""Code push to a host before its first command (SPEC H13), over a real sshd, through the real CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import sshd
from mlrunner.backends.ssh.push import changed
from runlib import load, run, write


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    sshd.require_sshd()
    sshd.require_paramiko()
    started, = sshd.start_servers(1, tmp_path_factory, prefix="push")
    yield started
    started.stop()


def _require_git() -> None:
    """Skip without git; fail when CI=true (scripts/test.sh installs it)."""
    if shutil.which("git"):
        return
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail("CI=true but git is missing: apt-get install git", pytrace=False)
    pytest.skip("git is missing: apt-get install git")


def _git(project: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=project, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _config(workdir: Path, push: str, extra: str = "") -> str:
    return (f"template:\n  train: python3 train.py {{i}}\nresource: []\nhosts:\n  push1: "
            f"{{workdir: {workdir}}}\nsync: {{push: {push}{extra}}}\n---\ni: [1, 2]\n")


def _tree(top: Path):
    """What is in a workdir, leaving out what running the code made there."""
    return sorted(str(p.relative_to(top)) for p in top.rglob("*") if not {"output", "__pycache__"} & set(p.parts))


def test_h13_changed_compares_size_mtime_and_kind():
    local = [("a", 3, 10, "f"), ("b", 3, 10, "f"), ("c", 3, 10, "f"), ("d", 3, 10, "l")]
    assert changed(local, [[3, 10, "f"], None, [3, 11, "f"], [3, 10, "f"]]) == local[1:]


def test_h13_push_of_a_git_work_tree(server, tmp_path: Path):
    _require_git()
    home = sshd.make_home(tmp_path / "home", [server])
    project = tmp_path / "project"
    (project / "pkg").mkdir(parents=True)
    (project / "train.py").write_text("import sys\nfrom pkg.model import NAME\nprint(NAME, sys.argv[1])\n")
    (project / "pkg" / "__init__.py").write_text("")
    (project / "pkg" / "model.py").write_text("NAME = 'resnet'\n")
    (project / ".gitignore").write_text("ignored.bin\noutput/\n")
    _git(project, "init", "-q")
    _git(project, "add", ".")
    _git(project, "commit", "-q", "-m", "code")
    (project / "notes.txt").write_text("untracked, not ignored\n")
    (project / "ignored.bin").write_bytes(b"\0" * 1000)
    outside = tmp_path / "datasets"
    outside.mkdir()
    (project / "data").symlink_to(outside, target_is_directory=True)
    (project / "model.py").symlink_to("pkg/model.py")
    remote = Path(server.workdir) / "git"
    write(project, _config(remote, '["."]'))
    env = {"HOME": str(home)}

    code, out, err = run([], project, env)
    assert code == 0, out + err
    assert "host push1: pushing 7 of 7 files" in out
    assert "warning: host push1: push: refused 'data': a symlink to " in err
    for i in (1, 2):
        log, = (project / "output" / f"I_{i}").glob("log.train.*")
        assert log.read_text() == f"resnet {i}\n"  # the code was there before the first command
    assert _tree(remote) == [".gitignore", "model.py", "notes.txt", "params.yaml", "pkg", "pkg/__init__.py",
                             "pkg/model.py", "train.py"]
    assert os.readlink(remote / "model.py") == "pkg/model.py"
    for name in ("train.py", "pkg/model.py", "notes.txt"):
        assert (remote / name).stat().st_mtime_ns == (project / name).stat().st_mtime_ns
    inodes = {name: (remote / name).lstat().st_ino for name in _tree(remote)}

    code, out, err = run(["-f"], project, env)
    assert code == 0, out + err
    assert "host push1: code up to date (7 files)" in out and "pushing" not in out
    assert {name: (remote / name).lstat().st_ino for name in _tree(remote)} == inodes

    before = (project / "pkg" / "model.py").stat().st_mtime_ns
    (project / "pkg" / "model.py").write_text("NAME = 'vitb16'\n")  # same size: only the mtime differs
    os.utime(project / "pkg" / "model.py", ns=(before + 1000, before + 1000))
    code, out, err = run(["-f"], project, env)
    assert code == 0, out + err
    assert "host push1: pushing 1 of 7 files" in out
    assert load(project / "output" / "I_1" / "stat")["train"] == "finished"
    assert (remote / "pkg" / "model.py").read_text() == "NAME = 'vitb16'\n"
    assert (remote / "pkg" / "model.py").stat().st_mtime_ns == before + 1000


def test_h13_push_outside_git_sends_everything_but_the_excluded(server, tmp_path: Path):
    home = sshd.make_home(tmp_path / "home", [server])
    project = tmp_path / "plain"
    (project / "data" / "small").mkdir(parents=True)
    (project / "data" / "small" / "a.csv").write_text("1,2\n")
    (project / "data" / "small" / "b.tmp").write_text("scratch\n")
    (project / "data" / "big.bin").write_text("not pushed\n")
    (project / "train.py").write_text("import sys\nprint(open('data/small/a.csv').read().strip(), sys.argv[1])\n")
    workdir = Path(server.workdir) / "plain"
    write(project, _config(workdir, '["train.py", "data/small"]', ', exclude: ["*.tmp"]'))
    code, out, err = run([], project, {"HOME": str(home)})
    assert code == 0, out + err
    assert (workdir / "data" / "small" / "a.csv").read_text() == "1,2\n"
    assert not (workdir / "data" / "small" / "b.tmp").exists() and not (workdir / "data" / "big.bin").exists()
    log, = (project / "output" / "I_2").glob("log.train.*")
    assert log.read_text() == "1,2 2\n"


@pytest.mark.parametrize("push, message", [
    ('["../elsewhere"]', "sync: push: '../elsewhere' must be a path inside the working directory"),
    ('["/etc"]', "sync: push: '/etc' must be a path inside the working directory"),
    ('["missing"]', "sync: push: 'missing' does not exist here"),
    ('"."', "sync: 'push' must be a list of paths"),
])
def test_h13_bad_push_setting_is_one_line_and_nothing_runs(server, tmp_path: Path, push, message):
    write(tmp_path, _config(Path(server.workdir) / "bad", push))
    code, out, err = run([], tmp_path, {"HOME": str(sshd.make_home(tmp_path / "home", [server]))})
    assert code == 2 and err.startswith(f"params.yaml: {message}"), err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "output").exists()
