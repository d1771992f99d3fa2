"""Reading and checking params.yaml (SPEC C1-C10): what loads, and one clear line for what does not."""

from __future__ import annotations

import re

import pytest

from mlrunner.plan.config import ALLOWED_KEYS, select_sweeps
from mlrunner.errors import UserError

HEAD = """\
template:
  train: python train.py [lr] {seed}
default:
  lr: 0.1
  seed: 1
"""


# C1 ---------------------------------------------------------------------------------------------

def test_C1_flow_style_documents(make_plan):
    plan = make_plan("""\
        { template: { train: "python train.py [lr] {seed}" }, default: { lr: 0.1, seed: 1 },
          resource: [0, "1,2"] }
        --- { lr: [0.1, 0.01], seed: 3 }
        --- { _title: big, lr: [1] }
        """)
    assert [t.name for t in plan.tasks] == ["Lr_0.1-Seed_3", "Lr_0.01-Seed_3", "Lr_1"]
    assert plan.tasks[1].params == {"lr": 0.01, "seed": 3}


def test_C1_mixed_block_and_flow(load_config):
    config = load_config(HEAD + "resource: [0, 1]\n---\nlr: [0.1, 0.2]\n---\n{ seed: [1, 2], _title: t }\n")
    assert config.resources == ["0", "1"]
    assert [s.params for s in config.sweeps] == [{"lr": [0.1, 0.2]}, {"seed": [1, 2]}]
    assert config.sweeps[1].title == "t"


# C2 ---------------------------------------------------------------------------------------------

def test_C2_every_allowed_key_loads(load_config):
    config = load_config("""\
        template:
          train: python train.py [lr] {seed}
          test: python test.py {seed}
        default: {lr: 0.1, seed: 1}
        resource: [0, 1, "2,3"]
        alias:
          opt: {fast: {lr: 0.3}, slow: {lr: 0.01}}
        hosts: {}
        sync: {exclude: ["*.pt"]}
        metric:
          acc: {command: test, regex: 'acc = ([\\d.]+)'}
        """)
    assert list(config.templates) == ["train", "test"]
    assert config.defaults == {"lr": 0.1, "seed": 1}
    assert config.resources == ["0", "1", "2,3"]
    assert config.aliases == {"opt": {"fast": {"lr": 0.3}, "slow": {"lr": 0.01}}}
    assert config.sync == {"exclude": ["*.pt"]}
    assert config.metrics["acc"]["command"] == "test"
    assert set(ALLOWED_KEYS) == {"template", "default", "resource", "alias", "hosts", "sync", "metric", "gpu",
                                 "slurm", "early_stop", "code"}


def test_C2_resource_auto_and_absent(load_config):
    assert load_config(HEAD + "resource: auto\n").resources is None
    assert load_config(HEAD).resources is None


@pytest.mark.parametrize("typo, meant", [
    ("resources", "resource"),
    ("templates", "template"),
    ("defaults", "default"),
    ("aliases", "alias"),
    ("metrics", "metric"),
    ("host", "hosts"),
])
def test_C2_unknown_key_did_you_mean(config_error, typo, meant):
    error = config_error(HEAD + f"{typo}: [0]\n")
    assert str(error) == f"{error.path}:6: unknown key '{typo}' (did you mean '{meant}'?)"


def test_C2_unknown_key_far_from_all_lists_allowed(config_error):
    error = config_error(HEAD + "workers: [0]\n")
    assert error.line == 6
    assert "unknown key 'workers'" in error.message
    for key in ALLOWED_KEYS:
        assert key in error.message


@pytest.mark.parametrize("text, line, fragment", [
    ("default: {lr: 1}\n", 1, "'template' is required"),
    ("template: {}\n", 1, "'template' needs at least one command"),
    ("template: [a, b]\n", 1, "'template' must be a mapping"),
    ("template:\n  train: ''\n", 2, "template 'train' must be a non-empty string"),
    ("template:\n  train: 5\n", 2, "template 'train' must be a non-empty string"),
])
def test_C2_template_missing_or_bad(config_error, text, line, fragment):
    error = config_error(text)
    assert error.line == line
    assert fragment in error.message


