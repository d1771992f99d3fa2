"""The records as state.py writes them (SPEC R5, R7, I5): PyYAML's bytes, written with plain os
calls, and read back from the file, never from memory, whenever the file changed."""

from __future__ import annotations

import io
import os
import stat as stat_module
import threading
import time

import yaml

from mlrunner.run import records, state
from mlrunner.run.console import FLUSH_INTERVAL, Console
from mlrunner.run.state import FINISHED, RUN, Experiment


class _Started:
    pgid = None  # no process group: the record holds no pgid


def _run_once(experiment: Experiment, command: str = "train") -> None:
    params = {"lr": 0.1, "_name": "x", "_output": experiment.directory, "_time": "20261128.073859",
              "_scripts": {command: "export CUDA_VISIBLE_DEVICES=0; { python t.py\n} > log 2>&1"}}
    claim = experiment.start(command, rerun=False, worker="0", log=os.path.join(experiment.directory, "log.t"),
                             line=lambda path: f"line {path}", launch=lambda line: _Started(), param=params)
    assert claim.verdict == RUN
    experiment.finish(command, FINISHED, 1.5)


def test_r5_records_hold_pyyaml_bytes_and_the_mode_open_gives(tmp_path):
    _run_once(Experiment(str(tmp_path), "x"))
    for name, sort_keys in (("param", True), ("stat", False)):
        path = tmp_path / name
        text = path.read_text()
        assert text == records._pyyaml_dumps(yaml.safe_load(text), sort_keys, yaml.SafeDumper)
        umask = os.umask(0)
        os.umask(umask)
        assert stat_module.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert yaml.safe_load((tmp_path / "stat").read_text())["train"] == FINISHED
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_r7_a_stat_changed_by_another_run_between_start_and_finish_is_read_from_disk(tmp_path):
    """The mapping written at start is reused at finish only while the file holds its exact bytes."""
    experiment = Experiment(str(tmp_path), "x")
    claim = experiment.start("train", rerun=False, worker="0", log=str(tmp_path / "log.train"),
                             line=lambda path: "true", launch=lambda line: _Started(),
                             param={"_scripts": {"train": "true"}})
    assert claim.verdict == RUN
    other = yaml.safe_load((tmp_path / "stat").read_text())
    other["test"] = "running"  # another mlrunner claimed the task's other command meanwhile
    state.write_record(str(tmp_path / "stat"), other, sort_keys=False)
    experiment.finish("train", FINISHED, 0.1)
    final = yaml.safe_load((tmp_path / "stat").read_text())
    assert (final["train"], final["test"]) == (FINISHED, "running")


def test_r7_read_record_uses_what_it_knows_only_for_the_same_bytes(tmp_path):
    path = str(tmp_path / "stat")
    written = state.write_record(path, {"train": "running"}, sort_keys=False)
    known = {"train": "running"}
    assert state.read_record(path, (written, known)) is known
    assert state.read_record(path, (written + b"x", known)) == {"train": "running"}
    assert state.read_record(path, (written + b"x", known)) is not known


def test_i5_an_ended_record_is_fsynced_file_then_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(state, "FSYNC", True)
    monkeypatch.setattr(state.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                        real(fd)))
    _run_once(Experiment(str(tmp_path), "x"))
    assert len(synced) == 4  # param before the command starts (R7), stat once it ended (I5)
    assert synced[0].startswith(str(tmp_path / ".param.")) and synced[1] == str(tmp_path)
    assert synced[2].startswith(str(tmp_path / ".stat.")) and synced[3] == str(tmp_path)


class _Pipe(io.StringIO):
    """A stream that is not a terminal and counts its flushes."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1


def test_r3_lines_to_a_file_or_pipe_go_out_in_batches_and_all_by_the_end():
    stream = _Pipe()
    with Console(100, 8, stream) as console:
        threads = [threading.Thread(target=lambda k=k: [console.print(f"DONE {k} {i}") for i in range(50)])
                   for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert stream.flushes < 20  # not one per line
        flushed = stream.flushes
        time.sleep(FLUSH_INTERVAL * 3)
        assert stream.flushes > flushed  # a line never waits long
    lines = stream.getvalue().splitlines()
    assert len(lines) == 200 and len(set(lines)) == 200
    console.print("after")  # outside `with`: at once
    assert stream.getvalue().endswith("after\n") and stream.flushes > flushed + 1


def test_i3_a_command_never_runs_before_its_running_record_is_written(tmp_path):
    """The shell waits at its first line until the runner has recorded the command; a runner that
    dies in between (its end of the pipe closes) leaves a shell that exits 125, the line not run."""
    from mlrunner.backends.local import LocalExecutor
    executor = LocalExecutor("0")
    held = executor.start(f"touch {tmp_path}/ran")
    assert held.wait(0.3) is None and not (tmp_path / "ran").exists()  # waiting for the record
    held.release()
    assert held.wait(10) == 0 and (tmp_path / "ran").exists()
    orphan = executor.start(f"touch {tmp_path}/orphan")
    os.close(orphan._gate)  # what the kernel does to a SIGKILLed runner's descriptors
    orphan._gate = None
    assert orphan.wait(10) == 125 and not (tmp_path / "orphan").exists()
