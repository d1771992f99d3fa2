"""Sweep expansion and directory names (SPEC X1-X5): order, 0.5.9-compatible names, dedup, sampling."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from mlrunner.plan import sweep
from mlrunner.plan.names import MAX_NAME_BYTES, safe_name
from mlrunner.plan.sweep import Task, experiment_name, key_name, value_name
from mlrunner.plan.template import Template

GOLDEN_059 = Path(__file__).parent / "data" / "mlrunner-0.5.9"


# X1 ---------------------------------------------------------------------------------------------

def test_X1_cartesian_product_last_key_fastest(make_plan):
    plan = make_plan("template: {a: 'echo {x} {y}'}\n---\nx: [1, 2]\ny: [a, b, c]\n")
    assert [(t.params["x"], t.params["y"]) for t in plan.tasks] == [
        (1, "a"), (1, "b"), (1, "c"), (2, "a"), (2, "b"), (2, "c")]
    assert [t.index for t in plan.tasks] == list(range(6))


def test_X1_key_order_is_document_order(make_plan):
    plan = make_plan("template: {a: 'echo {x} {y}'}\n---\ny: [a, b]\nx: [1, 2]\n")
    assert [t.name for t in plan.tasks] == ["Y_a-X_1", "Y_a-X_2", "Y_b-X_1", "Y_b-X_2"]


def test_X1_documents_expand_in_file_order(make_plan):
    plan = make_plan("template: {a: 'echo {x} {y}'}\ndefault: {x: 0, y: z}\n"
                     "---\ny: [b, a]\n---\nx: [3, 1]\n---\ny: c\nx: 9\n")
    assert [t.name for t in plan.tasks] == ["Y_b", "Y_a", "X_3", "X_1", "Y_c-X_9"]
    assert plan.tasks[0].params == {"y": "b", "x": 0}


def test_X1_three_keys(make_plan):
    plan = make_plan("template: {a: 'echo {a} {b} {c}'}\n---\na: [1, 2]\nb: [1, 2]\nc: [1, 2]\n")
    assert [tuple(t.values[:3]) for t in plan.tasks] == [
        (a, b, c) for a in (1, 2) for b in (1, 2) for c in (1, 2)]


# X2: names ------------------------------------------------------------------------------------

@pytest.mark.parametrize("key, name", [
    ("norm", "Norm"), ("moment", "Moment"), ("early-stop", "EaStop"), ("max_tokens", "MaTokens"),
    ("lr", "Lr"), ("lr_min", "lrMin"), ("learning_rate_max", "LeRaMax"), ("a-b-c", "abC"),
    ("max-tokens_per_gpu", "MaTokens_Per_Gpu"), ("x", "X"), ("seed", "Seed"),
])
def test_X2_key_name(key, name):
    assert key_name(key) == name


@pytest.mark.parametrize("value, name", [
    (True, "T"), (False, "F"), (1, "1"), (0, "0"), (-3, "-3"), (0.1, "0.1"), (0.05, "0.05"),
    (1e-05, "1e-05"), (0.0001, "0.0001"), (1.0, "1"), (2.5, "2.5"), (123456789, "1.23457e+08"),
    (1e20, "1e+20"), (float("inf"), "inf"),
    ("new", "new"), ("./data/x", "data_x"), ("/abs/dir/", "abs_dir_"), ("a/b/c", "a_b_c"),
    ("...x", "x"), ("", ""), ("a b", "a b"), ("x" * 150, "x" * 100), ("a" * 50 + "b" * 60, "a" * 40 + "b" * 60),
])
def test_X2_value_name(value, name):
    assert value_name(value) == name


def test_X2_existing_path_gives_its_basename(tmp_path, monkeypatch):
    (tmp_path / "data-bin" / "iwslt14").mkdir(parents=True)
    (tmp_path / "data-bin" / "vocab.txt").write_text("")
    assert value_name(str(tmp_path / "data-bin" / "iwslt14")) == "iwslt14"
    assert value_name(str(tmp_path / "data-bin" / "vocab.txt")) == "vocab.txt"
    monkeypatch.chdir(tmp_path)
    relative = f"data-bin/{tmp_path.name}.bin"  # unique: value names are cached per process
    Path(relative).write_text("")
    assert value_name(relative) == f"{tmp_path.name}.bin"
    assert value_name(f"data-bin/{tmp_path.name}.missing") == f"data-bin_{tmp_path.name}.missing"


@pytest.mark.parametrize("keys, values, name", [
    ((), (), "default"),
    (("norm", "moment"), ("new", 0.1), "Norm_new-Moment_0.1"),
    (("norm", "early-stop"), ("batch", True), "Norm_batch-EaStop_T"),
    (("max_tokens", "lr"), (4096, 1e-05), "MaTokens_4096-Lr_1e-05"),
    (("opt", "seed"), ("fast", 2), "Opt_fast-Seed_2"),
    (("data",), ("./corpora/wmt/en-de",), "Data_corpora_wmt_en-de"),
])
def test_X2_experiment_name(keys, values, name):
    assert experiment_name(keys, values) == name


def test_X2_names_use_only_the_sweeps_own_params_in_document_order(make_plan):
    plan = make_plan("template: {a: 'echo {lr} [fast] {data}'}\ndefault: {lr: 1, fast: false, data: d}\n"
                     "---\nfast: [true, false]\nlr: 1.0e-5\n")
    assert [t.name for t in plan.tasks] == ["Fast_T-Lr_1e-05", "Fast_F-Lr_1e-05"]


def test_X2_names_match_mlrunner_0_5_9(tmp_path, monkeypatch):
    """X2: the names 0.5.9's spec2name gave (recorded by scripts/golden_059.py), paths on disk included."""
    golden = json.loads((GOLDEN_059 / "names.json").read_text(encoding="utf-8"))
    for directory in golden["layout"]["dirs"]:
        (tmp_path / directory).mkdir(parents=True)
    for file in golden["layout"]["files"]:
        (tmp_path / file).write_text("")
    monkeypatch.chdir(tmp_path)  # 0.5.9 resolved relative paths from that root
    monkeypatch.setattr(sweep, "_value_names", {})  # names cached by other tests were checked in another cwd
    specs = [{k: v.replace("{root}", str(tmp_path)) if isinstance(v, str) else v for k, v in case["spec"].items()}
             for case in golden["cases"]]
    ours = [experiment_name(tuple(spec), tuple(spec.values())) for spec in specs]
    theirs = [case["name"] for case in golden["cases"]]
    assert ours == theirs
    assert "Norm_new-Moment_0.1" in ours and "Data_iwslt14-File_data-bin" in ours