# C3 ---------------------------------------------------------------------------------------------

def test_C3_scalar_is_a_one_element_list(make_plan):
    scalar = make_plan(HEAD + "---\nlr: 0.5\nseed: [1, 2]\n")
    listed = make_plan(HEAD + "---\nlr: [0.5]\nseed: [1, 2]\n")
    assert [t.name for t in scalar.tasks] == [t.name for t in listed.tasks] == ["Lr_0.5-Seed_1", "Lr_0.5-Seed_2"]
    assert [t.params for t in scalar.tasks] == [t.params for t in listed.tasks]


@pytest.mark.parametrize("title, names", [
    (None, ["Lr_1", "Lr_2", "Seed_7", "Lr_3", "Lr_4"]),
    ("a", ["Lr_1", "Lr_2", "Lr_3"]),
    ("b", ["Seed_7"]),
    ("7", ["Lr_4"]),  # a number as _title is matched as the text -t gives
])
def test_C3_title_selects_documents(make_plan, title, names):
    text = HEAD + ("---\n_title: a\nlr: [1, 2]\n---\n_title: b\nseed: 7\n---\n_title: a\nlr: 3\n"
                   "---\n_title: 7\nlr: 4\n")
    assert [t.name for t in make_plan(text, title=title).tasks] == names


def test_C3_title_is_not_a_param(make_plan):
    plan = make_plan(HEAD + "---\n_title: a\nlr: 2\n")
    assert plan.tasks[0].name == "Lr_2"
    assert "_title" not in plan.tasks[0].params and plan.orphans == set()


TWO_COMMANDS = """\
template:
  train: python train.py [lr]
  test: python test.py {seed}
  avg: python avg.py
default: {lr: 0.1, seed: 1}
"""


@pytest.mark.parametrize("cmd, override, commands", [
    (None, None, ("train", "test", "avg")),
    ("test", None, ("test",)),
    ("[avg, train]", None, ("train", "avg")),  # template order, not _cmd order
    ("test", ["train"], ("train",)),  # -c wins over _cmd
    (None, ["avg", "test"], ("test", "avg")),
])
def test_C3_cmd_string_list_and_override(make_plan, cmd, override, commands):
    text = TWO_COMMANDS + "---\nseed: 2\n" + (f"_cmd: {cmd}\n" if cmd else "")
    plan = make_plan(text, commands=override)
    assert plan.tasks[0].commands == commands


def test_C3_select_sweeps_unknown_title_names_known_titles(load_config):
    config = load_config(HEAD + "---\n_title: a\nlr: 1\n---\n_title: b\nlr: 2\n")
    with pytest.raises(UserError) as caught:
        select_sweeps(config, "c")
    assert "'c'" in str(caught.value) and "a, b" in str(caught.value)


# C4 ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["lr", "early-stop", "max_tokens", "A1", "x-1_y", "_private"])
def test_C4_param_names_allowed_in_default(load_config, name):
    config = load_config(f"template: {{a: echo}}\ndefault:\n  {name}: 1\n")
    assert config.defaults == {name: 1}


@pytest.mark.parametrize("name", ["lr", "early-stop", "max_tokens", "A1", "x-1_y"])
def test_C4_param_names_allowed_in_sweep(make_plan, name):
    plan = make_plan(f"template: {{a: 'echo [{name}]'}}\n---\n{name}: 1\n")
    assert plan.tasks[0].params == {name: 1}


@pytest.mark.parametrize("name", ["x.y", "'a b'", "a/b", "größe", "'$x'", "'a:b'", "'[x]'"])
@pytest.mark.parametrize("where", ["default", "sweep"])
def test_C4_param_name_characters_rejected(config_error, name, where):
    text = "template: {a: echo}\n" + (f"default:\n  {name}: 1\n" if where == "default" else f"---\n{name}: 1\n")
    error = config_error(text)
    assert error.line == 3
    assert "may only use letters, digits, '_' and '-'" in error.message


