"""Early stopping in real runs (SPEC A1-A2): real commands print seeded learning curves; the
runner reads their logs as they grow and stops the losing ones.

The exact tests run on one worker, so that each experiment's peers are the ones before it in the
plan (as far as each got): the stopped set is then a function of the curves alone, and a small
independent computation here says which experiments stop, and where.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Dict, List, Optional

import sshd
from runlib import alive, load, run, write

STEPS = 6
# A python3 script: `curve.py FINAL SEED` prints `epoch N val_loss X` for N = 1..STEPS, with a
# `\r` progress bar before each, a few lines per second, then waits a moment before it exits.
CURVE = f"""
import random, sys, time
final, seed = float(sys.argv[1]), int(sys.argv[2])
r = random.Random(seed)
for epoch in range(1, {STEPS} + 1):
    value = final + 1.5 / epoch + 0.05 * r.random()
    for done in (3, 6):
        print(f"epoch {{epoch}} [{{'=' * done}}{{' ' * (6 - done)}}]", end="\\r", flush=True)
        time.sleep(0.02)
    print(f"epoch {{epoch}} val_loss {{value:.4f}}", flush=True)
time.sleep(0.6)
"""
FINALS = [0.30, 0.50, 0.20, 0.60, 0.90, 0.10, 0.45, 0.85]  # some start worse and end better (the 1.5/epoch term)


def curve(final: float, seed: int) -> List[float]:
    """The values curve.py prints, as the test's own computation of them."""
    r = random.Random(seed)
    return [round(final + 1.5 / epoch + 0.05 * r.random(), 4) for epoch in range(1, STEPS + 1)]


def _write(tmp_path: Path, early_stop: str, resource: str = '[""]', extra: str = "") -> None:
    (tmp_path / "curve.py").write_text(CURVE)
    finals = ", ".join(map(str, FINALS))
    write(tmp_path, f"""
        template: {{train: "python3 curve.py {{q}} {{seed}}"}}
        default: {{seed: 7}}
        resource: {resource}
        metric: {{val_loss: {{command: train, regex: 'val_loss ([\\d.]+)'}}}}
        early_stop: {early_stop}
        {extra}
        ---
        q: [{finals}]
        """)


def _expected_median(after: int, min_peers: int) -> Dict[float, Optional[int]]:
    """final -> the step its experiment is stopped at (None: runs to the end), one worker."""
    seen: List[List[float]] = []
    stopped: Dict[float, Optional[int]] = {}
    for final in FINALS:
        values = curve(final, 7)
        stopped[final] = None
        for step in range(1, STEPS + 1):
            at_step = [peer[step - 1] for peer in seen if len(peer) >= step]
            if step >= after and len(at_step) >= min_peers:
                ordered = sorted(at_step)
                half = len(ordered) // 2
                middle = ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2
                if min(values[:step]) > middle:
                    stopped[final] = step
                    values = values[:step]
                    break
        seen.append(values)
    return stopped


