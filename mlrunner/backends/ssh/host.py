"""A remote host: its connection, its agent, reconnects with backoff, and its workers (SPEC H1-H13).

Every worker of a host shares one SSH connection: commands go to the host's agent (see
`agent.py`) over one channel (`rpc.py`), files travel over an SFTP channel of the same connection.
Each connection has its own `Rpc`; news from an old one (a late "lost") never touches a newer one.
A host is also a `Machine` for the `gpu:` policy (G6): its nvidia-smi, its processes' sessions and
its claim directory are reached through its agent (`claims.py` there).
"""

from __future__ import annotations

import json
import os
import pkgutil
import shlex
import socket
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ...run.gpus import TIMEOUT_S
from ...plan.hosts import HostSpec, default_workdir
from ..sync import Scope, pull
from ..base import Executor, HostLost, Machine, Process
from .login import CONNECT_TIMEOUT, HostError, open_client, require_paramiko, warn
from .remote import RemoteClaims, RemoteProcess
from .rpc import Rpc

BACKOFF = (1, 2, 4, 8, 15, 30)
HELLO_MAX = 1 << 16  # bytes of the agent's first line read at most


def agent_source() -> str:
    """The agent's code for `python3 -c`: `claims.py` first, as the module it imports."""
    claims = pkgutil.get_data("mlrunner.backends", "claims.py").decode()
    logwatch = pkgutil.get_data("mlrunner.run.early_stop", "watch.py").decode()  # early_stop's log reader (A2)
    agent = pkgutil.get_data("mlrunner.backends", "agent.py").decode()
    return (f"import sys, types\nclaims = types.ModuleType('claims')\nexec({claims!r}, claims.__dict__)\n"
            f"sys.modules['claims'] = claims\nlogwatch = types.ModuleType('logwatch')\n"
            f"exec({logwatch!r}, logwatch.__dict__)\nsys.modules['logwatch'] = logwatch\n" + agent)


