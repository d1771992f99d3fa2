"""A fresh sweep starts while its plan is still being made (issue 15): same tasks, same records.

Only a plan whose size is known before its tasks exist is made lazily (one document, no alias,
no value twice in a list), and only a run on an output root without records streams it.
"""

from __future__ import annotations

import threading
from pathlib import Path

from runlib import run, statuses, write

from mlrunner.plan import config as config_module
from mlrunner.plan.sweep import expand

BIG = """
    template:
      a: echo {i} {j}
      b: echo b{i}
    resource: [0, 1, 2, 3]
    ---
    i: [%s]
    j: [x, y]
    """ % ", ".join(str(i) for i in range(600))


def _plan(tmp_path: Path, text: str, **options):
    path = write(tmp_path, text)
    config = config_module.load(str(path))
    return expand(config, config.sweeps, str(tmp_path / "output"), lazy=True, **options)


def test_X1_a_lazy_plan_streams_every_task_in_order_while_it_fills(tmp_path: Path):
    plan = _plan(tmp_path, BIG)
    assert plan.filling and plan.tasks == [] and plan.total == 1200 and plan.command_count == 2400
    seen = []
    reader = threading.Thread(target=lambda: seen.extend(task.index for task in plan.stream()))
    reader.start()
    plan.fill()
    reader.join(10)
    assert seen == list(range(1200)) and not plan.filling
    assert [t.name for t in plan.tasks[:3]] == ["I_0-J_x", "I_0-J_y", "I_1-J_x"]
    assert plan.command_count == 2400


def test_X1_plans_that_could_drop_or_merge_tasks_are_made_whole(tmp_path: Path):
    repeated = BIG.replace("j: [x, y]", "j: [x, y, x]")
    plan = _plan(tmp_path, repeated)
    assert not plan.filling and len(plan.tasks) == plan.total == 1200  # the repeats merged away
    two_documents = BIG.rstrip() + "\n    ---\n    i: [1]\n    j: [z]\n"
    plan = _plan(tmp_path, two_documents)
    assert not plan.filling and plan.total == len(plan.tasks) == 1201


def test_X4_a_sample_of_a_lazy_plan_has_its_size_known(tmp_path: Path):
    plan = _plan(tmp_path, BIG, sample=50, sample_seed=3)
    assert plan.total == 50
    plan.fill()
    assert len(plan.tasks) == 50


def test_R3_a_streamed_run_runs_every_task_once_and_counts_them_all(tmp_path: Path):
    write(tmp_path, BIG)
    code, out, err = run([], tmp_path, timeout=300)
    assert code == 0, err
    assert "Tasks: 1200, commands to run: 2400" in out
    assert "Finished: 2400, failed: 0" in out
    starts = [line for line in out.splitlines() if line.startswith("START")]
    assert len(starts) == 2400 and all("/1200, output/" in line for line in starts)
    assert len([p for p in (tmp_path / "output").iterdir() if p.is_dir()]) == 1200
    assert statuses(tmp_path / "output" / "I_599-J_y") == {"a": "finished", "b": "finished"}
    code, out, _ = run([], tmp_path, timeout=300)  # records now: reviewed, not streamed
    assert code == 0 and "already finished: 2400" in out


def test_C1_a_mistake_in_a_later_document_stops_everything_before_a_task_starts(tmp_path: Path):
    write(tmp_path, BIG.rstrip() + "\n    ---\n    i: [1]\n")  # template a needs j, which this document does not set
    code, out, err = run([], tmp_path)
    assert code == 2 and "template 'a' needs 'j'" in err
    assert not (tmp_path / "output").exists()
