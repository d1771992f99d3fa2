"""Command templates (SPEC C6, C7) and the shell line around them (R2, R9 -d)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess

import pytest

from mlrunner.plan.template import RESERVED, Template, log_name, quote, shell_line


def render(text: str, **values) -> str:
    return Template("train", text).render(values)


# C6: {p} ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, rendered", [
    ("new", "new"), (1, "1"), (0.1, "0.1"), (1e-05, "1e-05"), (-3, "-3"), (4096, "4096"),
    ("a b", "'a b'"), ("it's", "'it'\"'\"'s'"), ("$HOME", "'$HOME'"), ("", "''"), ("*", "'*'"),
    ("a;b", "'a;b'"), ("data-bin/iwslt14", "data-bin/iwslt14"), ("--x", "--x"),
])
def test_C6_braces_give_the_shell_quoted_value(value, rendered):
    assert render("python train.py {p}", p=value) == f"python train.py {rendered}"
    assert quote(value) == shlex.quote(str(value))


@pytest.mark.parametrize("value, rendered", [
    ("new", "--p new"), (0.1, "--p 0.1"), (0, "--p 0"), (1, "--p 1"), ("a b", "--p 'a b'"), ("", "--p ''"),
    (True, "--p"),
])
def test_C6_brackets_give_flag_and_value(value, rendered):
    assert render("python train.py [p] --end", p=value) == f"python train.py {rendered} --end"


@pytest.mark.parametrize("text, rendered", [
    ("python train.py [f] --end", "python train.py --end"),
    ("python train.py --a [f]", "python train.py --a"),
    ("[f] python train.py", "python train.py"),
    ("python train.py [f] [f] --end", "python train.py --end"),
    ("python train.py [f] [t] [f] --end", "python train.py --t --end"),
    ("python train.py [f][t] --end", "python train.py --t --end"),
    ("python train.py [t][f] --end", "python train.py --t --end"),
    ("python train.py [f]x", "python train.py x"),
    ("python train.py x[f] y", "python train.py x y"),
    ("python train.py [f]  --end", "python train.py  --end"),  # a double space the user wrote loses one
])
def test_C6_false_drops_the_flag_without_a_double_space(text, rendered):
    assert render(text, f=False, t=True) == rendered


@pytest.mark.parametrize("flags, rendered", [
    ((True, True), "run --moment 0.1 --early-stop --fp16 end"),
    ((True, False), "run --moment 0.1 --early-stop end"),
    ((False, True), "run --moment 0.1 --fp16 end"),
    ((False, False), "run --moment 0.1 end"),
])
def test_C6_bool_combinations(flags, rendered):
    values = {"moment": 0.1, "early-stop": flags[0], "fp16": flags[1]}
    assert Template("t", "run [moment] [early-stop] [fp16] end").render(values) == rendered


@pytest.mark.parametrize("template, where", [
    ("python train.py {fast}", "default"), ("python train.py {fast}", "sweep"),
    ("python train.py [lr] {fast}", "alias"),
])
def test_C6_bool_in_braces_is_an_error_that_says_use_brackets(config_error, template, where):
    text = f"template:\n  train: {template}\ndefault: {{lr: 1, fast: 1}}\n"
    text = text.replace("fast: 1", "fast: false") if where == "default" else text
    text += {"default": "", "sweep": "---\nfast: [1, true]\n",
             "alias": "alias:\n  o: {a: {fast: yes}}\n---\no: a\n"}[where]
    error = config_error(text)
    assert "'fast' is a bool: write [fast] instead of {fast} in template 'train'" in error.message
    assert error.line == 2


def test_C6_bool_default_overridden_by_the_sweep_is_fine(make_plan):
    plan = make_plan("template:\n  train: echo {x}\ndefault: {x: false}\n---\nx: [1, 2]\n")
    assert [t.params["x"] for t in plan.tasks] == [1, 2]


@pytest.mark.parametrize("reserved, value", [
    ("_output", "output/Lr_0.1"), ("_name", "Lr_0.1"), ("_time", "20220316.030151"),
    ("_resource", "0,1"), ("_host", "localhost"), ("_resource", ""),
])
def test_C6_reserved_placeholders(reserved, value):
    assert reserved in RESERVED
    template = Template("t", f"echo {{{reserved}}}/x")
    assert template.params == set()
    assert template.render({reserved: value}) == f"echo {shlex.quote(value)}/x"


def test_C6_reserved_placeholders_need_no_default(make_plan):
    plan = make_plan("template:\n  t: echo {_output} {_name} {_time} {_resource} {_host} [lr]\ndefault: {lr: 1}\n")
    assert plan.orphans == set() and len(plan.tasks) == 1


@pytest.mark.parametrize("text", ["echo {_x}", "echo [_x]", "echo {_outputs}", "echo {_}", "echo {_Name}"])
def test_C6_unknown_reserved_placeholder_is_an_error(text):
    with pytest.raises(ValueError, match=r"unknown reserved placeholder .*reserved: \{_output\}"):
        Template("t", text)


@pytest.mark.parametrize("text, params, rendered", [
    ("echo ${HOME} {p}", {"p"}, "echo ${HOME} 1"),
    ("echo ${p} {p}", {"p"}, "echo ${p} 1"),
    ("echo $HOME/[x] {p}", {"p", "x"}, "echo $HOME/--x 9 1"),
    ("awk '{print $1}' {p}", {"p"}, "awk '{print $1}' 1"),
    ("[ -f x ] && echo {p}", {"p"}, "[ -f x ] && echo 1"),
    ("echo {a.b} {p}", {"p"}, "echo {a.b} 1"),
])
def test_C6_shell_syntax_is_left_to_the_shell(text, params, rendered):
    template = Template("t", text)
    assert template.params == params
    assert template.render({"p": 1, "x": 9}) == rendered


def test_C6_dollar_brace_reaches_bash(tmp_path):
    line = render("echo ${HOME} {p}", p="$HOME")
    done = subprocess.run(["bash", "-c", line], capture_output=True, text=True, env={"HOME": "/home/me"},
                          cwd=tmp_path, timeout=30)
    assert done.stdout == "/home/me $HOME\n"


def test_C6_params_and_braced_sets():
    template = Template("t", "run {a} [b] {_output} [c] {a}")
    assert template.params == {"a", "b", "c"}
    assert template.braced == {"a", "_output"}


# C7 ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "python train.py\n  --lr 1\n    --save {p}\n",
    "python train.py \n\t--lr 1   \n\n  --save {p}",
    "\n  python train.py --lr 1\n--save {p}\n\n",
    "python train.py --lr 1 --save {p}",
])
def test_C7_line_breaks_collapse_to_one_space(text):
    assert render(text, p="d") == "python train.py --lr 1 --save d"


@pytest.mark.parametrize("style", [">", "|", ">-", "|+"])
def test_C7_yaml_block_styles(load_config, style):
    config = load_config(f"template:\n  train: {style}\n    python train.py\n      --lr 1\n\n    --save x\n")
    assert config.templates["train"].render({}) == "python train.py --lr 1 --save x"


def test_C7_spaces_inside_a_line_are_kept():
    assert render("echo 'a  b'   {p}", p=1) == "echo 'a  b'   1"


# shell line (R2) and log names ------------------------------------------------------------------

@pytest.mark.parametrize("resource, prefix", [("0", "CUDA_VISIBLE_DEVICES=0"), ("1,2", "CUDA_VISIBLE_DEVICES=1,2"),
                                              ("", "CUDA_VISIBLE_DEVICES=''")])
def test_R2_shell_line(resource, prefix):
    assert shell_line("python t.py", resource, "out/X_1/log.train.1") == \
        f"export {prefix}; {{ python t.py\n}} > out/X_1/log.train.1 2>&1"
    assert shell_line("python t.py", resource, "out/X_1/log.train.1", debug=True) == \
        f"export {prefix}; {{ python t.py\n}} 2>&1 | tee out/X_1/log.train.1"


def test_R2_shell_line_quotes_a_hostile_log_path(tmp_path):
    directory = tmp_path / "V_$(touch pwned); x"
    directory.mkdir()
    line = shell_line("echo hi", "0", str(directory / "log.a.1"))
    subprocess.run(["bash", "-c", line], cwd=tmp_path, check=True, timeout=30)
    assert (directory / "log.a.1").read_text() == "hi\n"
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("name, log", [(None, "log.train.20220316.030151"),
                                       ("Lr_1", "log.train.20220316.030151.Lr_1")])
def test_R9_log_name_with_and_without_subdir(name, log):
    assert log_name("train", "20220316.030151", name) == log


# I6: the whole template line is logged, as one group with bash's exit status ---------------------

def _run_one(tmp_path, template: str):
    from runlib import run, write
    write(tmp_path, "template:\n  t: " + json.dumps(template) + "\nresource: [0]\n")
    code, out, err = run([], tmp_path)
    (log,) = (tmp_path / "output" / "default").glob("log.t.*")
    return code, out, log.read_text()


@pytest.mark.parametrize("template, logged", [
    ("echo a; echo b", "a\nb\n"),
    ("echo a && echo b", "a\nb\n"),
    ("echo a | tr a b; echo c >&2", "b\nc\n"),
    ("echo a # a comment after the command", "a\n"),
    ("echo a &", "a\n"),
    ("echo a;", "a\n"),
])
def test_I6_every_command_of_the_line_is_logged(tmp_path, template, logged):
    code, out, log = _run_one(tmp_path, template)
    assert code == 0 and log == logged
    assert "\na\n" not in out and "\nb\n" not in out  # nothing reaches the console


@pytest.mark.parametrize("template, code", [("false && echo b", 1), ("false; true", 0), ("true; exit 3", 1)])
def test_I6_the_line_ends_as_bash_ends_it(tmp_path, template, code):
    assert _run_one(tmp_path, template)[0] == code


def test_I6_doubled_braces_and_brackets_are_literal(tmp_path):
    template = Template("t", "echo {x} | awk '{{print $1}}'; echo a7 | grep -c '[[0-9]]'; echo {{x}} [[x]]")
    assert template.params == {"x"}
    assert template.render({"x": "v"}) == "echo v | awk '{print $1}'; echo a7 | grep -c '[0-9]'; echo {x} [x]"
    code, _, log = _run_one(tmp_path, "echo v | awk '{{print $1}}'; echo a7 | grep -c '[[0-9]]'; echo {{x}} [[x]]")
    assert code == 0 and log == "v\n1\n{x} [x]\n"


def test_I6_two_runs_in_one_second_never_share_a_log(tmp_path):
    """Both runs claim the log name of the same second; the second gets `<log>.2`."""
    from mlrunner.run.state import Experiment

    class Started:
        pgid = None

    experiment = Experiment(str(tmp_path), "X")
    logs = []
    for _ in range(3):
        claim = experiment.start("t", rerun=True, worker="0", log=str(tmp_path / "log.t.20261128.101010"),
                                 line=lambda log: log, launch=lambda line: Started(), param={"_scripts": {}})
        logs.append(claim.log)
        experiment.finish("t", "finished", 0.0)
    assert [os.path.basename(log) for log in logs] == ["log.t.20261128.101010", "log.t.20261128.101010.2",
                                                       "log.t.20261128.101010.3"]