class Host(Machine):
    """One host: its SSH connection, its agent channel, and the commands running through it."""

    def __init__(self, spec: HostSpec, accept_new: bool, grace: float):
        require_paramiko()
        self.spec = spec
        self.name = spec.name
        self.accept_new = accept_new
        self.grace = grace
        self.up = False
        self.given_up = False
        self.workdir = ""
        self.start_dir = ""  # where commands start: the workdir, or the run's code snapshot there (P2)
        self.agent_pid = 0  # on the host, from the agent's hello
        self._client: Any = None
        self._sftp: Any = None
        self._rpc: Optional[Rpc] = None
        self._lock = threading.Lock()  # the connection: client, rpc, up, processes
        self._sftp_lock = threading.Lock()
        self._reconnecting = threading.Lock()
        self._processes: Dict[int, "RemoteProcess"] = {}
        self._failures = 0
        self._next_try = 0.0

    # -- connecting -----------------------------------------------------------------------------
    def connect(self) -> None:
        """Log in, start the agent, find the working directory, push the code; HostError says why not."""
        client = open_client(self.spec, self.accept_new)
        try:
            rpc = self._start_agent(client)
            workdir = self.spec.workdir or default_workdir(os.getcwd(), os.path.expanduser("~"))
            workdir = rpc.request("mkdir", path=workdir)["path"]
            sftp = client.open_sftp()
            if self.spec.push or self.spec.code:
                from .push import push
                push(rpc.request, sftp, workdir, self.spec)
        except (KeyError, TypeError, AttributeError) as error:  # a reply of the wrong shape: one line
            client.close()
            raise HostError(f"the agent on {self.name} answered out of protocol ({type(error).__name__}: "
                            f"{error})") from None
        except BaseException:
            client.close()
            raise
        with self._lock:
            self._client, self._sftp, self._rpc, self.workdir, self.up = client, sftp, rpc, workdir, True
            self.start_dir = f"{workdir}/{self.spec.start}" if self.spec.start else workdir
        if rpc.closed.is_set():  # lost while connecting, when its news did not concern us yet
            self._on_lost(rpc)

    def _start_agent(self, client: Any) -> Rpc:
        transport = client.get_transport()
        channel = transport.open_session(timeout=CONNECT_TIMEOUT)
        code = agent_source()
        # The user's shell starts the agent once, as for `ssh host command` (bash reads ~/.bashrc
        # then), so the agent and its commands get PATH, conda and the rest of that environment.
        channel.exec_command(f"exec python3 -u -c {shlex.quote(code)} {self.grace:g}")
        channel.settimeout(CONNECT_TIMEOUT * 3)
        hello = b""
        try:
            while not hello.endswith(b"\n") and len(hello) < HELLO_MAX:
                data = channel.recv(4096)
                if not data:
                    break
                hello += data
        except socket.timeout:
            pass
        try:
            self.agent_pid = int(json.loads(hello.decode())["ready"])
        except (ValueError, KeyError, TypeError):
            hello = b""
        if not hello:
            try:
                channel.settimeout(2)
                error = channel.makefile_stderr("r").read(2000).decode(errors="replace").strip()
            except (OSError, socket.timeout):
                error = ""
            raise HostError(f"cannot start the mlrunner agent on {self.spec.name} (it needs bash and python3 "
                            f">= 3.6 there): {error or 'no answer'}")
        rpc = Rpc(channel, self.spec.name, self._on_event, self._on_lost)
        rpc.start()
        return rpc

    def ready(self, finished: Callable[[], bool]) -> bool:
        """Block until the host is up (reconnecting with backoff); False once the run can end."""
        while not self.up:
            if self.given_up or finished():
                return False
            if time.monotonic() >= self._next_try:
                self._reconnect()
            time.sleep(0.2)
        return True

    def _reconnect(self) -> None:
        if not self._reconnecting.acquire(blocking=False):
            return  # another worker of this host is at it
        try:
            if self.up or self.given_up or time.monotonic() < self._next_try:
                return
            self.connect()
            self._failures = 0
            print(f"host {self.spec.name}: connected again", flush=True)
        except (HostError, HostLost) as error:
            self._failures += 1
            if self._failures > len(BACKOFF):
                self.given_up = True
                warn(f"host {self.spec.name}: giving up: {error}")
            else:
                self._next_try = time.monotonic() + BACKOFF[self._failures - 1]
        finally:
            self._reconnecting.release()

    # -- news from the agent --------------------------------------------------------------------
    def _on_event(self, message: Dict[str, Any]) -> None:
        if "metric" in message:  # values an early_stop rule asked for, read on the host (A2)
            with self._lock:
                process = self._processes.get(message["id"])
            if process:
                process.take(message["metric"])
            return
        with self._lock:
            process = self._processes.pop(message["id"], None)
        if process:
            process.finish(message["exit"])

    def _on_lost(self, rpc: Rpc) -> None:
        if rpc.fault and not self.given_up:  # it broke the protocol: never trusted again in this run
            self.given_up = True
            warn(f"host {self.spec.name}: faulty, given up: {rpc.fault}; its commands run elsewhere")
        with self._lock:
            if rpc is not self._rpc:
                return  # an old connection's reader: the current one is not its business
            self.up = False
            self._rpc = None
            processes, self._processes = list(self._processes.values()), {}
            client, self._client = self._client, None
        if not rpc.fault:
            print(f"host {self.spec.name}: connection lost", flush=True)
        for process in processes:
            process.finish(None)
        try:
            client.close()
        except Exception:  # closing a broken connection may fail in many ways; it is gone either way
            pass

    # -- requests -------------------------------------------------------------------------------
    def request(self, op: str, **fields: Any) -> Dict[str, Any]:
        rpc = self._rpc
        if rpc is None or not self.up:
            raise HostLost(self.spec.name)
        return rpc.request(op, **fields)

    def run(self, argv: List[str], **timeout: float) -> Tuple[int, str, str]:
        """A program's (status, stdout, stderr) there; HostError for a reply that lacks them."""
        reply = self.request("run", argv=argv, **timeout)
        code, out, err = reply.get("code"), reply.get("stdout"), reply.get("stderr")
        if type(code) is not int or not isinstance(out, str) or not isinstance(err, str):
            raise HostError(f"host {self.name}: the agent's reply to 'run' has no status and output")
        return code, out, err

    # -- the host as a Machine for the gpu: policy (G2-G6) ---------------------------------------
    def query(self, argv: List[str]) -> Tuple[int, str, str]:
        try:
            return self.run(argv, timeout=TIMEOUT_S)
        except HostLost:
            return 255, "", f"host {self.name} lost"
        except HostError as error:
            return 255, "", str(error)

    def sessions(self, pids: List[int]) -> Dict[int, Optional[int]]:
        found = self._gpu_request("sessions", pids=pids).get("sessions")
        if not isinstance(found, list) or not all(s is None or type(s) is int for s in found):
            return {}  # a malformed answer: none of that memory is taken for ours (G8)
        return dict(zip(pids, found))

    def claim_dir(self) -> "RemoteClaims":
        return RemoteClaims(self)

    def _gpu_request(self, op: str, **fields: Any) -> Dict[str, Any]:
        """A request of the policy's: an agent that fails it is as good as lost for the task (H6)."""
        try:
            return self.request(op, **fields)
        except HostError as error:
            raise HostLost(f"{self.name} ({error})") from None

    def start(self, line: str, resource: str, debug: bool) -> "RemoteProcess":
        with self._lock:
            rpc = self._rpc
            if rpc is None:
                raise HostLost(self.spec.name)
            process = RemoteProcess(self.spec.name, rpc, rpc.new_id(), self.workdir)
            self._processes[process.ident] = process
        try:
            process.pgid = rpc.request("start", ident=process.ident, line=line, cwd=self.start_dir, debug=debug,
                                       env={"CUDA_VISIBLE_DEVICES": resource})["pid"]
        except HostLost:
            process.finish(None)
        except BaseException:
            with self._lock:
                self._processes.pop(process.ident, None)
            raise
        return process

    def pull(self, directory: str, scope: Optional[Scope] = None) -> None:
        """Sync-back of one experiment directory; what the host offered and was refused is reported (H11).
        A broken transfer raises: HostLost when its connection is gone (before the reader sees it)."""
        sftp, client, rpc = self._sftp, self._client, self._rpc
        if sftp is None or client is None or rpc is None or not self.up:
            raise HostLost(self.spec.name)
        try:
            with self._sftp_lock:
                result = pull(rpc.request, sftp, f"{self.workdir}/{directory}", directory, self.spec.exclude,
                              scope or Scope())
        except HostLost:
            raise
        except Exception:
            transport = client.get_transport()
            if transport is None or not transport.is_active():
                rpc.lose()
                raise HostLost(self.spec.name) from None
            with self._sftp_lock:  # the next try gets a new SFTP channel, should this one be broken
                if self._sftp is sftp:
                    self._sftp = client.open_sftp()
                    sftp.close()
            raise
        for path, why in result.refused:
            warn(f"host {self.spec.name}: {directory}: refused '{path}' from the host: {why}")

    def close(self) -> None:
        with self._lock:
            self.up = False
            self.given_up = True
            rpc, client = self._rpc, self._client
            self._rpc = self._client = None
            processes, self._processes = list(self._processes.values()), {}
        for process in processes:  # nobody waits forever on a host closed under it
            process.finish(None)
        if rpc is not None:
            rpc.close()
        if client is not None:
            client.close()