def _expected_asha(after: int, eta: int, min_peers: int) -> Dict[float, Optional[int]]:
    seen: List[List[float]] = []
    stopped: Dict[float, Optional[int]] = {}
    rungs = [after * eta ** k for k in range(10) if after * eta ** k <= STEPS]
    for final in FINALS:
        values = curve(final, 7)
        stopped[final] = None
        for rung in rungs:
            others = [min(peer[:rung]) for peer in seen if len(peer) >= rung]
            if len(others) < min_peers:
                continue
            keep = max(1, (len(others) + 1) // eta)  # the top 1/eta, at least one
            if sum(1 for other in others if other < min(values[:rung])) >= keep:
                stopped[final] = rung
                values = values[:rung]
                break
        seen.append(values)
    return stopped


def _observed(tmp_path: Path) -> Dict[float, Optional[int]]:
    out = {}
    for final in FINALS:
        stat = load(tmp_path / "output" / f"Q_{final:g}" / "stat")
        run_ = stat["_runs"]["train"][-1]
        out[final] = run_["early_stop"]["step"] if stat["train"] == "stopped" else None
        assert stat["train"] in ("stopped", "finished")
    return out


def test_A1_A2_median_stops_exactly_the_experiments_the_rule_says(tmp_path):
    _write(tmp_path, "{metric: val_loss, mode: min, step: 'epoch (\\d+)', rule: median, after: 2, min_peers: 2}")
    rc, out, err = run([], tmp_path, timeout=120)
    assert rc == 0, err
    expected = _expected_median(after=2, min_peers=2)
    assert sum(1 for step in expected.values() if step) >= 3  # the test means something
    assert _observed(tmp_path) == expected
    assert "early_stop: val_loss (min, command train, step 'epoch (\\d+)'): median of >= 2 peers" in out
    assert f"Stopped early (early_stop): {sum(1 for s in expected.values() if s)}" in out
    # the record says what decided it, and matches the log's values
    final = next(f for f, step in expected.items() if step)
    why = load(tmp_path / "output" / f"Q_{final:g}" / "stat")["_runs"]["train"][-1]["early_stop"]
    assert why["rule"] == "median" and why["value"] == min(curve(final, 7)[:expected[final]])

    # --status and --examine show it (A2), the examine column the last step its log printed
    rc, status, _ = run(["--status"], tmp_path)
    for final, step in expected.items():
        line = next(l for l in status.splitlines() if l.startswith(f"Q_{final:g} "))
        assert (f"train: stopped at step {step} " in line) if step else ("train: finished" in line)
    rc, table, _ = run(["--examine"], tmp_path)
    rows = [line.split("\t") for line in table.splitlines()]
    assert rows[0] == ["experiment", "q", "val_loss", "step", "status"]
    for row in rows[1:]:
        step = expected[float(row[1])]
        assert row[4] == ("stopped" if step else "finished")
        assert (step <= int(row[3]) < STEPS + 1) if step else int(row[3]) == STEPS

    # --report marks their bars (A2)
    assert run(["--report"], tmp_path)[0] == 0
    html = (tmp_path / "output" / "report.html").read_text()
    assert html.count('class="bar s-stopped"') == sum(1 for step in expected.values() if step)

    # a rerun leaves the stopped ones stopped; --rerun-stopped runs them again (A2)
    rc, out, _ = run([], tmp_path)
    assert rc == 0 and "commands to run: 0" in out
    rc, dry, _ = run(["--dry-run", "--rerun-stopped"], tmp_path)
    assert "early_stop: val_loss" in dry
    rc, out, _ = run(["--rerun-stopped"], tmp_path, timeout=120)
    assert rc == 0
    assert f"commands to run: {sum(1 for s in expected.values() if s)}" in out
    for final, step in expected.items():
        runs = load(tmp_path / "output" / f"Q_{final:g}" / "stat")["_runs"]["train"]
        assert len(runs) == (2 if step else 1)


def test_A1_A2_asha_stops_exactly_the_experiments_the_rule_says(tmp_path):
    _write(tmp_path, "{metric: val_loss, step: 'epoch (\\d+)', rule: asha, after: 1, eta: 2, min_peers: 2}")
    rc, out, err = run([], tmp_path, timeout=120)
    assert rc == 0, err
    expected = _expected_asha(after=1, eta=2, min_peers=2)
    assert sum(1 for step in expected.values() if step) >= 3
    assert _observed(tmp_path) == expected
    assert "STOPPED gpu: cpu:0, train:" in out and "early_stop asha:" in out


SCRIPT = """
if [ "$1" != 9 ]; then   # a good one: three epochs, done
    for epoch in 1 2 3; do echo "epoch $epoch val_loss $1"; done; sleep 0.1; exit 0
fi
trap '' TERM             # the losing one ignores SIGTERM: only the SIGKILL after the grace ends it (R8)
sleep 300 & echo $! > child.$1
for epoch in $(seq 1 40); do echo "epoch $epoch val_loss $1"; sleep 0.1; done
"""


def test_A2_a_stopped_command_is_ended_as_R8_and_its_worker_goes_on_within_a_second(tmp_path):
    """Four good experiments, then a losing one that ignores SIGTERM and has a child, then one
    more: the losing one is ended after the grace, its child too, and the next starts at once."""
    (tmp_path / "train.sh").write_text(SCRIPT)
    write(tmp_path, """
        template: {train: "bash train.sh {q}"}
        resource: [""]
        metric: {val_loss: {command: train, regex: 'val_loss ([\\d.]+)'}}
        early_stop: {metric: val_loss, step: 'epoch (\\d+)', after: 3, min_peers: 4}
        ---
        q: [1, 2, 3, 4, 9, 5]
        """)
    started = time.monotonic()
    rc, out, err = run(["--grace", "0.5"], tmp_path, timeout=60)
    assert rc == 0, err
    assert time.monotonic() - started < 3.5 + 4  # the losing one would print for 4 s
    bad = load(tmp_path / "output" / "Q_9" / "stat")
    assert bad["train"] == "stopped"
    record = bad["_runs"]["train"][-1]
    assert record["early_stop"]["step"] == 3 and record["early_stop"]["median"] == 2.5
    nxt = load(tmp_path / "output" / "Q_5" / "stat")["_runs"]["train"][-1]
    assert nxt["start"] - record["end"] < 1.0  # its worker took the next task at once
    assert 0.4 < record["end"] - record["start"] < 3.0  # the grace was waited: SIGTERM was ignored
    child = int((tmp_path / "child.9").read_text())
    assert not alive(child)  # the whole process group was ended


def test_A1_bad_config_and_refused_backends_are_one_line_exit_2(tmp_path):
    _write(tmp_path, "{metric: val_los, step: 'epoch (\\d+)'}")
    rc, out, err = run([], tmp_path)
    assert rc == 2 and err.count("\n") == 1 and "unknown metric 'val_los' (did you mean 'val_loss'?)" in err
    assert not (tmp_path / "output").exists()
    _write(tmp_path, "{metric: val_loss, step: 'epoch (\\d+)'}")
    rc, out, err = run(["--slurm"], tmp_path)
    assert rc == 2 and err.count("\n") == 1 and "not available with Slurm" in err
    assert not (tmp_path / "output").exists()
    rc, out, err = run(["--dry-run"], tmp_path)
    assert rc == 0 and "early_stop: val_loss (min, command train, step 'epoch (\\d+)'): median of >= 4 peers" in out


def test_A1_a_resumed_sweep_is_judged_against_the_experiments_of_earlier_runs(tmp_path):
    """Four experiments finish in one run; a fifth, added later, is stopped against them."""
    (tmp_path / "train.sh").write_text(SCRIPT)
    config = """
        template: {train: "bash train.sh {q}"}
        resource: [""]
        metric: {val_loss: {command: train, regex: 'val_loss ([\\d.]+)'}}
        early_stop: {metric: val_loss, step: 'epoch (\\d+)', after: 3, min_peers: 4}
        ---
        q: [1, 2, 3, 4%s]
        """
    write(tmp_path, config % "")
    assert run([], tmp_path)[0] == 0
    write(tmp_path, config % ", 9")
    rc, out, err = run(["--grace", "0.5"], tmp_path, timeout=60)
    assert rc == 0, err
    assert "commands to run: 1" in out and "STOPPED" in out
    record = load(tmp_path / "output" / "Q_9" / "stat")["_runs"]["train"][-1]
    assert record["early_stop"] == {"rule": "median", "value": 9, "median": 2.5, "peers": 4, "step": 3}


def test_A2_on_a_remote_host_the_agent_reads_the_log_and_the_rule_stops_there(tmp_path, tmp_path_factory):
    """A real sshd: the runner learns the values from the host's agent, ends the losing command's
    group there after the grace, and the next task starts at once (H4, R8)."""
    sshd.require_sshd()
    sshd.require_paramiko()
    server, = sshd.start_servers(1, tmp_path_factory, prefix="early")
    try:
        home = sshd.make_home(tmp_path / "home", [server])
        (server.workdir / "train.sh").write_text(SCRIPT)
        project = tmp_path / "project"
        project.mkdir()
        write(project, f"""
            template: {{train: "bash train.sh {{q}}"}}
            resource: []
            hosts: {{{server.alias}: {{workdir: {server.workdir}, resource: [0]}}}}
            metric: {{val_loss: {{command: train, regex: 'val_loss ([\\d.]+)'}}}}
            early_stop: {{metric: val_loss, step: 'epoch (\\d+)', after: 3, min_peers: 4}}
            ---
            q: [1, 2, 3, 4, 9, 5]
            """)
        rc, out, err = run(["--grace", "0.5"], project, env={"HOME": str(home)}, timeout=120)
        assert rc == 0, out + err
        assert f"STOPPED gpu: {server.alias}:0, train:" in out
        bad = load(project / "output" / "Q_9" / "stat")
        assert bad["train"] == "stopped"
        record = bad["_runs"]["train"][-1]
        assert record["early_stop"] == {"rule": "median", "value": 9, "median": 2.5, "peers": 4, "step": 3}
        nxt = load(project / "output" / "Q_5" / "stat")["_runs"]["train"][-1]
        assert nxt["start"] - record["end"] < 1.0
        assert not alive(int((server.workdir / "child.9").read_text()))  # its group on the host, ended
        assert (project / "output" / "Q_9" / "stat").exists() and list((project / "output" / "Q_9").glob("log.train.*"))
    finally:
        sshd.stop_servers([server])
