"""The one place that decides where a command runs (SPEC R1, G1-G6).

Each `resource` entry (a local GPU set, or one of a remote host's) is a *place* on a *machine*: this
one, or a host. A worker belongs to a machine; it asks `acquire` for a place there for its task and
gives it back with `release`. Without `gpu:` in the config a place takes one task at a time:
0.5.9's static workers, with no `nvidia-smi` call. With `gpu:` a GPU takes tasks while they fit:
not busy with other people's memory, within `per_gpu`, and with room for the task's declared
memory next to what is reserved for the commands that started but may not have allocated yet.

The policy is the same on every machine; what differs is only how the machine is reached (its
`Machine`): each has its own poller of its `nvidia-smi`, and its own claim directory, which every
mlrunner on that machine shares (a host's is held by its agent), so that runs by one or several
users never oversubscribe a GPU. A decision locks one machine's directory at a time, never two, so
runners that use each other's machines as hosts cannot deadlock. The kernel drops a dead runner's
(or agent's) locks, and its claims with them.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from .executors.base import Executor, HostLost, Machine
from .gpu_policy import GpuPolicy, gib
from .gpus import Poller, Snapshot


@dataclass(eq=False)
class Place:
    """One `resource` entry: the executor that runs there and the GPU indices it names."""

    executor: Executor
    gpus: List[str]
    remote: bool = False  # a host's: its GPUs are named with the host in console lines
    taken: int = 0  # tasks running here (static places take one)

    @property
    def machine(self) -> Machine:
        return self.executor.machine

    def gpu(self, index: str) -> str:
        """A GPU as console lines name it: `0` here, `gpu1:0` on a host."""
        return f"{self.executor.host}:{index}" if self.remote else index


@dataclass(eq=False)
class Grant:
    place: Place
    mib: int = 0
    claims: List[str] = field(default_factory=list)  # the held claims, by path in the machine's claim directory


@dataclass(eq=False)
class _Request:
    mib: int
    machine: Machine
    grant: Optional[Grant] = None
    error: Optional[Exception] = None
    reasons: List[str] = field(default_factory=list)  # why no place took it in its machine's last round


class NoPlace(Exception):
    """No place can take this task (too large, or every GPU skipped as busy); `elsewhere`: on this
    machine only, and the workers of other machines may still run it."""

    def __init__(self, message: str, elsewhere: bool = False):
        super().__init__(message)
        self.elsewhere = elsewhere


class _Site:
    """One machine's part: its places, its poller, its claim directory, the poller's latest snapshot."""

    def __init__(self, machine: Machine, policy: Optional[GpuPolicy]):
        self.machine = machine
        self.places: List[Place] = []
        self.poller = Poller(machine.query) if policy else None
        self.claims = machine.claim_dir() if policy else None
        self.snapshot: Optional[Snapshot] = None  # read and written under the allocator's lock
        self.polling = False
        # Something changed since this machine's last round (a snapshot, a request, a release): a
        # round without a change would decide the same, and costs a host's agent round trips.
        self.changed = True


class Allocator:
    """Hands places to tasks; one lock, one poller per machine, one free-list of places."""

    def __init__(self, places: List[Place], policy: Optional[GpuPolicy] = None, say: Callable[[str], None] = print):
        self.places = places
        self.policy = policy
        self.say = say
        self.sites: Dict[Machine, _Site] = {}
        for place in places:
            self.sites.setdefault(place.machine, _Site(place.machine, policy)).places.append(place)
        self.skipped: Dict[str, str] = {}  # GPU -> why it is left out of this run (busy, wait: false)
        self.waiting = ""  # why the last decision found no place, for the console
        self._warned: set = set()  # nvidia-smi trouble already reported
        self._queue: List[_Request] = []
        self._changed = threading.Condition()

    @property
    def machines(self) -> List[Machine]:
        return list(self.sites)

    def workers(self, machine: Machine) -> int:
        """How many workers take tasks on a machine: one per place, or per_gpu of them per place
        when a policy packs them."""
        places = len(self.sites[machine].places)
        return places * self.policy.slots_per_gpu() if self.policy else places

    def size(self, commands: Sequence[str], params: Dict[str, Any]) -> int:
        """MiB a task needs: the most any of its commands still to run declares."""
        if not self.policy:
            return 0
        return max((self.policy.size(c, params) for c in commands), default=0)

    def acquire(self, mib: int, stopping: threading.Event, machine: Machine) -> Optional[Grant]:
        """A place on `machine` for a task needing `mib` (waiting for one); None once the run stops.
        HostLost when the machine is a host that went away meanwhile.

        Requests wait in one queue and are served oldest first, each round: a task that fits
        starts at once, even behind an older one that does not (backfill)."""
        site = self.sites[machine]
        request = _Request(mib, machine)
        with self._changed:
            self._queue.append(request)
            site.changed = True
            if self.policy and not site.polling:
                site.polling = True
                threading.Thread(target=self._poll, args=(site,), daemon=True).start()
            try:
                while not stopping.is_set() and request.grant is None:
                    self._serve()
                    if request.error is not None:
                        raise request.error
                    if request.grant is None:
                        self._changed.wait(site.poller.interval if site.poller else 0.2)
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
        site = self.sites[grant.place.machine]
        grant.place.taken -= 1
        for path in grant.claims:
            site.claims.remove(path)
        grant.claims.clear()
        site.changed = True
        self._changed.notify_all()

    def attach(self, grant: Grant, session: Optional[int]) -> None:
        """Tell the other runners on the machine which processes hold this grant's memory (their session)."""
        if not self.policy or session is None:
            return
        claims = self.sites[grant.place.machine].claims
        for path in grant.claims:
            claims.attach(path, session)

    def oom_size(self, grant: Grant) -> int:
        """What a command that ran out of memory asks next: 1.5x its size, at most a whole GPU;
        a whole GPU when it declared none (G5)."""
        poller = self.sites[grant.place.machine].poller
        snapshot = poller.snapshot(max_age=3600) if poller else Snapshot()
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
        if not self.policy:
            for request in pending:
                free = [p for p in self.sites[request.machine].places if p.taken == 0]
                if free:
                    free[0].taken += 1
                    request.grant, granted = Grant(free[0]), True
        else:
            served = False
            for site in self.sites.values():
                mine = [r for r in pending if r.machine is site.machine]
                if mine and site.snapshot is not None and site.changed:  # else the first snapshot is on its way
                    site.changed = False
                    granted |= self._serve_site(site, mine)
                    served = True
            if served:
                self._say_waiting(pending)
        if granted:
            self._changed.notify_all()

    def _say_waiting(self, pending: List[_Request]) -> None:
        oldest = next((r for r in pending if r.grant is None and r.error is None), None)
        waiting = "; ".join(dict.fromkeys(oldest.reasons)) if oldest else ""
        if waiting and waiting != self.waiting:
            self.say(f"WAIT    for a GPU with {gib(oldest.mib)} free: {waiting}" if oldest.mib
                     else f"WAIT    for a GPU: {waiting}")
        self.waiting = waiting

    def _poll(self, site: _Site) -> None:
        """A machine's one poller (G6): a fresh snapshot every interval while a request for that
        machine waits, taken outside the lock so that grants and releases never wait for nvidia-smi."""
        while True:
            snapshot = site.poller.snapshot(max_age=0)
            with self._changed:
                site.snapshot, site.changed = snapshot, True
                self._changed.notify_all()
                deadline = time.monotonic() + site.poller.interval
                while time.monotonic() < deadline:  # releases wake this wait too: keep to the interval
                    if not any(r.grant is None and r.error is None and r.machine is site.machine for r in self._queue):
                        site.polling = False
                        return
                    self._changed.wait(deadline - time.monotonic())

    def _serve_site(self, site: _Site, pending: List[_Request]) -> bool:
        """Serve one machine's requests under that machine's lock; a host lost meanwhile fails them."""
        snapshot = site.snapshot
        if snapshot.warning and (site.machine, snapshot.warning) not in self._warned:
            self._warned.add((site.machine, snapshot.warning))
            where = "" if site.machine.name == "localhost" else f"host {site.machine.name}: "
            self.say(f"warning: {where}{snapshot.warning}")
        granted = False
        try:
            with site.claims.locked():
                claims = site.claims.claims()
                pids = sorted({a.pid for a in snapshot.apps if a.used})
                sessions = site.machine.sessions(pids) if pids else {}
                for request in pending:
                    granted |= self._serve_request(site, request, claims, sessions)
        except HostLost as error:
            for request in pending:
                if request.grant is None:
                    request.error = HostLost(str(error))
            granted = True
        return granted

    def _serve_request(self, site: _Site, request: _Request, claims: List[Dict[str, Any]],
                       sessions: Dict[int, Optional[int]]) -> bool:
        snapshot = site.snapshot
        request.reasons = []
        usable = [p for p in site.places if not any(p.gpu(g) in self.skipped for g in p.gpus)]
        try:
            if not usable:
                elsewhere = any(not all(p.gpu(g) in self.skipped for g in p.gpus) for p in self.places)
                raise NoPlace("every GPU is busy with other processes, and gpu.wait is false", elsewhere)
            self._check_size(request.mib, usable, snapshot)
        except NoPlace as error:
            request.error = error
            return True
        fits = []  # (memory left after this task, order, place): the tightest fit keeps big holes
        for order, place in enumerate(usable):
            why = self._why_not(place, request.mib, snapshot, claims, sessions)
            if isinstance(why, str):
                request.reasons.append(why)
            else:
                fits.append((why, order, place))
        if not fits:
            return False
        request.grant = self._grant(site, min(fits)[2], request.mib, claims)
        return True

    def _check_size(self, mib: int, places: List[Place], snapshot: Snapshot) -> None:
        totals = [min(snapshot.gpus[g].total or 0 for g in p.gpus) for p in places
                  if all(g in snapshot.gpus for g in p.gpus)]
        if totals and all(totals) and mib > max(totals):
            raise NoPlace(f"it needs {gib(mib)}, more than any GPU has ({gib(max(totals))})")

    def _why_not(self, place: Place, mib: int, snapshot: Snapshot, claims: List[Dict[str, Any]],
                 sessions: Dict[int, Optional[int]]) -> Union[str, int]:
        """Why the place cannot take `mib` more now, for the console; else the MiB it would have left."""
        left = 0
        for index in place.gpus:
            name = place.gpu(index)
            gpu = snapshot.gpus.get(index)
            if gpu is None:
                if snapshot.gpus:
                    return f"GPU {name} is not listed by nvidia-smi"
                continue  # nvidia-smi failed: judged by our own bookkeeping below
            mine = [c for c in claims if c["uuid"] == gpu.uuid]
            if len(mine) >= self.policy.slots_per_gpu():
                return f"GPU {name} runs {len(mine)} of ours (per_gpu {self.policy.slots_per_gpu()})"
            if gpu.total is None or gpu.used is None:
                continue
            apps = [a for a in snapshot.apps if a.uuid == gpu.uuid and a.used]
            gone = sum(a.used for a in apps if sessions.get(a.pid) is None)  # exited since the snapshot
            held = [sum(a.used for a in apps if c["sid"] is not None and sessions.get(a.pid) == c["sid"]) for c in mine]
            claimed = {c["sid"] for c in mine if c["sid"] is not None}
            listed = sum(a.used for a in apps if sessions.get(a.pid) not in claimed and sessions.get(a.pid) is not None)
            # memory.used and the process list are two nvidia-smi calls: a job of ours that allocated
            # between them is in the list but not in `used`, and subtracting it would hide as much
            # of another user's memory. What the list shows of others is a floor.
            others = max(gpu.used - gone - sum(held), listed)
            if others > self.policy.busy_above:
                if not self.policy.wait:
                    self.skipped[name] = f"GPU {name} is busy ({gib(others)} used by other processes)"
                    self.say(f"SKIP    {self.skipped[name]}: left out of this run (gpu.wait is false)")
                return f"GPU {name} busy ({gib(others)} used by other processes)"
            free = gpu.total - others - sum(max(c["mib"], h) for c, h in zip(mine, held))
            if mib > free:
                return f"GPU {name} has {gib(max(free, 0))} free"
            left += free - mib
        return left

    def _grant(self, site: _Site, place: Place, mib: int, claims: List[Dict[str, Any]]) -> Grant:
        """Claim the place's GPUs (seen by this round's later requests too); all of them or none."""
        grant = Grant(place, mib)
        try:
            for index in place.gpus:
                gpu = site.snapshot.gpus.get(index)
                claim = {"uuid": gpu.uuid if gpu else f"index-{index}", "mib": mib, "sid": None}
                grant.claims.append(site.claims.add(claim))
                claims.append(claim)
        except HostLost:
            for path in grant.claims:
                site.claims.remove(path)
            raise
        place.taken += 1
        return grant
