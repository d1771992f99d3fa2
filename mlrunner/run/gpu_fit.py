"""How much room a place has for a task, from one reading of nvidia-smi, the claims of every runner on
the machine and the sessions of the listed processes (SPEC G2, G3, G8, G9). Pure: the allocator
(`allocator.py`) decides with it under the machine's lock.
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Set, Tuple, Union

from .gpu_policy import GpuPolicy, gib
from .gpus import GpuMemory, Snapshot

EXITED = -1  # a session in `sessions`: the pid ran one of our commands and is gone, its memory being freed
Fit = Tuple[int, int]  # how a place would take a task: (0, MiB left) where memory is known, else (1, -room)


class Busy(NamedTuple):
    """A GPU used by other processes past `busy_above` (G2)."""

    name: str
    others: int


def room(policy: GpuPolicy, place: Any, mib: int, snapshot: Snapshot, claims: List[Dict[str, Any]],
         sessions: Dict[int, Optional[int]]) -> Union[str, Fit, Busy]:
    """Why the place (an allocator.Place) cannot take `mib` more now, for the console; Busy when
    other people's memory makes a GPU busy (G2); else how it would fit.

    Memory on a GPU that is not our commands' (by their sessions) is someone else's, whether
    or not this machine's /proc shows its pid (G8). Where nvidia-smi cannot say what is used,
    a GPU takes what fits in its total beside our reservations; where it cannot say even the
    total (it failed, or printed [N/A]), a GPU takes one command of ours at a time (G9)."""
    if not place.gpus:  # a CPU worker (`""`): one command at a time
        return "the CPU worker runs one of ours" if place.taken else (0, 0)
    left, spare, unknown = 0, [], False
    for index in place.gpus:
        name = place.gpu(index)
        gpu = listed(snapshot, index)
        if gpu is None and snapshot.gpus:
            return f"GPU {name} is not listed by nvidia-smi"
        mine = [c for c in claims if c["uuid"] in (claim_key(gpu, index), f"index-{index}")]
        if gpu is None or gpu.total is None:
            if mine:
                return f"GPU {name} runs one of ours, and nvidia-smi cannot tell its memory"
            unknown = True
            continue
        if len(mine) >= policy.slots_per_gpu():
            return f"GPU {name} runs {len(mine)} of ours (per_gpu {policy.slots_per_gpu()})"
        apps = [a for a in snapshot.apps if a.uuid == gpu.uuid and a.used]
        held = [sum(a.used for a in apps if c["sid"] is not None and sessions.get(a.pid) == c["sid"]) for c in mine]
        claimed = {c["sid"] for c in mine if c["sid"] is not None}
        exited = sum(a.used for a in apps if sessions.get(a.pid) == EXITED)
        floor = sum(a.used for a in apps if sessions.get(a.pid) not in claimed and sessions.get(a.pid) != EXITED)
        # memory.used and the process list are two nvidia-smi calls: a job of ours that allocated
        # between them is in the list but not in `used`, and subtracting it would hide as much
        # of another user's memory. What the list shows of others is a floor.
        others = floor if gpu.used is None else max(gpu.used - sum(held) - exited, floor)
        unknown = unknown or gpu.used is None
        if others > policy.busy_above:
            return Busy(name, others)
        free = gpu.total - others - sum(max(c["mib"], h) for c, h in zip(mine, held))
        if mib > free:
            return f"GPU {name} has {gib(max(free, 0))} free"
        left += free - mib
        spare.append(free - mib)
    return (1, -min(spare, default=0)) if unknown else (0, left)


def with_exited(ours: Set[int], snapshot: Snapshot, sessions: Dict[int, Optional[int]],
                claims: List[Dict[str, Any]]) -> Tuple[Set[int], Dict[int, Optional[int]]]:
    """The listed pids known to be ours (seen in a claimed session), and the sessions with EXITED
    for those that are gone: their memory is being freed. Any other pid that /proc does not show
    is someone else's (G8)."""
    sids = {c["sid"] for c in claims if c["sid"] is not None}
    listed_pids = {a.pid for a in snapshot.apps}
    ours = {pid for pid in ours if pid in listed_pids}
    ours |= {pid for pid, sid in sessions.items() if sid is not None and sid in sids}
    return ours, {**sessions, **{pid: EXITED for pid in ours if sessions.get(pid) is None}}


def listed(snapshot: Snapshot, gpu: str) -> Optional[GpuMemory]:
    """A GPU of the snapshot by its index, or by its UUID (an inherited CUDA_VISIBLE_DEVICES may name it so)."""
    found = snapshot.gpus.get(gpu)
    if found is None and gpu.startswith(("GPU-", "MIG-")):
        found = next((g for g in snapshot.gpus.values() if g.uuid == gpu), None)
    return found


def claim_key(gpu: Optional[GpuMemory], index: str) -> str:
    """What a claim names its GPU by: the UUID, which every runner reads alike, or the index when
    nvidia-smi cannot tell it."""
    return gpu.uuid if gpu else f"index-{index}"
