"""The host protocol on the runner's side: JSON lines over one SSH channel to the agent (SPEC H8).

Requests run concurrently (each has an id; the agent serves slow ones in threads of their own) and each has
its own deadline: a request that misses it fails alone. Whether the host is still there is the
heartbeat's call: a ping every HEARTBEAT seconds, and SILENCE seconds without a word from the agent
(a SIGSTOPped agent, a dead link without FIN) mean the host is lost. A slow transfer on another
channel keeps the agent answering pings, so it is never taken for silence.

Nothing from a host is trusted: a line is at most MAX_LINE bytes (the reader never holds more),
and a longer one, a line that is not a protocol message, or an exit report of the wrong shape make
the host faulty: `fault` says why, and the channel is lost (its commands go to other workers).
Anything else that goes wrong in the reader or the heartbeat is one line on stderr, never a traceback.
"""

from __future__ import annotations

import itertools
import json
import socket
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Union

from ..base import HostLost
from .login import HostError

HEARTBEAT = 3.0  # seconds between pings
SILENCE = 20.0  # seconds without any message from the agent: the host is lost (H8: within 30 s)
DEADLINE = 30.0  # default seconds a request may take
DEADLINES = {"pack": 600.0, "unpack": 600.0, "list": 120.0, "stat": 120.0, "run": 60.0}
MAX_LINE = 16 << 20  # bytes in one message from the agent: a `list` of some 200 000 files fits
TOO_LONG = f"the agent sent a line longer than {MAX_LINE >> 20} MiB"


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class RequestFailed(HostError):
    """The agent answered with an error, or not within the request's deadline; the host is fine."""


class Faulty(Exception):
    """The agent broke the protocol (a line too long, not a message): the host cannot be trusted."""


def parse(line: Union[bytes, bytearray]) -> Dict[str, Any]:
    """One message from the agent, or Faulty saying what is wrong with it."""
    if len(line) > MAX_LINE:
        raise Faulty(TOO_LONG)
    try:
        message = json.loads(line)
    except ValueError:
        raise Faulty(f"the agent sent a line that is not JSON: {line[:60]!r}") from None
    if not isinstance(message, dict):
        raise Faulty(f"the agent sent a message that is not an object: {line[:60]!r}")
    if type(message.get("id")) is not int or type(message.get("exit", 0)) not in (int, type(None)):
        raise Faulty(f"the agent sent a message without a request id or with a bad exit status: {line[:60]!r}")
    return message


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
        self.fault: Optional[str] = None  # why the host is faulty (broke the protocol), once it is
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
        buffer = bytearray()  # never more than MAX_LINE bytes and one read
        try:
            while not self.closed.is_set():
                try:
                    data = self.channel.recv(1 << 16)
                except socket.timeout:
                    continue
                if not data:
                    break
                self.last_heard = time.monotonic()
                end = data.find(b"\n")
                if end >= 0:
                    end += len(buffer)
                buffer += data
                while end >= 0:  # one line copied out at a time
                    line = buffer[:end]
                    del buffer[:end + 1]
                    self._dispatch(parse(line))
                    end = buffer.find(b"\n")
                if len(buffer) > MAX_LINE:
                    raise Faulty(TOO_LONG)
        except (OSError, EOFError):
            pass  # the channel broke: the host is lost, and reconnected
        except Faulty as error:
            self.fault = str(error)
        except Exception as error:  # anything else from paramiko or a callback: one line, never a traceback
            _warn(f"host {self.name}: reading from its agent failed: {type(error).__name__}: {error}")
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
            except Exception as error:  # a surprise from paramiko: one line, and the host is lost
                _warn(f"host {self.name}: heartbeat failed: {type(error).__name__}: {error}")
                self.lose()
                return

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
            raise HostLost(f"{self.name} (faulty: {self.fault})" if self.fault else self.name)
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
