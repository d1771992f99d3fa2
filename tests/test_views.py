"""The views of a sweep answer the whole question (SPEC T3, T4, T12, T13's --status), tried from
the user's side: the CLI run from another directory, a real bash command writing `\\r` progress,
a real pty for the terminal table."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runlib import REPO, environment, run, start, write

SWEEP = """
template:
  train: echo loss 0.{seed}{lr}; echo acc {seed}
resource: ['', '']
alias:
  opt: {fast: {lr: 1, warm: 0}, slow: {lr: 2, warm: 4}}
metric:
  loss: {command: train, regex: 'loss ([\\d.]+)'}
  acc: {command: train, regex: 'acc (\\d+)'}
---
seed: [3, 1, 2]
opt: [fast, slow]
"""


def _finished(tmp_path: Path) -> Path:
    """The sweep run to its end into project/out; the views are asked from `tmp_path/elsewhere`."""
    project = tmp_path / "project"
    project.mkdir()
    write(project, SWEEP, "exp.yaml")
    code, out, err = run(["-y", "exp.yaml", "-o", "out"], project)
    assert code == 0, out + err
    (tmp_path / "elsewhere").mkdir()
    return project


def _examine(tmp_path: Path, *flags: str):
    return run(["-o", str(tmp_path / "project" / "out"), "--examine", *flags], tmp_path / "elsewhere")


def _rows(tsv: str):
    header, *rows = [line.split("\t") for line in tsv.splitlines()]
    return header, rows


# T3: pending experiments, elapsed time, ETA; T13: the last log line, cut to the width


PROGRESS = """
template:
  train: for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do printf 'epoch %s/20 loss 0.%s\\r' $i $i; sleep 0.5; done; echo done
resource: ['']
---
seed: [1, 2, 3]
"""


def test_T3_T13_status_counts_pending_shows_elapsed_eta_and_the_last_progress_line(tmp_path: Path):
    """A real bash command redraws its progress with `\\r`: --status, asked from another directory,
    counts the experiments not started yet, shows how long the running one has run and the
    progress it last drew; the run's ETA appears once a command has finished."""
    project = tmp_path / "project"
    project.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write(project, PROGRESS, "exp.yaml")
    runner = start(["-y", "exp.yaml", "-o", "out"], project)
    try:
        deadline = time.monotonic() + 30
        out = ""
        while time.monotonic() < deadline:
            if not (project / "out" / ".mlrunner-config").exists():  # the run has not begun yet
                time.sleep(0.1)
                continue
            code, out, err = run(["-o", str(project / "out"), "--status"], elsewhere, env={"COLUMNS": "60"})
            assert code == 0, err
            if re.search(r"epoch [2-9]/20", out):
                break
            time.sleep(0.3)
        assert "Seed_1  train: running (0:00:0" in out and " so far)" in out, out
        assert "Seed_2  train: pending" in out and "Seed_3  train: pending" in out, out
        assert "Experiments: 3; pending: 2, running: 1" in out, out
        assert "ETA once a command has finished" in out, out
        running = out.split("Running now: 1\n")[1].splitlines()[0]
        assert re.fullmatch(r"  Seed_1  train  0:00:0\d  epoch \d+/20 loss 0\.\d+", running), running
        code, narrow, _ = run(["-o", str(project / "out"), "--status"], elsewhere, env={"COLUMNS": "24"})
        line = narrow.split("Running now: 1\n")[1].splitlines()[0]
        assert len(line) == 23 and line.endswith("…"), line  # one column kept free
    finally:
        runner.terminate()
        runner.communicate(timeout=60)