@pytest.mark.parametrize("text, line, fragment", [
    ("default:\n  lr: [1, 2]\n", 3, "default 'lr' must be a str, int, float or bool, not a list"),
    ("default:\n  lr: {a: 1}\n", 3, "default 'lr' must be a str, int, float or bool, not a dict"),
    ("default:\n  lr:\n", 3, "default 'lr' has no value"),
    ("default:\n  lr: 2020-01-01\n", 3, "not a date"),
    ("---\nlr: [1, [2, 3]]\n", 3, "'lr' must be a str, int, float or bool, not a list"),
    ("---\nlr: {a: 1}\n", 3, "'lr' must be a str, int, float or bool, not a dict"),
    ("---\nlr: [1, {a: 1}]\n", 3, "not a dict"),
    ("---\nlr: []\n", 3, "'lr' has an empty list of values"),
    ("alias:\n  o:\n    f: {lr: [1]}\n", 4, "alias 'o' case 'f' param 'lr' must be a str, int, float or bool"),
])
def test_C4_list_or_mapping_value_rejected(config_error, text, line, fragment):
    error = config_error("template: {a: 'echo [lr]'}\n" + text)
    assert error.line == line
    assert fragment in error.message


@pytest.mark.parametrize("text, value", [
    ("true", True), ("True", True), ("TRUE", True), ("yes", True), ("Yes", True), ("on", True), ("ON", True),
    ("false", False), ("no", False), ("No", False), ("off", False), ("OFF", False),
    ("y", "y"), ("n", "n"), ("'yes'", "yes"), ("1", 1), ("1.0", 1.0), ("1e-5", "1e-5"), ("1.0e-5", 1e-05),
])
def test_C4_yaml11_booleans_and_scalars_as_pyyaml_reads_them(load_config, text, value):
    config = load_config(f"template: {{a: 'echo [v]'}}\ndefault:\n  v: {text}\n---\nv: [{text}]\n")
    assert config.defaults["v"] == value and type(config.defaults["v"]) is type(value)
    assert config.sweeps[0].params["v"] == [value]


# C5 ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tail", ["", "---\n", "---\n---\n"])
def test_C5_no_sweep_document_runs_the_defaults_as_default(make_plan, tail):
    plan = make_plan(HEAD + tail)
    assert [(t.name, t.output, t.params) for t in plan.tasks] == [
        ("default", "output/default", {"lr": 0.1, "seed": 1})]
    assert plan.orphans == set() and plan.duplicates == 0


def test_C5_sweep_with_only_reserved_keys_is_default(make_plan):
    plan = make_plan(HEAD + "---\n_title: base\n", title="base")
    assert [t.name for t in plan.tasks] == ["default"]


# C8 ---------------------------------------------------------------------------------------------

ALIAS = """\
template:
  train: python train.py [lr] [warmup] {seed}
default: {lr: 1, warmup: 0, seed: 1}
alias:
  opt:
    fast: {lr: 0.1, warmup: 0}
    slow: {lr: 0.01, warmup: 4000}
"""


def test_C8_alias_sets_its_group_and_names_by_case(make_plan):
    plan = make_plan(ALIAS + "---\nopt: [fast, slow]\nseed: [1, 2]\n")
    assert [t.name for t in plan.tasks] == ["Opt_fast-Seed_1", "Opt_fast-Seed_2", "Opt_slow-Seed_1", "Opt_slow-Seed_2"]
    assert [t.params for t in plan.tasks][2] == {"lr": 0.01, "warmup": 4000, "seed": 1}
    assert "opt" not in plan.tasks[0].params
    assert plan.orphans == set()


def test_C8_alias_cases_may_list_params_in_any_order(make_plan):
    text = ALIAS.replace("slow: {lr: 0.01, warmup: 4000}", "slow: {warmup: 4000, lr: 0.01}")
    plan = make_plan(text + "---\nopt: [fast, slow]\n")
    assert plan.tasks[1].params == {"lr": 0.01, "warmup": 4000, "seed": 1}


