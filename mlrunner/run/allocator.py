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
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

from ..backends.base import Executor, HostLost, Machine
from .gpu_policy import GpuPolicy, gib
from .gpu_fit import Busy, Fit, claim_key, listed, room, with_exited
from .gpus import Poller, Snapshot
from .slots import SlotBook

FRESH = 1.0  # seconds: a grant decided on an older reading of nvidia-smi waits for a new one
AVOID_S = 5.0  # seconds an out-of-memory retry stays off its place when nothing changes there (G10)


@dataclass(eq=False)
class Place:
    """One `resource` entry: the executor that runs there and the GPU indices it names."""

    executor: Executor
    gpus: List[str]
    remote: bool = False  # a host's: its GPUs are named with the host in console lines
    taken: int = 0  # tasks running here (static places take one)
    released: int = 0  # tasks that ended here: a change an out-of-memory retry waits for (G10)

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
    session: Optional[int] = None  # of the command running under it now
    peak: Optional[int] = None  # the most GPU memory nvidia-smi showed for that session (G12); None: never read
    slot: str = ""  # the worker slot it holds, as records and console lines name it (T11): `gpu:0#1`


@dataclass(eq=False)
class _Request:
    mib: int
    machine: Machine
    avoid: Optional[Place] = None  # where it just ran out of memory (G10)
    avoid_mark: Tuple[int, Dict[str, Optional[int]], float] = (0, {}, 0.0)  # its ends and GPUs' use then; until
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
        self.hurry = False  # a decision wants a reading fresher than FRESH: poll now
        self.running: List[Grant] = []  # grants whose command runs: the poller watches their memory (G12)
        self.ours: Set[int] = set()  # listed pids seen in the session of one of our commands (G8)
        self.fresh_at = 0.0  # when the snapshot came in
        # Something changed since this machine's last round (a snapshot, a request, a release): a
        # round without a change would decide the same, and costs a host's agent round trips.
        self.changed = True


