"""GPU claims shared by every mlrunner on a machine (SPEC G4), on either side of an SSH link.

Standard library only, Python >= 3.6: the runner imports `ClaimDir` for its own machine, and the
agent (`agent.py`) serves `REQUESTS` for a remote one, holding that machine's claims itself, so
that a remote run and a local run by anyone on that machine read and write the same claims.

A claim is {"uuid", "mib", "sid"}: a GPU, the memory reserved on it, and the session of the
command that holds it (its processes' memory in nvidia-smi's list is then ours, not another
user's). Each claim is a file flocked by the process that holds it, for as long as the command
runs; the kernel drops the lock of a process that dies, and the next reader removes the file.
"""

import contextlib
import fcntl
import json
import os
import socket
import threading
import time

LOCK_DIR = "/tmp/mlrunner-gpus"  # MLRUNNER_LOCK_DIR moves it, on each machine
LOCK_WAIT = 20.0  # seconds a remote decision waits for the machine's lock: less than the runner's deadline


def lock_dir():
    """This machine's claim directory, where every mlrunner here looks."""
    return os.environ.get("MLRUNNER_LOCK_DIR") or LOCK_DIR


def session_of(pid):
    """A process's session (a command's session is its process group: each starts a new one); None once gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as stream:
            return int(stream.read().rsplit(b")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


class ClaimDir:
    """The claim files of one machine; a claim is known to its holder by its file's path."""

    def __init__(self, path):
        self.path = path
        created = not os.path.isdir(path)
        os.makedirs(path, exist_ok=True)
        if created:
            try:
                os.chmod(path, 0o1777)  # shared by every user, as /tmp is
            except OSError:
                pass
        self._serial = 0
        self._held = {}  # path -> the descriptor that holds its flock
        self._mutex = threading.Lock()

    def lock(self, wait=None):
        """The machine-wide lock around one decision (read every claim, then add ours): a descriptor
        to close, or None when other runners held it for `wait` seconds."""
        descriptor = os.open(os.path.join(self.path, "allocate.lock"), os.O_RDONLY | os.O_CREAT, 0o666)
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
                return descriptor
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(descriptor)
                    return None
                time.sleep(0.01)

    @contextlib.contextmanager
    def locked(self):
        descriptor = self.lock()
        try:
            yield
        finally:
            os.close(descriptor)

    def claims(self):
        """Every live claim; a claim whose lock is free belongs to a dead runner and is removed."""
        found = []
        for name in os.listdir(self.path):
            if not name.endswith(".claim"):
                continue
            path = os.path.join(self.path, name)
            try:
                descriptor = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    data = json.loads(os.read(descriptor, 4096).decode() or "{}")
                    found.append({"uuid": str(data["uuid"]), "mib": int(data["mib"]), "sid": data.get("sid")})
                    continue
                try:
                    os.unlink(path)
                except OSError:
                    pass  # another user's stale claim in the sticky directory: ignored from now on
            except (ValueError, KeyError, TypeError):
                continue  # not a claim of ours
            finally:
                os.close(descriptor)
        return found

    def add(self, claim):
        """Write and lock a claim (while holding `lock`); its path names it to `attach` and `remove`."""
        with self._mutex:
            self._serial += 1
            path = os.path.join(self.path, "%s.%d.%d.claim" % (socket.gethostname(), os.getpid(), self._serial))
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        _write(descriptor, claim)
        with self._mutex:
            self._held[path] = descriptor
        return path

    def attach(self, path, sid):
        """Name the session whose processes hold a claim's memory (taking the machine's lock)."""
        with self.locked(), self._mutex:
            descriptor = self._held.get(path)
            if descriptor is not None:
                os.lseek(descriptor, 0, os.SEEK_SET)
                _write(descriptor, dict(json.loads(os.read(descriptor, 4096).decode()), sid=sid))

    def remove(self, path):
        """Give a claim back; a path this holder does not hold (an earlier agent's) is left alone."""
        with self._mutex:
            descriptor = self._held.pop(path, None)
        if descriptor is None:
            return
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(descriptor)


def _write(descriptor, claim):
    data = json.dumps({"uuid": claim["uuid"], "mib": claim["mib"], "sid": claim.get("sid"), "pid": os.getpid()})
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, data.encode(), 0)


# -- the agent's requests, for a runner deciding from another machine -----------------------------

_mine = []  # the agent's ClaimDir, made at its first GPU request
_decision = []  # the descriptor of the machine's lock while the runner decides
_made = threading.Lock()


def _claim_dir():
    with _made:
        if not _mine:
            _mine.append(ClaimDir(lock_dir()))
        return _mine[0]


def _lock(request):
    """The runner decides for this machine: hold its lock until `gpu_unlock`; here are the claims.
    Waits LOCK_WAIT at most, so that the reply always comes before the runner stops waiting for it."""
    claims = _claim_dir()
    descriptor = claims.lock(LOCK_WAIT)
    if descriptor is None:
        raise RuntimeError("another mlrunner held %s/allocate.lock for %g s" % (claims.path, LOCK_WAIT))
    _decision.append(descriptor)
    return {"claims": claims.claims()}


def _unlock(request):
    while _decision:
        os.close(_decision.pop())
    return {}


def _attach(request):
    _claim_dir().attach(request["path"], request["sid"])
    return {}


def _remove(request):
    _claim_dir().remove(request["path"])
    return {}


REQUESTS = {
    "gpu_lock": _lock,
    "gpu_unlock": _unlock,
    "gpu_claim": lambda request: {"path": _claim_dir().add(request["claim"])},
    "gpu_attach": _attach,
    "gpu_unclaim": _remove,
    "sessions": lambda request: {"sessions": [session_of(pid) for pid in request["pids"]]},
}
# Served inline by the agent. Never one that waits for the machine's lock (gpu_lock, gpu_attach):
# the request that frees it could not be read meanwhile.
QUICK = ("gpu_unlock", "gpu_claim", "gpu_unclaim", "sessions")
