"""Shared GPU servers (SPEC G1-G7), on the stateful stand-in `nvidia-smi` (tests/bin).

GPUs and their processes live in a JSON file (FAKE_GPU_STATE); `fake-cuda-job MIB SECONDS DELAY`
is a command that takes MIB on its GPUs DELAY seconds after it starts, and fails with PyTorch's
out-of-memory message when they have no room, as a real job would. Every allocation is logged
in the file's `history`, so a test can check that no GPU was ever oversubscribed.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

import gpulib
from gpulib import H100
from runlib import STAND_INS, load, run, start, statuses, write

from mlrunner.backends.claims import ClaimDir
from mlrunner.run.gpu_policy import oom_in_log, parse_size
from mlrunner.run.gpus import parse_apps_csv, parse_memory_csv

def _env(tmp_path: Path, state: Path, home: str = "") -> dict:
    env = {"PATH": f"{STAND_INS}:{os.environ['PATH']}", "FAKE_GPU_STATE": str(state),
           "MLRUNNER_LOCK_DIR": str(tmp_path / "locks")}
    if home:
        env["HOME"] = home
    return env


def _run_until_freed(tmp_path: Path, state: Path, outsider) -> tuple:
    """(exit status, stdout, when the memory was freed) of a run that must wait for it."""
    code, out, _, freed = gpulib.run_until_freed(start([], tmp_path, _env(tmp_path, state)), state, outsider)
    return code, out, freed


def load_or_empty(path: Path) -> dict:
    return load(path) if path.exists() else {}


def _no_oom(output: Path) -> None:
    for log in output.rglob("log.*"):
        assert "OutOfMemoryError" not in log.read_text(), log


def test_G1_without_gpu_no_nvidia_smi_is_called(tmp_path: Path):
    spy = tmp_path / "bin"
    spy.mkdir()
    (spy / "nvidia-smi").write_text(f"#!/bin/sh\necho called >> {tmp_path}/calls\nexit 9\n")
    (spy / "nvidia-smi").chmod(0o755)
    write(tmp_path, "template: {t: 'true'}\nresource: [0, 1]\n---\ni: [1, 2, 3]\n")
    code, out, _ = run([], tmp_path, {"PATH": f"{spy}:{os.environ['PATH']}"})
    assert code == 0 and "Finished: 3" in out
    assert not (tmp_path / "calls").exists()


@pytest.mark.parametrize("policy, per_gpu", [("{memory: 20000MiB, per_gpu: 4}", 4), ("{memory: 20000MiB}", 4),
                                             ("{memory: 20000MiB, per_gpu: 2}", 2)])
def test_G3_jobs_packed_by_memory_never_more_than_fit(tmp_path: Path, policy: str, per_gpu: int):
    """12 jobs of 20 GB on two 80 GB GPUs, each allocating a second after it starts."""
    state = gpulib.gpu_state(tmp_path / "gpus.json")
    write(tmp_path, f"template: {{train: fake-cuda-job 20000 1.5 1}}\nresource: [0, 1]\ngpu: {policy}\n---\n"
                    "i: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]\n")
    code, out, _ = run([], tmp_path, _env(tmp_path, state), timeout=120)
    assert code == 0 and "Finished: 12" in out, out
    history = gpulib.history(state)
    assert len(history) == 12
    assert max(entry["used"] for entry in history) <= H100
    for gpu in (0, 1):
        assert max(entry["jobs"] for entry in history if entry["gpu"] == gpu) == per_gpu
    _no_oom(tmp_path / "output")
    assert list((tmp_path / "locks").glob("*.claim")) == []  # every claim was given back


def test_G2_a_busy_gpu_is_skipped_with_wait_false(tmp_path: Path):
    with gpulib.busy(tmp_path / "gpus.json", 70 * 1024) as state:
        write(tmp_path, "template: {train: fake-cuda-job 1000 0.2}\nresource: [0, 1]\n"
                        "gpu: {wait: false, memory: 1GiB}\n---\ni: [1, 2, 3, 4]\n")
        code, out, _ = run([], tmp_path, _env(tmp_path, state), timeout=60)
    assert code == 0 and "Finished: 4" in out
    assert "SKIP    GPU 0 is busy (70.0 GiB used by other processes)" in out
    assert {entry["gpu"] for entry in gpulib.history(state)} == {1}


def test_G2_waits_for_a_busy_gpu_and_says_why(tmp_path: Path):
    outsider, entry = gpulib.outsider(70 * 1024)
    state = gpulib.gpu_state(tmp_path / "gpus.json", totals=(H100,), processes=[entry])
    write(tmp_path, "template: {train: fake-cuda-job 1000 0.2}\nresource: [0]\ngpu: {memory: 1GiB}\n---\ni: [1, 2]\n")
    code, out, freed = _run_until_freed(tmp_path, state, outsider)
    assert code == 0 and "Finished: 2" in out
    assert "WAIT    for a GPU with 1.0 GiB free: GPU 0 busy (70.0 GiB used by other processes)" in out
    assert min(entry["time"] for entry in gpulib.history(state)) > freed


def test_G3_a_multi_gpu_entry_needs_room_on_every_gpu(tmp_path: Path):
    """60 GB held by another user on GPU 1 (not busy: busy_above is higher) leaves no room for
    a 30 GB job on the "0,1" entry, though GPU 0 is empty; when it goes, the job runs on both."""
    outsider, entry = gpulib.outsider(60 * 1024, gpu=1)
    state = gpulib.gpu_state(tmp_path / "gpus.json", processes=[entry])
    write(tmp_path, "template: {train: fake-cuda-job 30720 0.2}\nresource: ['0,1']\n"
                    "gpu: {memory: 30GiB, busy_above: 100GiB}\n")
    code, out, freed = _run_until_freed(tmp_path, state, outsider)
    assert code == 0 and "GPU 1 has 19.6 GiB free" in out
    assert sorted(entry["gpu"] for entry in gpulib.history(state)) == [0, 1]
    assert min(entry["time"] for entry in gpulib.history(state)) > freed


@pytest.mark.parametrize("homes", [False, True])
def test_G4_two_runners_at_once_never_oversubscribe(tmp_path: Path, homes: bool):
    """Two runs (by one user, or two: other HOMEs) share the machine's claims through the lock dir."""
    state = gpulib.gpu_state(tmp_path / "gpus.json")
    runners = []
    for name in ("a", "b"):
        directory = tmp_path / name
        directory.mkdir()
        write(directory, "template: {train: fake-cuda-job 30000 1 0.8}\nresource: [0, 1]\ngpu: {memory: 30000MiB}\n"
                         "---\ni: [1, 2, 3, 4, 5, 6]\n")
        home = str(tmp_path / f"home-{name}") if homes else ""
        runners.append(start([], directory, _env(tmp_path, state, home)))
    outs = [runner.communicate(timeout=120)[0] for runner in runners]
    assert [runner.returncode for runner in runners] == [0, 0], outs
    history = gpulib.history(state)
    assert len(history) == 12
    assert max(entry["used"] for entry in history) <= H100  # two 30 GB jobs per GPU at most, across both runs
    assert max(entry["jobs"] for entry in history) == 2
    for name in ("a", "b"):
        _no_oom(tmp_path / name / "output")