# X2: hostile values ---------------------------------------------------------------------------

HOSTILE = ["$(touch pwned); rm -rf x", "`touch pwned`", "a'b\"c", "x; touch pwned", "--help", "-n", "*",
           "line\nbreak", " spaced  out ", "$HOME", "../../etc", ""]


def test_X2_hostile_value_reaches_the_command_as_one_literal_argument(tmp_path, make_plan):
    """The real bash runs the rendered line; a stand-in command prints each argument it got."""
    show = tmp_path / "show-argv"
    show.write_text("#!/bin/sh\nfor arg in \"$@\"; do printf '<%s>\\n' \"$arg\"; done\n")
    show.chmod(0o755)
    plan = make_plan("template: {a: './show-argv {v} [v] {_output} {_name}'}\ndefault: {v: x}\n---\nv: "
                     + json.dumps(HOSTILE) + "\n")
    assert len(plan.tasks) == len(HOSTILE)
    for task, value in zip(plan.tasks, HOSTILE):
        assert task.params["v"] == value
        template = Template("a", "./show-argv {v} [v] {_output} {_name}")
        line = template.render(dict(task.params, _output=task.output, _name=task.name))
        done = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        expected = [value, "--v", value, task.output, task.name]
        assert done.stdout == "".join(f"<{arg}>\n" for arg in expected)
    assert not (tmp_path / "pwned").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "show-argv"]


@pytest.mark.parametrize("value", ["../../etc", "..", ".", "/", "../", "/etc/passwd", "a/../../b", "../" * 40,
                                   "./..", "x/..", "\\..\\..", "..\x00"])
def test_X2_value_cannot_escape_the_output_root(make_plan, value):
    plan = make_plan("template: {a: 'echo {v}'}\n---\nv: " + json.dumps(value) + "\n")
    (task,) = plan.tasks
    assert "/" not in task.name and task.name not in ("", ".", "..")
    assert os.path.dirname(task.output) == "output"
    assert os.path.normpath(task.output) == os.path.join("output", task.name)
    assert task.name.startswith("V_")


def test_X2_long_names_are_cut_to_255_bytes_with_a_stable_hash(make_plan):
    text = ("template: {a: 'echo {alpha} {beta} {gamma} {delta}'}\n---\n"
            f"alpha: {'a' * 100}\nbeta: {'b' * 100}\ngamma: [{'c' * 100}, {'d' * 100}]\ndelta: ['é{'é' * 120}']\n")
    first, second = make_plan(text).tasks
    for task in (first, second):
        assert len(task.name.encode()) <= MAX_NAME_BYTES
        assert re.search(r"-[0-9a-f]{10}\Z", task.name)
        assert task.name.startswith("Alpha_" + "a" * 100 + "-Beta_")
    assert first.name != second.name
    assert [t.name for t in make_plan(text).tasks] == [first.name, second.name]  # stable


