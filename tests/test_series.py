"""A metric can be a series (SPEC T13): every value with the progress counter of its line, drawn by
`--report` as one curve per experiment, on log axes from a decade, with no label clipped; logs read
with bounded memory. Real runs of bash commands, the page checked in a real headless Chromium."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mlrunner.plan import config
from mlrunner.view import history, html_report
from mlrunner.view.charts import axis
from mlrunner.examine.logs import MAX_POINTS, read_series
from runlib import environment, load, run, write
from test_html_report import require_chromium

from cdp import Chromium

EPOCHS = 8
# Each epoch: a `\r` progress bar, then `epoch N val_loss X throughput Y` (val_loss = scale / N).
CONFIG = f"""
template:
  train: >
    for i in $(seq 1 {EPOCHS}); do printf 'epoch %d [==    ]\\r' $i; sleep 0.05;
    awk -v s={{scale}} -v i=$i 'BEGIN {{{{ printf "epoch %d val_loss %g throughput %.1f\\n", i, s / i, 1234567 + i }}}}';
    done
default: {{tag: a-rather-long-experiment-tag-that-names-the-directory}}
resource: ['']
metric:
  val_loss: {{command: train, regex: 'val_loss ([\\d.e+-]+)', step: 'epoch (\\d+)'}}
  throughput: {{command: train, regex: 'throughput ([\\d.]+)', step: 'epoch (\\d+)'}}
early_stop: {{metric: val_loss, mode: min, rule: median, after: 2, min_peers: 1}}
---
scale: [1, 0.5, 40]  # plan order: 0.5 beats its one peer, 40 does not
tag: a-rather-long-experiment-tag-that-names-the-directory
"""


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """One worker: the experiments run in plan order, so that scale 40 meets its peers' curves."""
    project = tmp_path_factory.mktemp("series")
    write(project, CONFIG)
    code, out, err = run([], project, timeout=120)
    assert code == 0, out + err
    code, out, err = run(["--report"], project)
    assert (code, err) == (0, ""), err
    return project


def _names(project: Path) -> list:
    return sorted(p.name for p in (project / "output").iterdir() if (p / "stat").exists())


def test_T13_the_early_stop_step_and_the_metric_step_serve_each_other(tmp_path: Path):
    """early_stop without `step` takes the metric's; a metric without `step` takes early_stop's."""
    path = write(tmp_path, "template: {train: echo}\nmetric:\n  loss: {command: train, regex: 'loss (\\d+)'}\n"
                           "early_stop: {metric: loss, step: 'it (\\d+)'}\n")
    loaded = config.load(str(path))
    assert loaded.metrics["loss"]["step"] == "it (\\d+)" and loaded.early_stop.step_re.pattern == "it (\\d+)"
    assert "step" not in load(path)["metric"]["loss"]  # the file as written is not changed


def test_T13_stopped_experiment_is_recorded_and_curves_read(tree: Path):
    stopped = [name for name in _names(tree) if load(tree / "output" / name / "stat")["train"] == "stopped"]
    assert stopped == ["Scale_40-Tag_a-rather-long-experiment-tag-that-names-the-directory"]
    rows, _ = history.collect(str(tree / "output"), config.load(str(tree / "params.yaml")).metrics)
    by_name = {row.name.split("-")[0]: row for row in rows}
    assert by_name["Scale_0.5"].series["val_loss"] == [(i, float(f"{0.5 / i:g}")) for i in range(1, EPOCHS + 1)]
    assert by_name["Scale_40"].stops == {"train": 2.0}  # the step the median rule decided at
    assert by_name["Scale_40"].series["val_loss"][:2] == [(1, 40.0), (2, 20.0)]


def test_T13_examine_shows_the_last_value_of_a_series(tree: Path):
    code, out, err = run(["--examine"], tree)
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("Scale_1-"))
    assert re.search(r"\b0\.125\b", line) and "1234575" in line  # epoch 8: 1 / 8, 1234567 + 8


def test_T13_curves_in_headless_chromium(tree: Path, tmp_path: Path):
    """One polyline per experiment named on hover, log y for val_loss (0.0625 to 40), the stopped
    one marked, every tick label inside its chart, no console error, no request."""
    require_chromium()
    report = tree / "output" / "report.html"
    with Chromium(tmp_path) as browser:
        browser.open(report.as_uri())
        charts = browser.evaluate("""Array.from(document.querySelectorAll("svg.curves")).map(function (svg) {
            return {metric: svg.getAttribute("data-metric"),
                    caption: svg.parentNode.querySelector("figcaption").textContent,
                    curves: Array.from(svg.querySelectorAll("polyline.curve")).map(function (p) {
                        return [p.querySelector("title").textContent, p.classList.contains("stopped"),
                                p.points.length]; }),
                    stops: Array.from(svg.querySelectorAll("path.stop title")).map(function (t) {
                        return t.textContent; })}; })""")
        assert [c["metric"] for c in charts] == ["val_loss", "throughput"]
        for chart in charts:
            assert sorted(name for name, _, _ in chart["curves"]) == _names(tree)
            assert [name.split("-")[0] for name, stopped, _ in chart["curves"] if stopped] == ["Scale_40"]
            assert all(points >= 2 for _, _, points in chart["curves"])
        assert "(log y)" in charts[0]["caption"]  # values 0.0625-40: a decade or more; steps 1-8: less
        assert "(log" not in charts[1]["caption"]  # 1234568 to 1234575: linear
        assert charts[0]["stops"] == [f"{_names(tree)[-1]}: stopped by early_stop at step 2"]
        outside = browser.evaluate("""Array.from(document.querySelectorAll("figure.plot svg")).flatMap(function (svg) {
            var box = svg.getBoundingClientRect();
            return Array.from(svg.querySelectorAll("text")).filter(function (t) {
                var r = t.getBoundingClientRect();
                return r.left < box.left || r.right > box.right || r.top < box.top || r.bottom > box.bottom;
            }).map(function (t) { return t.textContent; }); })""")
        assert outside == []
        labels = browser.evaluate('Array.from(document.querySelectorAll("svg.curves text.ytick")).map('
                                  'function (t) { return t.textContent; })')
        assert any(len(label) >= 7 for label in labels)  # 1234570-style labels were there to clip
        browser.screenshot(tmp_path / "series.png")
        assert browser.errors() == []
        assert browser.requests() == [report.as_uri()]