def test_C8_alias_case_can_be_a_bool_or_number(make_plan):
    plan = make_plan("""\
        template: {a: "echo {lr}"}
        alias:
          big: {yes: {lr: 1}, no: {lr: 2}}
          bs: {32: {lr: 3}}
        ---
        big: [yes, no]
        ---
        bs: 32
        """)
    assert [(t.name, t.params["lr"]) for t in plan.tasks] == [("Big_T", 1), ("Big_F", 2), ("Bs_32", 3)]


@pytest.mark.parametrize("template", ["python train.py {opt}", "python train.py [opt]", "x {lr} && y [opt]"])
def test_C8_alias_in_template_is_an_error(config_error, template):
    error = config_error(ALIAS.replace("python train.py [lr] [warmup] {seed}", template))
    assert error.line == 2
    assert "alias 'opt' cannot be a placeholder in template 'train'" in error.message


@pytest.mark.parametrize("cases, line", [
    ("fast: {lr: 0.1}\n    slow: {lr: 0.01, warmup: 4000}", 7),
    ("fast: {lr: 0.1, warmup: 0}\n    slow: {lr: 0.01}", 7),
    ("fast: {lr: 0.1}\n    slow: {warmup: 0}", 7),
])
def test_C8_alias_cases_must_set_the_same_params(config_error, cases, line):
    text = ALIAS.replace("fast: {lr: 0.1, warmup: 0}\n    slow: {lr: 0.01, warmup: 4000}", cases)
    error = config_error(text)
    assert error.line == line
    assert "all cases of alias 'opt' must set the same params" in error.message


@pytest.mark.parametrize("sweep, fragment", [
    ("opt: medium", "'medium' is not a case of alias 'opt' (cases: fast, slow)"),
    ("opt: fast\nlr: 2", "'lr' is set both directly and by alias 'opt'"),
    ("lr: 2\nopt: fast", "'lr' is set both directly and by alias 'opt'"),
])
def test_C8_alias_misuse_in_sweep(config_error, sweep, fragment):
    error = config_error(ALIAS + "---\n" + sweep + "\n")
    assert error.line in (9, 10)
    assert fragment in error.message


def test_C8_two_aliases_setting_one_param_is_an_error(config_error):
    error = config_error(ALIAS + "  sched: {a: {lr: 5}}\n---\nopt: fast\nsched: a\n")
    assert error.line == 11
    assert "'lr' is set both by alias 'opt' and by alias 'sched'" in error.message


# C9 ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, line", [
    ("template:\n  a: echo\n  b: echo {missing} [lr]\ndefault: {lr: 1}\n", 3),
    ("template:\n  a: echo\n  b: echo {missing} [lr]\ndefault: {lr: 1}\n---\nlr: 2\n", 6),
])
def test_C9_placeholder_without_value_names_param_and_command(config_error, text, line):
    error = config_error(text)
    assert error.line == line
    assert "template 'b' needs 'missing'" in error.message


def test_C9_missing_param_only_matters_for_selected_commands(make_plan, config_error):
    text = "template:\n  a: echo [lr]\n  b: echo {missing}\ndefault: {lr: 1}\n---\n_cmd: a\nlr: 2\n"
    assert make_plan(text).tasks[0].commands == ("a",)
    assert "needs 'missing'" in config_error(text, commands=["b"]).message


@pytest.mark.parametrize("sweep, commands, orphans", [
    ("lr: [1, 2]", None, set()),
    ("seed: [1, 2]", None, {"seed"}),
    ("seed: 1\nbatch: 3\nlr: 2", None, {"seed", "batch"}),
    ("seed: 1\nlr: 2", ["b"], {"seed", "lr"}),
])
def test_C9_orphans_warned_and_still_name_the_directory(make_plan, sweep, commands, orphans):
    text = "template:\n  a: echo [lr]\n  b: echo x\ndefault: {lr: 1}\n---\n" + sweep + "\n"
    plan = make_plan(text, commands=commands)
    assert plan.orphans == orphans
    if "seed: [1, 2]" in sweep:
        assert [t.name for t in plan.tasks] == ["Seed_1", "Seed_2"]
        assert [t.params for t in plan.tasks] == [{"seed": 1, "lr": 1}, {"seed": 2, "lr": 1}]