def test_G4_a_killed_runner_releases_its_claims(tmp_path: Path):
    state = gpulib.gpu_state(tmp_path / "gpus.json", totals=(H100,))
    write(tmp_path, "template: {train: fake-cuda-job 40000 30 0}\nresource: [0]\ngpu: {memory: 40000MiB}\n---\ni: [1, 2]\n")
    runner = start([], tmp_path, _env(tmp_path, state))
    deadline = time.monotonic() + 30
    while len(list((tmp_path / "locks").glob("*.claim"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    claims = list((tmp_path / "locks").glob("*.claim"))
    assert len(claims) == 2  # two 40 GB jobs fit; both claimed
    assert len(ClaimDir(str(tmp_path / "locks")).claims()) == 2
    runner.kill()
    runner.wait(10)
    # The kernel drops a dead process's flocks as it closes its files, a moment after it is reaped.
    deadline = time.monotonic() + 5
    while ClaimDir(str(tmp_path / "locks")).claims() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ClaimDir(str(tmp_path / "locks")).claims() == []
    assert list((tmp_path / "locks").glob("*.claim")) == []  # stale claims are removed
    for pid in [p["pid"] for p in json.loads(state.read_text())["processes"]]:
        os.kill(pid, signal.SIGKILL)  # the leftovers of the killed run (I3 ends them on its next run)


def test_G5_G10_an_out_of_memory_job_is_requeued_larger_and_finishes(tmp_path: Path):
    """It declares 10 GiB but takes 30000 MiB; another user's 60 GB leaves 21.5 GB: it fails with
    PyTorch's OOM message, is tried again larger, and, as nothing changed on the only GPU (G10),
    waits there for room instead of running out again; it finishes once room comes."""
    outsider, entry = gpulib.outsider(60000)
    state = gpulib.gpu_state(tmp_path / "gpus.json", totals=(H100,), processes=[entry])
    write(tmp_path, "template: {train: fake-cuda-job 30000 0.2}\nresource: [0]\n"
                    "gpu: {memory: 10GiB, busy_above: 100GiB}\n")
    runner = start([], tmp_path, _env(tmp_path, state))
    try:
        deadline = time.monotonic() + 30
        log = tmp_path / "output" / "default"
        while time.monotonic() < deadline and "out of GPU memory" not in str(load_or_empty(log / "stat")):
            time.sleep(0.1)
        time.sleep(2.5)  # the second try (15 GiB) would fit in 21.5 GB, but waits: nothing changed there
        assert len(list(log.glob("log.train.*"))) == 1
        freed = time.time()
        outsider.kill()
        out, _ = runner.communicate(timeout=60)
    finally:
        outsider.kill()
        runner.kill()
    assert runner.returncode == 0, out
    assert "OOM     gpu: 0, train: 1/ 1, output/default (out of GPU memory with 10.0 GiB reserved; " \
           "again with 15.0 GiB, try 2 of 4)" in out
    assert "try 3 of 4" not in out
    stat = load(tmp_path / "output" / "default" / "stat")
    assert stat["train"] == "finished"
    assert [run["status"] for run in stat["_runs"]["train"]] == ["failed", "finished"]
    assert stat["_runs"]["train"][1]["start"] > freed
    assert stat["_runs"]["train"][0]["reason"] == "out of GPU memory"


@pytest.mark.parametrize("message", [
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
    "RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB",
    "tensorflow.python.framework.errors_impl.ResourceExhaustedError: OOM when allocating tensor with shape[1024]",
    "jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.00GiB.",
    "CUDA_ERROR_OUT_OF_MEMORY: out of memory",
    "cudaErrorMemoryAllocation: out of memory",
])
def test_G5_out_of_memory_messages_are_recognised(tmp_path: Path, message: str):
    log = tmp_path / "log"
    log.write_text("epoch 1\n" * 20000 + message + "\nTraceback ...\n")
    assert oom_in_log(str(log))
    log.write_text("loss went out of bounds; memory fine\n")
    assert not oom_in_log(str(log))


def test_G5_tensorflow_oom_end_to_end(tmp_path: Path):
    """Any framework's message requeues: here TensorFlow's, on the first try only."""
    state = gpulib.gpu_state(tmp_path / "gpus.json", totals=(H100,))
    line = "if [ ! -e tried ]; then touch tried; echo 'ResourceExhaustedError: OOM when allocating tensor'; exit 1; fi"
    write(tmp_path, f"template:\n  train: {json.dumps(line)}\nresource: [0]\ngpu: {{memory: 1GiB}}\n")
    code, out, _ = run([], tmp_path, _env(tmp_path, state))
    assert code == 0 and "OOM     gpu: 0" in out and "Finished: 1" in out
    assert statuses(tmp_path / "output" / "default") == {"train": "finished"}


@pytest.mark.parametrize("mode", ["na", "no-driver", "hang"])
def test_G6_nvidia_smi_trouble_is_a_warning_never_a_crash(tmp_path: Path, mode: str):
    state = gpulib.gpu_state(tmp_path / "gpus.json")
    write(tmp_path, "template: {train: 'true'}\nresource: [0, 1]\ngpu: {memory: 1GiB}\n---\ni: [1, 2, 3]\n")
    env = dict(_env(tmp_path, state), FAKE_NVIDIA_SMI_MODE=mode, MLRUNNER_NVIDIA_SMI_TIMEOUT="1")
    code, out, err = run([], tmp_path, env, timeout=90)
    assert code == 0 and "Finished: 3" in out, out + err
    assert "warning: " in out and "Traceback" not in out + err


@pytest.mark.parametrize("policy, message", [
    ("{memory: 20}", "params.yaml:3: gpu: memory: 20 is not a size (write e.g. 20GiB or 512MiB)"),
    ("{per_gpu: 0}", "params.yaml:3: gpu: 'per_gpu' must be a whole number >= 1"),
    ("{colour: red}", "params.yaml:3: gpu: unknown key 'colour' (allowed: busy_above, wait, memory, per_gpu)"),
    ("{memory: {tran: 1GiB}}", "params.yaml:3: gpu: memory: unknown command 'tran' (commands: train)"),
    ("{memory: '{mem}'}", "params.yaml: gpu: the memory of 'train' is the param 'mem', which output/I_1 does not set"),
    ("[1GiB]", "params.yaml:3: 'gpu' must be a mapping"),
])
def test_G1_bad_policy_is_one_line_exit_2(tmp_path: Path, policy: str, message: str):
    write(tmp_path, f"template: {{train: 'true'}}\nresource: [0]\ngpu: {policy}\n---\ni: [1]\n")
    code, out, err = run([], tmp_path)
    assert code == 2 and err.startswith(message) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "output").exists()


def test_G3_a_param_gives_each_task_its_size(tmp_path: Path):
    state = gpulib.gpu_state(tmp_path / "gpus.json", totals=(H100,))
    write(tmp_path, "template: {train: 'fake-cuda-job {mib} 1 0.5'}\nresource: [0]\ngpu: {memory: '{size}'}\n---\n"
                    "mib: 50000\nsize: 50000MiB\n---\nmib: 25000\nsize: 25000MiB\ni: [1, 2]\n")
    code, out, _ = run([], tmp_path, _env(tmp_path, state), timeout=60)
    assert code == 0 and "Finished: 3" in out
    assert max(entry["used"] for entry in gpulib.history(state)) <= H100
    _no_oom(tmp_path / "output")


# Pure parts -------------------------------------------------------------------------------------

def test_G6_parsers_read_what_nvidia_smi_prints():
    gpus = parse_memory_csv("0, GPU-5c6e3b2a, 81559, 4\n1, GPU-0e1a4c77, 81559, 30121\n2, GPU-x, [N/A], [N/A]\n")
    assert [(g.index, g.uuid, g.total, g.used) for g in gpus] == [
        ("0", "GPU-5c6e3b2a", 81559, 4), ("1", "GPU-0e1a4c77", 81559, 30121), ("2", "GPU-x", None, None)]
    apps = parse_apps_csv("GPU-5c6e3b2a, 12345, 30110\nGPU-0e1a4c77, 23, [N/A]\n")
    assert [(a.uuid, a.pid, a.used) for a in apps] == [("GPU-5c6e3b2a", 12345, 30110), ("GPU-0e1a4c77", 23, None)]
    assert parse_apps_csv("") == []
    with pytest.raises(ValueError):
        parse_memory_csv("0, GPU-x, 81559\n")


@pytest.mark.parametrize("text, mib", [("20GiB", 20480), ("512 MiB", 512), ("1.5GiB", 1536), ("20GB", 19074),
                                       ("1TiB", 1048576)])
def test_G1_sizes(text: str, mib: int):
    assert parse_size(text) == mib


def test_G4_claims_are_seen_by_another_lock_dir_object(tmp_path: Path):
    one, two = ClaimDir(str(tmp_path)), ClaimDir(str(tmp_path))
    held = one.add({"uuid": "GPU-1", "mib": 1000})
    assert two.claims() == [{"uuid": "GPU-1", "mib": 1000, "sid": None}]
    one.attach(held, 4242)
    assert two.claims() == [{"uuid": "GPU-1", "mib": 1000, "sid": 4242}]
    two.remove(held)  # not two's claim: left alone
    assert len(two.claims()) == 1
    one.remove(held)
    assert two.claims() == []


def test_G3_a_job_listed_but_not_yet_in_memory_used_hides_no_one_elses_memory(tmp_path: Path):
    """memory.used and the process list are two nvidia-smi calls. Seen in benchmarks/packing.py:
    one of our jobs allocated between them (36.5 GiB in the list, not in `used`), the whole of it
    was taken off `used`, another user's 40 GiB looked free and the next job ran out of memory."""
    from mlrunner.run.allocator import Allocator, Place
    from mlrunner.backends.local import LocalExecutor
    from mlrunner.run.gpu_policy import parse_policy
    from mlrunner.run.gpus import GpuApp, GpuMemory, Snapshot

    policy = parse_policy({"memory": "1GiB", "busy_above": "60GiB"}, ("train",), lambda message, *keys: ValueError(message))
    place = Place(LocalExecutor("0"), ["0"])
    allocator = Allocator([place], policy)
    outsider, ours = 1000, 2000  # pids; ours runs in the session that our claim names
    snapshot = Snapshot(gpus={"0": GpuMemory("0", "GPU-0", H100, 40964)},  # taken before our job allocated
                        apps=[GpuApp("GPU-0", outsider, 40960), GpuApp("GPU-0", ours, 36513)])
    claims = [{"uuid": "GPU-0", "mib": 36513, "sid": 77}]
    why = allocator._why_not(place, 35699, snapshot, claims, {outsider: outsider, ours: 77})
    assert why == "GPU 0 has 4.0 GiB free"
