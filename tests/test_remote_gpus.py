"""The `gpu:` policy on remote hosts (SPEC G2-G6: "Remote hosts apply the same policy through their
agent"), against a real sshd on 127.0.0.1 and the stateful stand-in `nvidia-smi` (tests/bin).

Each test starts its own server, whose sessions get FAKE_GPU_STATE (the GPUs and their processes,
a JSON file) and MLRUNNER_LOCK_DIR (the host's claim directory) through sshd's SetEnv, and
`fake-cuda-job` next to the stand-in on their PATH. The server is this machine, so a local run
given the same two variables shares that host's GPUs and claims, as another user on it would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

import gpulib
import sshd
from gpulib import H100
from runlib import STAND_INS, load, run, start, statuses, write

@pytest.fixture
def gpu_host(tmp_path: Path, tmp_path_factory):
    """`gpu_host(**env)`: a started server (alias gpuhost1) whose GPUs are tmp_path/gpus.json and
    whose claims are in tmp_path/locks; `env` adds variables to its sessions."""
    sshd.require_sshd()
    sshd.require_paramiko()
    started = []

    def make(**env: str):
        variables = {"FAKE_GPU_STATE": str(tmp_path / "gpus.json"), "MLRUNNER_LOCK_DIR": str(tmp_path / "locks")}
        server, = sshd.start_servers(1, tmp_path_factory, prefix="gpuhost", env=dict(variables, **env))
        started.append(server)
        shutil.copy2(STAND_INS / "fake-cuda-job", server.bin_dir / "fake-cuda-job")
        return server

    yield make
    sshd.stop_servers(started)


def _project(tmp_path: Path, server, config: str, resource: str = "[0]", name: str = "project") -> tuple:
    """A project whose config's HOSTS is the host with this `resource` (run with `-r` alone, it has
    no local worker), and its env."""
    home = sshd.make_home(tmp_path / f"home-{name}", [server])
    project = tmp_path / name
    project.mkdir()
    write(project, config.replace("HOSTS", f"hosts: {{{server.alias}: {{resource: {resource}, workdir: {server.workdir}/{name}}}}}"))
    return project, {"HOME": str(home), "MLRUNNER_LOCK_DIR": str(tmp_path / "local-locks")}


def _no_oom(output: Path) -> None:
    for log in output.rglob("log.*"):
        assert "OutOfMemoryError" not in log.read_text(), log


def test_G1_G6_without_gpu_no_nvidia_smi_is_called_on_the_host(gpu_host, tmp_path: Path):
    server = gpu_host()
    (server.bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\necho called >> {tmp_path}/calls\nexit 9\n")
    project, env = _project(tmp_path, server, "template: {t: 'true'}\nHOSTS\n---\ni: [1, 2, 3]\n", "[0, 1]")
    code, out, err = run(["-r"], project, env, timeout=60)
    assert code == 0 and "Finished: 3" in out, out + err
    assert not (tmp_path / "calls").exists()


def test_G2_G6_a_busy_remote_gpu_is_skipped_with_wait_false(gpu_host, tmp_path: Path):
    with gpulib.busy(tmp_path / "gpus.json", 70 * 1024) as state:
        server = gpu_host()
        project, env = _project(tmp_path, server, "template: {train: fake-cuda-job 1000 0.2}\nHOSTS\n"
                                "gpu: {wait: false, memory: 1GiB}\n---\ni: [1, 2, 3, 4]\n", "[0, 1]")
        code, out, err = run(["-r"], project, env, timeout=90)
    assert code == 0 and "Finished: 4" in out, out + err
    assert "SKIP    GPU gpuhost1:0 is busy (70.0 GiB used by other processes)" in out
    assert {entry["gpu"] for entry in gpulib.history(state)} == {1}
    assert all(re.match(r"gpuhost1:1(#\d+)?$", load(d / "stat")["_runs"]["train"][-1]["worker"])
               for d in (project / "output").iterdir() if d.is_dir())


def test_G2_G6_with_wait_false_a_machine_whose_gpus_are_busy_drops_out_and_the_others_go_on(gpu_host, tmp_path: Path):
    """The local GPU 0 is busy: the local workers hand their tasks back and stop; the host's GPU 1 runs them all."""
    with gpulib.busy(tmp_path / "gpus.json", 70 * 1024) as state:
        server = gpu_host()
        project, env = _project(tmp_path, server, "template: {train: fake-cuda-job 1000 0.2}\nresource: [0]\nHOSTS\n"
                                "gpu: {wait: false, memory: 1GiB}\n---\ni: [1, 2, 3, 4]\n", "[1]")
        env.update(PATH=f"{STAND_INS}:{os.environ['PATH']}", FAKE_GPU_STATE=str(state))
        code, out, err = run([], project, env, timeout=90)
    assert code == 0 and "Finished: 4" in out, out + err
    assert "SKIP    GPU 0 is busy (70.0 GiB used by other processes)" in out
    assert {entry["gpu"] for entry in gpulib.history(state)} == {1}


