"""The index of an output tree (issue 15): a cache that never changes an answer.

A rerun, `--status` and `--examine` keep what they read in `<output>/.mlrunner-index` and use it
while the records have the same inode, size, mtime and ctime. These tests make the records old
enough to be cached (the index skips files changed in the last 2 s), then change them in the ways
that keep a file's size, and check that every answer is the one a reading of the files gives.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from runlib import run, write

from mlrunner.plan import config as config_module
from mlrunner.plan import resume
from mlrunner.run.index import NAME, YOUNG
from mlrunner.plan.sweep import expand

CONFIG = """
    template:
      train: echo score {lr} > /dev/null; echo "score 0.{seed}"
    default: {lr: 0.5}
    resource: [0]
    metric: {score: {command: train, regex: 'score ([0-9.]+)'}}
    ---
    seed: [1, 2, 3]
    """


def _finished_tree(tmp_path: Path, config: str = CONFIG) -> Path:
    write(tmp_path, config)
    code, out, err = run([], tmp_path)
    assert code == 0, err
    time.sleep(YOUNG + 0.1)  # old enough to be cached
    return tmp_path / "output"


def _entries(output: Path, section: str) -> list:
    """The names of the experiments the index has an entry for."""
    return json.loads((output / f"{NAME}.{section}").read_text())["names"]


def _replace_same_size(path: Path, old: str, new: str) -> None:
    """Edit a file in place (same inode, same size): what a signature check must still see."""
    assert len(old) == len(new)
    text = path.read_text()
    assert old in text
    with open(path, "r+") as stream:
        stream.write(text.replace(old, new))


def test_a_rerun_keeps_its_verdicts_and_the_next_one_reads_no_record(tmp_path: Path, monkeypatch):
    output = _finished_tree(tmp_path)
    code, out, _ = run([], tmp_path)
    assert code == 0 and "already finished: 3" in out
    assert sorted(_entries(output, "review")) == ["Seed_1", "Seed_2", "Seed_3"]
    reads = []
    monkeypatch.setattr(resume, "read_record", lambda path: reads.append(path) or {})
    config = config_module.load(str(tmp_path / "params.yaml"))
    plan = expand(config, config.sweeps, str(output))
    verdicts = resume.review(plan, config.templates, str(output), no_subdir=False, force=False)
    assert reads == []
    assert [v.start for v in verdicts] == [None, None, None]
    assert all(v.stat["train"] == "finished" for v in verdicts)


def test_records_changed_in_the_last_seconds_are_not_cached(tmp_path: Path):
    write(tmp_path, CONFIG)
    assert run([], tmp_path)[0] == 0
    (tmp_path / "output" / f"{NAME}.review.journal").unlink()  # what the run itself told: not this case
    assert run([], tmp_path)[0] == 0
    assert not (tmp_path / "output" / f"{NAME}.review").exists()


def test_I2_a_param_edited_in_place_to_the_same_size_is_seen(tmp_path: Path):
    output = _finished_tree(tmp_path)
    assert run([], tmp_path)[0] == 0  # the index is made
    _replace_same_size(output / "Seed_2" / "param", "lr: 0.5", "lr: 0.7")
    code, _, err = run([], tmp_path)
    assert code == 2
    assert "Seed_2 (train): lr: 0.7 -> 0.5" in err


def test_R6_a_stat_edited_in_place_to_failed_runs_the_command_again(tmp_path: Path):
    output = _finished_tree(tmp_path)
    assert run([], tmp_path)[0] == 0
    _replace_same_size(output / "Seed_3" / "stat", "train: finished", "train: failed  ")
    code, out, _ = run([], tmp_path)
    assert code == 0
    assert "Finished: 1" in out and "already finished: 2" in out


def test_I2_a_changed_template_is_seen_with_a_warm_index(tmp_path: Path):
    _finished_tree(tmp_path)
    assert run([], tmp_path)[0] == 0
    write(tmp_path, CONFIG.replace('echo "score 0.{seed}"', 'echo "score 1.{seed}"'))
    code, _, err = run([], tmp_path)
    assert code == 2 and "template of train" in err


def test_a_garbage_or_foreign_index_is_ignored_and_made_again(tmp_path: Path):
    output = _finished_tree(tmp_path)
    assert run([], tmp_path)[0] == 0
    valid = json.loads((output / f"{NAME}.review").read_text())  # its digests match: only the garbage differs
    names = valid["names"]
    assert sorted(names) == ["Seed_1", "Seed_2", "Seed_3"] and len(valid["shared"]) == 1  # one verdict, kept once
    broken = [dict(valid, kinds=[9] * 3), dict(valid, kinds=["0"] * 3), dict(valid, names=[[n] for n in names]),
              dict(valid, own=[]), dict(valid, shared=[7]), dict(valid, shared=[[[], [], "finished"]]),
              dict(valid, own=[[1.0, 2.0]] * 3), dict(valid, own=["0.5"] * 3), dict(valid, digests=[None] * 3),
              dict(valid, shared=[[7, [], {"train": "finished"}]]), dict(valid, shared=[[[3], [], {"train": "finished"}]]),
              dict(valid, shared=[[[], [], {"train": ["finished"]}]])]
    for garbage in ["not json {", json.dumps({"version": 1, "entries": {"Seed_1": ["x", [["train"], ["lr"], {}]]}}),
                    json.dumps([1, 2]), json.dumps({"version": 99}), "[" * 100_000] + [json.dumps(b) for b in broken]:
        (output / f"{NAME}.review").write_text(garbage)
        code, out, err = run([], tmp_path)
        assert code == 0 and "already finished: 3" in out, garbage + err
        assert sorted(_entries(output, "review")) == ["Seed_1", "Seed_2", "Seed_3"]


def test_status_from_the_index_matches_a_reading_of_the_files(tmp_path: Path):
    output = _finished_tree(tmp_path)
    (output / f"{NAME}.review.journal").unlink()
    cold = run(["--status"], tmp_path)
    assert not list(output.glob(f"{NAME}*"))  # --status writes nothing (R9)
    assert run([], tmp_path)[0] == 0  # a rerun makes the index
    warm = run(["--status"], tmp_path)
    assert cold == warm and cold[0] == 0
    assert "Experiments: 3; finished: 3" in warm[1]
    _replace_same_size(output / "Seed_1" / "stat", "train: finished", "train: failed  ")
    assert "Experiments: 3; failed: 1, finished: 2" in run(["--status"], tmp_path)[1]


def test_examine_from_the_index_sees_a_log_grow_and_a_new_log(tmp_path: Path):
    output = _finished_tree(tmp_path)
    cold = run(["--examine"], tmp_path)
    assert cold[0] == 0 and "Seed_2\t2\t0.2\tfinished" in cold[1]
    assert run(["--examine"], tmp_path) == cold
    assert sorted(_entries(output, "examine")) == ["Seed_1", "Seed_2", "Seed_3"]
    log = next((output / "Seed_2").glob("log.train.*"))
    with open(log, "a") as stream:
        stream.write("score 0.25\n")
    assert "Seed_2\t2\t0.25\tfinished" in run(["--examine"], tmp_path)[1]
    (output / "Seed_3" / f"{log.name}.9").write_text("score 0.99\n")  # a newer log of train
    assert "Seed_3\t3\t0.99\tfinished" in run(["--examine"], tmp_path)[1]


def test_examine_ignores_a_malformed_row_under_a_matching_digest(tmp_path: Path):
    output = _finished_tree(tmp_path)
    cold = run(["--examine"], tmp_path)
    valid = json.loads((output / f"{NAME}.examine").read_text())
    row = valid["own"][0]
    for broken in (7, row[:3], [row[0], row[1], row[2], 7], [row[0], row[1], row[2], [[3, []]]],
                   [row[0], row[1], row[2], ["log"]], [[1], row[1], row[2], row[3]]):
        (output / f"{NAME}.examine").write_text(json.dumps(dict(valid, own=[broken] * len(valid["own"]))))
        assert run(["--examine"], tmp_path) == cold, broken


def test_entries_of_deleted_experiments_leave_the_index(tmp_path: Path):
    output = _finished_tree(tmp_path)
    assert run([], tmp_path)[0] == 0
    assert run(["--examine"], tmp_path)[0] == 0
    shutil.rmtree(output / "Seed_1")
    write(tmp_path, CONFIG.replace("seed: [1, 2, 3]", "seed: [2, 3]"))
    (output / "Seed_2" / "stat").write_text((output / "Seed_2" / "stat").read_text())  # a new entry is due
    time.sleep(YOUNG + 0.1)
    assert run([], tmp_path)[0] == 0
    assert run(["--examine"], tmp_path)[0] == 0
    assert sorted(_entries(output, "review")) == ["Seed_2", "Seed_3"]
    assert sorted(_entries(output, "examine")) == ["Seed_2", "Seed_3"]


def test_a_run_tells_the_next_rerun_what_it_ran_and_it_reads_no_record(tmp_path: Path, monkeypatch):
    write(tmp_path, CONFIG)
    assert run([], tmp_path)[0] == 0  # no pause: the run's own journal, not a reading, makes the entries
    output = tmp_path / "output"
    assert (output / f"{NAME}.review.journal").exists()
    reads = []
    monkeypatch.setattr(resume, "read_record", lambda path: reads.append(path) or {})
    config = config_module.load(str(tmp_path / "params.yaml"))
    plan = expand(config, config.sweeps, str(output))
    verdicts = resume.review(plan, config.templates, str(output), no_subdir=False, force=False)
    assert reads == [] and [v.start for v in verdicts] == [None, None, None]
    assert not (output / f"{NAME}.review.journal").exists() and len(_entries(output, "review")) == 3


def test_a_record_changed_after_the_run_is_read_again_despite_the_journal(tmp_path: Path):
    write(tmp_path, CONFIG)
    assert run([], tmp_path)[0] == 0
    _replace_same_size(tmp_path / "output" / "Seed_1" / "stat", "train: finished", "train: failed  ")
    code, out, _ = run([], tmp_path)
    assert code == 0 and "Finished: 1" in out and "already finished: 2" in out


def test_a_task_not_run_whole_is_not_journaled_and_a_torn_line_is_skipped(tmp_path: Path):
    write(tmp_path, CONFIG.replace("      train:", "      prep: 'true'\n      train:"))
    assert run(["-c", "prep"], tmp_path)[0] == 0
    journal = tmp_path / "output" / f"{NAME}.review.journal"
    journal.unlink()  # those tasks ran whole, with their one command
    assert run([], tmp_path)[0] == 0  # train runs now; prep ran before: these tasks did not run whole
    assert not journal.exists() or journal.read_text() == ""
    journal.write_text('["Seed_1", "abc", [[], [], {"train": "finished"}], null]\n["Seed_2", "tor')
    code, out, _ = run([], tmp_path)
    assert code == 0 and "already finished: 6" in out