def test_C9_defaults_are_never_orphans(make_plan):
    assert make_plan("template: {a: echo}\ndefault: {lr: 1, seed: 2}\n").orphans == set()


# C10: the error itself, in process ------------------------------------------------------------

@pytest.mark.parametrize("text, line, fragment", [
    ("template: {a: echo}\ntemplate: {b: echo}\n", 2, "duplicate key 'template'"),
    ("template: {a: echo}\ndefault:\n  lr: 1\n  lr: 2\n", 4, "duplicate key 'lr'"),
    ("template: {a: 'echo [lr]'}\n---\nlr: 1\nseed: 2\nlr: 3\n", 5, "duplicate key 'lr'"),
    ("template: {a: echo}\nresource: 0\n", 2, "'resource' must be a list"),
    ("template: {a: echo}\nresource: []\n", 2, "'resource' needs at least one entry"),
    ("template: {a: echo}\nresource: [[0]]\n", 2, "resource entry [0]"),
    ("template: {a: echo}\ndefault: [1]\n", 2, "'default' must be a mapping"),
    ("template: {a: echo}\n---\n- 1\n", 3, "a sweep document must be a mapping"),
    ("- 1\n", 1, "the first document must be a mapping"),
    ("template: {a: echo}\n---\n_titel: x\n", 3, "unknown reserved key '_titel' (did you mean '_title'?)"),
    ("template: {a: echo}\n---\n_title: [x]\n", 3, "'_title' must be a string"),
    ("template: {a: echo}\n---\n_cmd: b\n", 3, "'_cmd': unknown command 'b'"),
    ("template: {a: echo, b: echo}\n---\n_cmd: [a, c]\n", 3, "'_cmd': unknown command 'c'"),
    ("template: {train: echo}\n---\n_cmd: trian\n", 3, "(did you mean 'train'?)"),
    ("template: {a: 'echo {_x}'}\n", 1, "unknown reserved placeholder '{_x}'"),
    ("template: {a: echo}\nmetric:\n  m: {command: z, regex: '(x)'}\n", 3, "metric 'm': unknown command 'z'"),
    ("template: {a: echo}\nmetric:\n  m: {command: a, regex: 'x'}\n", 3, "needs a (group)"),
    # An error at the end of the file names the last line, not one past it.
    ("template:\n  a: echo {x\n  b: [\n", 3, "invalid YAML"),
    # PyYAML raises bare ValueErrors for these; they must still be one line with the value's line.
    ("template: {a: echo}\ndefault:\n  lr: 1\n  day: 2020-13-45\n", 4, "invalid value '2020-13-45'"),
    ("template: {a: echo}\ndefault:\n  lr: !!int abc\n", 3, "invalid value 'abc'"),
    ("template: {a: echo}\ndefault:\n  ? [a, b]\n  : 1\n", 3, "unhashable key"),
    ("template: {a: echo}\ndefault:\n  x: &a [*a]\n", 3, "not a list"),  # a cyclic anchor
    ("template: {a: echo}\nmetric: {m: {command: [a], regex: '(x)'}}\n", 2, "metric 'm': unknown command"),
    ("template: {a: echo}\n---\n_cmd: [[a]]\n", 3, "'_cmd': unknown command ['a']"),
])
def test_C10_error_has_file_and_line(config_error, text, line, fragment):
    error = config_error(text)
    assert (error.line, error.path.endswith("params.yaml")) == (line, True)
    assert fragment in error.message
    assert str(error).startswith(f"{error.path}:{line}: ")


def test_C10_equal_looking_keys_of_other_types_are_not_duplicates(load_config):
    config = load_config("template: {a: echo}\nalias:\n  o:\n    1: {x: 1}\n    '1': {x: 2}\n")
    assert config.aliases["o"] == {1: {"x": 1}, "1": {"x": 2}}