@pytest.mark.parametrize("step, message", [
    ("'epoch (\\d+'", "metric 'loss': 'step': bad regex"),
    ("'epoch \\d+'", "metric 'loss': 'step': the regex needs a (group) around the progress counter"),
    ("[1]", "metric 'loss': 'step' must be a regex"),
])
def test_T13_a_bad_step_is_one_line_at_its_line(tmp_path: Path, step: str, message: str):
    write(tmp_path, f"template: {{train: echo}}\nmetric:\n  loss:\n    command: train\n    regex: 'loss (\\d+)'\n"
                    f"    step: {step}\n")
    for args in ([], ["--report"]):
        code, out, err = run(args, tmp_path)
        assert (code, out) == (2, "") and err.startswith(f"params.yaml:6: {message}"), err
        assert err.count("\n") == 1, err
    assert not (tmp_path / "output").exists()


def test_T13_a_misspelt_key_of_a_metric_is_one_line(tmp_path: Path):
    write(tmp_path, "template: {train: echo}\nmetric:\n  loss: {command: train, regex: 'loss (\\d+)', stpe: 'e (\\d+)'}\n")
    code, out, err = run([], tmp_path)
    assert code == 2 and err == "params.yaml:3: metric 'loss': unknown key 'stpe' (did you mean 'step'?)\n"


def test_T13_axes_are_log_from_a_decade():
    assert not axis([1.0, 9.9]).log and axis([1.0, 10.0]).log and axis([0.001, 0.03]).log  # a 1.5-decade lr
    assert not axis([0.0, 100.0]).log and not axis([-1.0, 100.0]).log


def test_T13_a_long_series_is_thinned_while_read_and_drawn(tmp_path: Path):
    log = tmp_path / "log.train"
    with open(log, "w") as stream:
        for step in range(1, 100_001):
            stream.write(f"epoch {step} [===]\repoch {step} val_loss {1 / step}\n")
    points = read_series(str(log), re.compile(r"epoch (\d+)"), re.compile(r"val_loss ([\d.e-]+)"))
    assert len(points) <= MAX_POINTS and points[0] == (1, 1.0) and points[-1] == (100_000, 1e-05)
    steps = [step for step, _ in points]
    assert steps == sorted(steps) and max(b - a for a, b in zip(steps, steps[1:])) <= 2 * 100_000 / MAX_POINTS
    rows = [history.Row(f"Experiment_{i}", {"i": i}, "finished", 1.0,
                        series={"val_loss": [(s, v * (1 + i / 10_000)) for s, v in points]}) for i in range(10_000)]
    page = html_report.render(rows, [], ["val_loss"], "t", str(tmp_path), 0.0, {"val_loss": "train"})
    curves = re.findall(r'<polyline class="curve[^"]*" points="([^"]*)"', page)
    assert len(curves) == 10_000 and max(len(c.split()) for c in curves) <= 20
    assert len(page) < 8 * 2**20, len(page)


def _peak_mib(args: list, cwd: Path) -> float:
    """The peak RSS of one mlrunner child (os.wait4: that child's own, not the maximum of all)."""
    child = subprocess.Popen([sys.executable, "-m", "mlrunner", *args], cwd=cwd, env=environment(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    assert child.returncode == 0, args
    return usage.ru_maxrss / 1024


def test_T13_a_300_mb_line_costs_no_more_memory_than_a_short_one(tmp_path: Path):
    """--report and --examine on a log with one 300 MB line, against the same tree with a short one."""
    write(tmp_path, "template: {train: 'echo epoch 1 loss 2'}\nresource: ['']\nmetric:\n"
                    "  loss: {command: train, regex: 'loss ([\\d.]+)', step: 'epoch (\\d+)'}\n---\nlr: [1, 2]\n")
    code, out, err = run([], tmp_path)
    assert code == 0, err
    log = next((tmp_path / "output" / "Lr_1").glob("log.train.*"))
    calm = {flag: _peak_mib([flag], tmp_path) for flag in ("--report", "--examine")}
    with open(log, "a") as stream:
        for _ in range(300):
            stream.write("x" * 2**20)
        stream.write(" loss 7\nepoch 2 loss 3\n")
    for flag in ("--report", "--examine"):
        peak = _peak_mib([flag], tmp_path)
        assert peak < calm[flag] + 40, (flag, peak, calm[flag])
    rows, _ = history.collect(str(tmp_path / "output"), config.load(str(tmp_path / "params.yaml")).metrics)
    assert rows[0].metrics["loss"] == 3 and rows[0].series["loss"] == [(1, 2.0), (2, 3.0)]