def test_G2_G6_waits_for_a_busy_remote_gpu_and_says_why(gpu_host, tmp_path: Path):
    outsider, entry = gpulib.outsider(70 * 1024)
    state = gpulib.gpu_state(tmp_path / "gpus.json", processes=[entry], totals=(H100,))
    server = gpu_host()
    project, env = _project(tmp_path, server, "template: {train: fake-cuda-job 1000 0.2}\nHOSTS\n"
                            "gpu: {memory: 1GiB}\n---\ni: [1, 2]\n", "[0]")
    code, out, err, freed = gpulib.run_until_freed(start(["-r"], project, env), state, outsider, held=4)
    assert code == 0 and "Finished: 2" in out, out + err
    assert "WAIT    for a GPU with 1.0 GiB free: GPU gpuhost1:0 busy (70.0 GiB used by other processes)" in out
    assert min(entry["time"] for entry in gpulib.history(state)) > freed


def test_G3_G6_eight_20GB_jobs_pack_on_one_remote_80GB_gpu(gpu_host, tmp_path: Path):
    """8 jobs of 20 GB, each allocating a second after it starts: 4 at once, never more than fit."""
    state = gpulib.gpu_state(tmp_path / "gpus.json", totals=(H100,))
    server = gpu_host()
    project, env = _project(tmp_path, server, "template: {train: fake-cuda-job 20000 1.5 1}\nHOSTS\n"
                            "gpu: {memory: 20000MiB}\n---\ni: [1, 2, 3, 4, 5, 6, 7, 8]\n", "[0]")
    code, out, err = run(["-r"], project, env, timeout=120)
    assert code == 0 and "Finished: 8" in out, out + err
    history = gpulib.history(state)
    assert len(history) == 8
    assert max(entry["used"] for entry in history) <= H100
    assert max(entry["jobs"] for entry in history) == 4  # several at once, as many as fit
    _no_oom(project / "output")
    assert list((tmp_path / "locks").glob("*.claim")) == []  # the agent gave every claim back


def test_G4_G6_a_local_run_and_a_remote_run_on_one_machine_never_oversubscribe(gpu_host, tmp_path: Path):
    """Another user's local run and our run through the host share that machine's claim directory."""
    state = gpulib.gpu_state(tmp_path / "gpus.json", totals=(H100,))
    server = gpu_host()
    config = "template: {train: fake-cuda-job 30000 1 0.8}\nHOSTS\ngpu: {memory: 30000MiB}\n---\ni: [1, 2, 3, 4, 5]\n"
    remote, remote_env = _project(tmp_path, server, config, name="remote")
    local = tmp_path / "local"
    local.mkdir()
    write(local, config.replace("HOSTS", "resource: [0]"))
    local_env = {"PATH": f"{STAND_INS}:{os.environ['PATH']}", "FAKE_GPU_STATE": str(state),
                 "MLRUNNER_LOCK_DIR": str(tmp_path / "locks")}
    runners = [start(["-r"], remote, remote_env), start([], local, local_env)]
    outs = [runner.communicate(timeout=180) for runner in runners]
    assert [runner.returncode for runner in runners] == [0, 0], outs
    history = gpulib.history(state)
    assert len(history) == 10
    assert max(entry["used"] for entry in history) <= H100  # two 30 GB jobs at most, across both runs
    assert max(entry["jobs"] for entry in history) == 2
    for project in (remote, local):
        _no_oom(project / "output")


