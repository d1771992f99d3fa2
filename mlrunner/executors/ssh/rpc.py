"""The host protocol on the runner's side: JSON lines over one SSH channel to the agent (SPEC H8).

Requests run concurrently (each has an id; the agent serves slow ones in threads of their own) and each has
its own deadline: a request that misses it fails alone. Whether the host is still there is the
heartbeat's call: a ping every HEARTBEAT seconds, and SILENCE seconds without a word from the agent
(a SIGSTOPped agent, a dead link without FIN) mean the host is lost. A slow transfer on another
channel keeps the agent answering pings, so it is never taken for silence.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from ..base import HostLost
from .login import HostError

HEARTBEAT = 3.0  # seconds between pings
SILENCE = 20.0  # seconds without any message from the agent: the host is lost (H8: within 30 s)
DEADLINE = 30.0  # default seconds a request may take
DEADLINES = {"pack": 600.0, "unpack": 600.0, "list": 120.0, "stat": 120.0, "run": 60.0}


class RequestFailed(HostError):
    """The agent answered with an error, or not within the request's deadline; the host is fine."""


class Rpc:
    """One agent channel: `request()` from any thread; `on_event` gets exit reports, `on_lost` the end."""

    def __init__(self, channel: Any, name: str, on_event: Callable[[Dict[str, Any]], None],
                 on_lost: Callable[["Rpc"], None]):
        self.channel = channel
        self.name = name
        self.on_event = on_event
        self.on_lost = on_lost
        self.closed = threading.Event()
        self.last_heard = time.monotonic()
        self._ids = itertools.count(1)
        self._write_lock = threading.Lock()
        self._replies: Dict[int, List[Any]] = {}  # id -> [event, reply]
        self._replies_lock = threading.Lock()
        self._lose_lock = threading.Lock()
        channel.settimeout(1.0)  # reads and writes wake up to see `closed`

    def start(self) -> None:
        threading.Thread(target=self._read, name=f"rpc-read-{self.name}", daemon=True).start()
        threading.Thread(target=self._heartbeat, name=f"rpc-beat-{self.name}", daemon=True).start()

    def new_id(self) -> int:
        return next(self._ids)

    # -- reading ------------------------------------------------------------------------------------
    def _read(self) -> None:
        buffer = bytearray()
        try:
            while not self.closed.is_set():
                try:
                    data = self.channel.recv(1 << 16)
                except socket.timeout:
                    continue
                if not data:
                    break
                self.last_heard = time.monotonic()
                start = len(buffer)
                buffer += data
                end = buffer.find(b"\n", start)
                if end < 0:
                    continue
                lines = bytes(buffer).split(b"\n")
                buffer = bytearray(lines.pop())
                for line in lines:
                    self._dispatch(json.loads(line))
        except (OSError, EOFError, ValueError):
            pass
        self.lose()

    def _dispatch(self, message: Dict[str, Any]) -> None:
        if "exit" in message or "metric" in message:  # a command's exit, or its log's values (A2)
            self.on_event(message)
            return
        with self._replies_lock:
            waiter = self._replies.get(message.get("id"))
        if waiter:
            waiter[1] = message
            waiter[0].set()

    def _heartbeat(self) -> None:
        while not self.closed.wait(HEARTBEAT):
            if time.monotonic() - self.last_heard > SILENCE:
                self.lose()
                return
            try:
                self._send({"op": "ping", "id": 0}, time.monotonic() + HEARTBEAT)
            except HostLost:
                return
            except RequestFailed:
                continue  # the channel takes nothing now: silence decides, at the next beat

    # -- writing ------------------------------------------------------------------------------------
    def _send(self, message: Dict[str, Any], deadline: float) -> None:
        data = (json.dumps(message) + "\n").encode()
        with self._write_lock:
            while data:
                if self.closed.is_set():
                    raise HostLost(self.name)
                try:
                    sent = self.channel.send(data)
                except socket.timeout:
                    sent = 0
                except (OSError, EOFError):
                    self.lose()
                    raise HostLost(self.name) from None
                if sent == 0 and time.monotonic() > deadline:
                    raise RequestFailed(f"host {self.name}: the agent takes no requests")
                data = data[sent:]

    def request(self, op: str, ident: Optional[int] = None, **fields: Any) -> Dict[str, Any]:
        """Send one request and wait for its reply; HostLost when the host goes, RequestFailed on error."""
        ident = ident or self.new_id()
        seconds = DEADLINES.get(op, DEADLINE)
        deadline = time.monotonic() + seconds
        waiter: List[Any] = [threading.Event(), None]
        with self._replies_lock:
            self._replies[ident] = waiter
        try:
            self._send(dict(fields, op=op, id=ident), deadline)
            while not waiter[0].wait(0.5):
                if self.closed.is_set():
                    break
                if time.monotonic() > deadline:
                    raise RequestFailed(f"host {self.name}: no answer to '{op}' within {seconds:g}s")
        finally:
            with self._replies_lock:
                self._replies.pop(ident, None)
        reply = waiter[1]
        if reply is None:
            raise HostLost(self.name)
        if "error" in reply:
            raise RequestFailed(f"host {self.name}: {op}: {reply['error']}")
        return reply

    # -- ending -------------------------------------------------------------------------------------
    def lose(self) -> None:
        """The channel is gone (or silent): wake every waiter and tell the host, once."""
        with self._lose_lock:
            if self.closed.is_set():
                return
            self.closed.set()
        with self._replies_lock:
            for waiter in self._replies.values():
                waiter[0].set()
        self.on_lost(self)

    def close(self) -> None:
        """Close on purpose: the agent sees its stdin end and ends its commands (H10)."""
        self.closed.set()
        with self._replies_lock:
            for waiter in self._replies.values():
                waiter[0].set()
        try:
            self.channel.close()
        except Exception:  # a broken channel may fail to close in many ways; it is gone either way
            pass
