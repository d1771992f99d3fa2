"""`--report`: one self-contained HTML page of a sweep (SPEC V1-V3), checked in a real headless Chromium."""

from __future__ import annotations

import os
import re
import socket
import urllib.parse
from pathlib import Path

import pytest

from mlrunner.view import history, html_report
from runlib import load, run, write

from cdp import Chromium, find_chromium

HOSTILE = "<img src=x onerror=window.pwned=1>"

CONFIG = f"""
template:
  train: >
    python3 -c "import sys; print('loss', {{lr}} * 10); print('</pre><script>window.pwned = 2</script>');
    sys.exit(1 if {{lr}} > 0.5 else 0)"
  flaky: test -e {{_output}}/once || (touch {{_output}}/once; exit 3)
  test: echo "BLEU4 = $(python3 -c 'print({{lr}} * 100 + {{seed}})')"
default: {{lr: 0.1, seed: 1, note: plain}}
resource: [0, 1]
metric:
  bleu: {{command: test, regex: 'BLEU4 = ([\\d.]+)'}}
---
lr: [0.01, 0.1, 1.0]
seed: [1, 2]
---
lr: 0.001
note: "{HOSTILE}"
"""


def _records(output: Path):
    """(experiment, command, worker) of every run the records hold, in either `_runs` shape."""
    found = []
    for stat_path in sorted(output.glob("*/stat")):
        stat = load(stat_path)
        for command, runs in (stat.get("_runs") or {}).items():
            for one in runs if isinstance(runs, list) else [runs]:
                found.append((stat_path.parent.name, command, str(one["worker"])))
    return found


def require_chromium() -> None:
    if find_chromium():
        return
    message = "chromium is missing (scripts/test.sh installs Debian's chromium when run as root)"
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"CI=true but {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A real run, then a resume: failed commands run twice, `flaky` needs its retry."""
    project = tmp_path_factory.mktemp("report")
    write(project, CONFIG)
    for _ in range(2):
        code, out, err = run(["--retry", "1"], project, timeout=120)
        assert code == 1, out + err  # lr 1.0 always fails
    code, out, err = run(["--report"], project)
    assert (code, err) == (0, ""), err
    assert out == "Report: output/report.html\n"
    return project


def test_v1_report_is_written_with_every_section(tree: Path):
    page = (tree / "output" / "report.html").read_text()
    for heading in ("Timeline", "Results", "Metrics", "Failures"):
        assert f"<h2>{heading}</h2>" in page
    assert re.search(r"utilisation \d+\.\d% \(busy worker-time / available\)", page)
    assert "bleu against lr (log x, log y)" in page and "bleu against seed (log y)<" in page  # bleu 1.1 to 92


def test_v1_hostile_params_and_log_lines_are_escaped(tree: Path):
    page = (tree / "output" / "report.html").read_text()
    assert HOSTILE not in page and "<script>window.pwned" not in page
    assert "&lt;img src=x onerror=window.pwned=1&gt;" in page
    assert "&lt;/pre&gt;&lt;script&gt;window.pwned = 2&lt;/script&gt;" in page  # the failure's last lines
    assert page.count("<script>") == 1  # ours, the sorter


def test_v2_a_failed_command_run_again_keeps_both_runs(tree: Path):
    """V2: the resume and the retry add runs to `_runs` instead of replacing them."""
    runs = _records(tree / "output")
    failed = [r for r in runs if r[0] == "Lr_1-Seed_1" and r[1] == "train"]
    flaky = [r for r in runs if r[0] == "Lr_0.01-Seed_1" and r[1] == "flaky"]
    assert len(failed) == 4  # two runs, each with its retry
    assert len(flaky) == 2  # failed once, then its retry finished