def test_G5_G6_an_out_of_memory_remote_command_is_requeued_larger_and_finishes(gpu_host, tmp_path: Path):
    gpulib.gpu_state(tmp_path / "gpus.json", totals=(H100,))
    server = gpu_host()
    line = "if [ ! -e tried ]; then touch tried; echo 'torch.OutOfMemoryError: CUDA out of memory'; exit 1; fi"
    project, env = _project(tmp_path, server, f"template:\n  train: {json.dumps(line)}\nHOSTS\n"
                            "gpu: {memory: 10GiB}\n", "[0]")
    code, out, err = run(["-r"], project, env, timeout=90)
    assert code == 0 and "Finished: 1" in out, out + err
    assert "OOM     gpu: gpuhost1:0, train: 1/ 1, output/default (out of GPU memory with 10.0 GiB reserved; " \
           "again with 15.0 GiB, try 2 of 4)" in out
    stat = load(project / "output" / "default" / "stat")
    assert statuses(project / "output" / "default") == {"train": "finished"}
    assert [r["status"] for r in stat["_runs"]["train"]] == ["failed", "finished"]
    assert stat["_runs"]["train"][0]["reason"] == "out of GPU memory"


@pytest.mark.parametrize("mode", ["na", "no-driver", "hang"])
def test_G6_remote_nvidia_smi_trouble_is_a_warning_never_a_crash(gpu_host, tmp_path: Path, mode: str):
    gpulib.gpu_state(tmp_path / "gpus.json", totals=(H100, H100))
    server = gpu_host(FAKE_NVIDIA_SMI_MODE=mode)
    project, env = _project(tmp_path, server, "template: {train: 'true'}\nHOSTS\ngpu: {memory: 1GiB}\n"
                            "---\ni: [1, 2, 3]\n", "[0, 1]")
    code, out, err = run(["-r"], project, dict(env, MLRUNNER_NVIDIA_SMI_TIMEOUT="1"), timeout=90)
    assert code == 0 and "Finished: 3" in out, out + err
    assert "warning: host gpuhost1: " in out and "Traceback" not in out + err


@pytest.mark.parametrize("mode", ["garbage", "nvml"])
def test_G9_a_malformed_remote_nvidia_smi_reply_is_a_failed_nvidia_smi_for_that_host(gpu_host, tmp_path: Path,
                                                                                     mode: str):
    """The host's nvidia-smi answers garbage (or cannot reach NVML): one warning naming the host, the
    poller goes on, and the host's GPUs take one command each, spread over both, never all on 0."""
    state = gpulib.gpu_state(tmp_path / "gpus.json", totals=(H100, H100))
    gpulib.change(state, lambda s: s.update(mode=mode))
    server = gpu_host()
    project, env = _project(tmp_path, server, "template: {train: fake-cuda-job 1000 0.8}\nHOSTS\n"
                            "gpu: {memory: 1GiB}\n---\ni: [1, 2, 3, 4]\n", "[0, 1]")
    code, out, err = run(["-r"], project, env, timeout=90)
    assert code == 0 and "Finished: 4" in out, out + err
    warnings = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: host gpuhost1: "), out
    history = gpulib.history(state)
    assert {entry["gpu"] for entry in history} == {0, 1} and max(entry["jobs"] for entry in history) == 1
