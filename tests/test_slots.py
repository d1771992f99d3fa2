"""Worker slots have names (SPEC T11) and the report's timeline draws one row per slot, with the
pauses between separate runs cut out (T9).

Real runs through the CLI: two CPU workers (`resource: ['', '']`), GPU 0 listed twice, GPU 0 packed
by `gpu:` with the stand-in nvidia-smi; the report is loaded in the headless Chromium of the HTML
tests, and its rows are counted there.
"""

from __future__ import annotations

import doctest
import os
import re
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import yaml

import gpulib
from cdp import Chromium
from mlrunner.view import history, html_report
from mlrunner.run import slots
from mlrunner.run.slots import host_of, parse
from runlib import load, run, write
from test_html_report import require_chromium

STAND_INS = str(Path(__file__).parent / "bin")


def _runs(output: Path) -> List[Dict]:
    """Every `_runs` entry under the output tree, with its experiment."""
    found = []
    for stat in sorted(output.glob("*/stat")):
        for command, runs in load(stat)["_runs"].items():
            found += [dict(run, experiment=stat.parent.name, command=command) for run in runs]
    return found


def _never_two_at_once(runs: List[Dict]) -> None:
    """A slot runs one command at a time: that is what makes it a row of its own."""
    by_slot: Dict[str, List[Tuple[float, float]]] = {}
    for one in runs:
        by_slot.setdefault(one["worker"], []).append((one["start"], one["end"]))
    for slot, spans in by_slot.items():
        spans.sort()
        assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:])), (slot, spans)


def _rows(report: Path, tmp_path: Path) -> Dict[str, int]:
    """Timeline row name -> its bars, as the browser shows them."""
    require_chromium()
    with Chromium(tmp_path) as browser:
        browser.open(report.as_uri())
        rows = browser.evaluate("""Array.from(document.querySelectorAll("svg.timeline g.worker")).map(
            function (g) { return [g.getAttribute("data-worker"), g.querySelectorAll("rect.bar").length]; })""")
        assert browser.errors() == []
    return dict(rows)


def _sweep(tmp_path: Path, resource: str, extra: str = "", command: str = "sleep 0.6", count: int = 4) -> None:
    write(tmp_path, f"template:\n  train: {command}\nresource: {resource}\n{extra}---\n"
                    f"i: {list(range(1, count + 1))}\n")


@pytest.mark.parametrize("resource, slots, shown", [
    ("['', '']", {"cpu:0", "cpu:1"}, {"cpu:0", "cpu:1"}),
    ("[0, 0]", {"gpu:0", "gpu:0#1"}, {"0", "0#1"}),
], ids=["two-cpu-workers", "gpu-0-twice"])
def test_t11_repeated_entries_are_slots_in_records_console_and_report(tmp_path: Path, resource: str, slots: set,
                                                                      shown: set):
    _sweep(tmp_path, resource)
    code, out, err = run([], tmp_path)
    assert code == 0, out + err
    runs = _runs(tmp_path / "output")
    assert {one["worker"] for one in runs} == slots
    _never_two_at_once(runs)
    started = set(re.findall(r"^START   gpu: (\S+), train:", out, re.M))
    assert started == shown, out  # the console's format, with the slot's name
    code, out, err = run(["--report"], tmp_path)
    assert code == 0, err
    page = (tmp_path / "output" / "report.html").read_text()
    assert "Workers: 2," in page
    rows = _rows(tmp_path / "output" / "report.html", tmp_path)
    assert set(rows) == slots and sum(rows.values()) == 4


def test_t11_gpu_packing_names_each_slot_of_the_gpu(tmp_path: Path):
    """`gpu:` packs per_gpu commands on GPU 0: they hold gpu:0 and gpu:0#1, never one name twice at once."""
    state = gpulib.gpu_state(tmp_path / "gpus.json", totals=(gpulib.H100,))
    _sweep(tmp_path, "[0]", "gpu: {memory: 20000MiB, per_gpu: 2}\n", "fake-cuda-job 20000 1.0 0.2")
    env = {"PATH": f"{STAND_INS}:{os.environ['PATH']}", "FAKE_GPU_STATE": str(state),
           "MLRUNNER_LOCK_DIR": str(tmp_path / "locks")}
    code, out, err = run([], tmp_path, env, timeout=120)
    assert code == 0 and "Finished: 4" in out, out + err
    runs = _runs(tmp_path / "output")
    assert {one["worker"] for one in runs} == {"gpu:0", "gpu:0#1"}
    _never_two_at_once(runs)
    assert re.search(r"^START   gpu: 0#1, train:", out, re.M), out


