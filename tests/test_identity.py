"""An experiment is its full param set, never its (lossy) directory name (SPEC I1).

A name keeps `%g` of a number, the last 100 characters of a string and the basename of a path,
so different params can share one. A finished directory must never make a task with other params
"already finished".
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from runlib import load, run, statuses, write

from mlrunner.plan import config as config_module
from mlrunner.plan.resume import review
from mlrunner.run.state import FINISHED, Experiment
from mlrunner.plan.sweep import expand, same_value

LONG = "x" * 100


def _sweep(values: list) -> str:
    return "template:\n  show: echo {v} > got\nresource: [0]\n---\nv: " + yaml.safe_dump(values, default_flow_style=True)


@pytest.mark.parametrize("first, second", [
    (1000001, 1000002),  # both `V_1e+06`
    (0.1, 0.1000001),  # both `V_0.1`
    ("a" + LONG, "b" + LONG),  # the same last 100 characters
])
def test_I1_a_lossy_name_never_makes_other_params_already_finished(tmp_path: Path, first, second):
    write(tmp_path, _sweep([first]))
    code, out, _ = run([], tmp_path)
    assert code == 0 and "Finished: 1" in out
    (directory,) = [d for d in (tmp_path / "output").iterdir() if d.is_dir()]
    write(tmp_path, _sweep([second]))
    code, out, _ = run([], tmp_path)
    assert code == 0, out
    assert "already finished: 0" in out and "Finished: 1" in out
    assert f"NOTE    output/{directory.name} holds v: {first!r}; this experiment (v: {second!r}) is output/" in out
    assert load(directory / "param")["v"] == first  # the first experiment's record is untouched
    (other,) = [d for d in (tmp_path / "output").iterdir() if d.is_dir() and d != directory]
    assert other.name.startswith(directory.name + "-") and load(other / "param")["v"] == second
    assert statuses(other) == {"show": "finished"}
    # Both are now found again where they are, and nothing runs.
    for values in ([first], [second], [first, second]):
        write(tmp_path, _sweep(values))
        code, out, _ = run([], tmp_path)
        assert code == 0 and "commands to run: 0" in out and f"already finished: {len(values)}" in out


def test_I1_a_path_value_named_by_its_basename(tmp_path: Path):
    for place in ("one", "two"):
        (tmp_path / place / "data").mkdir(parents=True)
    write(tmp_path, _sweep(["one/data"]))
    assert run([], tmp_path)[0] == 0
    assert load(tmp_path / "output" / "V_data" / "param")["v"] == "one/data"
    write(tmp_path, _sweep(["two/data"]))
    code, out, _ = run([], tmp_path)
    assert code == 0 and "Finished: 1" in out and "already finished: 0" in out
    moved = [d for d in (tmp_path / "output").iterdir() if d.name.startswith("V_data-")]
    assert len(moved) == 1 and load(moved[0] / "param")["v"] == "two/data"


def test_I1_dry_run_shows_the_new_name_and_writes_nothing(tmp_path: Path):
    write(tmp_path, _sweep([1000001]))
    assert run([], tmp_path)[0] == 0
    before = sorted(p.name for p in (tmp_path / "output").rglob("*"))
    write(tmp_path, _sweep([1000002]))
    code, out, _ = run(["--dry-run"], tmp_path)
    assert code == 0
    assert "# output/V_1e+06 holds v: 1000001; this experiment (v: 1000002) is output/V_1e+06-" in out
    assert "> output/V_1e+06-" in out
    assert sorted(p.name for p in (tmp_path / "output").rglob("*")) == before


# The randomized property: values chosen to collide in `%g` and in the 100-character cut -------------

def _colliding(rng: random.Random) -> object:
    kind = rng.randrange(5)
    if kind == 0:
        return 1000000 + rng.randrange(4)  # %g: 1e+06
    if kind == 1:
        return rng.choice([0.1, 0.1000001, 0.10000001, 1e-05, 1.00000001e-05])
    if kind == 2:
        return rng.choice("ab") + LONG  # cut to the same last 100 characters
    if kind == 3:
        return rng.choice([True, "T", 1, "1", 1.0])  # `T` and `1` as names, of other types
    return rng.choice(["x", "y"])


def _random_sweep(rng: random.Random) -> dict:
    keys = rng.sample(["a", "b", "seed"], rng.randint(1, 3))
    return {key: list(dict.fromkeys(_colliding(rng) for _ in range(rng.randint(1, 3)))) for key in keys}


def _plan(tmp_path: Path, sweep: dict, defaults: dict):
    text = yaml.safe_dump({"template": {"t": "true [a] [b]"}, "default": defaults}, sort_keys=False)
    (tmp_path / "params.yaml").write_text(text + "---\n" + yaml.safe_dump(sweep, sort_keys=False))
    config = config_module.load(str(tmp_path / "params.yaml"))
    return config, expand(config, config.sweeps, str(tmp_path / "out"))


class _Done:
    """What `launch` returns in place of a process: these records are written without running."""

    pgid = None


def _run_plan(config, plan, root: str) -> None:
    """Record every task's commands as the runner does, with a launch that runs nothing."""
    for task, verdict in zip(plan.tasks, review(plan, config.templates, root, no_subdir=False, force=False,
                                                on_change="rerun")):
        if verdict.start is None:
            continue
        Path(task.output).mkdir(parents=True, exist_ok=True)
        experiment = Experiment(task.output, task.name)
        for command in task.commands[verdict.start:]:
            param = dict(task.params, _name=task.name, _output=task.output, _time="t", _scripts={})
            claim = experiment.start(command, rerun=True, worker="0", log=f"{task.output}/log.{command}.t",
                                     line=lambda log: log, launch=lambda line: _Done(), param=param)
            assert claim.verdict == "run"
            experiment.finish(command, FINISHED, 0.0)


