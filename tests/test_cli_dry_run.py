"""The real `python3 -m mlrunner --dry-run`: the seed's example, flags (R9), and that it writes nothing."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time

import pytest

from conftest import REPO, SEED_YAML, run_mlrunner, tree

from mlrunner import __version__
from mlrunner.flags import build_parser

TIME = r"\d{8}\.\d{6}"
SEED_NAMES = ["Norm_new-Moment_0.1", "Norm_new-Moment_0.05", "Norm_batch-Moment_0.1", "Norm_batch-Moment_0.05",
              "Norm_batch-EaStop_T"]
SEED_TRAIN = ("CUDA_VISIBLE_DEVICES=0 python train.py data-bin/iwslt14 --seed 1 --save-dir output/Norm_new-Moment_0.1 "
              "--tensorboard-logdir output/Norm_new-Moment_0.1 --max-epochs 80 --normalization new --moment 0.1 "
              "> output/Norm_new-Moment_0.1/log.train.<time> 2>&1")


@pytest.fixture
def seed_dir(tmp_path):
    (tmp_path / "params.yaml").write_text(SEED_YAML.read_text())
    return tmp_path


@pytest.fixture(scope="module")
def seed_out(tmp_path_factory):
    """stdout of one plain `--dry-run` of the seed's example, shared by the tests that only read it."""
    directory = tmp_path_factory.mktemp("seed")
    (directory / "params.yaml").write_text(SEED_YAML.read_text())
    rc, out, err = run_mlrunner(["--dry-run"], directory)
    assert (rc, err) == (0, "")
    assert tree(directory) == ["params.yaml"]
    return out


GROUP_RE = re.compile(r"export (CUDA_VISIBLE_DEVICES=\S+); \{ (.*)\n\}( > .+ 2>&1| 2>&1 \| tee .+)\n")


def shell_lines(out: str):
    """The printed shell lines (the lines a run would start), without comments and summaries.

    Each is printed in its exact I6 shape, `export CUDA_VISIBLE_DEVICES=0; { cmd` then `} > log 2>&1`
    on the next line; this checks that shape and gives it back compacted as R2 shows it,
    `CUDA_VISIBLE_DEVICES=0 cmd > log 2>&1`, for the assertions on its parts.
    """
    starts = [line for line in out.splitlines() if line.startswith("export CUDA_VISIBLE_DEVICES=")]
    found = [" ".join(match.groups()).replace("  ", " ") for match in GROUP_RE.finditer(out)]
    assert len(found) == len(starts), "a command line is not in the `{ …\n} > log 2>&1` shape"
    return found


def output_dirs(out: str):
    """Each shell line's experiment directory, in order, once each."""
    dirs = []
    for line in shell_lines(out):
        log = shlex.split(line.rsplit(" > ", 1)[1] if " > " in line else line.rsplit(" | tee ", 1)[1])[0]
        directory = os.path.dirname(log)
        if not dirs or dirs[-1] != directory:
            dirs.append(directory)
    return dirs


# The seed's example ----------------------------------------------------------------------------

@pytest.mark.parametrize("args, tasks, commands, duplicates", [
    ([], 5, 15, "Duplicates skipped: 1"),
    (["--no-dedup"], 6, 18, None),
])
def test_seed_example_counts(seed_dir, seed_out, run_cli, args, tasks, commands, duplicates):
    if args:
        rc, out, err = run_cli(["--dry-run", *args], seed_dir)
        assert (rc, err) == (0, "")
    else:
        out = seed_out
    lines = out.splitlines()
    assert not any(line.startswith("Orphan params") for line in lines)  # none: no line (T7)
    assert f"Tasks: {tasks}, commands to run: {commands}" in lines
    assert len(shell_lines(out)) == commands
    assert ("Duplicates skipped: 1" in lines) == (duplicates is not None)
    expected = [f"output/{name}" for name in SEED_NAMES + (["Norm_batch-EaStop_F"] if tasks == 6 else [])]
    assert output_dirs(out) == expected


def test_seed_example_exact_train_line(seed_out):
    out = seed_out
    pattern = re.escape(SEED_TRAIN).replace(re.escape("<time>"), TIME)
    assert re.fullmatch(pattern, shell_lines(out)[0]), shell_lines(out)[0]
    times = set(re.findall(TIME, out))
    assert len(times) == 1  # one run, one timestamp


