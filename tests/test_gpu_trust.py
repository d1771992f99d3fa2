"""GPUs you can trust (SPEC G8-G12): what a reader of nvidia-smi cannot see, an nvidia-smi that
fails, hangs or prints garbage, GPU ids, an inherited CUDA_VISIBLE_DEVICES, and each command's peak
GPU memory. On the stateful stand-in `nvidia-smi` (tests/bin), whose modes model those cases
(shared/nvidia-smi.md, "What a reader of nvidia-smi cannot see")."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import gpulib
from gpulib import H100
from runlib import STAND_INS, load, run, start, write

from mlrunner.run.allocator import Allocator, Place
from mlrunner.backends.local import LocalExecutor
from mlrunner.run.gpu_fit import EXITED, room, with_exited
from mlrunner.run.gpu_policy import parse_policy
from mlrunner.run.gpus import GpuApp, GpuMemory, Poller, Snapshot


def _env(tmp_path: Path, state: Path, **extra: str) -> dict:
    return dict({"PATH": f"{STAND_INS}:{os.environ['PATH']}", "FAKE_GPU_STATE": str(state),
                 "MLRUNNER_LOCK_DIR": str(tmp_path / "locks")}, **extra)


def _ooms(output: Path) -> int:
    return sum("OutOfMemoryError" in log.read_text() for log in output.rglob("log.*"))


def _policy(**gpu: object):
    return parse_policy(gpu, ("train",), lambda message, *keys: ValueError(message))


# G8 --------------------------------------------------------------------------------------------

def test_G8_a_gpu_held_by_an_invisible_process_is_never_packed_past_its_free_memory(tmp_path: Path):
    """Another container's 60 GiB job is listed by nvidia-smi under a pid this /proc does not
    have: it is someone else's memory, not a process that exited. 20 GB are left: two 10 GB jobs
    at a time, never more, and none runs out of memory."""
    state = gpulib.gpu_state(tmp_path / "gpus.json", totals=(H100,), processes=[gpulib.foreign(60 * 1024)])
    write(tmp_path, "template: {train: fake-cuda-job 10000 0.8 0.3}\nresource: [0]\n"
                    "gpu: {memory: 10000MiB, busy_above: 100GiB}\n---\ni: [1, 2, 3, 4]\n")
    code, out, err = run([], tmp_path, _env(tmp_path, state), timeout=90)
    assert code == 0 and "Finished: 4" in out, out + err
    history = gpulib.history(state)
    assert max(entry["used"] for entry in history) <= H100
    assert max(entry["jobs"] for entry in history) == 2
    assert _ooms(tmp_path / "output") == 0


def test_G8_only_memory_of_our_sessions_is_ours():
    """Pure: a listed pid with no session here (None) counts as someone else's; ours (session 77,
    named by our claim) does not."""
    place = Place(LocalExecutor("0"), ["0"])
    snapshot = Snapshot(gpus={"0": GpuMemory("0", "GPU-0", H100, 4 + 61440 + 8000)},
                        apps=[GpuApp("GPU-0", 4_000_001, 61440), GpuApp("GPU-0", 2000, 8000)])
    claims = [{"uuid": "GPU-0", "mib": 8000, "sid": 77}]
    assert room(_policy(memory="1GiB", busy_above="100GiB"), place, 13000, snapshot, claims,
                {4_000_001: None, 2000: 77}) == "GPU 0 has 11.8 GiB free"


def test_G8_a_pid_seen_in_our_session_that_exited_is_memory_being_freed():
    """Pure: our job (pid 2000, session 77) ended after the reading; its memory is being freed, as
    nvidia-smi's next reading will show. The invisible pid was never ours: it stays someone else's."""
    snapshot = Snapshot(gpus={"0": GpuMemory("0", "GPU-0", H100, 4 + 61440 + 8000)},
                        apps=[GpuApp("GPU-0", 4_000_001, 61440), GpuApp("GPU-0", 2000, 8000)])
    claims = [{"uuid": "GPU-0", "mib": 8000, "sid": 77}]
    ours, _ = with_exited(set(), snapshot, {4_000_001: None, 2000: 77}, claims)
    ours, sessions = with_exited(ours, snapshot, {4_000_001: None, 2000: None}, [])  # ended, claim given back
    assert ours == {2000} and sessions == {4_000_001: None, 2000: EXITED}
    place = Place(LocalExecutor("0"), ["0"])
    assert room(_policy(memory="1GiB", busy_above="100GiB"), place, 20000, snapshot, [], sessions) == (0, 115)


# G9 --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["nvml", "garbage", "hang", "na-total"])
def test_G9_trouble_with_nvidia_smi_spreads_tasks_one_per_gpu_with_one_warning(tmp_path: Path, mode: str):
    """nvidia-smi fails, hangs (past MLRUNNER_NVIDIA_SMI_TIMEOUT), prints garbage or no total: a GPU
    takes one command of ours at a time, over both GPUs of `resource`, never all on GPU 0."""
    state = gpulib.gpu_state(tmp_path / "gpus.json")
    gpulib.change(state, lambda s: s.update(mode=mode, hang=120))
    write(tmp_path, "template: {train: fake-cuda-job 1000 0.8}\nresource: [0, 1]\ngpu: {memory: 1GiB}\n"
                    "---\ni: [1, 2, 3, 4]\n")
    began = time.monotonic()
    code, out, err = run([], tmp_path, _env(tmp_path, state, MLRUNNER_NVIDIA_SMI_TIMEOUT="1"), timeout=90)
    assert code == 0 and "Finished: 4" in out, out + err
    assert time.monotonic() - began < 60  # a hang is bounded by the timeout
    assert sum(line.startswith("warning: ") for line in out.splitlines()) == 1, out
    assert "Traceback" not in out + err
    history = gpulib.history(state)
    assert {entry["gpu"] for entry in history} == {0, 1}
    assert max(entry["jobs"] for entry in history) == 1


def test_G9_memory_used_na_packs_by_total_minus_our_reservations(tmp_path: Path):
    """memory.used and each process's memory print [N/A] (MIG, vGPU): two 30 GB jobs fit an 80 GB
    GPU by its total, a third does not; both GPUs take work."""
    state = gpulib.gpu_state(tmp_path / "gpus.json")
    gpulib.change(state, lambda s: s.update(mode="na"))
    write(tmp_path, "template: {train: fake-cuda-job 30000 1 0.2}\nresource: [0, 1]\ngpu: {memory: 30000MiB}\n"
                    "---\ni: [1, 2, 3, 4, 5, 6]\n")
    code, out, err = run([], tmp_path, _env(tmp_path, state), timeout=90)
    assert code == 0 and "Finished: 6" in out, out + err
    assert "warning: nvidia-smi reports [N/A] for GPU memory" in out
    history = gpulib.history(state)
    assert max(entry["jobs"] for entry in history) <= 2 and {entry["gpu"] for entry in history} == {0, 1}
    assert _ooms(tmp_path / "output") == 0


def test_G9_auto_with_gpu_and_no_usable_nvidia_smi_runs_as_without_gpu(tmp_path: Path):
    """`resource: auto` (the default) with `gpu:` and a driver that is not there: one CPU worker
    and a warning, never `ValueError: min() arg is an empty sequence` in every task."""
    state = gpulib.gpu_state(tmp_path / "gpus.json")
    write(tmp_path, "template: {train: 'echo [$CUDA_VISIBLE_DEVICES]'}\ngpu: {memory: 1GiB}\n---\ni: [1, 2]\n")
    code, out, err = run([], tmp_path, _env(tmp_path, state, FAKE_NVIDIA_SMI_MODE="no-driver"))
    assert code == 0 and "Finished: 2" in out, out + err
    assert "warning: nvidia-smi failed (exit 9: NVIDIA-SMI has failed" in err
    assert "Error" not in out
    assert all(log.read_text() == "[]\n" for log in (tmp_path / "output").rglob("log.train.*"))


@pytest.mark.parametrize("answer", [(0, None, None), (0, 42, ""), (0, "0, GPU-0, 81559, 4\n", 7), OSError("agent")])
def test_G9_any_answer_of_the_tool_or_a_hosts_agent_is_a_warning_never_the_pollers_end(answer):
    """A host's agent relays nvidia-smi's answer; one of a shape nobody expected (or a runner that
    raises) is a failed nvidia-smi for that machine: the poller thread must not die of it."""
    def query(argv):
        if isinstance(answer, Exception):
            raise answer
        return answer

    snapshot = Poller(query).snapshot()
    assert snapshot.warning and snapshot.trouble


def test_G9_a_grant_waits_for_a_reading_under_a_second_old(tmp_path: Path, monkeypatch):
    """The GPU filled up (another user, 70 GB) after the last poll: the task waiting for our first
    task's place is not granted on that stale reading when the place is given back."""
    state = gpulib.gpu_state(tmp_path / "gpus.json", totals=(H100,))
    monkeypatch.setenv("PATH", f"{STAND_INS}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GPU_STATE", str(state))
    monkeypatch.setenv("MLRUNNER_LOCK_DIR", str(tmp_path / "locks"))
    place = Place(LocalExecutor("0"), ["0"])
    allocator = Allocator([place], _policy(memory="30GiB", per_gpu=1), say=lambda line: None)
    allocator.sites[place.machine].poller.interval = 3  # its next poll comes after the release
    stopping = threading.Event()
    first = allocator.acquire(30 * 1024, stopping, place.machine)
    granted = []
    waiter = threading.Thread(target=lambda: granted.append(allocator.acquire(30 * 1024, stopping, place.machine)))
    waiter.start()
    try:
        time.sleep(0.5)
        assert granted == []  # per_gpu 1
        gpulib.change(state, lambda s: s["processes"].append(gpulib.foreign(70 * 1024)))
        time.sleep(1.2)
        allocator.release(first)
        waiter.join(2)
        assert granted == [], "granted on a reading taken before the GPU filled up"
        assert "GPU 0 busy (70.0 GiB used by other processes)" in allocator.waiting
    finally:
        stopping.set()
        waiter.join(10)
    allocator.release(granted[0] if granted else None)


