"""The output tree tells the truth: every view answers from the run's own config and records
(SPEC T1, T2, T5-T7, T10), tried as a user would, from the command line."""

from __future__ import annotations

import re
import resource
from pathlib import Path


from runlib import load, run, start, write

EXP = """
template:
  train: echo score {seed} {lr}
default: {lr: 0.1}
metric: {score: {command: train, regex: 'score (\\d+)'}}
---
seed: [1, 2]
"""


def _project(tmp_path: Path) -> Path:
    """A project whose config is exp.yaml, run once into out/; another directory beside it holds a
    params.yaml of another sweep, the one a view would wrongly read."""
    project = tmp_path / "project"
    project.mkdir()
    write(project, EXP, "exp.yaml")
    code, out, err = run(["-y", "exp.yaml", "-o", "out"], project)
    assert code == 0 and "Finished: 2" in out, out + err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write(elsewhere, "template:\n  train: echo other {seed}\n---\nseed: [1, 2, 3]\n")
    return project


def test_T1_the_tree_keeps_its_config_as_params_yaml_and_remembers_where_it_came_from(tmp_path: Path):
    project = _project(tmp_path)
    out = project / "out"
    assert (out / "params.yaml").read_text() == (project / "exp.yaml").read_text()  # R5's name, not exp.yaml
    assert not (out / "exp.yaml").exists()
    entry, = load(out / ".mlrunner-config")["configs"]
    assert entry["path"] == str(project / "exp.yaml") and entry["title"] is None


def test_T1_status_and_examine_from_another_directory_answer_from_the_trees_config(tmp_path: Path):
    project = _project(tmp_path)
    elsewhere, tree = tmp_path / "elsewhere", str(project / "out")
    code, out, err = run(["-o", tree, "--status"], elsewhere)
    assert code == 0 and "Experiments: 2; finished: 2" in out and "changed" not in out, out + err
    code, out, err = run(["-o", tree, "--examine"], elsewhere)
    assert code == 0 and out.splitlines()[1:] == ["Seed_1\t1\t1\tfinished", "Seed_2\t2\t2\tfinished"], out + err
    assert out.splitlines()[0] == "experiment\tseed\tscore\tstatus"  # the metric of exp.yaml
    code, out, err = run(["--report", "-o", tree], elsewhere)
    assert code == 0 and "score" in (project / "out" / "report.html").read_text(), out + err


def test_T1_the_copy_answers_when_the_config_file_is_gone(tmp_path: Path):
    project = _project(tmp_path)
    (project / "exp.yaml").rename(project / "moved.yaml")
    code, out, _ = run(["-o", str(project / "out"), "--examine"], tmp_path / "elsewhere")
    assert code == 0 and "Seed_2\t2\t2\tfinished" in out


def test_T1_an_edit_of_the_remembered_file_shows_as_changed_and_the_hints_repeat_the_flags(tmp_path: Path):
    project = _project(tmp_path)
    config = project / "exp.yaml"
    config.write_text(config.read_text().replace("lr: 0.1", "lr: 0.2"))
    code, out, _ = run(["-o", str(project / "out"), "--status"], tmp_path / "elsewhere")
    assert code == 0 and "changed: 2" in out and "lr: 0.1 -> 0.2" in out
    code, out, err = run(["-y", "exp.yaml", "-o", "out"], project)
    assert code == 2
    assert re.search(r"^mlrunner: to keep their results: \S+ -m mlrunner -y exp\.yaml -o out --keep-changed$", err,
                     re.M), err
    assert "-y exp.yaml -o out --rerun-changed" in err


# T2: --dry-run shows what a run would start now ---------------------------------------------------