class Allocator:
    """Hands places to tasks; one lock, one poller per machine, one free-list of places."""

    def __init__(self, places: List[Place], policy: Optional[GpuPolicy] = None, say: Callable[[str], None] = print):
        self.places = places
        # Without a GPU (`auto` with no usable nvidia-smi: one CPU worker) there is nothing to pack (G9).
        self.policy = policy if any(p.gpus for p in places) else None
        self.say = say
        self.sites: Dict[Machine, _Site] = {}
        for place in places:
            self.sites.setdefault(place.machine, _Site(place.machine, policy)).places.append(place)
        self.skipped: Dict[str, str] = {}  # GPU -> why it is left out of this run (busy, wait: false)
        self.waiting = ""  # why the last decision found no place, for the console
        self._warned: set = set()  # nvidia-smi trouble already reported
        self._queue: List[_Request] = []
        self._changed = threading.Condition()
        self._slots = SlotBook()

    @property
    def machines(self) -> List[Machine]:
        return list(self.sites)

    def workers(self, machine: Machine) -> int:
        """How many workers take tasks on a machine: one per place, or per_gpu of them per GPU
        place when a policy packs them (a CPU place, `""`, takes one)."""
        places = self.sites[machine].places
        if not self.policy:
            return len(places)
        return sum(self.policy.slots_per_gpu() if p.gpus else 1 for p in places)

    def size(self, commands: Sequence[str], params: Dict[str, Any]) -> int:
        """MiB a task needs: the most any of its commands still to run declares."""
        if not self.policy:
            return 0
        return max((self.policy.size(c, params) for c in commands), default=0)

    def acquire(self, mib: int, stopping: threading.Event, machine: Machine,
                avoid: Optional[Place] = None) -> Optional[Grant]:
        """A place on `machine` for a task needing `mib` (waiting for one); None once the run stops.
        HostLost when the machine is a host that went away meanwhile. `avoid`: the place where the
        task just ran out of memory, taken again only once something there changed (G10).

        Requests wait in one queue and are served oldest first, each round: a task that fits
        starts at once, even behind an older one that does not (backfill)."""
        site = self.sites[machine]
        request = _Request(mib, machine)
        with self._changed:
            if avoid is not None and self.policy:
                request.avoid = avoid
                request.avoid_mark = (avoid.released, self._use(site, avoid), time.monotonic() + AVOID_S)
            self._queue.append(request)
            site.changed = True
            self._start_poller(site)
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

    def _start_poller(self, site: _Site) -> None:
        if self.policy and not site.polling:
            site.polling = True
            threading.Thread(target=self._poll, args=(site,), daemon=True).start()

    def release(self, grant: Optional[Grant]) -> None:
        if grant is None:
            return
        with self._changed:
            self._give_back(grant)

    def _give_back(self, grant: Grant) -> None:
        site = self.sites[grant.place.machine]
        grant.place.taken -= 1
        self._slots.give(grant.place.executor.label, grant.slot)
        grant.place.released += 1
        if grant in site.running:
            site.running.remove(grant)
        for path in grant.claims:
            site.claims.remove(path)
        grant.claims.clear()
        site.changed = True
        self._changed.notify_all()

    def attach(self, grant: Grant, session: Optional[int]) -> None:
        """Tell the other runners on the machine which processes hold this grant's memory (their session)."""
        if not self.policy or session is None:
            return
        site = self.sites[grant.place.machine]
        for path in grant.claims:
            site.claims.attach(path, session)
        with self._changed:
            grant.session, grant.peak = session, None
            if grant not in site.running:
                site.running.append(grant)
            self._start_poller(site)

    def gpu_mib(self, grant: Optional[Grant]) -> Optional[int]:
        """The peak GPU memory of the grant's last command, as nvidia-smi showed its session's
        processes; None when no reading was taken while it ran (G12)."""
        with self._changed:
            return None if grant is None else grant.peak

    def oom_size(self, grant: Grant) -> int:
        """What a command that ran out of memory asks next: 1.5x its size, at most a whole GPU;
        a whole GPU when it declared none (G5)."""
        poller = self.sites[grant.place.machine].poller
        snapshot = poller.snapshot(max_age=3600) if poller else Snapshot()
        totals = [g.total for i in grant.place.gpus for g in [listed(snapshot, i)] if g and g.total]
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
                    request.grant, granted = self._held(Grant(free[0])), True
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
        machine waits or a command of ours runs there (G12), sooner when a decision needs one; taken
        outside the lock so that grants and releases never wait for nvidia-smi."""
        try:
            while True:
                snapshot = site.poller.snapshot(max_age=0)  # never raises: trouble is a warning in it
                self._watch(site, snapshot)
                with self._changed:
                    site.snapshot, site.changed, site.hurry = snapshot, True, False
                    site.fresh_at = time.monotonic()
                    self._changed.notify_all()
                    deadline = site.fresh_at + site.poller.interval
                    while time.monotonic() < deadline and not site.hurry:  # releases wake this wait too
                        if not site.running and not any(r.grant is None and r.error is None and
                                                        r.machine is site.machine for r in self._queue):
                            return
                        self._changed.wait(deadline - time.monotonic())
        finally:
            with self._changed:  # however it ends, the next request starts a poller again
                site.polling = False
                self._changed.notify_all()

    def _watch(self, site: _Site, snapshot: Snapshot) -> None:
        """Each running command's GPU memory in this reading, summed over its session's processes,
        kept as its peak (G12). Outside the lock: a host's sessions are a round trip."""
        with self._changed:
            running = [(g, g.session) for g in site.running]
        if not running or snapshot.warning and not snapshot.apps:
            return
        try:
            sessions = site.machine.sessions(sorted({a.pid for a in snapshot.apps}))
        except Exception:  # a host lost meanwhile, or an answer of no use: no reading this time
            return
        with self._changed:
            site.ours |= {pid for pid, sid in sessions.items() if sid is not None and sid in {s for _, s in running}}
            for grant, session in running:
                apps = [a for a in snapshot.apps if sessions.get(a.pid) == session]
                if grant.session == session and all(a.used is not None for a in apps):  # [N/A]: no reading
                    grant.peak = max(grant.peak or 0, sum(a.used for a in apps))

    def _serve_site(self, site: _Site, pending: List[_Request]) -> bool:
        """Serve one machine's requests under that machine's lock; a host lost meanwhile fails them."""
        snapshot = site.snapshot
        if snapshot.warning and (site.machine, snapshot.trouble) not in self._warned:
            self._warned.add((site.machine, snapshot.trouble))  # one warning per kind of trouble
            where = "" if site.machine.name == "localhost" else f"host {site.machine.name}: "
            self.say(f"warning: {where}{snapshot.warning}")
        if not snapshot.warning and time.monotonic() - site.fresh_at > FRESH:
            # Another user may have filled a GPU since: decide on a new reading (a failed one tells
            # nothing new, so it is not waited for).
            site.hurry, site.changed = True, False
            self._start_poller(site)
            self._changed.notify_all()
            return False
        granted = False
        try:
            with site.claims.locked():
                claims = site.claims.claims()
                pids = sorted({a.pid for a in snapshot.apps if a.used})
                site.ours, sessions = with_exited(site.ours, snapshot, site.machine.sessions(pids) if pids else {},
                                                  claims)
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
        fits = []  # (fit, order, place): the tightest fit keeps big holes; where memory is unknown, spread
        for order, place in enumerate(usable):
            why = self._ran_out_here(site, request, place) or self._why_not(place, request.mib, snapshot, claims,
                                                                            sessions)
            if isinstance(why, str):
                request.reasons.append(why)
            else:
                fits.append((why, order, place))
        if not fits:
            return False
        request.grant = self._grant(site, min(fits)[2], request.mib, claims)
        return True

    def _use(self, site: _Site, place: Place) -> Dict[str, Optional[int]]:
        """Each GPU's memory.used in the machine's latest snapshot (None: unknown)."""
        snapshot = site.snapshot or Snapshot()
        return {i: g.used if g else None for i in place.gpus for g in [listed(snapshot, i)]}

    def _ran_out_here(self, site: _Site, request: _Request, place: Place) -> Optional[str]:
        """G10: the place where the task just ran out of memory is taken again only once one of our
        tasks there ended, nvidia-smi shows less memory used on one of its GPUs, or, where nothing
        changes, on a reading AVOID_S later: never at once."""
        if place is not request.avoid:
            return None
        released, used, until = request.avoid_mark
        now = self._use(site, place)
        if place.released > released or site.fresh_at > until or any(
                now[i] is not None and before is not None and now[i] < before for i, before in used.items()):
            request.avoid = None
            return None
        return f"{' and '.join('GPU ' + place.gpu(i) for i in place.gpus)} ran out of memory for it, unchanged since"

    def _check_size(self, mib: int, places: List[Place], snapshot: Snapshot) -> None:
        totals = [min(listed(snapshot, g).total or 0 for g in p.gpus) for p in places
                  if p.gpus and all(listed(snapshot, g) for g in p.gpus)]
        if totals and all(totals) and mib > max(totals):
            raise NoPlace(f"it needs {gib(mib)}, more than any GPU has ({gib(max(totals))})")

    def _why_not(self, place: Place, mib: int, snapshot: Snapshot, claims: List[Dict[str, Any]],
                 sessions: Dict[int, Optional[int]]) -> Union[str, Fit]:
        """Why the place cannot take `mib` more now, for the console; else how it would fit. A GPU
        busy with other people's memory is left out of the run when the policy does not wait (G2)."""
        why = room(self.policy, place, mib, snapshot, claims, sessions)
        if not isinstance(why, Busy):
            return why
        name, others = why
        if not self.policy.wait:
            self.skipped[name] = f"GPU {name} is busy ({gib(others)} used by other processes)"
            self.say(f"SKIP    {self.skipped[name]}: left out of this run (gpu.wait is false)")
        return f"GPU {name} busy ({gib(others)} used by other processes)"

    def _grant(self, site: _Site, place: Place, mib: int, claims: List[Dict[str, Any]]) -> Grant:
        """Claim the place's GPUs (seen by this round's later requests too); all of them or none."""
        grant = Grant(place, mib)
        try:
            for index in place.gpus:
                claim = {"uuid": claim_key(listed(site.snapshot, index), index), "mib": mib, "sid": None}
                grant.claims.append(site.claims.add(claim))
                claims.append(claim)
        except HostLost:
            for path in grant.claims:
                site.claims.remove(path)
            raise
        return self._held(grant)

    def _held(self, grant: Grant) -> Grant:
        """A grant made: its place has one task more, in the lowest slot free there (T11)."""
        grant.place.taken += 1
        grant.slot = self._slots.take(grant.place.executor.label, grant.place.remote)
        return grant