def test_seed_example_every_command_in_template_order(seed_out):
    out = seed_out
    for index, name in enumerate(SEED_NAMES):
        train, avg, test = shell_lines(out)[3 * index:3 * index + 3]
        assert " python train.py " in train and f"--save-dir output/{name} " in train
        assert f" python scripts/average_checkpoints.py --inputs output/{name} " in avg
        assert avg.endswith(f"--output output/{name}/averaged_model.pt > output/{name}/"
                            + avg.rsplit("/", 1)[1])
        assert f"--path output/{name}/averaged_model.pt --gen-subset test > output/{name}/log.test." in test
    assert "--early-stop" in shell_lines(out)[12] and "--moment 0.1" in shell_lines(out)[12]


@pytest.mark.parametrize("args, gpus", [
    ([], ["0", "1", "2", "3", "0"]),
    (["-r", "5", "6"], ["5", "6", "5", "6", "5"]),
    (["--resource", "1,2"], ["1,2"] * 5),
])
def test_R1_dry_run_shows_round_robin_resources(seed_dir, seed_out, run_cli, args, gpus):
    out = seed_out
    if args:
        rc, out, _ = run_cli(["--dry-run", *args], seed_dir)
        assert rc == 0
    prefixes = [line.split(" ", 1)[0] for line in shell_lines(out)]
    assert prefixes == [f"CUDA_VISIBLE_DEVICES={gpu}" for gpu in gpus for _ in range(3)]


@pytest.mark.parametrize("args", [["--dry-run", "--no-dedup", "-r", "5", "6", "-f"], ["--dry-run", "-d"],
                                  ["--dry-run", "--no-subdir", "--sample", "2"]])
def test_R9_dry_run_writes_nothing(seed_dir, run_cli, args):
    before = tree(seed_dir)
    mtime = (seed_dir / "params.yaml").stat().st_mtime_ns
    rc, out, _ = run_cli(args, seed_dir)
    assert rc == 0 and out
    assert tree(seed_dir) == before == ["params.yaml"]
    assert (seed_dir / "params.yaml").stat().st_mtime_ns == mtime


def test_R9_debug_gives_the_first_task_with_tee(seed_dir, run_cli):
    rc, out, _ = run_cli(["--dry-run", "-d"], seed_dir)
    assert rc == 0
    lines = shell_lines(out)
    assert len(lines) == 3 and "Tasks: 1, commands to run: 3" in out
    for line, command in zip(lines, ["train", "avg", "test"]):
        assert re.search(rf" 2>&1 \| tee output/Norm_new-Moment_0\.1/log\.{command}\.{TIME}\Z", line), line
        assert " > " not in line


# R9: flags -------------------------------------------------------------------------------------

def test_R9_version(tmp_path, run_cli):
    rc, out, err = run_cli(["--version"], tmp_path)
    assert (rc, out, err) == (0, f"mlrunner {__version__}\n", "")


@pytest.mark.parametrize("args, fragment", [
    (["--timeout", "soon"], "'soon'"),
    (["--timeout", "0"], "--timeout"),
    (["--sample", "-1"], "--sample"),
    (["--retry", "x"], "--retry"),
    (["--no-such-flag"], "--no-such-flag"),
])
def test_R9_bad_flag_value_is_one_line_exit_2(seed_dir, run_cli, args, fragment):
    rc, out, err = run_cli(["--dry-run", *args], seed_dir)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and fragment in err and "Traceback" not in err
    assert tree(seed_dir) == ["params.yaml"]


@pytest.mark.parametrize("value, seconds", [("90", 90), ("90s", 90), ("90m", 5400), ("2h", 7200), ("1d", 86400),
                                            ("1.5h", 5400)])
def test_R9_good_timeout_values_parse(value, seconds):
    assert build_parser().parse_args(["--timeout", value]).timeout == seconds


def test_R9_timeout_accepted_by_the_command(seed_dir, run_cli):
    rc, _, err = run_cli(["--dry-run", "--timeout", "2h", "--retry", "1", "-d"], seed_dir)
    assert (rc, err) == (0, "")