def test_T3_eta_counts_down_between_the_run_records_writings(tmp_path: Path):
    """The run record is rewritten only when its counts change: the ETA it holds is aged by the
    time since, so a --status a minute later does not promise the same minutes again."""
    from mlrunner.run.runs import describe
    record = tmp_path / ".mlrunner-run.h.1"
    record.write_text("x")
    os.utime(record, (time.time() - 60, time.time() - 60))
    run_ = {"pid": 1, "host": "h", "started": time.time() - 120, "done": 1, "total": 4, "running": 1,
            "eta": 100, "path": str(record)}
    assert ", ETA 0:00:40" in describe(run_) or ", ETA 0:00:39" in describe(run_)
    assert ", ETA 0:00:00" in describe(dict(run_, eta=30))


def test_T13_last_line_reads_a_bounded_tail(tmp_path: Path):
    """The last line of a 5 MB log with no newline, read from its last 64 KiB: memory stays small,
    the cut start is marked, escape sequences never reach the terminal."""
    from mlrunner.view.status import last_line
    log = tmp_path / "log"
    log.write_bytes(b"x" * 5_000_000 + b"\x1b[31mred\x1b[0m end")
    text = last_line(str(log))
    assert text.startswith("…xxx") and text.endswith("xred end") and "\x1b" not in text
    assert len(text) <= 64 * 1024 + 1
    log.write_bytes(b"first\nepoch 1\repoch 2\r\n\n")
    assert last_line(str(log)) == "epoch 2"


# T4: the terminal table, the columns, --sort


