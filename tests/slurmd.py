"""A real one-machine Slurm cluster for the Slurm tests (SPEC S6), as tests/sshd.py is for sshd.

Not a test module: a helper, imported as ``import slurmd``. :class:`SlurmCluster` writes a config
into a scratch directory (no munge, no database: ``auth/none``, no accounting), makes four
stand-in GPUs as GRES (character devices made with ``mknod``, the same device as /dev/null: with
regular files Slurm would not set ``CUDA_VISIBLE_DEVICES``), and starts ``slurmctld`` and
``slurmd`` on free ports. Every client command needs ``SLURM_CONF``: use ``cluster.env()``.

    <root>/slurm.conf   the config (MaxArraySize small, so that tests see a sweep split)
    <root>/gres.conf    four GPUs: <root>/dev/nvidia0..3
    <root>/slurmctld.log, slurmd.log, state/, slurmd/

Daemons run as root (SlurmUser=root), so the cluster needs root; without it, or without the
binaries, :func:`require_slurm` skips the test, and fails it when ``CI=true``.

In a test module: ``from slurmd import slurm_cluster`` gives the session-scoped fixture
``slurm_cluster`` (started once, stopped when the session ends).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

SLURMCTLD = "/usr/sbin/slurmctld"
SLURMD = "/usr/sbin/slurmd"
GPUS = 4
CPUS = 4
MAX_ARRAY_SIZE = 8
INSTALL_HINT = ("Slurm (slurmctld, slurmd) is missing: install Debian's slurm-wlm (scripts/test.sh does it "
                "as root), and run the tests as root")


def slurm_available() -> bool:
    return (os.access(SLURMCTLD, os.X_OK) and os.access(SLURMD, os.X_OK) and shutil.which("sbatch") is not None
            and os.geteuid() == 0)


def require_slurm() -> None:
    """Skip without Slurm; under CI=true, where scripts/test.sh installs it, fail instead."""
    if slurm_available():
        return
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"CI=true but {INSTALL_HINT}", pytrace=False)
    pytest.skip(INSTALL_HINT)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _pid(path: Path) -> Optional[int]:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class SlurmCluster:
    """slurmctld + slurmd on this machine, one node with CPUS cores and GPUS stand-in GPUs.

    CPUS may be more than the machine has (`config_overrides`): four one-CPU elements then run
    at once, one per GPU, even on a 2-core machine; the tests' commands are tiny.
    """

    def __init__(self, root: Path, max_array_size: int = MAX_ARRAY_SIZE, max_job_count: int = 10000):
        self.root = Path(root)
        self.max_array_size = max_array_size
        self.max_job_count = max_job_count  # pending array elements count one each
        self.conf = self.root / "slurm.conf"
        self.node = socket.gethostname()

    def env(self, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        env = dict(os.environ, SLURM_CONF=str(self.conf))
        env.update(extra or {})
        return env

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, check=check, timeout=60)

    def _write_config(self) -> None:
        root = self.root
        (root / "state").mkdir(parents=True, exist_ok=True)
        (root / "slurmd").mkdir(exist_ok=True)
        (root / "dev").mkdir(exist_ok=True)
        for index in range(GPUS):
            device = root / "dev" / f"nvidia{index}"
            if not device.exists():
                os.mknod(device, 0o666 | 0o020000, os.makedev(1, 3))
        (root / "gres.conf").write_text(f"NodeName={self.node} Name=gpu File={root}/dev/nvidia[0-{GPUS - 1}]\n")
        self.conf.write_text("\n".join([
            "ClusterName=mlrunnertest", f"SlurmctldHost={self.node}", "AuthType=auth/none", "CredType=cred/none",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SwitchType=switch/none",
            "MpiDefault=none", "SlurmdParameters=config_overrides", "SlurmUser=root",
            f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd.pid",
            f"SlurmdSpoolDir={root}/slurmd", f"StateSaveLocation={root}/state",
            f"SlurmctldLogFile={root}/slurmctld.log", f"SlurmdLogFile={root}/slurmd.log",
            "SchedulerType=sched/backfill", "SchedulerParameters=sched_interval=2,bf_interval=2",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "ReturnToService=2",
            "JobCompType=jobcomp/none", "JobAcctGatherType=jobacct_gather/none", "KillWait=5",
            "MinJobAge=600", f"MaxArraySize={self.max_array_size}", f"MaxJobCount={self.max_job_count}",
            "GresTypes=gpu",
            f"NodeName={self.node} CPUs={CPUS} RealMemory=20000 Gres=gpu:{GPUS} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))

    def start(self, timeout: float = 60) -> "SlurmCluster":
        self._write_config()
        env = self.env()
        for daemon in (SLURMCTLD, SLURMD):
            subprocess.run([daemon, "-c"], env=env, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60)
        _live.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.run("sinfo", "--noheader", "--format=%t", check=False).stdout.split()
            if state and state[0] in ("idle", "mix", "alloc"):
                return self
            time.sleep(0.2)
        raise RuntimeError(f"the Slurm node did not come up in {timeout}s; see {self.root}/slurmd.log")

    def steps(self, job_id: Optional[str] = None) -> List[int]:
        """Pids of this cluster's `slurmstepd`s (all, or the batch step of one job): job ids
        restart at 1 in every cluster, so a step is ours when it has our SLURM_CONF."""
        needle = f"slurmstepd: [{job_id}.batch]" if job_id else "slurmstepd:"
        ours = f"SLURM_CONF={self.conf}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as stream:
                        if not stream.read().startswith(needle.encode()):
                            continue
                    with open(f"/proc/{entry}/environ", "rb") as stream:
                        if ours in stream.read().split(b"\0"):
                            found.append(int(entry))
                except OSError:
                    pass
        return found

    def wait_idle(self, timeout: float = 60) -> None:
        """Wait until no job is left in the queue (the tests share one cluster)."""
        deadline = time.monotonic() + timeout
        while self.run("squeue", "--noheader", "--format=%i", check=False).stdout.strip():
            if time.monotonic() > deadline:
                self.run("scancel", "--user=root", check=False)
                raise AssertionError(f"jobs still queued after {timeout}s")
            time.sleep(0.2)

    def stop(self) -> None:
        if self in _live:
            _live.remove(self)
        self.run("scancel", "--user=root", check=False)
        deadline = time.monotonic() + 20  # let the jobs end while slurmd can still clean them up
        while self.run("squeue", "--noheader", check=False).stdout.strip() and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = [pid for pid in (_pid(self.root / "slurmd.pid"), _pid(self.root / "slurmctld.pid")) if pid]
        pids += self.steps()  # a step whose slurmd is gone would wait for it forever
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


_live: List[SlurmCluster] = []


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[SlurmCluster]:
    """One cluster for the whole session (starting one takes a few seconds); stopped at the end."""
    require_slurm()
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


@atexit.register
def _stop_leftovers() -> None:
    for cluster in list(_live):
        try:
            cluster.stop()
        except Exception:
            pass
