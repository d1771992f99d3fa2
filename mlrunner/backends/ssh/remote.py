"""What runs through a host's agent: its commands (`RemoteProcess`) and its GPU claims (`RemoteClaims`, G4).

Both talk to the agent by request only; a lost host ends a command's wait with HostLost (H6)
and makes a claim's release a no-op, as the agent's claims end with it.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Pattern, Protocol, Tuple

from ..base import HostLost, Process
from .login import HostError, warn
from .rpc import Rpc


class AgentLink(Protocol):
    """What the claims need of a host (`host.Host` is one): its name and its agent's requests."""

    name: str

    def request(self, op: str, **fields: Any) -> Dict[str, Any]: ...

    def _gpu_request(self, op: str, **fields: Any) -> Dict[str, Any]: ...


class RemoteClaims:
    """The host's claim directory, held by its agent (G4): the claims live as long as the agent does."""

    def __init__(self, host: AgentLink):
        self.host = host
        self._claims: List[Dict[str, Any]] = []

    @contextmanager
    def locked(self) -> Iterator[None]:
        reply = self.host._gpu_request("gpu_lock")
        self._claims = reply["claims"]
        for warning in reply.get("warnings", ()):  # the host's claim directory, once each (claims.py)
            warn(f"host {self.host.name}: {warning}")
        try:
            yield
        finally:
            try:
                self.host.request("gpu_unlock")
            except (HostLost, HostError):
                pass  # a lost agent's lock went with it

    def claims(self) -> List[Dict[str, Any]]:
        return self._claims  # read under the host's lock, as it was taken

    def add(self, claim: Dict[str, Any]) -> str:
        return self.host._gpu_request("gpu_claim", claim=claim)["path"]

    def attach(self, path: str, sid: int) -> None:
        try:
            self.host.request("gpu_attach", path=path, sid=sid)
        except (HostLost, HostError):
            pass  # its command is lost with the host, or runs unattached: counted as others' memory

    def remove(self, path: str) -> None:
        try:
            self.host.request("gpu_unclaim", path=path)
        except (HostLost, HostError):
            pass  # a lost agent's claims went with it


class RemoteProcess(Process):
    """A command started by one agent; signals go to that agent only, by the id it was started with."""

    def __init__(self, host: str, rpc: Rpc, ident: int, workdir: str = ""):
        self.host = host
        self.rpc = rpc
        self.ident = ident
        self.workdir = workdir
        self._pairs: List[Tuple[float, float]] = []  # (step, value) the agent read from the log (A2)
        self._pairs_lock = threading.Lock()
        self.pgid: Optional[int] = None  # its process group (and session) on the host, once started
        self.code: Optional[int] = None
        self.lost = False
        self._ended = threading.Event()

    def finish(self, code: Optional[int]) -> None:
        self.code, self.lost = code, code is None
        self._ended.set()

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        if not self._ended.wait(timeout):
            return None
        if self.lost:
            raise HostLost(self.host)
        return self.code

    def signal(self, number: int) -> None:
        try:
            self.rpc.request("signal", target=self.ident, signal=int(number))
        except (HostLost, HostError):
            pass

    def group_alive(self) -> bool:
        try:
            return bool(self.rpc.request("alive", target=self.ident).get("alive"))
        except (HostLost, HostError):
            return False

    def follow_log(self, log: str, step_re: Pattern[str], value_re: Pattern[str]) -> "RemoteProcess":
        """The agent reads the log on the host and sends its new values; this object gives them out."""
        try:
            reply = self.rpc.request("follow", target=self.ident, log=log, cwd=self.workdir,
                                     step=step_re.pattern, value=value_re.pattern)
            self.take(reply.get("pairs") or [])
        except (HostLost, HostError):
            pass  # the host is gone: the command is lost, its task goes elsewhere
        return self

    def take(self, pairs: List[Any]) -> None:
        with self._pairs_lock:
            self._pairs.extend((step, value) for step, value in pairs)

    def poll(self, final: bool = False) -> List[Tuple[float, float]]:
        """The values received since the last poll (all of them by the exit: the agent sends them first)."""
        with self._pairs_lock:
            pairs, self._pairs = self._pairs, []
        return pairs