@pytest.mark.parametrize("flag, output_flag", [("-y", "-o"), ("--yaml", "--output")])
def test_R9_yaml_and_output_flags(tmp_path, run_cli, flag, output_flag):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "seed.yaml").write_text(SEED_YAML.read_text())
    rc, out, _ = run_cli(["--dry-run", flag, "conf/seed.yaml", output_flag, "runs/v1"], tmp_path)
    assert rc == 0
    assert output_dirs(out) == [f"runs/v1/{name}" for name in SEED_NAMES]
    assert "--save-dir runs/v1/Norm_new-Moment_0.1 " in out
    assert tree(tmp_path) == ["conf", "conf/seed.yaml"]


def test_R9_no_subdir_names_logs_after_the_experiment(seed_dir, run_cli):
    rc, out, _ = run_cli(["--dry-run", "--no-subdir"], seed_dir)
    assert rc == 0
    first = shell_lines(out)[0]
    assert "--save-dir output --tensorboard-logdir output " in first
    assert re.search(rf"> output/log\.train\.{TIME}\.Norm_new-Moment_0\.1 2>&1\Z", first), first


# The repository's own example and C3 / C9 through the command line ------------------------------

@pytest.mark.parametrize("args, names", [
    ([], ["Norm_batch-Layers_2", "Norm_batch-Layers_4", "Norm_layer-Layers_2", "Norm_layer-Layers_4",
          "Norm_new-Layers_2", "Norm_new-Layers_4", "Schedule_fast-Seed_1", "Schedule_fast-Seed_2",
          "Schedule_careful-Seed_1", "Schedule_careful-Seed_2"]),
    (["-t", "schedules"], ["Schedule_fast-Seed_1", "Schedule_fast-Seed_2", "Schedule_careful-Seed_1",
                           "Schedule_careful-Seed_2"]),
    (["--title", "norms", "--sample", "2", "--sample-seed", "3"], None),
])
def test_repo_example(tmp_path, run_cli, args, names):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    rc, out, err = run_cli(["--dry-run", *args], tmp_path)
    assert (rc, err) == (0, "")
    dirs = [d.split("/", 1)[1] for d in output_dirs(out)]
    if names is None:
        assert len(dirs) == 2 and all(d.startswith("Norm_") for d in dirs)
    else:
        assert dirs == names
    careful = [line for line in shell_lines(out) if "Schedule_careful-Seed_1/log.train" in line]
    if careful:
        assert careful[0].startswith("CUDA_VISIBLE_DEVICES='' python3 examples/train.py --lr 0.05 --layers 2 "
                                     "--norm batch --seed 1 --warmup --epochs 1 --save-dir ")


@pytest.mark.parametrize("args, commands", [
    ([], ["train", "avg", "test"]),
    (["-c", "test", "train"], ["train", "test"]),
    (["--command", "avg"], ["avg"]),
])
def test_C3_command_flag_selects_commands_in_template_order(seed_dir, seed_out, run_cli, args, commands):
    out = seed_out
    if args:
        rc, out, _ = run_cli(["--dry-run", *args], seed_dir)
        assert rc == 0
    logs = [re.search(r"/log\.(\w+)\.", line).group(1) for line in shell_lines(out)]
    assert logs == commands * 5


def test_C3_command_flag_overrides_cmd(tmp_path, write_yaml, run_cli):
    write_yaml(tmp_path, "template:\n  a: echo a\n  b: echo b\n---\n_cmd: a\nx: 1\n---\n_cmd: [b]\nx: 2\n")
    _, out, _ = run_cli(["--dry-run", "-r", "0"], tmp_path)
    assert [line.split(" ")[2] for line in shell_lines(out)] == ["a", "b"]
    _, out, _ = run_cli(["--dry-run", "-r", "0", "-c", "b"], tmp_path)
    assert [line.split(" ")[2] for line in shell_lines(out)] == ["b", "b"]


def test_C9_orphans_are_printed_and_still_name_directories(tmp_path, write_yaml, run_cli):
    write_yaml(tmp_path, "template:\n  train: python t.py [lr]\ndefault: {lr: 0.1}\n---\nseed: [1, 2]\n")
    rc, out, err = run_cli(["--dry-run", "-r", "0"], tmp_path)
    assert (rc, err) == (0, "")
    assert out.splitlines()[0] == "Orphan params: {'seed'}"
    assert output_dirs(out) == ["output/Seed_1", "output/Seed_2"]
    assert all("seed" not in line.split(" > ")[0] for line in shell_lines(out))


