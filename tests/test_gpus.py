"""SPEC R1: GPU discovery for `resource: auto`, from `nvidia-smi` output.

Parsers are checked against golden samples; `discover` runs the stand-in script
tests/bin/nvidia-smi for real, found through PATH like the real tool.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mlrunner.run.gpus import QUERY_ARGS, QUERY_FIELDS, Gpu, discover, parse_list, parse_query_csv

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data" / "nvidia-smi"
FAKE_BIN = TESTS / "bin"
CPU = "running one CPU worker (CUDA_VISIBLE_DEVICES='')"
DRIVER_MSG = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
              "Make sure that the latest NVIDIA driver is installed and running.")

H100 = "NVIDIA H100 80GB HBM3"
UUID0 = "GPU-5c6e3b2a-1f0d-4e57-9d2a-7b1c9e0f3a11"
UUID1 = "GPU-0e1a4c77-8b3f-4d26-a5e9-2c6d8f1b7e42"
TWO_H100 = [
    Gpu("0", H100, UUID0, 81559, 4, 81080, 0),
    Gpu("1", H100, UUID1, 81559, 30121, 50963, 97),
]
MIG0 = "MIG-1b2c3d4e-5f60-5a7b-8c9d-0e1f2a3b4c5d"
MIG1 = "MIG-2c3d4e5f-6071-5b8c-9d0e-1f2a3b4c5d6e"


def test_r1_query_args() -> None:
    assert QUERY_ARGS == [
        "nvidia-smi",
        "--query-gpu=index,name,uuid,memory.total,memory.used,memory.free,utilization.gpu",
        "--format=csv,noheader,nounits",
    ]


@pytest.mark.parametrize("sample, expected", [
    ("query-2xH100.csv", TWO_H100),
    ("query-2xH100-noheader-nounits.csv", TWO_H100),
    ("query-na-fields.csv", [
        Gpu("0", "NVIDIA GeForce GTX 1080 Ti", "GPU-3f9a1c2e-7b44-4d0e-8c1a-5e2b6d9f0a73",
            11264, None, None, None),
        Gpu("1", "NVIDIA A100-SXM4-40GB", "GPU-9d2e4f61-0a3b-4c85-b7e6-1f8a2c3d4e5b",
            40960, 13, 40327, None),
    ]),
])
def test_r1_parse_query_golden(sample: str, expected: list[Gpu]) -> None:
    assert parse_query_csv((DATA / sample).read_text()) == expected


@pytest.mark.parametrize("text, expected", [
    ("", []),
    ("\n  \n", []),
    ("0,Tesla T4,GPU-a,15360,0,15109,0\n", [Gpu("0", "Tesla T4", "GPU-a", 15360, 0, 15109, 0)]),
    ("\n0, Tesla T4, GPU-a, 15360 MiB  , 0 MiB, 15109 MiB, 3 %   \n\n",
     [Gpu("0", "Tesla T4", "GPU-a", 15360, 0, 15109, 3)]),
    ("0, Tesla T4, GPU-a, [N/A], [Not Supported], 12.5, ERR!\n",
     [Gpu("0", "Tesla T4", "GPU-a", None, None, None, None)]),
])
def test_r1_parse_query_edge_cases(text: str, expected: list[Gpu]) -> None:
    assert parse_query_csv(text) == expected


@pytest.mark.parametrize("line, count", [
    ("0, NVIDIA H100 80GB HBM3, GPU-a, 81559, 4, 81080", 6),
    ("0, NVIDIA H100, 80GB HBM3, GPU-a, 81559, 4, 81080, 0", 8),
])
def test_r1_parse_query_bad_line(line: str, count: int) -> None:
    text = "0, Tesla T4, GPU-a, 15360, 0, 15109, 0\n" + line + "\n"
    with pytest.raises(ValueError) as info:
        parse_query_csv(text)
    assert str(info.value) == (
        f"nvidia-smi output line 2: expected 7 fields ({', '.join(QUERY_FIELDS)}), "
        f"got {count}: {line!r}")


@pytest.mark.parametrize("text, expected", [
    ((DATA / "list-2xH100.txt").read_text(), ["0", "1"]),
    ((DATA / "list-mig.txt").read_text(), [MIG0, MIG1, "1"]),
    ("", []),
    ("GPU 0: Tesla T4 (UUID: GPU-a)\n  MIG 1g.10gb Device 0: (UUID: MIG-GPU-a/1/0)\n"
     "GPU 1: Tesla T4 (UUID: GPU-b)\n", ["MIG-GPU-a/1/0", "1"]),
], ids=["2xH100", "mig", "empty", "old-driver-mig-uuid"])
def test_r1_parse_list(text: str, expected: list[str]) -> None:
    assert parse_list(text) == expected


@pytest.fixture
def fake_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put the stand-in nvidia-smi first on PATH, as the real tool would be found."""
    monkeypatch.setenv("PATH", f"{FAKE_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.delenv("FAKE_GPUS", raising=False)
    monkeypatch.delenv("FAKE_NVIDIA_SMI_MODE", raising=False)


@pytest.mark.parametrize("env, expected", [
    ({}, (["0", "1"], None)),
    ({"FAKE_GPUS": "4"}, (["0", "1", "2", "3"], None)),
    ({"FAKE_GPUS": "1"}, (["0"], None)),
    ({"FAKE_NVIDIA_SMI_MODE": "no-driver"},
     ([""], f"nvidia-smi failed (exit 9: {DRIVER_MSG}): {CPU}")),
    ({"FAKE_NVIDIA_SMI_MODE": "no-devices"},
     ([""], f"nvidia-smi found no GPU (No devices were found): {CPU}")),
    ({"FAKE_GPUS": "0"}, ([""], f"nvidia-smi found no GPU (No devices were found): {CPU}")),
], ids=["2-gpus", "4-gpus", "1-gpu", "no-driver", "no-devices", "0-gpus"])
def test_r1_discover_with_stand_in(fake_path: None, monkeypatch: pytest.MonkeyPatch,
                                   env: dict, expected: tuple) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert discover() == expected


def test_r1_discover_not_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With no nvidia-smi on PATH: one CPU worker with an empty CUDA_VISIBLE_DEVICES."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert discover() == ([""], f"nvidia-smi not found: {CPU}")


def fake_runner(replies: dict):
    """A runner answering from a table keyed by argv, recording the calls it gets."""
    calls = []

    def run(args: list[str]) -> tuple[int, str, str]:
        calls.append(args)
        return replies[tuple(args)]
    run.calls = calls
    return run


LIST = ("nvidia-smi", "-L")
QUERY_2 = (0, (DATA / "query-2xH100-noheader-nounits.csv").read_text(), "")


@pytest.mark.parametrize("replies, expected", [
    ({tuple(QUERY_ARGS): QUERY_2, LIST: (0, (DATA / "list-mig.txt").read_text(), "")},
     ([MIG0, MIG1, "1"], None)),
    ({tuple(QUERY_ARGS): QUERY_2, LIST: (0, (DATA / "list-2xH100.txt").read_text(), "")},
     (["0", "1"], None)),
    ({tuple(QUERY_ARGS): QUERY_2, LIST: (2, "", "boom")}, (["0", "1"], None)),
    ({tuple(QUERY_ARGS): (9, "", DRIVER_MSG + "\n")},
     ([""], f"nvidia-smi failed (exit 9: {DRIVER_MSG}): {CPU}")),
    ({tuple(QUERY_ARGS): (18, "Failed to initialize NVML: Driver/library version mismatch\n"
                              "NVML library version: 535.161\n", "")},
     ([""], "nvidia-smi failed (exit 18: Failed to initialize NVML: Driver/library version "
            f"mismatch): {CPU}")),
    ({tuple(QUERY_ARGS): (0, "", "")}, ([""], f"nvidia-smi listed no GPU: {CPU}")),
    ({tuple(QUERY_ARGS): (0, "0, Tesla T4\n", "")},
     ([""], "could not read nvidia-smi output line 1: expected 7 fields "
            f"({', '.join(QUERY_FIELDS)}), got 2: '0, Tesla T4': {CPU}")),
], ids=["mig", "no-mig", "list-fails", "driver-stderr", "nvml-stdout", "empty", "bad-line"])
def test_r1_discover_injected(replies: dict, expected: tuple) -> None:
    assert discover(fake_runner(replies)) == expected


def test_r1_discover_asks_list_mode_only_after_query_succeeds() -> None:
    run = fake_runner({tuple(QUERY_ARGS): (6, "No devices were found\n", "")})
    discover(run)
    assert run.calls == [QUERY_ARGS]


def run_stand_in(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_")}
    full_env.update(env)
    return subprocess.run([str(FAKE_BIN / "nvidia-smi"), *args], capture_output=True,
                          text=True, env=full_env)


@pytest.mark.parametrize("fmt, expected", [
    ("csv", "index, name, memory.free [MiB], utilization.gpu [%]\n"
            f"0, {H100}, 81555 MiB, 0 %\n1, {H100}, 80555 MiB, 10 %\n"),
    ("csv,noheader", f"0, {H100}, 81555 MiB, 0 %\n1, {H100}, 80555 MiB, 10 %\n"),
    ("csv,nounits", "index, name, memory.free [MiB], utilization.gpu [%]\n"
                    f"0, {H100}, 81555, 0\n1, {H100}, 80555, 10\n"),
    ("csv,noheader,nounits", f"0, {H100}, 81555, 0\n1, {H100}, 80555, 10\n"),
])
def test_r1_stand_in_query_format(fmt: str, expected: str) -> None:
    proc = run_stand_in("--query-gpu=index,name,memory.free,utilization.gpu", f"--format={fmt}")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, expected, "")


def test_r1_stand_in_output_parses() -> None:
    proc = run_stand_in(*QUERY_ARGS[1:3])
    assert parse_query_csv(proc.stdout)[1] == Gpu(
        "1", H100, "GPU-00000001-1f0d-4e57-9d2a-000000000001", 81559, 1004, 80555, 10)
    header = run_stand_in(QUERY_ARGS[1], "--format=csv")
    assert parse_query_csv(header.stdout) == parse_query_csv(proc.stdout)


def test_r1_stand_in_list_mode() -> None:
    proc = run_stand_in("-L", FAKE_GPUS="2")
    assert proc.stdout == (
        f"GPU 0: {H100} (UUID: GPU-00000000-1f0d-4e57-9d2a-000000000000)\n"
        f"GPU 1: {H100} (UUID: GPU-00000001-1f0d-4e57-9d2a-000000000001)\n")
    assert parse_list(proc.stdout) == ["0", "1"]


def test_r1_stand_in_unknown_field() -> None:
    proc = run_stand_in("--query-gpu=index,foo", "--format=csv")
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        2, "", 'Field "foo" is not a valid field to query.\n')


@pytest.mark.parametrize("mode, code, message", [
    ("no-driver", 9, DRIVER_MSG),
    ("no-devices", 6, "No devices were found"),
])
def test_r1_stand_in_failure_modes(mode: str, code: int, message: str) -> None:
    proc = run_stand_in(*QUERY_ARGS[1:3], FAKE_NVIDIA_SMI_MODE=mode)
    assert (proc.returncode, proc.stdout) == (code, message + "\n")