# G10 -------------------------------------------------------------------------------------------

def test_G10_an_oom_retry_goes_to_another_gpu_where_one_fits(tmp_path: Path):
    """The job declares 10 GiB but takes 30000 MiB. GPU 0 (21.5 GB free) is the tightest fit and
    runs out; the retry (15 GiB) would fit GPU 0 again, but goes to GPU 1 (31.5 GB free)."""
    state = gpulib.gpu_state(tmp_path / "gpus.json",
                             processes=[gpulib.foreign(60000, gpu=0), gpulib.foreign(50000, gpu=1)])
    write(tmp_path, "template: {train: fake-cuda-job 30000 0.2}\nresource: [0, 1]\n"
                    "gpu: {memory: 10GiB, busy_above: 100GiB}\n")
    code, out, err = run([], tmp_path, _env(tmp_path, state), timeout=60)
    assert code == 0 and "Finished: 1" in out, out + err
    runs = load(tmp_path / "output" / "default" / "stat")["_runs"]["train"]
    assert [(run["worker"], run["status"]) for run in runs] == [("gpu:0", "failed"), ("gpu:1", "finished")]


def test_G10_an_oom_retry_never_reruns_what_another_run_finished_meanwhile(tmp_path: Path):
    """Run A's job runs out of memory and its retry (15 GiB) waits for room. Meanwhile run B, on the
    same tree, finishes the command. When room comes, A does not run it again."""
    state = gpulib.gpu_state(tmp_path / "gpus.json", totals=(H100,), processes=[gpulib.foreign(66560)])
    sweep = "---\ni: [1]\n"
    write(tmp_path, "template: {train: fake-cuda-job 30000 0.2}\nresource: [0]\n"
                    "gpu: {memory: 10GiB, busy_above: 100GiB}\n" + sweep)
    write(tmp_path, "template: {train: 'echo by B'}\nresource: [0]\n" + sweep, name="b.yaml")
    runner = start([], tmp_path, _env(tmp_path, state))
    stat = tmp_path / "output" / "I_1" / "stat"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "out of GPU memory" not in (stat.read_text() if stat.exists() else ""):
            time.sleep(0.1)
        code, out, err = run(["-y", "b.yaml", "--keep-changed"], tmp_path, _env(tmp_path, state))
        assert code == 0 and "Finished: 1" in out, out + err
        gpulib.change(state, lambda s: s.update(processes=[]))  # room comes
        out, err = runner.communicate(timeout=60)
    finally:
        runner.kill()
    assert runner.returncode == 0, out + err
    assert "already finished: 1" in out
    assert [run["status"] for run in load(stat)["_runs"]["train"]] == ["failed", "finished"]


