"""SPEC E1-E6: the Examiner and the no-code metrics, on real experiment trees built in tmp_path.

Each fixture writes `param`, `stat` and `log.<command>.<time>` files the way the runner does,
so the code under test reads exactly what it reads in a user's output directory.
"""
from __future__ import annotations

import re
import socket
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from mlrunner.examine import ExamineError, Examiner, Experiment, latest_log
from mlrunner.examine.metrics import read_metric, status_of
from mlrunner.examine.table import examine_table

GOLDEN_059 = Path(__file__).parent / "data" / "mlrunner-0.5.9"
BLEU_LINE = "Generate test with beam=5: BLEU4 = {}, 60.2/33.5/21.0/13.6 (BP=1.000, ratio=1.004)\n"
DEFAULTS = {"data": "iwslt14", "norm": "batch", "moment": 0.1, "early-stop": False}
# The seed's sweep: norm x moment, then early-stop for batchnorm. None: the test command failed.
SEED = {
    "Norm_new-Moment_0.1": ({"norm": "new", "moment": 0.1}, 27.31),
    "Norm_new-Moment_0.05": ({"norm": "new", "moment": 0.05}, 27.52),
    "Norm_batch-Moment_0.1": ({"norm": "batch", "moment": 0.1}, 26.9),
    "Norm_batch-Moment_0.05": ({"norm": "batch", "moment": 0.05}, None),
    "Norm_batch-Early-stop_True": ({"norm": "batch", "early-stop": True}, 27.05),
    "Norm_batch-Early-stop_False": ({"norm": "batch", "early-stop": False}, 26.9),
}
SEED_TSV = textwrap.dedent("""\
    early-stop\tmoment\tnorm\ttest_bleu
    False\t0.1\tbatch\t26.9
    True\t0.1\tbatch\t27.05
    False\t0.05\tbatch\tNone
    False\t0.1\tbatch\t26.9
    False\t0.05\tnew\t27.52
    False\t0.1\tnew\t27.31
    """)


def parse_bleu(log):
    """The seed's user-defined log parser: the last BLEU4 score in a log."""
    if log is None:
        return None
    found = re.findall(r"BLEU4 = ([\d.]+)", log.read_text())
    return float(found[-1]) if found else None


def add_bleu(output_dir, experiment, caches):
    """The seed's parser, verbatim apart from the metric's source."""
    experiment.metric["test_bleu"] = parse_bleu(latest_log("test", output_dir))


def write_experiment(output: Path, name: str, params: dict, stat: dict, logs: dict) -> Path:
    """One experiment directory in the runner's layout."""
    directory = output / name
    directory.mkdir(parents=True)
    scripts = {command: f"python {command}.py > {directory}/log.{command}" for command in ("train", "avg", "test")}
    param = {**params, "_name": name, "_output": str(directory), "_time": "20261128.013000", "_scripts": scripts}
    (directory / "param").write_text(yaml.safe_dump(param))
    (directory / "stat").write_text(yaml.safe_dump(stat))
    for log_name, text in logs.items():
        (directory / log_name).write_text(text)
    return directory


def build_seed_output(output: Path) -> Path:
    """The seed example's output tree, with a params.yaml copy at its root like the runner's.

    A plain function, not only a fixture, so scripts/golden_059.py builds the same tree for 0.5.9.
    """
    for name, (params, bleu) in SEED.items():
        finished = {"train": "finished", "avg": "finished", "test": "finished" if bleu else "failed",
                    "_runs": {"train": {"seconds": 12.5}}}
        logs = {"log.train.20261128.013000": "epoch 1 | loss 4.2\nepoch 2 | loss 3.1\n",
                "log.test.20261128.020000": "".join(["loading model\n", BLEU_LINE.format(bleu) if bleu else "crash\n"])}
        if bleu:  # an older test run, with a worse score, that must not be read
            logs["log.test.20261127.230000"] = BLEU_LINE.format(1.0)
        write_experiment(output, name, {**DEFAULTS, **params}, finished, logs)
    (output / "params.yaml").write_text("template: {}\n")
    return output


@pytest.fixture
def seed_output(tmp_path: Path) -> Path:
    return build_seed_output(tmp_path / "output")


def tsv_of(examiner: Examiner, capsys, **options) -> str:
    capsys.readouterr()
    examiner.table(print_tsv=True, **options)
    return capsys.readouterr().out


def test_e1_experiment_is_the_0_5_9_namedtuple():
    """E1: the fields and their order are part of the API users unpack."""
    assert Experiment._fields == ("cache", "metric", "param")


