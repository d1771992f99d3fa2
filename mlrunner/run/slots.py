"""Worker slots' names (SPEC T11): which of the places that run commands at the same time a run used.

A place is one `resource` entry (`executor.label`: `0`, `2,3`, `cpu`, `gpu1:0`, `gpu1:cpu`). Several
commands can run on one place's GPUs at once: the entry is repeated (`resource: [0, 0]`, `['', '']`)
or `gpu:` packs `per_gpu` of them. Each such command holds a numbered slot of its place, the lowest
free one, and is recorded and shown by its slot's name:

    >>> slot_name("0", 0, remote=False), slot_name("0", 1, remote=False), slot_name("cpu", 1, remote=False)
    ('gpu:0', 'gpu:0#1', 'cpu:1')
    >>> slot_name("gpu1:0", 0, remote=True), slot_name("gpu1:cpu", 0, remote=True)
    ('gpu1:0', 'gpu1:cpu:0')

Records written before slots had names say `0`, `cpu` or `gpu1:0`; `parse` reads both shapes.
"""

from __future__ import annotations

import re
import threading
from typing import Dict, Optional, Set, Tuple

CPU = "cpu"
_NUMBERED = re.compile(r"(?P<place>.*)#(?P<index>\d+)")
_CPU_SLOT = re.compile(r"(?P<place>(?:.*:)?cpu):(?P<index>\d+)")


def slot_name(label: str, index: int, remote: bool) -> str:
    """The name of slot `index` of the place an executor labels `label` (see the module's doc)."""
    if label == CPU or label.endswith(":" + CPU):
        return f"{label}:{index}"
    base = label if remote else f"gpu:{label}"
    return f"{base}#{index}" if index else base


def parse(worker: str) -> Tuple[str, Optional[int]]:
    """(place, slot index) of a recorded worker; the index is None where an old record does not say.

    >>> parse("gpu:0#1"), parse("cpu:1"), parse("gpu1:cpu:0"), parse("0"), parse("cpu"), parse("gpu1:0")
    (('gpu:0', 1), ('cpu', 1), ('gpu1:cpu', 0), ('gpu:0', None), ('cpu', None), ('gpu1:0', 0))
    """
    for pattern in (_NUMBERED, _CPU_SLOT):
        match = pattern.fullmatch(worker)
        if match:
            return _place(match.group("place")), int(match.group("index"))
    if worker == CPU or worker.endswith(":" + CPU) or not worker or worker == "?":
        return worker or "?", None
    if worker[0].isdigit():  # an old local GPU entry: `0`, `2,3`
        return f"gpu:{worker}", None
    return worker, 0


def _place(text: str) -> str:
    return f"gpu:{text}" if text[:1].isdigit() else text


def is_local(place: str) -> bool:
    """Does a place (as `parse` gives it) belong to this machine rather than to a host?"""
    return place in (CPU, "?") or place.startswith("gpu:")


def host_of(worker: str) -> str:
    """The host a recorded worker ran on: `localhost`, or the host of `gpu1:0#1` (a host named
    `gpu` or `cpu` cannot be told from this machine)."""
    place, _ = parse(worker)
    return "localhost" if is_local(place) or ":" not in place else place.rsplit(":", 1)[0]


def shown(slot: str) -> str:
    """How console lines name a slot after their `gpu: `: `0`, `0#1`, `cpu:1`, `gpu1:0`."""
    return slot[len("gpu:"):] if slot.startswith("gpu:") else slot


def display(place: str, index: int) -> str:
    """A timeline row's name: the slot's own name, also for rows made from old records."""
    if place == CPU or place.endswith(":" + CPU):
        return f"{place}:{index}"
    return f"{place}#{index}" if index else place


class SlotBook:
    """Which slots of each place are taken now; the lowest free one goes to the next command."""

    def __init__(self) -> None:
        self._taken: Dict[str, Set[int]] = {}
        self._lock = threading.Lock()

    def take(self, label: str, remote: bool) -> str:
        with self._lock:
            taken = self._taken.setdefault(label, set())
            index = next(i for i in range(len(taken) + 1) if i not in taken)
            taken.add(index)
        return slot_name(label, index, remote)

    def give(self, label: str, slot: str) -> None:
        with self._lock:
            self._taken.get(label, set()).discard(parse(slot)[1] or 0)
