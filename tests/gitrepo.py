"""Real git repositories for the provenance and snapshot tests (SPEC P1, P2).

`train.py` prints the VERSION written in its own file and the path it ran from, so that a
command's log says which code it ran.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

TRAIN = ('import os, sys, time\n'
         'VERSION = {version}\n'
         'wait = sys.argv[1] if len(sys.argv) > 1 else ""\n'
         'while wait and not os.path.exists(wait):\n'
         '    time.sleep(0.05)\n'
         'print("VERSION", VERSION, "FROM", os.path.abspath(__file__))\n')


def git(cwd: Path, *args: str) -> str:
    """Run git there with an identity of its own (CI has none) and local submodules allowed."""
    done = subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com",
                           "-c", "protocol.file.allow=always", "-c", "init.defaultBranch=main", *args],
                          cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def set_version(repo: Path, version: int) -> None:
    (repo / "train.py").write_text(TRAIN.format(version=version))


def make_repo(repo: Path, version: int = 1, params: str = "") -> Path:
    """A committed repo: train.py, a .gitignore (output, *.ckpt), and params.yaml when given."""
    repo.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "-q")
    set_version(repo, version)
    (repo / ".gitignore").write_text("output/\n*.ckpt\n")
    if params:
        (repo / "params.yaml").write_text(params)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    return repo


def commit_all(repo: Path, message: str = "change") -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")
