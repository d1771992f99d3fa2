"""Command-line paper cuts a new user hits (issue 14): each is one clear line and exit 2 (R4, R9)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlrunner.flags import duration
from runlib import environment, run, write

CONFIG = """
template:
  train: echo {lr}
default: {lr: 1}
resource: [0]
---
lr: [1, 2]
"""


def _tree(directory: Path) -> list:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.mark.parametrize("output, message", [
    ("afile", "-o afile: is a file; name an output directory"),
    ("afile/sub", "-o afile/sub: cannot be created: "),
    ("/proc/nope", "-o /proc/nope: cannot create files in /proc ("),
])
def test_r4_output_that_cannot_be_written_is_one_line(tmp_path: Path, output: str, message: str):
    write(tmp_path, CONFIG)
    (tmp_path / "afile").write_text("mine\n")
    before = _tree(tmp_path)
    code, out, err = run(["-o", output], tmp_path)
    assert (code, out) == (2, "") and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"mlrunner: {message}"), err
    assert _tree(tmp_path) == before and (tmp_path / "afile").read_text() == "mine\n"


def _without_write_permission() -> list:
    """A prefix that runs a command without the right to write where the mode forbids it.

    Root ignores file modes through CAP_DAC_OVERRIDE; dropping it from the bounding set makes
    root obey them, as any user does.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if not setpriv:
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail("CI=true but setpriv (util-linux) is missing", pytrace=False)
        pytest.skip("setpriv is missing: root cannot be made to obey a directory's mode")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]


@pytest.mark.parametrize("output", ["locked", "locked/out"])
def test_r4_output_dir_without_write_permission_is_one_line(tmp_path: Path, output: str):
    write(tmp_path, CONFIG)
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked").chmod(0o555)
    before = _tree(tmp_path)
    try:
        done = subprocess.run([*_without_write_permission(), sys.executable, "-m", "mlrunner", "-o", output],
                              cwd=tmp_path, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, timeout=60)
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert done.stderr == f"mlrunner: -o {output}: cannot create files in {tmp_path / 'locked'} (Permission denied)\n"
    assert _tree(tmp_path) == before


def test_r9_readers_do_not_check_the_output_for_writing(tmp_path: Path):
    """--dry-run writes nothing, so an unwritable -o is no error there."""
    write(tmp_path, CONFIG)
    (tmp_path / "afile").write_text("")
    code, out, err = run(["-o", "afile", "--dry-run"], tmp_path)
    assert code == 0 and "{ echo 1\n} > afile/Lr_1/log.train." in out, err


@pytest.mark.parametrize("args, hint", [
    (["--dryrun"], "mlrunner: unrecognized arguments: --dryrun; did you mean --dry-run? (see --help)\n"),
    (["--stauts"], "mlrunner: unrecognized arguments: --stauts; did you mean --status? (see --help)\n"),
    (["other.yaml"], "mlrunner: unrecognized arguments: other.yaml; to read other.yaml, use -y other.yaml "
                     "(see --help)\n"),
    (["--zzzzzz"], "mlrunner: unrecognized arguments: --zzzzzz (see --help)\n"),
])
def test_r9_mistyped_flag_or_bare_config_file_gets_a_hint(tmp_path: Path, args, hint):
    write(tmp_path, CONFIG, "other.yaml")
    code, out, err = run(args, tmp_path)
    assert (code, out, err) == (2, "", hint)
    assert _tree(tmp_path) == ["other.yaml"]


@pytest.mark.parametrize("text, seconds", [
    ("90", 90), ("90s", 90), ("90m", 5400), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("1h 30m", 5400),
    ("1.5h", 5400), ("1d2h3m4s", 93784), (" 2m ", 120)])
def test_r9_timeout_durations(text, seconds):
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "h", "1x", "30m1h", "1h1h", "1h-30m", "1 h 30", "-5"])
def test_r9_timeout_bad_durations(tmp_path: Path, text):
    write(tmp_path, CONFIG)
    code, out, err = run(["--timeout", text, "--dry-run"], tmp_path)
    assert (code, out) == (2, "") and f"invalid duration {text!r} (use e.g. 90s, 90m, 2h, 1h30m)" in err


def test_r9_timeout_1h30m_on_the_command_line(tmp_path: Path):
    write(tmp_path, CONFIG)
    code, out, err = run(["--timeout", "1h30m", "-o", "o"], tmp_path)
    assert code == 0, err
    assert "Finished: 2, failed: 0" in out


def test_r9_help_shows_only_real_defaults(tmp_path: Path):
    code, out, err = run(["--help"], tmp_path)
    assert code == 0
    assert "(default: None)" not in out and "(default: False)" not in out
    flat = " ".join(out.split())
    assert "the config file (default: params.yaml)" in flat
    assert "wait this long before SIGKILL (default: 10.0)" in flat
    assert "--report [FILE]" in flat