def test_T2_dry_run_on_a_half_finished_tree_lists_what_a_run_starts_with_its_count(tmp_path: Path):
    write(tmp_path, """
        template:
          train: echo train {seed}
          test: test {seed} != 2
        resource: ['0', '1']
        ---
        seed: [1, 2, 3]
        """)
    code, out, _ = run([], tmp_path)
    assert code == 1 and "Finished: 5, failed: 1" in out
    code, out, err = run(["--dry-run"], tmp_path)
    assert code == 0 and err == ""
    shown = [line for line in out.splitlines() if not line.startswith("#")]
    assert shown[0] == "export CUDA_VISIBLE_DEVICES=0; { test 2 != 2"
    assert shown[1].startswith("} > output/Seed_2/log.test.") and len(shown) == 3
    assert shown[2] == "Tasks: 3, commands to run: 1"
    assert "# 2/3 output/Seed_2 (gpu: 0)" in out and "Seed_1" not in out and "Seed_3" not in out
    code, rerun, _ = run([], tmp_path)  # what the run prints and starts
    assert code == 1 and "Tasks: 3, commands to run: 1" in rerun and rerun.count("START ") == 1
    code, out, _ = run(["--dry-run", "--all"], tmp_path)
    assert code == 0 and "# 1/3 output/Seed_1 (finished)" in out and "Tasks: 3, commands to run: 1" in out
    assert out.count("# finished: export CUDA_VISIBLE_DEVICES=") == 5
    again = [line for line in out.splitlines() if not line.startswith("#")]
    assert [re.sub(r"\.\d{8}\.\d{6} ", " ", line) for line in again] == [
        re.sub(r"\.\d{8}\.\d{6} ", " ", line) for line in shown]  # the same lines, but the run's time
    code, _, err = run(["--all"], tmp_path)
    assert code == 2 and "--all goes with --dry-run" in err


# T6: many failures -----------------------------------------------------------------------------

def test_T6_two_hundred_failures_are_grouped_capped_and_the_counts_come_last(tmp_path: Path):
    write(tmp_path, """
        template:
          train: echo "no data for {seed}"; [ {seed} -gt 200 ] || exit 3
        resource: ['', '', '', '']
        ---
        seed: {seeds}
        """.replace("{seeds}", str(list(range(1, 201)) + [201])))
    code, out, err = run(["-o", "runs"], tmp_path, env={"MLRUNNER_FSYNC": "0"}, timeout=120)
    assert code == 1, err
    lines = out.splitlines()
    assert lines[-1] == "Finished: 1, failed: 200, skipped: 0, interrupted: 0, already finished: 0"
    assert lines[-2] == "Failed by reason: train: exit status 3: 200"
    assert re.fullmatch(r"    … and 197 more: \S+ -m mlrunner -o runs --status", lines[-3]), lines[-3]
    summary = lines[lines.index("Failed:"):]
    assert len(summary) < 15 and sum(line.endswith("(train: exit status 3)") for line in summary) == 3
    assert sum(line.startswith("        log: runs/Seed_") for line in summary) == 1
    assert "        | no data for " in out


def test_T6_each_reason_is_listed_once_with_its_count(tmp_path: Path):
    write(tmp_path, """
        template:
          train: exit {code}
        resource: ['']
        ---
        code: [3, 3, 4, 3]
        n: [1, 2]
        """)
    code, out, _ = run([], tmp_path)
    assert code == 1
    assert "Failed by reason: train: exit status 3: 2; train: exit status 4: 2" in out
    summary = out[out.index("Failed:"):].splitlines()
    assert [line.split(" (")[-1] for line in summary if line.startswith("    output/")] == [
        "train: exit status 3)", "train: exit status 3)", "train: exit status 4)", "train: exit status 4)"]


# T7: orphans and typos ---------------------------------------------------------------------------