# C10: through the real command line -------------------------------------------------------------

CLI_ERRORS = [
    # id, params.yaml, extra args, line (None: YAML gives none), fragments
    ("unknown-key", HEAD + "resources: [0]\n", ["--dry-run"], 6, ["unknown key 'resources'", "did you mean 'resource'"]),
    ("missing-template", "default: {lr: 1}\n", [], 1, ["'template' is required"]),
    ("placeholder-no-value", "template:\n  train: python train.py {data} [lr]\ndefault: {lr: 1}\n---\nlr: [1, 2]\n",
     ["--dry-run"], 5, ["template 'train' needs 'data'"]),
    ("bool-in-braces", "template:\n  train: python train.py {fast}\ndefault: {fast: false}\n---\nfast: [true]\n",
     [], 2, ["'fast' is a bool", "[fast]"]),
    ("bool-in-braces-default", "template:\n  train: python train.py {fast}\ndefault:\n  fast: on\n",
     [], 2, ["'fast' is a bool", "[fast]"]),
    ("list-for-scalar", HEAD + "---\nlr: [0.1, [0.2, 0.3]]\n", [], 7, ["'lr' must be a str, int, float or bool, not a list"]),
    ("unknown-cmd", HEAD + "---\nlr: 1\n_cmd: [train, tset]\n", [], 8, ["'_cmd': unknown command 'tset'", "train"]),
    ("missing-title", HEAD + "---\n_title: norms\nlr: 1\n", ["-t", "nrms"], None, ["_title 'nrms'", "norms"]),
    ("unclosed-bracket", HEAD + "---\nlr: [1, 2\nseed: 3\n", ["--dry-run"], 7, ["'[' is never closed"]),
    ("unclosed-bracket-at-end", HEAD + "---\nlr: [1, 2\n", [], 7, ["'[' is never closed"]),
    ("unclosed-brace", HEAD + "---\nlr: {a: 1\nseed: 3\n", [], 7, ["'{' is never closed"]),
    ("tab-indent", "template:\n  train: echo\ndefault:\n\tlr: 1\n", [], 4,
     ["a tab in the indentation: YAML indents with spaces only"]),
    ("invalid-yaml-indent", "template:\n  train: echo\n   bad: 1\n", [], 3, ["invalid YAML"]),
    ("alias-in-template", "template:\n  train: echo [opt]\nalias:\n  opt: {a: {lr: 1}}\n", [], 2,
     ["alias 'opt' cannot be a placeholder"]),
    ("param-name-characters", HEAD + "---\nlr: 1\nbatch.size: 2\n", [], 8, ["'batch.size'", "letters, digits"]),
    ("duplicate-keys", HEAD + "---\nlr: [1, 2]\nseed: 1\nlr: [3]\n", [], 9, ["duplicate key 'lr'"]),
    ("unknown-reserved", "template:\n  train: echo {_out}\n", [], 2, ["'{_out}'"]),
    ("unequal-alias", "template: {a: 'echo [lr]'}\nalias:\n  o:\n    x: {lr: 1}\n    y: {wd: 1}\n", [], 5,
     ["all cases of alias 'o'"]),
]


@pytest.mark.parametrize("text, args, line, fragments", [case[1:] for case in CLI_ERRORS],
                         ids=[case[0] for case in CLI_ERRORS])
def test_C10_cli_error_is_one_line_exit_2_nothing_written(tmp_path, write_yaml, run_cli, text, args, line,
                                                          fragments):
    """Mostly real runs (not --dry-run), so that "nothing is started or written" means something."""
    write_yaml(tmp_path, text)
    rc, out, err = run_cli(["-r", "0", *args], tmp_path)
    assert rc == 2, (out, err)
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, err
    prefix = "params.yaml:" + (f"{line}: " if line else " ")
    assert err.startswith(prefix), err
    for fragment in fragments:
        assert fragment in err
    assert out == ""
    assert not (tmp_path / "output").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_C10_missing_file(tmp_path, run_cli):
    rc, out, err = run_cli(["-y", "nope.yaml", "--dry-run"], tmp_path)
    assert rc == 2 and out == "" and "Traceback" not in err
    assert re.fullmatch(r"nope\.yaml: file not found[^\n]*-y[^\n]*\n", err), err
    assert list(tmp_path.iterdir()) == []