def test_C5_no_sweep_runs_default(tmp_path, write_yaml, run_cli):
    write_yaml(tmp_path, "template:\n  train: python t.py [lr]\ndefault: {lr: 0.1}\n")
    rc, out, _ = run_cli(["--dry-run", "-r", "0"], tmp_path)
    assert rc == 0
    assert re.fullmatch(rf"CUDA_VISIBLE_DEVICES=0 python t\.py --lr 0\.1 > output/default/log\.train\.{TIME} 2>&1",
                        shell_lines(out)[0])


def test_C6_reserved_placeholders_in_a_dry_run(tmp_path, write_yaml, run_cli):
    write_yaml(tmp_path, "template:\n  t: echo {_output} {_name} {_time} {_resource} {_host}\n---\nx: 1\n")
    rc, out, _ = run_cli(["--dry-run", "-r", "2,3"], tmp_path)
    assert rc == 0
    assert re.fullmatch(rf"CUDA_VISIBLE_DEVICES=2,3 echo output/X_1 X_1 {TIME} 2,3 localhost "
                        rf"> output/X_1/log\.t\.{TIME} 2>&1", shell_lines(out)[0])


def test_X2_hostile_value_end_to_end(tmp_path, write_yaml, run_cli):
    """The printed line, run by the real bash, hands the value over as one literal argument."""
    show = tmp_path / "show-argv"
    show.write_text("#!/bin/sh\nfor arg in \"$@\"; do printf '<%s>\\n' \"$arg\"; done\n")
    show.chmod(0o755)
    value = "$(touch pwned); rm -rf x"
    write_yaml(tmp_path, "template:\n  t: ./show-argv {v} [v] {_output}\n---\nv: ['" + value + "', ../../etc]\n")
    rc, out, _ = run_cli(["--dry-run", "-r", "0"], tmp_path)
    assert rc == 0 and not (tmp_path / "pwned").exists()
    lines = shell_lines(out)
    assert output_dirs(out) == ["output/V_" + value, "output/V_etc"]
    for line, expected in zip(lines, [value, "../../etc"]):
        log = shlex.split(line.rsplit(" > ", 1)[1])[0]
        os.makedirs(tmp_path / os.path.dirname(log))
        subprocess.run(["bash", "-c", line], cwd=tmp_path, check=True, timeout=30)
        assert (tmp_path / log).read_text() == f"<{expected}>\n<--v>\n<{expected}>\n<{os.path.dirname(log)}>\n"
    assert not (tmp_path / "pwned").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["output", "params.yaml", "show-argv"]


# X4 / X5 through the command line -------------------------------------------------------------

def test_X4_sample_seed_repeats_through_the_cli(tmp_path, write_yaml, run_cli):
    write_yaml(tmp_path, "template:\n  t: echo {a} {b}\n---\na: [1, 2, 3, 4, 5, 6]\nb: [1, 2, 3, 4, 5, 6]\n")
    runs = [run_cli(["--dry-run", "-r", "0", "--sample", "5", "--sample-seed", "11"], tmp_path)[1] for _ in range(2)]
    first, second = (re.sub(TIME, "T", out) for out in runs)
    assert first == second and "Tasks: 5, commands to run: 5" in first
    names = output_dirs(first)
    assert names == sorted(names, key=lambda d: [int(x) for x in re.findall(r"\d+", d)])


def test_X5_a_sweep_of_10_to_the_5_lists_in_seconds(tmp_path, write_yaml, run_cli):
    write_yaml(tmp_path, "template:\n  t: echo {a} {b} {c} {d} {e}\n---\n"
               + "".join(f"{k}: [{', '.join(str(v) for v in range(10))}]\n" for k in "abcde"))
    start = time.monotonic()
    rc, out, err = run_cli(["--dry-run", "-r", "0", "1"], tmp_path)
    elapsed = time.monotonic() - start
    assert (rc, err) == (0, "")
    assert elapsed < 20, elapsed
    assert "Tasks: 100000, commands to run: 100000" in out
    assert out.count("\nexport CUDA_VISIBLE_DEVICES=") == 10 ** 5
    assert tree(tmp_path) == ["params.yaml"]