def test_T7_a_sweep_key_one_edit_from_a_template_param_is_refused(tmp_path: Path):
    write(tmp_path, """
        template:
          train: echo {learning_rate} {seed}
        default: {learning_rate: 0.1}
        ---
        seed: [1, 2]
        lerning_rate: [0.01, 0.001]
        """)
    for flags in ([], ["--dry-run"]):
        code, out, err = run(flags, tmp_path)
        assert (code, out) == (2, ""), err
        assert err == ("params.yaml:6: sweep key 'lerning_rate' is used by no template (did you mean "
                       "'learning_rate'?); correct it, or rename it if it only names the directories\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_T7_no_orphan_line_without_orphans_and_far_orphans_still_name_directories(tmp_path: Path):
    write(tmp_path, "template:\n  train: echo {lr}\n---\nlr: [1, 2]\n")
    code, out, _ = run([], tmp_path)
    assert code == 0 and "Orphan params" not in out and "set()" not in out
    write(tmp_path, "template:\n  train: echo {lr}\n---\nlr: [1]\nrepeat: [1, 2]\n")
    code, out, _ = run([], tmp_path)
    assert code == 0 and out.startswith("Orphan params: {'repeat'}\n") and "Lr_1-Repeat_2" in out


# T5, T10: --keep-changed is remembered ---------------------------------------------------------

def test_T5_T10_a_kept_change_is_written_down_and_not_asked_again(tmp_path: Path):
    write(tmp_path, """
        template:
          train: echo acc {seed}
        resource: ['']
        metric: {acc: {command: train, regex: 'acc (\\d+)'}}
        ---
        seed: [1, 2, 3]
        """)
    assert run([], tmp_path)[0] == 0
    config = tmp_path / "params.yaml"  # the script always used adam: say so, as a new param
    config.write_text(config.read_text().replace("echo acc {seed}", "echo acc {seed} [opt]\ndefault: {opt: adam}"))
    code, _, err = run([], tmp_path)
    assert code == 2 and "opt: (unset) -> 'adam'" in err
    code, out, err = run(["--keep-changed"], tmp_path)
    assert code == 0 and "Kept: 3 experiment(s)" in out and "commands to run: 0" in out, out + err
    param = load(tmp_path / "output" / "Seed_2" / "param")
    assert (param["seed"], param["opt"]) == (2, "adam")
    entry, = param["_kept"]
    assert entry["was"] == {"opt": None} and entry["lines"] == {"train": "echo acc 2 --opt adam"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", entry["time"])
    code, out, err = run([], tmp_path)  # a plain run: nothing to ask, nothing to do
    assert (code, err) == (0, "") and "commands to run: 0" in out and "already finished: 3" in out
    code, out, _ = run(["--status"], tmp_path)
    assert "Experiments: 3; finished: 3" in out
    from mlrunner.examine import Examiner
    examiner = Examiner()
    examiner.exam(tmp_path / "output")
    groups: dict = {}
    for experiment in examiner.experiments.values():  # as pandas' groupby('opt') would see them
        groups.setdefault(experiment.param.get("opt"), []).append(experiment.param["seed"])
    assert groups == {"adam": [1, 2, 3]}
    config.write_text(config.read_text().replace("[opt]", "[opt] --v2"))  # changed once more: asked again
    code, _, err = run([], tmp_path)
    assert code == 2 and "template of train" in err


def test_T5_a_kept_value_change_stays_kept_when_a_later_command_runs(tmp_path: Path):
    write(tmp_path, """
        template:
          train: echo {lr}
          test: test -e go
        resource: ['']
        default: {lr: 0.1}
        ---
        seed: [1]
        """)
    assert run([], tmp_path)[0] == 1  # train finished, test failed
    config = tmp_path / "params.yaml"
    config.write_text(config.read_text().replace("lr: 0.1", "lr: 0.2"))
    (tmp_path / "go").touch()
    code, out, err = run(["--keep-changed"], tmp_path)
    assert code == 0 and "Finished: 1" in out, out + err
    param = load(tmp_path / "output" / "Seed_1" / "param")
    assert param["lr"] == 0.2 and param["_kept"][0]["was"] == {"lr": 0.1}
    code, out, err = run([], tmp_path)
    assert (code, err) == (0, "") and "already finished: 2" in out


# Small truths ----------------------------------------------------------------------------------

def test_records_only_newline_ends_a_line_so_a_unicode_line_separator_reads_back():
    from mlrunner.run import records
    for value in ("a\u2028b", "a\u2029b", "a\x85b", "a\rb"):
        data = {"name": value, "_scripts": {"train": f"echo {value}"}}
        assert records.loads(records.dumps(data, True)) == data, repr(value)


def test_a_value_with_a_line_separator_is_finished_not_changed_on_a_rerun(tmp_path: Path):
    write(tmp_path, "template:\n  train: echo {name}\nresource: ['']\n---\nname: [\"a\\u2028b\", plain]\n")
    assert run([], tmp_path)[0] == 0
    for index in (tmp_path / "output").glob(".mlrunner-index*"):  # the records themselves answer
        index.unlink()
    code, out, err = run([], tmp_path)
    assert (code, err) == (0, "") and "commands to run: 0" in out and "NOTE" not in out, out


def test_the_spelling_of_the_output_tree_does_not_change_a_verdict(tmp_path: Path):
    """`-o out`, `-o ./out/`, an absolute path, a tree moved since: one experiment, one answer,
    with or without the index (which a fresh reading must agree with)."""
    write(tmp_path, "template:\n  train: echo {_output} {seed}\nresource: ['']\n---\nseed: [1, 2]\n")
    assert run(["-o", "out"], tmp_path)[0] == 0
    (tmp_path / "out").rename(tmp_path / "moved")
    for spelling in ("./moved/", str(tmp_path / "moved"), "moved"):
        for index in (tmp_path / "moved").glob(".mlrunner-index*"):
            index.unlink()
        code, out, err = run(["-o", spelling], tmp_path)
        assert (code, err) == (0, "") and "already finished: 2" in out, (spelling, out, err)
        assert "changed" not in run(["-o", spelling, "--status"], tmp_path)[1]


def _bounded(flags: list, cwd: Path) -> tuple:
    """mlrunner with 2 GiB of address space and 60 s: a sweep that is made before it is counted
    fails here with MemoryError, as it would on the user's machine after a long swap."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    process = start(flags, cwd, preexec_fn=limit)
    try:
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    return process.returncode, out, err


def test_a_sweep_too_large_is_counted_and_refused_before_it_is_made(tmp_path: Path):
    values = ", ".join(map(str, range(1000)))
    write(tmp_path, f"template:\n  t: echo {{a}} {{b}} {{c}}\nresource: ['']\n---\na: [{values}]\n"
                    f"b: [{values}]\nc: [{values}]\n")
    for flags in ([], ["--dry-run"]):
        code, out, err = _bounded(flags, tmp_path)
        assert (code, out) == (2, "") and err == (
            "params.yaml: the sweep has 1,000,000,000 combinations, more than --max-tasks 10,000,000: each is kept "
            "in memory (a few hundred bytes); raise --max-tasks, or draw some with --sample N\n"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
    code, out, _ = _bounded(["--dry-run", "--sample", "3"], tmp_path)
    assert code == 0 and "Tasks: 3, commands to run: 3" in out
    code, _, err = _bounded(["--dry-run", "--sample", "3", "--max-tasks", "2"], tmp_path)
    assert code == 2 and "the sweep has 3 combinations, more than --max-tasks 2" in err


def test_an_error_quotes_at_most_about_200_characters_of_a_value_even_a_yaml_bomb(tmp_path: Path):
    levels = "abcdefgh"  # 9^8 strings behind one alias: 350 MB of message and 14 GB before
    items = ["&a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    items += [f"&{cur} [" + ", ".join([f"*{prev}"] * 9) + "]" for prev, cur in zip(levels, levels[1:])]
    write(tmp_path, "template:\n  train: echo {x}\ndefault: {x: 1}\nresource: ['']\n---\n"
                    "_cmd: [[" + ", ".join(items) + "]]\n")
    code, out, err = _bounded(["--dry-run"], tmp_path)
    assert (code, out) == (2, "") and err.startswith("params.yaml:6: '_cmd': unknown command [[")
    assert err.count("\n") == 1 and len(err) < 300, len(err)
    write(tmp_path, "template:\n  train: echo {x}\nresource: ['']\n---\nx: [1]\n_cmd: " + "y" * 10**6 + "\n")
    code, _, err = _bounded(["--dry-run"], tmp_path)
    assert code == 2 and "unknown command 'yyyy" in err and len(err) < 300, len(err)


def test_no_subdir_names_like_the_trees_own_temporary_files_stay_in_the_views(tmp_path: Path):
    write(tmp_path, "template:\n  train: echo {name}\nresource: ['']\n---\nname: [a.corrupt.b, run.tmp, plain]\n")
    code, out, err = run(["--no-subdir"], tmp_path)
    assert code == 0 and "Finished: 3" in out, out + err
    code, out, _ = run(["--no-subdir", "--status"], tmp_path)
    assert "Experiments: 3; finished: 3" in out and "Name_run.tmp " in out and "Name_a.corrupt.b " in out
    code, out, err = run(["--report", "-o", "output"], tmp_path)
    page = (tmp_path / "output" / "report.html").read_text()
    assert code == 0 and "Name_run.tmp" in page and "Name_a.corrupt.b" in page, err
    (tmp_path / "output" / "stat.Name_plain").rename(tmp_path / "output" / "stat.Name_plain.corrupt.20260101.120000")
    code, out, _ = run(["--no-subdir", "--status"], tmp_path)
    # a record set aside is no row of its own; its experiment has no record now: pending (T3)
    assert "Experiments: 3; finished: 2, pending: 1" in out and "Name_plain        train: pending" in out


def test_report_shows_and_sorts_non_finite_params(tmp_path: Path):
    """`.inf`, `-.inf`, `.nan` params: the report is written (it crashed), the plot has a column for
    each, and the table sorts them as numbers (nan last) in a real Chromium."""
    from cdp import Chromium
    from test_html_report import require_chromium
    write(tmp_path, """
        template:
          train: echo loss 0.5 {lr}
        resource: ['']
        metric: {loss: {command: train, regex: 'loss (\\S+)'}}
        ---
        lr: [.inf, 0.1, 10.0, -.inf, .nan]
        """)
    assert run([], tmp_path)[0] == 0
    code, out, err = run(["--report"], tmp_path)
    assert (code, err) == (0, ""), err
    report = tmp_path / "output" / "report.html"
    plot = re.search(r'data-param="lr">.*?</figure>', report.read_text(), re.S).group(0)
    ticks = re.findall(r'class="tick">([^<]*)<', plot)
    assert ticks == ["-inf", "0.1", "10", "inf", "nan"]
    require_chromium()
    with Chromium(tmp_path) as browser:
        browser.open(report.as_uri())
        order = """(function () {
            var index = Array.from(document.querySelectorAll("#results th")).findIndex(
                function (th) { return th.textContent === "lr"; });
            return Array.from(document.querySelectorAll("#results tbody tr")).map(
                function (tr) { return tr.cells[index].textContent; }); })()"""
        browser.evaluate('document.querySelector("#results th[data-column=lr]").click()')
        assert browser.evaluate(order) == ["-inf", "0.1", "10", "inf", "nan"]
        browser.evaluate('document.querySelector("#results th[data-column=lr]").click()')
        assert browser.evaluate(order) == ["inf", "10", "0.1", "-inf", "nan"]
        assert browser.errors() == []


def test_T1_a_titled_run_is_remembered_with_its_title(tmp_path: Path):
    project = tmp_path / "project"
    project.mkdir()
    write(project, "template:\n  train: echo {seed}\nresource: ['']\n---\n_title: small\nseed: [1]\n"
                   "---\n_title: big\nseed: [2, 3]\n", "sweeps.yaml")
    assert run(["-y", "sweeps.yaml", "-t", "big", "-o", "out"], project)[0] == 0
    assert (project / "out" / "params.yaml.big").is_file()
    sweeps = project / "sweeps.yaml"
    sweeps.write_text(sweeps.read_text().replace("seed: [2, 3]", "seed: [2, 3, 4]"))
    code, out, _ = run(["-o", str(project / "out"), "--status"], tmp_path)
    # the big sweep's records, read with its title; the seed added since is pending (T3)
    assert code == 0 and "Experiments: 3; finished: 2, pending: 1" in out and "Seed_4  train: pending" in out
    code, out, err = run(["-y", "sweeps.yaml", "-t", "big", "-o", "out", "--keep-changed", "--dry-run"], project)
    assert code == 0 and "Tasks: 3, commands to run: 1" in out, out + err