def test_t9_a_resume_hours_later_is_cut_out_of_the_span_and_the_utilisation(tmp_path: Path):
    """A run whose one experiment fails, then (moved 3 hours later by shifting the first run's
    recorded times back) a run that runs it again: the report's span is the two runs', not 3 h."""
    marker = tmp_path / "fail-2"
    marker.write_text("")
    _sweep(tmp_path, "['', '']", command=f"sleep 1; test ! -e {tmp_path}/fail-{{i}}", count=2)
    code, out, err = run([], tmp_path)
    assert code == 1, out + err
    hours = 3 * 3600
    for stat in (tmp_path / "output").glob("*/stat"):
        record = load(stat)
        for runs in record["_runs"].values():
            for one in runs:
                one["start"] -= hours
                one["end"] -= hours
        stat.write_text(yaml.safe_dump(record, sort_keys=False))
    marker.unlink()
    code, out, err = run([], tmp_path)  # its own log names: another run of mlrunner
    assert code == 0, out + err
    code, out, err = run(["--report"], tmp_path)
    assert code == 0, err
    page = (tmp_path / "output" / "report.html").read_text()
    span = re.search(r"span ([\d.]+) s \(1 pause between runs left out: (\d+):(\d\d):\d\d\)", page)
    assert span, re.search(r'<p id="utilisation">.*?</p>', page).group(0)
    assert float(span.group(1)) < 10 and (int(span.group(2)), int(span.group(3))) in ((2, 59), (3, 0))
    utilisation = float(re.search(r"utilisation ([\d.]+)%", page).group(1))
    assert utilisation > 50  # busy most of the time the runs took; hours of pause would make it ~0 %
    require_chromium()
    with Chromium(tmp_path) as browser:
        browser.open((tmp_path / "output" / "report.html").as_uri())
        cuts = browser.evaluate("""Array.from(document.querySelectorAll("svg.timeline g.cut")).map(
            function (g) { return g.querySelector("title").textContent; })""")
        assert browser.errors() == []
    assert len(cuts) == 1 and cuts[0].endswith("between two runs, left out"), cuts


# Records written before slots had names ------------------------------------------------------------

def _old(root: Path, name: str, worker: str, start: float, end: float) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "param").write_text("i: 1\n")
    (root / name / "stat").write_text(
        f"train: finished\n_runs:\n  train:\n  - {{worker: '{worker}', host: h, start: {start}, end: {end}, "
        f"seconds: {end - start}, status: finished}}\n")


def test_t11_old_worker_names_still_read_and_draw(tmp_path: Path):
    """`0` twice at once (GPU 0 listed twice), two `cpu` at once, a host's `gpu1:0`: each busy slot
    gets a row, named as a run now names it; the times are one run's, nothing is cut."""
    for index, (worker, start, end) in enumerate([("0", 0, 10), ("0", 2, 8), ("0", 10, 20), ("cpu", 0, 5),
                                                  ("cpu", 1, 6), ("gpu1:0", 0, 20), ("gpu1:cpu", 3, 4)]):
        _old(tmp_path / "output", f"E{index}", worker, 1000.0 + start, 1000.0 + end)
    _, runs = history.collect(str(tmp_path / "output"), {})
    page = html_report.timeline(runs)
    rows = re.findall(r'data-worker="([^"]+)"', page)
    assert rows == ["gpu:0", "gpu:0#1", "cpu:0", "cpu:1", "gpu1:0", "gpu1:cpu:0"]
    assert "Workers: 6, runs: 7, span 20.0 s, utilisation" in page and "left out" not in page
    assert [host_of(w) for w in ("0", "cpu", "gpu:0#1", "cpu:1", "gpu1:0", "gpu1:0#2", "gpu1:cpu:1", "GPU-1a")] == [
        "localhost", "localhost", "localhost", "localhost", "gpu1", "gpu1", "gpu1", "localhost"]
    assert parse("gpu1:0#2") == ("gpu1:0", 2)


def test_t11_slot_names_as_the_module_documents():
    assert doctest.testmod(slots).failed == 0
