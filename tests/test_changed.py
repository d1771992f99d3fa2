"""A changed config is seen, never silently reused (SPEC I2): params, templates, and the two flags."""

from __future__ import annotations

import re
from pathlib import Path

from runlib import load, run, statuses, write

CONFIG = """
    template:
      train: echo train {lr} {_time} {_resource} {_host} >> trained
      test: echo test {lr} >> tested
    default: {lr: LR}
    resource: [0]
    ---
    seed: [1, 2]
    """


def _config(tmp_path: Path, lr: float = 0.1, train: str = "echo train {lr} {_time} {_resource} {_host} >> trained"):
    write(tmp_path, CONFIG.replace("LR", str(lr)).replace("echo train {lr} {_time} {_resource} {_host} >> trained", train))


def _lines(path: Path) -> list:
    return path.read_text().splitlines() if path.exists() else []


def _logs(tmp_path: Path) -> list:
    return sorted(p.name for p in (tmp_path / "output").rglob("log.*"))


def test_I2_a_changed_default_stops_the_run_before_anything_starts(tmp_path: Path):
    _config(tmp_path, lr=0.1)
    assert run([], tmp_path)[0] == 0
    logs, param = _logs(tmp_path), (tmp_path / "output" / "Seed_1" / "param").read_bytes()
    _config(tmp_path, lr=0.01)
    code, out, err = run([], tmp_path)
    assert code == 2 and out == ""
    assert "the config changed for 4 finished command(s) of 2 experiment(s)" in err
    assert "output/Seed_1 (train, test): lr: 0.1 -> 0.01" in err
    assert "--rerun-changed" in err and "--keep-changed" in err and "Traceback" not in err
    assert _logs(tmp_path) == logs and (tmp_path / "output" / "Seed_1" / "param").read_bytes() == param
    assert len(_lines(tmp_path / "trained")) == 2  # nothing ran


def test_I2_rerun_changed_runs_them_and_records_the_new_params(tmp_path: Path):
    _config(tmp_path, lr=0.1)
    assert run([], tmp_path)[0] == 0
    _config(tmp_path, lr=0.01)
    code, out, _ = run(["--rerun-changed"], tmp_path)
    assert code == 0 and "Finished: 4" in out and "already finished: 0" in out
    assert load(tmp_path / "output" / "Seed_1" / "param")["lr"] == 0.01
    assert _lines(tmp_path / "tested")[-2:] == ["test 0.01", "test 0.01"]
    code, out, _ = run([], tmp_path)  # now the records match the config
    assert code == 0 and "commands to run: 0" in out


def test_I2_keep_changed_keeps_their_results(tmp_path: Path):
    _config(tmp_path, lr=0.1)
    assert run([], tmp_path)[0] == 0
    _config(tmp_path, lr=0.01)
    code, out, _ = run(["--keep-changed"], tmp_path)
    assert code == 0 and "commands to run: 0" in out and "already finished: 4" in out
    param = load(tmp_path / "output" / "Seed_1" / "param")
    assert param["lr"] == 0.01 and param["_kept"][-1]["was"] == {"lr": 0.1}  # what it stands for, what ran (T10)
    assert run([], tmp_path)[0] == 0  # kept is remembered: not asked again (T5)


def test_I2_a_changed_template_reruns_that_command_and_the_later_ones(tmp_path: Path):
    _config(tmp_path)
    assert run([], tmp_path)[0] == 0
    _config(tmp_path, train="echo TRAIN {lr} >> trained")
    code, _, err = run([], tmp_path)
    assert code == 2 and "output/Seed_1 (train): template of train" in err
    code, out, _ = run(["--rerun-changed"], tmp_path)
    assert code == 0 and "Finished: 4" in out  # train changed; test follows it (R6)
    assert _lines(tmp_path / "trained")[-2:] == ["TRAIN 0.1", "TRAIN 0.1"]


def test_I2_only_a_later_command_changed_leaves_the_earlier_one(tmp_path: Path):
    _config(tmp_path)
    assert run([], tmp_path)[0] == 0
    write(tmp_path, (tmp_path / "params.yaml").read_text().replace("echo test {lr} >> tested", "echo TEST {lr} >> tested"))
    code, out, _ = run(["--rerun-changed"], tmp_path)
    assert code == 0 and "Finished: 2" in out and "already finished: 2" in out
    assert len(_lines(tmp_path / "trained")) == 2


def test_I2_what_varies_by_design_is_not_a_change(tmp_path: Path):
    """`_time`, the worker's resource and host, and the log name differ from run to run."""
    _config(tmp_path)
    assert run([], tmp_path)[0] == 0
    code, out, err = run(["-r", "3,4"], tmp_path)  # another worker, another run time
    assert (code, err) == (0, "") and "commands to run: 0" in out


def test_I2_dry_run_and_status_show_what_changed(tmp_path: Path):
    _config(tmp_path, lr=0.1)
    assert run([], tmp_path)[0] == 0
    before = _logs(tmp_path)
    _config(tmp_path, lr=0.01)
    code, out, _ = run(["--dry-run"], tmp_path)
    assert code == 0
    assert "# 1/2 output/Seed_1 (finished) changed: train, test: lr: 0.1 -> 0.01" in out  # listed, not started (T2)
    assert "# 1/2 output/Seed_1 (gpu: 0) changed: train, test:" in run(["--dry-run", "--rerun-changed"], tmp_path)[1]
    assert "Changed since they finished: 2 experiment(s)" in out
    code, out, _ = run(["--status"], tmp_path)
    assert code == 0
    assert re.search(r"^Seed_1 +train: changed \(\d+\.\ds\), test: changed \(\d+\.\ds\), changed: lr: 0.1 -> 0.01$",
                     out, re.M), out
    assert "changed: 4" in out
    assert _logs(tmp_path) == before


def test_I2_force_reruns_everything_without_asking(tmp_path: Path):
    _config(tmp_path, lr=0.1)
    assert run([], tmp_path)[0] == 0
    _config(tmp_path, lr=0.01)
    code, out, _ = run(["-f"], tmp_path)
    assert code == 0 and "Finished: 4" in out
    assert statuses(tmp_path / "output" / "Seed_2") == {"train": "finished", "test": "finished"}


def test_I2_flags_exclude_each_other(tmp_path: Path):
    _config(tmp_path)
    code, _, err = run(["--rerun-changed", "--keep-changed"], tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1