# G11 -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["-r", "gpu0"], "mlrunner: argument -r/--resource: 'gpu0' is not a GPU id"),
    (["-dry-run"], "mlrunner: -dry-run: long options take two dashes: did you mean --dry-run?"),
    (["-r", "2"], "mlrunner: -r: GPU 2 is not visible: CUDA_VISIBLE_DEVICES='3,5' makes 2 GPU(s) visible"),
])
def test_G11_bad_gpu_ids_and_single_dash_long_options_are_refused(tmp_path: Path, args: list, message: str):
    write(tmp_path, "template: {train: 'touch ran'}\nresource: [0]\n---\ni: [1]\n")
    code, out, err = run(args, tmp_path, {"CUDA_VISIBLE_DEVICES": "3,5"})
    assert code == 2 and err.startswith(message) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "output").exists() and not (tmp_path / "ran").exists()


def test_G11_a_resource_entry_that_is_no_gpu_id_is_a_config_error(tmp_path: Path):
    write(tmp_path, "template: {train: 'true'}\nresource: [0, gpu1]\n---\ni: [1]\n")
    code, out, err = run([], tmp_path)
    assert code == 2 and err.startswith("params.yaml:2: resource entry 'gpu1' is not a GPU id"), err
    assert not (tmp_path / "output").exists()


