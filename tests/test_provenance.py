"""P1: every `_runs` entry records the code (commit, dirty digest, submodules), Python, host and
GPU that made it; --examine --provenance shows them; --status and --dry-run say which finished
experiments ran other code than the tree holds now. Real git repos, real runs."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from gitrepo import commit_all, git, make_repo, set_version
from runlib import STAND_INS, load, run, write

from mlrunner.run.gpus import Gpu
from mlrunner.run.provenance import Code, code_notes, code_state, git_files, gpu_fields

PARAMS = "template: {train: python3 train.py}\nresource: ['']\n---\nseed: [1, 2]\n"


def last(directory: Path, command: str = "train") -> dict:
    return load(directory / "stat")["_runs"][command][-1]


def test_P1_dirty_digest_follows_diff_and_untracked_not_ignored(tmp_path: Path):
    repo = make_repo(tmp_path / "repo")
    clean = code_state(str(repo))
    assert clean.commit == git(repo, "rev-parse", "HEAD") and clean.dirty is None
    (repo / "model.ckpt").write_text("ignored")
    assert code_state(str(repo)) == clean  # an ignored file is not code
    set_version(repo, 2)
    edited = code_state(str(repo))
    assert re.fullmatch(r"[0-9a-f]{16}", edited.dirty) and edited.commit == clean.commit
    (repo / "notes.py").write_text("A = 1\n")
    untracked = code_state(str(repo))
    assert untracked.dirty not in (None, edited.dirty)
    (repo / "notes.py").write_text("A = 2\n")  # an untracked file's contents count, not only its name
    assert code_state(str(repo)).dirty not in (None, untracked.dirty)
    (repo / "notes.py").unlink()
    assert code_state(str(repo)) == edited
    set_version(repo, 1)
    assert code_state(str(repo)) == clean
    assert len({clean.digest, edited.digest, untracked.digest}) == 3


def test_P1_detached_head_worktree_and_submodule(tmp_path: Path):
    library = make_repo(tmp_path / "library")
    repo = make_repo(tmp_path / "repo")
    git(repo, "submodule", "add", "-q", str(library), "lib")
    first = commit_all(repo, "with lib")
    set_version(repo, 2)
    second = commit_all(repo)
    git(repo, "checkout", "-q", "--detach", first)
    detached = code_state(str(repo))
    assert detached.commit == first and detached.dirty is None
    assert detached.submodules == {"lib": git(library, "rev-parse", "HEAD")}
    assert "lib/train.py" in git_files(".", submodules=True, cwd=str(repo))
    (repo / "lib" / "train.py").write_text("changed inside the submodule\n")
    assert code_state(str(repo)).dirty is not None
    git(repo, "worktree", "add", "-q", str(tmp_path / "second"), second)
    other = code_state(str(tmp_path / "second"))
    assert other.commit == second and other.submodules == {}  # the second worktree has not checked lib out


def test_P1_every_run_records_code_python_and_host(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", params=PARAMS)
    code, out, err = run([], repo)
    assert code == 0, err
    head = git(repo, "rev-parse", "HEAD")
    for seed in (1, 2):
        entry = last(repo / "output" / f"Seed_{seed}")
        assert entry["commit"] == head and entry["dirty"] is False
        assert entry["node"] and entry["python_version"].count(".") == 2 and os.path.isabs(entry["python"])
        assert "gpu_uuid" not in entry and "code" not in entry  # no GPU known, no snapshot asked for
    set_version(repo, 2)
    code, out, err = run(["-f"], repo)
    assert code == 0, err
    assert last(repo / "output" / "Seed_1")["dirty"] == code_state(str(repo), exclude=[str(repo / "output")]).dirty


def test_P1_outside_git_and_without_git_the_fields_are_absent(tmp_path: Path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "train.py").write_text("print('hi')\n")
    write(plain, PARAMS)
    code, _, err = run([], plain)
    assert code == 0, err
    entry = last(plain / "output" / "Seed_1")
    assert "commit" not in entry and "dirty" not in entry and entry["python_version"]
    repo = make_repo(tmp_path / "repo", params=PARAMS)
    bare = tmp_path / "bin"  # a PATH with bash and python3 but no git
    bare.mkdir()
    for tool, path in (("bash", "/bin/bash"), ("python3", sys.executable)):
        (bare / tool).symlink_to(path)
    code, _, err = run([], repo, env={"PATH": str(bare)})
    assert code == 0, err
    assert "commit" not in last(repo / "output" / "Seed_1")


def test_P1_gpu_name_and_uuid_with_gpu_polling(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", params="template: {train: python3 train.py}\nresource: [1]\n"
                                               "gpu: {busy_above: 80GiB}\n")
    code, _, err = run([], repo, env={"PATH": f"{STAND_INS}:{os.environ['PATH']}", "FAKE_GPUS": "2"})
    assert code == 0, err
    entry = last(repo / "output" / "default")
    assert entry["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert entry["gpu_uuid"] == "GPU-00000001-1f0d-4e57-9d2a-000000000001"


def test_P1_gpu_fields_pure():
    gpus = {"0": Gpu("0", "A100", "GPU-a", None, None, None, None), "1": Gpu("1", "H100", "GPU-b", None, None, None, None)}
    assert gpu_fields("0,1", gpus) == {"gpu_name": "A100,H100", "gpu_uuid": "GPU-a,GPU-b"}
    assert gpu_fields("GPU-b", gpus) == {"gpu_name": "H100", "gpu_uuid": "GPU-b"}
    assert gpu_fields("GPU-x", {}) == {"gpu_uuid": "GPU-x"}  # the id given is a UUID
    assert gpu_fields("0", {}) == {} and gpu_fields("", gpus) == {}


def test_P1_status_dry_run_and_examine_show_the_code(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", params=PARAMS)
    first = git(repo, "rev-parse", "HEAD")
    assert run([], repo)[0] == 0
    code, out, _ = run(["--status"], repo)
    assert code == 0 and "Code:" not in out
    set_version(repo, 2)
    commit_all(repo)
    for flags in (["--status"], ["--dry-run"]):
        code, out, _ = run(flags, repo)
        notes = [line for line in out.splitlines() if line.startswith("Code:")]
        assert code == 0 and notes == [f"Code: 2 finished experiment(s) ran commit {first[:12]}, not the code here "
                                       "now (information only: nothing reruns for it)"], out
    code, out, _ = run(["--examine", "--provenance"], repo)
    header, *rows = [line.split("\t") for line in out.splitlines()]
    assert code == 0 and header[header.index("commit") + 1] == "dirty", out
    assert {row[header.index("commit")] for row in rows} == {first}
    assert {row[header.index("dirty")] for row in rows} == {"no"}
    code, out, _ = run(["--report"], repo)
    page = (repo / "output" / "report.html").read_text()
    assert code == 0 and '<th data-column="code">' in page and f">{first[:12]}</td>" in page
    code, out, _ = run([], repo)  # information only: nothing reruns
    assert code == 0 and "commands to run: 0" in out


def test_P1_code_notes_group_by_code():
    now = Code("c" * 40)
    stat = {"train": "finished", "_runs": {"train": [{"start": 1, "commit": "a" * 40, "dirty": False}]}}
    dirty = {"train": "finished", "_runs": {"train": [{"start": 1, "commit": "a" * 40, "dirty": "d" * 16}]}}
    same = {"train": "finished", "_runs": {"train": [{"start": 1, "commit": "c" * 40, "dirty": False}]}}
    failed = {"train": "failed", "_runs": {"train": [{"start": 1, "commit": "a" * 40}]}}
    old = {"train": "finished", "_runs": {"train": [{"start": 1}]}}
    notes = code_notes([stat, stat, dirty, same, failed, old], now)
    assert [n.split(",")[0] for n in notes] == ["Code: 2 finished experiment(s) ran commit aaaaaaaaaaaa",
                                                f"Code: 1 finished experiment(s) ran commit aaaaaaaaaaaa with changes {'d' * 16}"]
    assert code_notes([stat], Code()) == []  # outside git now: nothing to compare with