def test_v3_in_headless_chromium(tree: Path, tmp_path: Path):
    """No console error, no request but the file itself, one bar per run on its worker's row, sorting."""
    require_chromium()
    report = tree / "output" / "report.html"
    with Chromium(tmp_path) as browser:
        browser.open(report.as_uri())
        bars = browser.evaluate("""Array.from(document.querySelectorAll("g.worker")).map(function (g) {
            return [g.getAttribute("data-worker"), Array.from(g.querySelectorAll("rect.bar")).map(function (r) {
                return r.querySelector("title").textContent; })]; })""")
        shown = sorted((title.split(" · ")[0], title.split(" · ")[1], worker) for worker, titles in bars
                       for title in titles)
        assert shown == sorted(_records(tree / "output"))
        assert browser.evaluate("window.pwned === undefined")

        def column(name: str) -> list:
            return browser.evaluate(f"""(function () {{
                var index = Array.from(document.querySelectorAll("#results th")).findIndex(
                    function (th) {{ return th.textContent === "{name}"; }});
                return Array.from(document.querySelectorAll("#results tbody tr")).map(
                    function (tr) {{ return tr.cells[index].textContent; }}); }})()""")

        before = column("bleu")
        values = [float(v) for v in before if v]
        assert values != sorted(values, reverse=True)
        browser.evaluate('document.querySelector("#results th[data-column=bleu]").click()')
        browser.evaluate('document.querySelector("#results th[data-column=bleu]").click()')
        after = column("bleu")
        assert [float(v) for v in after if v] == sorted(values, reverse=True)
        assert after[-len(before) + len(values):] == [""] * (len(before) - len(values))  # empty cells last
        assert browser.evaluate('document.querySelector("#results th[data-column=bleu]").getAttribute("aria-sort")'
                                ) == "descending"
        names = column("experiment")
        assert names[0] == "Lr_0.1-Seed_2"  # the row moved with its value
        shot = browser.screenshot(tmp_path / "report.png")
        assert browser.errors() == []
        assert browser.requests() == [report.as_uri()]
    assert shot.stat().st_size > 10_000
    print(f"report screenshot: {shot}")


def test_v1_log_links_are_relative_to_the_report(tree: Path):
    page = (tree / "output" / "report.html").read_text()
    links = re.findall(r'<a href="([^"]+)">', page)
    assert links and all(not link.startswith(("/", "file:", "http")) for link in links)
    for link in links:
        assert (tree / "output" / urllib.parse.unquote(link)).is_file(), link


def test_v1_report_file_elsewhere_and_bad_targets(tree: Path, tmp_path: Path):
    target = tmp_path / "sub" / "r.html"
    (tmp_path / "sub").mkdir()
    code, out, err = run(["--report", str(target), "-o", str(tree / "output"), "-y", str(tree / "params.yaml")], tree)
    assert code == 0, err
    links = re.findall(r'<a href="([^"]+)">', target.read_text())
    assert links and all((target.parent / urllib.parse.unquote(link)).is_file() for link in links)
    for bad, message in ((tmp_path, "is a directory"), (tmp_path / "nope" / "r.html", "no directory")):
        code, out, err = run(["--report", str(bad)], tree)
        assert (code, out) == (2, "") and err.count("\n") == 1 and message in err, err
    code, out, err = run(["--report", "-o", "missing"], tree)
    assert code == 2 and err == "mlrunner: no output directory 'missing' (name another with -o)\n"


# Pure parts: records in both `_runs` shapes, idle time and utilisation ----------------------------

def _experiment(root: Path, name: str, stat: str, param: str = "lr: 1\n") -> None:
    (root / name).mkdir(parents=True)
    (root / name / "stat").write_text(stat)
    (root / name / "param").write_text(param)


def test_v2_new_and_old_runs_shapes_are_both_read(tmp_path: Path):
    _experiment(tmp_path, "New", """\
train: finished
_runs:
  train:
  - {worker: '0', host: localhost, start: 100.0, end: 110.0, seconds: 10.0, status: failed, reason: exit status 1,
     log: output/New/log.train.1}
  - {worker: '1', host: localhost, start: 110.0, end: 130.0, seconds: 20.0, status: finished,
     log: output/New/log.train.2}
""")
    _experiment(tmp_path, "Old", "train: finished\n_runs:\n  train:\n    worker: '0'\n"
                                 "    started: '1970-01-01 00:02:00'\n    seconds: 5.0\n", "lr: 2\n")
    rows, runs = history.collect(str(tmp_path), {}, now=1000.0)
    assert [(r.experiment, r.worker, r.status, r.end - r.start) for r in runs] == [
        ("New", "0", "failed", 10.0), ("New", "1", "finished", 20.0), ("Old", "0", "finished", 5.0)]
    assert rows[0].logs == {"train": str(tmp_path / "New" / "log.train.2")}
    assert rows[0].seconds == 20.0 and rows[0].status == "finished"