class SshExecutor(Executor):
    def __init__(self, host: Host, resource: str):
        self.connection = host
        self.machine = host
        self.resource = resource
        self.host = host.spec.name
        self.label = f"{self.host}:{resource or 'cpu'}"

    def prepare(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.connection.request("mkdir", path=f"{self.connection.workdir}/{directory}")

    def start(self, line: str, debug: bool = False) -> Process:
        return self.connection.start(line, self.resource, debug)

    def collect(self, directory: str, scope: Optional[Scope] = None) -> None:
        self.connection.pull(directory, scope)

    def close(self) -> None:
        self.connection.close()


def connect_hosts(specs: List[HostSpec], accept_new: bool, grace: float,
                  notes: Optional[List[str]] = None) -> List[Executor]:
    """Connect to every host (in parallel); a host that fails is a warning, left out (H6, H12).

    Each warning also goes to `notes`, for the run's summary.
    """
    from ...run.gpus import discover
    executors: List[Executor] = []
    lock = threading.Lock()

    def one(spec: HostSpec) -> None:
        try:
            host = Host(spec, accept_new, grace)
            host.connect()
            resources = spec.resources
            if resources is None:
                resources, warning = discover(host.run)
                if warning:
                    warn(f"host {spec.name}: {warning}")
        except (HostError, HostLost) as error:
            message = f"host {spec.name} left out: {error}"
            warn(message)
            with lock:
                if notes is not None:
                    notes.append(message)
            return
        with lock:
            executors.extend(SshExecutor(host, r) for r in resources)

    threads = [threading.Thread(target=one, args=(spec,)) for spec in specs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    order = {spec.name: i for i, spec in enumerate(specs)}
    executors.sort(key=lambda e: order[e.host])  # a stable order, whatever host answered first
    return executors