def test_C10_default_file_missing_names_params_yaml(tmp_path, run_cli):
    rc, _, err = run_cli([], tmp_path)
    assert rc == 2 and err.startswith("params.yaml: file not found") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_C10_unknown_command_on_command_line(tmp_path, write_yaml, run_cli):
    """A `-c` mistake is on the command line, not in the file: one line, exit 2, names the choices."""
    write_yaml(tmp_path, HEAD)
    rc, out, err = run_cli(["-c", "tran", "--dry-run"], tmp_path)
    assert rc == 2 and out == "" and "Traceback" not in err
    assert err.count("\n") == 1
    assert "-c: unknown command 'tran'" in err and "train" in err
    assert err.startswith(("params.yaml", "mlrunner:"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize("content", [b"\xff\xfe\x00", b"template: {a: echo}\n\tdefault: 1\n"])
def test_C10_unreadable_or_tabbed_file(tmp_path, run_cli, content):
    (tmp_path / "params.yaml").write_bytes(content)
    rc, out, err = run_cli(["--dry-run"], tmp_path)
    assert rc == 2 and "Traceback" not in err and err.count("\n") == 1
    assert err.startswith("params.yaml")


# Paper cuts of issue 14 ---------------------------------------------------------------------------


def test_C10_tab_in_indentation_is_our_sentence_with_its_line(config_error):
    error = config_error("template:\n  train: echo [lr]\ndefault:\n  lr: 1\n\t  seed: 2\n")
    assert (error.line, error.message) == (5, "a tab in the indentation: YAML indents with spaces only")


def test_C10_tab_inside_a_value_is_not_blamed_on_indentation(load_config):
    assert load_config("template:\n  train: 'echo\ta'\n").templates["train"].text == "echo\ta"


def test_C6_shell_variable_naming_a_param_warns(load_config):
    """`${lr}` is left to the shell (C6); when `lr` is a param, it was almost surely meant as {lr}."""
    config = load_config("template:\n  train: echo ${lr} ${HOME} ${seed}\ndefault: {lr: 1}\n---\nseed: [1]\n")
    assert config.warnings == [
        f"{config.path}:2: warning: template 'train': '${{lr}}' is a shell variable, not the param 'lr' "
        "(write '{lr}' for its value)",
        f"{config.path}:2: warning: template 'train': '${{seed}}' is a shell variable, not the param 'seed' "
        "(write '{seed}' for its value)"]


def test_C6_shell_variable_warning_reaches_stderr_and_the_run_goes_on(tmp_path, write_yaml, run_cli):
    write_yaml(tmp_path, "template:\n  train: echo ${lr}\ndefault: {lr: 1}\n")
    rc, out, err = run_cli(["--dry-run", "-r", "0"], tmp_path)
    assert rc == 0 and "echo ${lr}" in out
    assert err == ("params.yaml:2: warning: template 'train': '${lr}' is a shell variable, not the param 'lr' "
                   "(write '{lr}' for its value)\n")


def test_C9_orphan_close_to_a_defaulted_placeholder_gets_did_you_mean(tmp_path, write_yaml, run_cli):
    write_yaml(tmp_path, HEAD + "---\nlrr: [0.1, 0.01]\nnote: [x]\n")
    rc, out, err = run_cli(["--dry-run", "-r", "0"], tmp_path)
    assert rc == 0, err
    assert out.splitlines()[0] == "Orphan params: {'lrr', 'note'} (did you mean 'lr'?)"


def test_C9_orphan_far_from_every_placeholder_gets_no_guess(load_config):
    from mlrunner.view.report import format_orphans
    config = load_config(HEAD)
    assert format_orphans({"repeat"}, config) == "{'repeat'}"
    assert format_orphans(set(), config) == "set()"