@pytest.mark.parametrize("name", ["x" * 256, "é" * 200, "a" * 254 + "é", "-".join(["K_" + "v" * 100] * 5)])
def test_X2_safe_name_bytes(name):
    safe = safe_name(name)
    assert len(safe.encode("utf-8")) <= MAX_NAME_BYTES
    assert safe == safe_name(name)
    assert safe.encode("utf-8").decode("utf-8") == safe
    assert safe[:100] == name[:100]


@pytest.mark.parametrize("name, safe", [("ok", "ok"), ("x" * 255, "x" * 255), ("", "_"), (".", "_."),
                                        ("..", "_.."), ("a/b", "a_b"), ("a\0b", "a_b")])
def test_X2_safe_name_keeps_one_path_component(name, safe):
    assert safe_name(name) == safe


def test_X2_same_name_other_params_get_their_own_directory(make_plan):
    plan = make_plan("template: {a: 'echo {v}'}\n---\nv: [a_b, a/b, /a/b, 1, 1.0]\n")
    names = [t.name for t in plan.tasks]
    assert names[0] == "V_a_b" and names[3] == "V_1"
    assert re.fullmatch(r"V_a_b-[0-9a-f]{8}", names[1]) and re.fullmatch(r"V_a_b-[0-9a-f]{8}", names[2])
    assert re.fullmatch(r"V_1-[0-9a-f]{8}", names[4])
    assert len(set(names)) == 5 and plan.duplicates == 0


# X3 ---------------------------------------------------------------------------------------------

SEEDLIKE = """\
template:
  train: python train.py {norm} [moment] [early-stop]
default: {norm: batch, moment: 0.1, early-stop: false}
---
norm: [new, batch]
moment: [0.1, 0.05]
---
norm: [batch]
early-stop: [true, false]
"""


def test_X3_duplicates_are_dropped_and_counted(make_plan):
    plan = make_plan(SEEDLIKE)
    assert [t.name for t in plan.tasks] == ["Norm_new-Moment_0.1", "Norm_new-Moment_0.05", "Norm_batch-Moment_0.1",
                                            "Norm_batch-Moment_0.05", "Norm_batch-EaStop_T"]
    assert plan.duplicates == 1
    assert [t.index for t in plan.tasks] == list(range(5))


def test_X3_no_dedup_keeps_them(make_plan):
    plan = make_plan(SEEDLIKE, dedup=False)
    assert len(plan.tasks) == 6 and plan.duplicates == 0
    assert plan.tasks[-1].name == "Norm_batch-EaStop_F"


@pytest.mark.parametrize("second, tasks, duplicates", [
    ("x: 1", 1, 0),  # the same directory: the same experiment, not a duplicate
    ("x: 1.0", 2, 0), ("x: true", 2, 0), ("x: '1'", 2, 0), ("x: 2", 2, 0),
    ("y: 0", 1, 1), ("x: 1\ny: 0", 1, 1), ("y: 0\nx: 1", 1, 1),
])
def test_X3_duplicate_means_the_same_full_param_set(make_plan, second, tasks, duplicates):
    plan = make_plan("template: {a: 'echo [x] [y]'}\ndefault: {x: 1, y: 0}\n---\nx: 1\n---\n" + second + "\n")
    assert (len(plan.tasks), plan.duplicates) == (tasks, duplicates)


def test_X3_duplicate_through_an_alias(make_plan):
    plan = make_plan("template: {a: 'echo [lr] [wd]'}\ndefault: {lr: 1, wd: 0}\nalias:\n  o: {f: {lr: 2, wd: 3}}\n"
                     "---\no: f\n---\nlr: 2\nwd: 3\n")
    assert [t.name for t in plan.tasks] == ["O_f"] and plan.duplicates == 1


TWO = "template:\n  train: echo train {lr}\n  test: echo test {lr}\n  avg: echo avg\n"


def test_X3_same_directory_tasks_merge_their_commands(make_plan):
    plan = make_plan(TWO + "---\n_cmd: test\nlr: [1, 2]\n---\n_cmd: train\nlr: [2, 3]\n---\nlr: 1\n_cmd: [avg]\n")
    assert [(t.name, t.commands) for t in plan.tasks] == [
        ("Lr_1", ("test", "avg")), ("Lr_2", ("train", "test")), ("Lr_3", ("train",))]
    assert plan.duplicates == 0
    assert plan.command_count == 5