def _pty_output(argv, cwd: Path) -> str:
    """Run with stdout on a real pseudo-terminal; returns what the terminal received."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(argv, cwd=cwd, env=environment({"COLUMNS": "200"}), stdout=follower,
                               stderr=subprocess.PIPE)
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(30)
    os.close(leader)
    assert process.returncode == 0, process.stderr.read()
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_T4_examine_on_a_terminal_is_an_aligned_table_and_tsv_when_piped(tmp_path: Path):
    project = _finished(tmp_path)
    shown = _pty_output([sys.executable, "-m", "mlrunner", "-o", str(project / "out"), "--examine"],
                        tmp_path / "elsewhere")
    lines = shown.splitlines()
    assert "\t" not in shown and len(lines) == 7, shown
    assert re.split(r"\s+", lines[0]) == ["experiment", "seed", "opt", "lr", "warm", "loss", "acc", "status"]
    starts = [lines[0].index(column) for column in ("seed", "opt", "status")]
    assert all(line[start - 2:start] == "  " for line in lines[1:] for start in starts[1:]), shown
    assert re.fullmatch(r"Seed_1-Opt_fast\s+1\s+fast\s+1\s+0\s+0.11\s+1\s+finished", lines[1]), shown
    code, out, _ = _examine(tmp_path)
    header, rows = _rows(out)
    assert code == 0 and header == ["experiment", "seed", "opt", "lr", "warm", "loss", "acc", "status"]
    assert rows[0] == ["Seed_1-Opt_fast", "1", "fast", "1", "0", "0.11", "1", "finished"]


def test_T4_sort_numbers_by_value_descending_and_empty_last(tmp_path: Path):
    project = _finished(tmp_path)
    for log in (project / "out" / "Seed_2-Opt_slow").glob("log.train.*"):
        log.write_text("crashed\n")  # no metric: its cell is empty
    code, out, _ = _examine(tmp_path, "--sort", "-loss")
    _, rows = _rows(out)
    assert code == 0 and [row[5] for row in rows] == ["0.32", "0.31", "0.21", "0.12", "0.11", ""]
    code, out, _ = _examine(tmp_path, "--sort", "loss")
    assert [row[5] for row in _rows(out)[1]] == ["0.11", "0.12", "0.21", "0.31", "0.32", ""]
    code, _, err = _examine(tmp_path, "--sort", "los")
    assert code == 2 and err.strip().startswith("mlrunner: --sort: no column 'los' (columns: experiment, seed")
    assert "Traceback" not in err


def test_T4_examine_marks_changed_what_status_calls_changed(tmp_path: Path):
    project = _finished(tmp_path)
    _examine(tmp_path)  # the index keeps these rows
    config = project / "exp.yaml"
    config.write_text(config.read_text().replace("echo acc {seed}", "echo acc {seed}; true"))
    code, out, _ = _examine(tmp_path)
    assert code == 0 and {row[-1] for row in _rows(out)[1]} == {"changed"}, out
    _, status, _ = run(["-o", str(project / "out"), "--status"], tmp_path / "elsewhere")
    assert "Experiments: 6; changed: 6" in status


# T12: --best, --mean-over, Examiner.from_output


def test_T12_best_rows_lowest_first_or_highest_with_a_minus(tmp_path: Path):
    _finished(tmp_path)
    code, out, err = _examine(tmp_path, "--best", "loss", "2")
    assert code == 0 and [row[0] for row in _rows(out)[1]] == ["Seed_1-Opt_fast", "Seed_1-Opt_slow"]
    assert "lowest first" in err
    code, out, err = _examine(tmp_path, "--best", "-loss")
    assert [row[5] for row in _rows(out)[1]] == ["0.32", "0.31", "0.22", "0.21", "0.12", "0.11"]
    code, _, err = _examine(tmp_path, "--best", "loss", "zero")
    assert code == 2 and "--best takes a metric and a count of rows" in err


def test_T12_mean_over_seed_groups_the_other_params(tmp_path: Path):
    _finished(tmp_path)
    code, out, _ = _examine(tmp_path, "--mean-over", "seed", "--sort", "opt")
    header, rows = _rows(out)
    assert code == 0 and header == ["opt", "lr", "warm", "n", "loss", "acc"]
    assert rows == [["fast", "1", "0", "3", "0.21 ± 0.1", "2 ± 1"], ["slow", "2", "4", "3", "0.22 ± 0.1", "2 ± 1"]]
    code, _, err = _examine(tmp_path, "--mean-over", "sed")
    assert code == 2 and "--mean-over: no column 'sed'" in err


def test_T12_examiner_from_the_output_tree_alone(tmp_path: Path, monkeypatch):
    """From another directory, with no config at hand: the tree's own `metric:` regexes, rows with
    name, directory and status, params in sweep order; the 0.5.9 Examiner's rows carry names too."""
    project = _finished(tmp_path)
    (project / "exp.yaml").unlink()  # the copy in the tree is enough
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setitem(sys.modules, "pandas", None)
    from mlrunner.examine import Examiner
    examiner = Examiner.from_output(project / "out")
    rows = examiner.table()
    assert list(rows[0]) == ["experiment", "directory", "seed", "opt", "lr", "warm", "loss", "acc", "status"]
    assert rows[0]["experiment"] == rows[0].name == "Seed_1-Opt_fast"
    assert rows[0]["directory"] == str(project / "out" / "Seed_1-Opt_fast")
    assert (rows[0]["loss"], rows[0]["acc"], rows[0]["status"]) == (0.11, 1, "finished")
    plain = Examiner()
    plain.exam(project / "out")
    assert [row.name for row in plain.table()] == [row.name for row in rows]


def test_T12_examiner_dataframe_is_indexed_by_name(tmp_path: Path):
    pandas = pytest.importorskip("pandas")
    project = _finished(tmp_path)
    from mlrunner.examine import Examiner
    frame = Examiner.from_output(str(project / "out")).table()
    assert isinstance(frame, pandas.DataFrame) and frame.loc["Seed_2-Opt_slow", "loss"] == 0.22
    assert frame.groupby("opt")["loss"].count().tolist() == [3, 3]


def test_T4_flags_need_examine():
    code = subprocess.run([sys.executable, "-m", "mlrunner", "--sort", "loss"], cwd=REPO, env=environment(),
                          capture_output=True, text=True)
    assert code.returncode == 2 and "--sort goes with --examine" in code.stderr


def test_T12_examine_with_a_missing_y_file_is_one_line(tmp_path: Path):
    _finished(tmp_path)
    code, out, err = _examine(tmp_path, "-y", "nope.yaml")
    assert code == 2 and out == "" and err.strip() == "nope.yaml: file not found (create it, or name another one with -y)"
