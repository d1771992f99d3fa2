"""The one place that decides where a command runs (SPEC R1, G1-G5).

Each `resource` entry (a local GPU set, or one of a remote host's) is a *place*. A worker asks
`acquire` for a place for its task and gives it back with `release`. Without `gpu:` in the config
a place takes one task at a time: 0.5.9's static workers, with no `nvidia-smi` call. With `gpu:`
a local GPU takes tasks while they fit: not busy with other people's memory, within `per_gpu`,
and with room for the task's declared memory next to what is reserved for the commands that
started but may not have allocated yet. Reservations are flocked claim files in a directory that
every mlrunner on the machine shares, so that runs by one or several users never oversubscribe a
GPU; the kernel drops a dead runner's locks, and its claims with them.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from .executors.base import Executor
from .gpu_policy import GpuPolicy, gib
from .gpus import Poller, Snapshot
from .state import HOST

LOCK_DIR = "/tmp/mlrunner-gpus"


# -- claims shared by every mlrunner on this machine (G4) -----------------------------------------

@dataclass
class Claim:
    uuid: str
    mib: int
    sid: Optional[int] = None  # the command's session, to find its processes in nvidia-smi's list


class LockDir:
    """Claim files, each flocked by the runner that holds it for as long as its command runs."""

    def __init__(self, path: str):
        self.path = path
        created = not os.path.isdir(path)
        os.makedirs(path, exist_ok=True)
        if created:
            try:
                os.chmod(path, 0o1777)  # shared by every user, as /tmp is
            except OSError:
                pass
        self._serial = 0

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The machine-wide lock around one decision: read every claim, then add ours."""
        descriptor = os.open(os.path.join(self.path, "allocate.lock"), os.O_RDONLY | os.O_CREAT, 0o666)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)

    def claims(self) -> List[Claim]:
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
                    data = json.loads(os.read(descriptor, 4096) or b"{}")
                    found.append(Claim(str(data["uuid"]), int(data["mib"]), data.get("sid")))
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

    def add(self, claim: Claim) -> Tuple[int, str]:
        """Write and lock a claim; the returned descriptor holds it until `remove`."""
        self._serial += 1
        path = os.path.join(self.path, f"{HOST}.{os.getpid()}.{self._serial}.claim")
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        self.rewrite(descriptor, claim)
        return descriptor, path

    @staticmethod
    def rewrite(descriptor: int, claim: Claim) -> None:
        data = json.dumps({"uuid": claim.uuid, "mib": claim.mib, "sid": claim.sid, "pid": os.getpid()}).encode()
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, data, 0)

    @staticmethod
    def remove(held: Tuple[int, str]) -> None:
        descriptor, path = held
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(descriptor)