def test_X3_same_directory_merge_also_without_dedup(make_plan):
    plan = make_plan(TWO + "---\n_cmd: test\nlr: [1, 2]\n---\n_cmd: train\nlr: [2, 3]\n", dedup=False)
    assert [(t.name, t.commands) for t in plan.tasks] == [
        ("Lr_1", ("test",)), ("Lr_2", ("train", "test")), ("Lr_3", ("train",))]


@pytest.mark.parametrize("dedup", [True, False])
def test_X3_renamed_experiment_met_again_merges_into_its_own_directory(make_plan, dedup):
    """`a/b` is named like `a_b`, so it gets a hash suffix; meeting `a/b` again must find that directory."""
    plan = make_plan(TWO + "---\n_cmd: test\nlr: [a_b, a/b]\n---\n_cmd: train\nlr: [a/b]\n", dedup=dedup)
    assert len(plan.tasks) == 2 and plan.duplicates == 0
    assert len({t.output for t in plan.tasks}) == 2
    assert plan.tasks[1].params["lr"] == "a/b" and plan.tasks[1].commands == ("train", "test")


def test_X3_no_subdir_merges_by_name(make_plan):
    plan = make_plan(TWO + "---\n_cmd: test\nlr: [1, 2]\n---\n_cmd: train\nlr: [2]\n", no_subdir=True)
    assert [(t.name, t.output, t.commands) for t in plan.tasks] == [
        ("Lr_1", "output", ("test",)), ("Lr_2", "output", ("train", "test"))]


# X4 ---------------------------------------------------------------------------------------------

SAMPLED = ("template: {a: 'echo {x} {y} {z}'}\ndefault: {y: 0, z: a}\n---\nx: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\ny: [0, 1, 2, 3, 4]\n"
           "z: [a, b]\n---\nx: [100, 101, 102]\n")


@pytest.mark.parametrize("sample, per_doc", [(0, (0, 0)), (1, (1, 1)), (7, (7, 3)), (100, (100, 3)),
                                             (1000, (100, 3))])
def test_X4_sample_draws_n_from_each_document_in_sweep_order(make_plan, sample, per_doc):
    full = [t.name for t in make_plan(SAMPLED).tasks]
    plan = make_plan(SAMPLED, sample=sample, sample_seed=4)
    names = [t.name for t in plan.tasks]
    first = [n for n in names if not n.startswith("X_10")]
    assert (len(first), len(names) - len(first)) == per_doc
    assert names == [n for n in full if n in set(names)]  # kept in sweep order
    assert len(set(names)) == len(names)
    assert [t.index for t in plan.tasks] == list(range(len(names)))


def test_X4_sample_seed_repeats_the_draw(make_plan):
    draw = [[t.name for t in make_plan(SAMPLED, sample=5, sample_seed=seed).tasks] for seed in (1, 1, 2, 3)]
    assert draw[0] == draw[1]
    assert draw[0] != draw[2] or draw[0] != draw[3]


def test_X4_sample_of_a_huge_sweep_does_not_expand_it(make_plan):
    text = "template: {a: 'echo " + " ".join(f"{{p{i}}}" for i in range(8)) + "'}\n---\n" + "".join(
        f"p{i}: [{', '.join(str(v) for v in range(20))}]\n" for i in range(8))  # 20**8 = 2.56e10 combinations
    start = time.monotonic()
    plan = make_plan(text, sample=3, sample_seed=0)
    assert len(plan.tasks) == 3 and time.monotonic() - start < 5


# X5 ---------------------------------------------------------------------------------------------

def test_X5_expanding_10_to_the_5_combinations_is_quick_and_shares_keys(make_plan):
    text = ("template: {a: 'echo {a} {b} {c} {d} {e}'}\ndefault: {f: 1}\n---\n"
            + "".join(f"{k}: [{', '.join(str(v) for v in range(10))}]\n" for k in "abcde"))
    start = time.monotonic()
    plan = make_plan(text)
    elapsed = time.monotonic() - start
    assert len(plan.tasks) == 10 ** 5 and plan.command_count == 10 ** 5
    assert elapsed < 20, elapsed
    assert plan.tasks[0].keys is plan.tasks[-1].keys and plan.tasks[0].commands is plan.tasks[-1].commands
    assert not hasattr(plan.tasks[0], "__dict__") and isinstance(plan.tasks[0], Task)
    assert plan.tasks[-1].name == "A_9-B_9-C_9-D_9-E_9"