def test_e2_e3_seed_example_golden_tsv(seed_output, capsys):
    """E2/E3: the seed's BLEU parser over the seed's sweep prints exactly this TSV."""
    examiner = Examiner()
    examiner.add(add_bleu)
    examiner.exam(output=str(seed_output))
    assert tsv_of(examiner, capsys) == SEED_TSV


def test_e3_not_concise_shows_constant_params_but_never_underscore_ones(seed_output, monkeypatch):
    """E3: concise=False adds the params that never change; `_`-params stay hidden."""
    monkeypatch.setitem(sys.modules, "pandas", None)
    examiner = Examiner()
    examiner.add(add_bleu)
    examiner.exam(seed_output)
    rows = examiner.table(concise=False)
    assert list(rows[0]) == ["data", "early-stop", "moment", "norm", "test_bleu"]
    assert [row["data"] for row in rows] == ["iwslt14"] * 6


def test_e3_list_of_dicts_without_pandas(seed_output, monkeypatch, capsys):
    """E3: without pandas, table() returns plain dicts and print_tsv still works."""
    monkeypatch.setitem(sys.modules, "pandas", None)
    examiner = Examiner()
    examiner.add(add_bleu)
    examiner.exam(seed_output)
    rows = examiner.table(print_tsv=True)
    assert capsys.readouterr().out == SEED_TSV
    assert rows[0] == {"early-stop": False, "moment": 0.1, "norm": "batch", "test_bleu": 26.9}
    assert rows[2]["test_bleu"] is None


def test_e3_dataframe_with_pandas(seed_output):
    """E3: with pandas installed, table() returns a DataFrame with the same columns and rows."""
    pandas = pytest.importorskip("pandas")
    examiner = Examiner()
    examiner.add(add_bleu)
    examiner.exam(seed_output)
    frame = examiner.table()
    assert isinstance(frame, pandas.DataFrame)
    assert list(frame.columns) == ["early-stop", "moment", "norm", "test_bleu"]
    assert frame["norm"].tolist() == ["batch", "batch", "batch", "batch", "new", "new"]