def test_v1_idle_and_utilisation_are_worker_time(tmp_path: Path):
    runs = [history.Run("a", "train", "0", 0.0, 50.0, "finished"),
            history.Run("b", "train", "0", 40.0, 60.0, "finished"),  # overlaps: a second slot of GPU 0 (T9)
            history.Run("c", "train", "1", 80.0, 100.0, "failed")]
    page = html_report.timeline(runs)
    assert "Workers: 3," in page and "utilisation 30.0%" in page  # (50 + 20 + 20) / (3 slots * 100 s)
    assert "idle 50.0 s (50%)" in page and "idle 1:20 (80%)" not in page
    assert page.count("idle 0:01:20 (80%)") == 2


def test_v1_a_running_command_reaches_the_time_of_the_report(tmp_path: Path):
    _experiment(tmp_path, "Run", f"""\
train: running
_runs:
  train:
  - {{worker: '0', host: '{socket.gethostname()}', start: 100.0, status: running, pid: {os.getpid()}}}
""")
    _, runs = history.collect(str(tmp_path), {}, now=160.0)
    assert [(r.status, r.end) for r in runs] == [("running", 160.0)]


def test_v1_metrics_come_from_the_config_copy_in_the_output_root(tree: Path, tmp_path: Path):
    """Run elsewhere, with no params.yaml at hand: the copy the runner left in -o names the metrics."""
    code, out, err = run(["--report", str(tmp_path / "r.html"), "-o", str(tree / "output")], tmp_path)
    assert code == 0, err
    assert '<th data-column="bleu">bleu</th>' in (tmp_path / "r.html").read_text()


def test_v1_a_bad_config_is_one_line(tree: Path, tmp_path: Path):
    """A config named with -y (without it, the tree's own config answers: T1)."""
    (tmp_path / "params.yaml").write_text("template: {a: echo}\nmetric: {m: {command: zz, regex: '(x)'}}\n")
    code, out, err = run(["--report", "-o", str(tree / "output"), "-y", "params.yaml"], tmp_path)
    assert (code, out) == (2, "") and err.startswith("params.yaml:2: metric 'm': unknown command 'zz'"), err
    assert err.count("\n") == 1


def test_v1_no_subdir_tree(tmp_path: Path):
    """--no-subdir keeps `stat.<name>` and `param.<name>` in the root: each is one experiment."""
    write(tmp_path, "template:\n  train: echo loss {lr}\nresource: [0]\nmetric:\n"
                    "  loss: {command: train, regex: 'loss ([\\d.]+)'}\n---\nlr: [1, 2]\n")
    code, out, err = run(["--no-subdir"], tmp_path)
    assert code == 0, err
    rows, runs = history.collect(str(tmp_path / "output"), {"loss": {"command": "train", "regex": r"loss ([\d.]+)"}})
    assert [(r.name, r.params, r.metrics, r.status) for r in rows] == [
        ("Lr_1", {"lr": 1}, {"loss": 1}, "finished"), ("Lr_2", {"lr": 2}, {"loss": 2}, "finished")]
    assert [(r.experiment, r.command, r.worker) for r in runs] == [("Lr_1", "train", "gpu:0"), ("Lr_2", "train", "gpu:0")]
    assert all(Path(path).name.endswith(f".{row.name}") for row in rows for path in row.logs.values())


def test_v1_a_corrupt_stat_is_an_unreadable_row(tmp_path: Path):
    _experiment(tmp_path, "Bad", "train: [unclosed\n")
    rows, runs = history.collect(str(tmp_path), {})
    assert [(r.name, r.status, r.params) for r in rows] == [("Bad", "unreadable", {"lr": 1})] and runs == []
    assert "unreadable" in html_report.render(rows, runs, [], "t", str(tmp_path), 0.0)
