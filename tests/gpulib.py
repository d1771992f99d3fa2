"""The stand-in GPUs of the shared-GPU tests: the state file that tests/bin/nvidia-smi reads and
tests/bin/fake-cuda-job changes (FAKE_GPU_STATE), and another user's process on it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, Tuple

H100 = 81559  # MiB, as nvidia-smi reports an H100 80GB


def gpu_state(path: Path, totals: Sequence[int] = (H100, H100), processes: Iterable[dict] = ()) -> Path:
    """GPUs `GPU-0000`, `GPU-0001`, ... of these total MiB, with these processes on them."""
    gpus = [{"index": i, "uuid": f"GPU-{i:04d}", "total": total} for i, total in enumerate(totals)]
    path.write_text(json.dumps({"gpus": gpus, "processes": list(processes)}))
    return path


def history(state: Path) -> list:
    """Every allocation the stand-in jobs made, with the GPU's use after it."""
    return json.loads(state.read_text()).get("history", [])


def outsider(mib: int, gpu: int = 0) -> Tuple["subprocess.Popen[bytes]", dict]:
    """Another user's process holding `mib` on a GPU: a live `sleep` and its entry in the state."""
    process = subprocess.Popen(["sleep", "300"], start_new_session=True)
    return process, {"pid": process.pid, "gpu": f"GPU-{gpu:04d}", "used": mib}


def foreign(mib: int, gpu: int = 0) -> dict:
    """A process of another pid namespace (a container, the host seen from one, `/proc` mounted
    hidepid): nvidia-smi lists it with a pid that this machine's /proc does not show."""
    pid = 4_000_000
    while Path(f"/proc/{pid}").exists():
        pid += 1
    return {"pid": pid, "gpu": f"GPU-{gpu:04d}", "used": mib, "foreign": True, "ours": False}


def change(path: Path, edit: Callable[[dict], None]) -> None:
    """Change the state file in place under its flock, as tests/bin/fake-cuda-job does, mid-run too."""
    with open(path, "r+") as stream:
        fcntl.flock(stream, fcntl.LOCK_EX)
        state = json.load(stream)
        edit(state)
        stream.seek(0)
        stream.truncate()
        json.dump(state, stream)


@contextlib.contextmanager
def busy(path: Path, mib: int) -> Iterator[Path]:
    """The state file of two GPUs, another user holding `mib` on GPU 0 while it is open."""
    process, entry = outsider(mib)
    try:
        yield gpu_state(path, processes=[entry])
    finally:
        process.kill()


def run_until_freed(runner: "subprocess.Popen[str]", state: Path, outsider: "subprocess.Popen[bytes]",
                    held: float = 3) -> Tuple[int, str, str, float]:
    """A run while another user holds memory: nothing may start for `held` seconds; then the
    memory is freed and the run finishes. (exit status, stdout, stderr, when it was freed)."""
    try:
        time.sleep(held)
        assert runner.poll() is None and history(state) == []  # nothing ran while it was held
        freed = time.time()
        outsider.kill()
        out, err = runner.communicate(timeout=60)
    finally:
        outsider.kill()
        runner.kill()
    return runner.returncode, out, err, freed