@pytest.mark.parametrize("resource, seen", [("[1]", {"5"}), ("[0, 1]", {"3", "5"}), ("auto", {"3", "5"})])
def test_G11_an_inherited_cuda_visible_devices_is_translated(tmp_path: Path, resource: str, seen: set):
    """Inside a Slurm job or container given GPUs 3 and 5: `resource: 1` is physical GPU 5, and
    `auto` is those two GPUs."""
    write(tmp_path, f"template: {{train: 'echo $CUDA_VISIBLE_DEVICES'}}\nresource: {resource}\n---\ni: [1, 2, 3, 4]\n")
    code, out, err = run([], tmp_path, {"PATH": f"{STAND_INS}:{os.environ['PATH']}", "FAKE_GPUS": "6",
                                        "CUDA_VISIBLE_DEVICES": "3,5"})
    assert code == 0 and "Finished: 4" in out, out + err
    assert {log.read_text().strip() for log in (tmp_path / "output").rglob("log.train.*")} == seen


# G12 -------------------------------------------------------------------------------------------

def test_G12_peak_gpu_memory_is_recorded_examined_and_reported(tmp_path: Path):
    state = gpulib.gpu_state(tmp_path / "gpus.json", totals=(H100,))
    write(tmp_path, "template: {train: 'fake-cuda-job {mib} 3'}\nresource: [0]\ngpu: {memory: 8GiB}\n---\n"
                    "mib: [3000, 5000]\n")
    code, out, err = run([], tmp_path, _env(tmp_path, state), timeout=60)
    assert code == 0 and "Finished: 2" in out, out + err
    for mib in (3000, 5000):
        assert load(tmp_path / "output" / f"Mib_{mib}" / "stat")["_runs"]["train"][-1]["gpu_mib"] == mib
    code, out, err = run(["--examine"], tmp_path)
    lines = [line.split("\t") for line in out.splitlines()]
    assert code == 0 and lines[0][-2:] == ["gpu_mib", "status"], out + err
    assert sorted(line[-2] for line in lines[1:]) == ["3000", "5000"]
    code, out, err = run(["--report"], tmp_path)
    html = (tmp_path / "output" / "report.html").read_text()
    assert code == 0 and "GPU MiB" in html and "<td>5000</td>" in html


def test_G11_dry_run_shows_the_physical_gpu_of_an_inherited_cuda_visible_devices(tmp_path: Path):
    write(tmp_path, "template: {train: 'echo hi'}\nresource: [1]\n---\ni: [1]\n")
    code, out, err = run(["--dry-run"], tmp_path, {"CUDA_VISIBLE_DEVICES": "3,5"})
    assert code == 0 and "export CUDA_VISIBLE_DEVICES=5; { echo hi" in out, out + err