def _session(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            return int(stream.read().rsplit(b")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


# -- places and grants ---------------------------------------------------------------------------

@dataclass(eq=False)
class Place:
    """One `resource` entry: the executor that runs there and the GPU indices it names."""

    executor: Executor
    gpus: List[str]
    remote: bool = False
    taken: int = 0  # tasks running here (static places take one)


@dataclass(eq=False)
class Grant:
    place: Place
    mib: int = 0
    claims: List[Claim] = field(default_factory=list)
    held: List[Tuple[int, str]] = field(default_factory=list)  # (descriptor, path) of each locked claim file


@dataclass(eq=False)
class _Request:
    mib: int
    place: Optional[Place]  # a remote place's own worker asks for that place only
    grant: Optional[Grant] = None
    error: Optional["NoPlace"] = None


class NoPlace(Exception):
    """No place can ever take this task (too large, or every GPU skipped as busy)."""


class Allocator:
    """Hands places to tasks; one lock, one poller, one free-list of places."""

    def __init__(self, places: List[Place], policy: Optional[GpuPolicy] = None, poller: Optional[Poller] = None,
                 lock_dir: Optional[str] = None, say: Callable[[str], None] = print):
        self.places = places
        self.policy = policy
        self.poller = poller or (Poller() if policy else None)
        self.locks = LockDir(lock_dir or os.environ.get("MLRUNNER_LOCK_DIR") or LOCK_DIR) if policy else None
        self.say = say
        self.skipped: Dict[str, str] = {}  # GPU -> why it is left out of this run (busy, wait: false)
        self.waiting = ""  # why the last decision found no place, for the console
        self._warned: set = set()  # nvidia-smi trouble already reported
        self._queue: List[_Request] = []
        self._snapshot: Optional[Snapshot] = None  # the poller thread's latest, read under the lock
        self._polling = False
        self._changed = threading.Condition()

    def workers(self, bound: bool) -> int:
        """How many workers take tasks: one per remote place (bound to it), and for local places
        one per place, or per_gpu of them per GPU when a policy packs them."""
        local = [p for p in self.places if not p.remote]
        if bound:
            return len(self.places) - len(local)
        if not self.policy:
            return len(local)
        return len(local) * self.policy.slots_per_gpu()

    def size(self, commands: Sequence[str], params: Dict[str, Any]) -> int:
        """MiB a task needs: the most any of its commands still to run declares."""
        if not self.policy:
            return 0
        return max((self.policy.size(c, params) for c in commands), default=0)

    def acquire(self, mib: int, stopping: threading.Event, place: Optional[Place] = None) -> Optional[Grant]:
        """A place for a task needing `mib` (waiting for one); None once the run stops.

        Requests wait in one queue and are served oldest first, each round: a task that fits
        starts at once, even behind an older one that does not (backfill)."""
        request = _Request(mib, place)
        with self._changed:
            self._queue.append(request)
            if self.policy and not self._polling:
                self._polling = True
                threading.Thread(target=self._poll, daemon=True).start()
            try:
                while not stopping.is_set() and request.grant is None:
                    self._serve()
                    if request.error is not None:
                        raise request.error
                    if request.grant is None:
                        self._changed.wait(self.poller.interval if self.poller else 0.2)
            finally:
                self._queue.remove(request)
            if request.grant is not None and stopping.is_set():  # granted by another's round, too late
                self._give_back(request.grant)
                return None
            return request.grant

    def release(self, grant: Optional[Grant]) -> None:
        if grant is None:
            return
        with self._changed:
            self._give_back(grant)

    def _give_back(self, grant: Grant) -> None:
        grant.place.taken -= 1
        for held in grant.held:
            LockDir.remove(held)
        grant.held.clear()
        self._changed.notify_all()

    def attach(self, grant: Grant, session: Optional[int]) -> None:
        """Tell the other runners which processes hold this grant's memory (their session)."""
        if not self.locks or session is None:
            return
        with self.locks.locked():
            for claim, (descriptor, _) in zip(grant.claims, grant.held):
                claim.sid = session
                LockDir.rewrite(descriptor, claim)

    def oom_size(self, grant: Grant) -> int:
        """What a command that ran out of memory asks next: 1.5x its size, at most a whole GPU;
        a whole GPU when it declared none (G5)."""
        snapshot = self.poller.snapshot(max_age=3600) if self.poller else Snapshot()
        totals = [g.total for i in grant.place.gpus for g in [snapshot.gpus.get(i)] if g and g.total]
        whole = min(totals) if totals else 0
        wanted = grant.mib * 3 // 2
        if wanted == 0:
            return whole
        return min(math.ceil(wanted / 256) * 256, whole) if whole else math.ceil(wanted / 256) * 256

    # -- deciding --------------------------------------------------------------------------------
    def _serve(self) -> None:
        """One round: grant every waiting request that fits now, oldest first (under the lock)."""
        pending = [r for r in self._queue if r.grant is None and r.error is None]
        granted = False
        for request in pending:
            if not self.policy or (request.place is not None and request.place.remote):
                places = [request.place] if request.place else [p for p in self.places if not p.remote]
                free = [p for p in places if p.taken == 0]
                if free:
                    free[0].taken += 1
                    request.grant, granted = Grant(free[0]), True
        pending = [r for r in pending if r.grant is None]
        if pending and self.policy:
            granted |= self._serve_gpus(pending)
        if granted:
            self._changed.notify_all()

    def _poll(self) -> None:
        """The one poller (G6): a fresh snapshot every interval while a request waits, taken outside
        the lock so that grants and releases never wait for nvidia-smi."""
        while True:
            snapshot = self.poller.snapshot(max_age=0)
            with self._changed:
                self._snapshot = snapshot
                self._changed.notify_all()
                deadline = time.monotonic() + self.poller.interval
                while time.monotonic() < deadline:  # releases wake this wait too: keep to the interval
                    if not any(r.grant is None and r.error is None for r in self._queue):
                        self._polling = False
                        return
                    self._changed.wait(deadline - time.monotonic())

    def _serve_gpus(self, pending: List["_Request"]) -> bool:
        if self._snapshot is None:
            return False  # the poller's first snapshot is on its way; it wakes the waiters
        snapshot = self._snapshot
        if snapshot.warning and snapshot.warning not in self._warned:
            self._warned.add(snapshot.warning)
            self.say(f"warning: {snapshot.warning}")
        granted, reasons = False, []
        with self.locks.locked():
            claims = self.locks.claims()
            for request in pending:
                places = [request.place] if request.place else [p for p in self.places if not p.remote]
                usable = [p for p in places if not any(g in self.skipped for g in p.gpus)]
                try:
                    if not usable:
                        raise NoPlace("every GPU is busy with other processes, and gpu.wait is false")
                    self._check_size(request.mib, usable, snapshot)
                except NoPlace as error:
                    request.error, granted = error, True
                    continue
                fits = []  # (memory left after this task, order, place): the tightest fit keeps big holes
                for order, place in enumerate(usable):
                    why = self._why_not(place, request.mib, snapshot, claims)
                    if isinstance(why, str):
                        reasons.append((request, why))
                    else:
                        fits.append((why, order, place))
                if fits:
                    request.grant, granted = self._grant(min(fits)[2], request.mib, snapshot), True
                    claims.extend(request.grant.claims)
        oldest = next((r for r in pending if r.grant is None and r.error is None), None)
        waiting = "; ".join(dict.fromkeys(why for r, why in reasons if r is oldest)) if oldest else ""
        if waiting and waiting != self.waiting:
            self.say(f"WAIT    for a GPU with {gib(oldest.mib)} free: {waiting}" if oldest.mib
                     else f"WAIT    for a GPU: {waiting}")
        self.waiting = waiting
        return granted

    def _check_size(self, mib: int, places: List[Place], snapshot: Snapshot) -> None:
        totals = [min(snapshot.gpus[g].total or 0 for g in p.gpus) for p in places
                  if all(g in snapshot.gpus for g in p.gpus)]
        if totals and all(totals) and mib > max(totals):
            raise NoPlace(f"it needs {gib(mib)}, more than any GPU has ({gib(max(totals))})")

    def _why_not(self, place: Place, mib: int, snapshot: Snapshot, claims: List[Claim]) -> Union[str, int]:
        """Why the place cannot take `mib` more now, for the console; else the MiB it would have left."""
        left = 0
        for index in place.gpus:
            gpu = snapshot.gpus.get(index)
            if gpu is None:
                if snapshot.gpus:
                    return f"GPU {index} is not listed by nvidia-smi"
                continue  # nvidia-smi failed: judged by our own bookkeeping below
            mine = [c for c in claims if c.uuid == gpu.uuid]
            if len(mine) >= self.policy.slots_per_gpu():
                return f"GPU {index} runs {len(mine)} of ours (per_gpu {self.policy.slots_per_gpu()})"
            if gpu.total is None or gpu.used is None:
                continue
            apps = [a for a in snapshot.apps if a.uuid == gpu.uuid and a.used]
            sessions = {a.pid: _session(a.pid) for a in apps}
            gone = sum(a.used for a in apps if sessions[a.pid] is None)  # exited since the snapshot
            held = {id(c): sum(a.used for a in apps if c.sid is not None and sessions[a.pid] == c.sid) for c in mine}
            others = max(gpu.used - gone - sum(held.values()), 0)
            if others > self.policy.busy_above:
                if not self.policy.wait:
                    self.skipped[index] = f"GPU {index} is busy ({gib(others)} used by other processes)"
                    self.say(f"SKIP    {self.skipped[index]}: left out of this run (gpu.wait is false)")
                return f"GPU {index} busy ({gib(others)} used by other processes)"
            free = gpu.total - others - sum(max(c.mib, held[id(c)]) for c in mine)
            if mib > free:
                return f"GPU {index} has {gib(max(free, 0))} free"
            left += free - mib
        return left

    def _grant(self, place: Place, mib: int, snapshot: Snapshot) -> Grant:
        grant = Grant(place, mib)
        for index in place.gpus:
            gpu = snapshot.gpus.get(index)
            claim = Claim(gpu.uuid if gpu else f"index-{index}", mib)
            grant.claims.append(claim)
            grant.held.append(self.locks.add(claim))
        place.taken += 1
        return grant
