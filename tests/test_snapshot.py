"""P2: `code: snapshot` freezes the code once per run in <output>/.mlrunner/code/<digest>/ and
every command of the run starts there: an edit or a `git checkout` during the sweep changes
nothing for the commands still to start. Real git repos, real runs."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest

import sshd
from gitrepo import commit_all, git, make_repo, set_version
from runlib import load, run, start, wait_until, write

from mlrunner.errors import UserError
from mlrunner.run.provenance import code_state
from mlrunner.run.snapshot import Settings, make

NOBODY = 65534  # `nobody` on Debian and in the CI image
SWEEP = ("code: snapshot\ntemplate:\n  train: python3 train.py {{gate}}\nresource: ['']\ndefault: {{gate: ''}}\n"
         "---\n{{gate: {go}, seed: 1}}\n---\nseed: [2, 3]\n")


def versions(output: Path) -> dict:
    """Experiment -> (VERSION, the file it ran from) as its newest log says."""
    found = {}
    for directory in output.glob("*Seed_*"):
        log = max(directory.glob("log.train.*"), key=lambda p: p.stat().st_mtime_ns)
        _, version, _, path = log.read_text().split()
        found[directory.name] = (int(version), path)
    return found


def test_P2_edit_and_checkout_during_the_sweep_change_nothing(tmp_path: Path):
    go = tmp_path / "go"
    repo = make_repo(tmp_path / "repo", params=SWEEP.format(go=go))
    runner = start([], repo)
    stats = lambda: [p.read_text() for p in (repo / "output").glob("Gate_*/stat")]  # noqa: E731
    assert wait_until(lambda: any("running" in text for text in stats()), 30)
    git(repo, "checkout", "-q", "-b", "other")  # a checkout and an edit while the sweep runs
    set_version(repo, 2)
    commit_all(repo, "version 2")
    (repo / "helper.py").write_text("untracked, new\n")
    go.write_text("")
    out, err = runner.communicate(timeout=60)
    assert runner.returncode == 0, err
    digest = next(line.split()[2] for line in out.splitlines() if line.startswith("Code: snapshot"))
    snapshot = (repo / "output" / ".mlrunner" / "code" / digest).resolve()
    names = sorted(p.name for p in (repo / "output").glob("*Seed_*"))
    assert len(names) == 3 and versions(repo / "output") == {name: (1, str(snapshot / "train.py")) for name in names}
    for name in names:
        assert load(repo / "output" / name / "stat")["_runs"]["train"][-1]["code"] == digest
    assert not (snapshot / "helper.py").exists()
    code, out, err = run(["-f"], repo)  # the next run takes the code as it is now
    assert code == 0, err
    assert versions(repo / "output")["Seed_2"][0] == versions(repo / "output")["Seed_3"][0] == 2
    code, out, _ = run(["--examine"], repo)
    header = out.splitlines()[0].split("\t")
    assert code == 0 and "code" in header
    assert {line.split("\t")[header.index("code")] for line in out.splitlines()[1:]} == {
        digest, load(repo / "output" / "Seed_2" / "stat")["_runs"]["train"][-1]["code"]}


def test_P2_snapshot_holds_the_code_links_unchanged_files_and_is_read_only(tmp_path: Path):
    library = make_repo(tmp_path / "library")
    repo = make_repo(tmp_path / "repo")
    git(repo, "submodule", "add", "-q", str(library), "lib")
    (repo / "data").mkdir()
    (repo / "data" / "big.bin").write_bytes(os.urandom(1 << 16))
    (repo / "link.py").symlink_to("train.py")
    commit_all(repo)
    (repo / "untracked.py").write_text("X = 1\n")
    (repo / "model.ckpt").write_text("ignored")
    (repo / "runs").mkdir()  # an output tree that .gitignore does not name
    (repo / "runs" / "result.txt").write_text("not code")
    output = str(repo / "runs")
    cwd = os.getcwd()
    os.chdir(repo)
    try:
        snapshot, copied, linked = make(output, Settings(), code_state(".", [output]), str(repo))
        files = sorted(str(p.relative_to(snapshot)) for p in Path(snapshot).rglob("*") if not p.is_dir())
        assert files == [".gitignore", ".gitmodules", "data/big.bin", "lib/.gitignore", "lib/train.py", "link.py",
                         "train.py", "untracked.py"]
        assert (copied, linked) == (8, 0) and os.readlink(Path(snapshot, "link.py")) == "train.py"
        assert stat.S_IMODE(os.stat(Path(snapshot, "train.py")).st_mode) & 0o222 == 0
        time.sleep(0.01)
        set_version(repo, 5)  # one file changed: one copy, the rest linked
        second, copied, linked = make(output, Settings(), code_state(".", [output]), str(repo))
        assert second != snapshot and (copied, linked) == (2, 6)  # train.py, and the symlink made anew
        assert os.stat(Path(second, "data/big.bin")).st_ino == os.stat(Path(snapshot, "data/big.bin")).st_ino
        assert os.stat(Path(second, "train.py")).st_ino != os.stat(Path(snapshot, "train.py")).st_ino
        assert "VERSION = 1" in Path(snapshot, "train.py").read_text()
        assert make(output, Settings(), code_state(".", [output]), str(repo)) == (second, 0, 0)  # reused
        Path(second, "train.py").write_text("")  # a reset cut it short: made again, not run like that
        assert make(output, Settings(), code_state(".", [output]), str(repo))[:2] == (second, 2)
        assert "VERSION = 5" in Path(second, "train.py").read_text()
        assert not [p for p in Path(output, ".mlrunner", "code").iterdir() if p.name.startswith(".")]  # no leftovers
    finally:
        os.chdir(cwd)


def test_P2_bad_input_one_line_exit_2_nothing_written(tmp_path: Path):
    plain = tmp_path / "plain"
    plain.mkdir()
    write(plain, "code: snapshot\ntemplate: {train: 'true'}\nresource: ['']\n")
    code, out, err = run([], plain)
    assert code == 2 and "code: snapshot needs a git work tree" in err and len(err.strip().splitlines()) == 1
    assert not (plain / "output").exists()
    for value, message in (("snapshots", "params.yaml:1: 'code' must be"),
                           ("{snapshot: true, max_size: lots}", "params.yaml:1: code: max_size 'lots' is not a size"),
                           ("{snap: true}", "params.yaml:1: code: unknown key 'snap'")):
        write(plain, f"code: {value}\ntemplate: {{train: 'true'}}\n")
        code, _, err = run([], plain)
        assert code == 2 and err.startswith(message), err
    repo = make_repo(tmp_path / "repo", params="code: {snapshot: true, max_size: 10KB}\n"
                                                "template: {train: 'true'}\nresource: ['']\n")
    (repo / "weights.bin").write_bytes(b"0" * 20000)
    code, _, err = run([], repo)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "20.3 kB in 4 files, over the limit of 10.0 kB" in err and "max_size: 5GB" in err and ".gitignore" in err
    assert not (repo / "output" / "default").exists() and not list((repo / "output").glob(".mlrunner/code/*/"))
    code, _, err = run(["-o", "../elsewhere"], repo)
    assert code == 2 and "give it as" in err


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    sshd.require_sshd()
    sshd.require_paramiko()
    started, = sshd.start_servers(1, tmp_path_factory, prefix="snap")
    yield started
    started.stop()


def test_P2_H13_a_host_runs_the_same_snapshot_pushed_once(server, tmp_path: Path):
    remote = Path(server.workdir) / "snapshot"
    repo = make_repo(tmp_path / "repo", params=f"code: snapshot\ntemplate: {{train: python3 train.py}}\nresource: []\n"
                                                f"hosts: {{snap1: {{workdir: {remote}}}}}\n---\nseed: [1, 2]\n")
    env = {"HOME": str(sshd.make_home(tmp_path / "home", [server]))}
    set_version(repo, 7)  # a dirty tree: the snapshot holds the edit, the commit does not
    code, out, err = run([], repo, env)
    assert code == 0, out + err
    digest = next(line.split()[2] for line in out.splitlines() if line.startswith("Code: snapshot"))
    assert "host snap1: pushing 4 of 4 files" in out  # .gitignore, params.yaml, train.py, the link to the output
    there = remote / "output" / ".mlrunner" / "code" / digest
    assert versions(repo / "output") == {f"Seed_{i}": (7, str(there / "train.py")) for i in (1, 2)}
    set_version(repo, 1)  # the live tree differs now; the host gets what the snapshot of that run holds
    code, out, err = run(["-f"], repo, env)
    assert code == 0, out + err
    second = next(line.split()[2] for line in out.splitlines() if line.startswith("Code: snapshot"))
    assert second != digest and versions(repo / "output")["Seed_1"] == (1, str(remote / "output" / ".mlrunner" /
                                                                          "code" / second / "train.py"))
    set_version(repo, 7)
    code, out, err = run(["-f"], repo, env)  # the first digest again: nothing travels
    assert code == 0 and "host snap1: code up to date (4 files)" in out, out + err


def test_P2_an_unreadable_file_is_one_line_and_leaves_no_snapshot(tmp_path: Path):
    """Run as `nobody` (root reads every file): a file of the tree it cannot read stops the
    snapshot with its name, and no half-made snapshot stays."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the snapshot as another user")
    assert pwd.getpwuid(NOBODY).pw_name == "nobody"
    top = Path(tempfile.mkdtemp(prefix="mlrunner-p2-", dir="/tmp"))
    try:
        top.chmod(0o755)
        repo = make_repo(top / "repo")
        (repo / "secret.py").write_text("KEY = 1\n")
        commit_all(repo)
        for path in [repo, *repo.rglob("*")]:
            os.lchown(path, NOBODY, NOBODY)
        os.lchown(repo / "secret.py", 0, 0)
        (repo / "secret.py").chmod(0o600)
        read, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # the child: nobody, in the repo, with a home it may read
            try:
                os.close(read)
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                os.environ["HOME"] = str(repo)
                os.chdir(repo)
                output = str(repo / "output")
                try:
                    make(output, Settings(), code_state(".", [output]), str(repo))
                    message = "no error"
                except UserError as error:
                    message = str(error)
                os.write(write_end, message.encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read) as stream:
            message = stream.read()
        os.waitpid(child, 0)
        assert message == ("code: snapshot: cannot copy secret.py: Permission denied; make it readable or ignore it "
                           "in .gitignore")
        assert os.listdir(repo / "output" / ".mlrunner" / "code") == []
    finally:
        shutil.rmtree(top)