def test_I1_random_colliding_sweeps_never_reuse_another_experiments_record(tmp_path: Path):
    """200 random sweeps, each run, then run again with a changed subset of values (and sometimes a
    changed default): a task is only ever taken as finished when its full params match the record."""
    rng = random.Random(20261128)
    checked = 0
    for round_number in range(200):
        directory = tmp_path / str(round_number)
        directory.mkdir()
        defaults = {"a": 0, "b": 0}
        sweep = _random_sweep(rng)
        config, plan = _plan(directory, sweep, defaults)
        _run_plan(config, plan, str(directory / "out"))
        changed = {key: [_colliding(rng) if rng.random() < 0.5 else v for v in values] for key, values in sweep.items()}
        changed = {key: list(dict.fromkeys(values)) for key, values in changed.items()}
        if rng.random() < 0.3:
            defaults = {"a": 1, "b": 0}
        config, plan = _plan(directory, changed, defaults)
        # Under --keep-changed a changed default may stand (I2), but the params that name a task never.
        for task, verdict in zip(plan.tasks, review(plan, config.templates, str(directory / "out"),
                                                    no_subdir=False, force=False, on_change="keep")):
            if verdict.start is not None:
                continue  # it runs: nothing is taken as finished
            recorded = {k: v for k, v in load(Path(task.output) / "param").items() if not k.startswith("_")}
            assert all(same_value(recorded[k], task.params[k]) for k in task.named_by), (task.output, recorded)
            if not verdict.changed:
                assert recorded.keys() == task.params.keys(), (task.output, recorded, task.params)
                assert all(same_value(recorded[k], v) for k, v in task.params.items()), (task.output, recorded)
            checked += 1
        _run_plan(config, plan, str(directory / "out"))  # the second run itself must keep them apart too
        names = [task.output for task in plan.tasks]
        assert len(names) == len(set(names))
    assert checked > 100  # the property was exercised, not vacuously true