def test_e3_empty_output_gives_an_empty_table(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    examiner = Examiner()
    examiner.exam(tmp_path)
    assert examiner.table() == []


def test_e2_parallel_matches_serial_and_merges_caches(seed_output, capsys):
    """E2: workers=2 forks, so a parser defined inside a function (as in a notebook) works."""
    def remember(output_dir, experiment, caches):
        caches[output_dir.name] = experiment.param["norm"]
        experiment.cache["logs"] = len(list(output_dir.glob("log.*")))

    serial, parallel = Examiner(), Examiner()
    for examiner, workers in ((serial, 0), (parallel, 2)):
        examiner.add(add_bleu)
        examiner.add(remember)
        examiner.exam(seed_output, workers=workers)
    assert tsv_of(parallel, capsys) == tsv_of(serial, capsys) == SEED_TSV
    assert parallel.caches == serial.caches == {name: params["norm"] for name, (params, _) in SEED.items()}
    assert parallel.experiments == serial.experiments
    assert list(parallel.experiments) == sorted(SEED)


def test_e2_parsers_run_in_order_added(seed_output):
    def first(output_dir, experiment, caches):
        experiment.metric["order"] = ["first"]

    def second(output_dir, experiment, caches):
        experiment.metric["order"].append("second")

    examiner = Examiner()
    examiner.add(first)
    examiner.add(second)
    examiner.add(first)  # registered once, like 0.5.9's set
    examiner.exam(seed_output, regex="new")
    assert all(e.metric["order"] == ["first", "second"] for e in examiner.experiments.values())


@pytest.mark.parametrize("workers", [0, 2])
def test_e2_directory_without_param_is_skipped_with_a_note(seed_output, capsys, monkeypatch, workers):
    monkeypatch.setitem(sys.modules, "pandas", None)
    (seed_output / "Norm_new-Moment_0.5").mkdir()  # started, but the runner never wrote param
    examiner = Examiner()
    examiner.add(add_bleu)
    examiner.exam(seed_output, workers=workers)
    notes = capsys.readouterr().out.splitlines()
    assert notes == [f"skip {seed_output / 'Norm_new-Moment_0.5'}: no 'param' file"]
    assert len(examiner.table()) == 6


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("text", ["norm: [new\nmoment: 0.1\n", "- not\n- a mapping\n", ""])
def test_e2_corrupt_param_is_reported_with_its_path(seed_output, capsys, workers, text):
    (seed_output / "Norm_new-Moment_0.1" / "param").write_text(text)
    examiner = Examiner()
    examiner.add(add_bleu)
    examiner.exam(seed_output, workers=workers)
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 1
    assert errors[0].startswith(f"skip {seed_output / 'Norm_new-Moment_0.1' / 'param'}: unreadable param")
    assert sorted(examiner.experiments) == sorted(set(SEED) - {"Norm_new-Moment_0.1"})


class Unpicklable(Exception):
    def __init__(self, reason, code):
        super().__init__(f"{reason} ({code})")


@pytest.mark.parametrize("workers", [0, 2])
def test_e2_parser_error_names_the_experiment_directory(seed_output, workers):
    def broken(output_dir, experiment, caches):
        if experiment.param["norm"] == "new":
            return 1 / 0

    examiner = Examiner()
    examiner.add(broken)
    with pytest.raises(ExamineError) as raised:
        examiner.exam(seed_output, workers=workers)
    directory = seed_output / "Norm_new-Moment_0.05"  # the first failing one in name order
    assert str(directory) in str(raised.value)
    assert "broken" in str(raised.value)
    assert raised.value.directory == directory
    assert isinstance(raised.value.__cause__, ZeroDivisionError)


def test_e2_parallel_error_that_cannot_cross_processes_keeps_its_text(seed_output):
    def broken(output_dir, experiment, caches):
        raise Unpicklable("disk gone", 7)

    examiner = Examiner()
    examiner.add(broken)
    with pytest.raises(ExamineError, match=r"Norm_batch-Early-stop_False.*disk gone \(7\)"):
        examiner.exam(seed_output, workers=2)


def test_e2_regex_searches_directory_names(seed_output):
    examiner = Examiner()
    examiner.exam(seed_output, regex=r"Moment_0\.05$")
    assert list(examiner.experiments) == ["Norm_batch-Moment_0.05", "Norm_new-Moment_0.05"]


def test_e2_exam_twice_merges_into_the_same_experiments(seed_output, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    examiner = Examiner()
    examiner.add(add_bleu)
    examiner.exam(seed_output, regex="new")
    examiner.exam(seed_output, regex="batch", workers=2)
    assert [row["test_bleu"] for row in examiner.table()] == [26.9, 27.05, None, 26.9, 27.52, 27.31]


def test_e2_missing_output_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no output directory"):
        Examiner().exam(tmp_path / "nowhere")


def test_e4_latest_log_order_and_range(tmp_path):
    names = ["log.train.20261127.235959", "log.train.20261128.013000", "log.train.20261128.013000.retry2",
             "log.train.20261128.013000.retry10", "log.train2.20261129.000000", "log.test.20261130.000000"]
    for name in names:
        (tmp_path / name).write_text("")
    assert latest_log("train", tmp_path) == tmp_path / "log.train.20261128.013000.retry10"
    assert latest_log("train", str(tmp_path), index=0) == tmp_path / "log.train.20261127.235959"
    assert latest_log("train", tmp_path, index=-2) == tmp_path / "log.train.20261128.013000.retry2"
    assert latest_log("train", tmp_path, index=4) is None
    assert latest_log("train", tmp_path, index=-5) is None
    assert latest_log("avg", tmp_path) is None
    assert latest_log("train", tmp_path / "nowhere") is None


def test_e6_read_metric_last_match_in_latest_log_and_numbers(tmp_path):
    (tmp_path / "log.train.20261128.010000").write_text("step 999 loss 0.1\n")
    (tmp_path / "log.train.20261128.020000").write_text(
        "step 100 loss 2.5 acc n/a\nstep 200 loss 1.25 acc high\nstep 300 loss 1e-3 acc low\n")
    assert read_metric(tmp_path, "train", re.compile(r"step (\d+)")) == 300
    assert isinstance(read_metric(tmp_path, "train", r"step (\d+)"), int)
    assert read_metric(tmp_path, "train", r"loss ([\d.e-]+)") == 0.001
    assert read_metric(tmp_path, "train", r"acc (\S+)") == "low"
    assert read_metric(tmp_path, "train", r"step \d+") == "step 300"
    assert read_metric(tmp_path, "train", r"BLEU4 = ([\d.]+)") is None
    assert read_metric(tmp_path, "test", r"(.*)") is None


def test_e6_status_of(tmp_path):
    (tmp_path / "stat").write_text(yaml.safe_dump(
        {"train": "finished", "avg": "finished", "_runs": {"train": {"seconds": 3.0}}}))
    assert status_of(tmp_path) == "finished"
    (tmp_path / "stat").write_text("train: finished\navg: failed\ntest: skipped\n")
    assert status_of(tmp_path) == "train:finished avg:failed test:skipped"
    (tmp_path / "stat").write_text("train: [\n")
    assert status_of(tmp_path) == "unreadable"
    (tmp_path / "stat").unlink()
    assert status_of(tmp_path) == "pending"


METRICS = {"bleu": {"command": "test", "regex": r"BLEU4 = ([\d.]+)"},
           "loss": {"command": "train", "regex": r"loss ([\d.]+)"}}


@pytest.fixture
def small_output(seed_output) -> Path:
    """Three experiments of the seed, one with a failed test."""
    keep = {"Norm_new-Moment_0.1", "Norm_new-Moment_0.05", "Norm_batch-Moment_0.05"}
    for name in set(SEED) - keep:
            for path in (seed_output / name).iterdir():
                path.unlink()
            (seed_output / name).rmdir()
    return seed_output


def test_e6_examine_table_tsv(small_output, capsys):
    assert examine_table(str(small_output), METRICS) == (
        "experiment\tmoment\tnorm\tbleu\tloss\tstatus\n"
        "Norm_batch-Moment_0.05\t0.05\tbatch\t\t3.1\tavg:finished test:failed train:finished\n"
        "Norm_new-Moment_0.05\t0.05\tnew\t27.52\t3.1\tfinished\n"
        "Norm_new-Moment_0.1\t0.1\tnew\t27.31\t3.1\tfinished\n")
    assert capsys.readouterr().out == ""


def test_e6_examine_table_csv(small_output):
    assert examine_table(str(small_output), METRICS, fmt="csv") == (
        "experiment,moment,norm,bleu,loss,status\n"
        "Norm_batch-Moment_0.05,0.05,batch,,3.1,avg:finished test:failed train:finished\n"
        "Norm_new-Moment_0.05,0.05,new,27.52,3.1,finished\n"
        "Norm_new-Moment_0.1,0.1,new,27.31,3.1,finished\n")


def test_e6_examine_table_markdown(small_output):
    assert examine_table(str(small_output), METRICS, fmt="markdown") == (
        "| experiment             | moment | norm  | bleu  | loss | status                                  |\n"
        "| ---------------------- | ------ | ----- | ----- | ---- | --------------------------------------- |\n"
        "| Norm_batch-Moment_0.05 | 0.05   | batch |       | 3.1  | avg:finished test:failed train:finished |\n"
        "| Norm_new-Moment_0.05   | 0.05   | new   | 27.52 | 3.1  | finished                                |\n"
        "| Norm_new-Moment_0.1    | 0.1    | new   | 27.31 | 3.1  | finished                                |\n")


def test_e6_examine_table_notes_go_to_stderr_and_bad_input_is_named(small_output, capsys):
    (small_output / "half-written").mkdir()
    examine_table(str(small_output), METRICS)
    captured = capsys.readouterr()
    assert captured.out == "" and "half-written: no 'param' file" in captured.err
    with pytest.raises(ValueError, match="unknown table format 'html'"):
        examine_table(str(small_output), METRICS, fmt="html")
    with pytest.raises(ValueError, match="metric 'bleu': bad regex"):
        examine_table(str(small_output), {"bleu": {"command": "test", "regex": "(["}})


def test_e2_e3_same_tsv_as_mlrunner_0_5_9(seed_output, capsys):
    """E2/E3 compatibility: the same parser over the same tree prints the TSV that 0.5.9 printed.

    examine.tsv was recorded by scripts/golden_059.py with 0.5.9 over build_seed_output's tree. 0.5.9
    lists directories in file-system order, so rows are compared sorted; ours are sorted by
    directory name, which the golden test above checks.
    """
    header, *rows = (GOLDEN_059 / "examine.tsv").read_text(encoding="utf-8").splitlines()
    examiner = Examiner()
    examiner.add(add_bleu)
    examiner.exam(seed_output)
    ours = tsv_of(examiner, capsys).splitlines()
    assert ours[0] == header
    assert sorted(ours[1:]) == sorted(rows)
    assert len(rows) == len(SEED)


def test_e2_parallel_result_that_cannot_cross_processes_is_explained(seed_output):
    def keep_a_lambda(output_dir, experiment, caches):
        experiment.cache["reader"] = lambda: output_dir

    examiner = Examiner()
    examiner.add(keep_a_lambda)
    with pytest.raises(RuntimeError, match="cannot be sent back from a worker process"):
        examiner.exam(seed_output, workers=2)



def test_e6_status_of_shows_a_dead_runs_command_as_interrupted(tmp_path):
    """E6 with R6: --examine reads a `running` left by a dead run as --status does."""
    owner = {"host": socket.gethostname(), "pid": 1, "pid_start": -1}  # pid 1 never started at -1
    (tmp_path / "stat").write_text(yaml.safe_dump(
        {"train": "finished", "test": "running", "_runs": {"test": owner}}, sort_keys=False))
    assert status_of(tmp_path) == "train:finished test:interrupted"
