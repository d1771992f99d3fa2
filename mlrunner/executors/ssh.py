"""Remote workers over SSH (SPEC H1-H7): one connection and one agent process per host.

Every worker of a host shares its paramiko Transport: commands go to the host's agent (see
`agent.py`) over one channel, output comes back over an SFTP channel of the same connection.
paramiko is imported here only, and this module only when hosts are used (H7).
"""

from __future__ import annotations

import getpass
import itertools
import json
import os
import pkgutil
import shlex
import socket
import threading
import time
from typing import Any, Callable, Dict, List, Optional

try:
    import paramiko
except ImportError:  # pragma: no cover - exercised by the H7 test in a bare interpreter
    paramiko = None

from ..hosts import HostSpec, default_workdir
from ..sync import pull
from .base import Executor, HostLost, Process

REQUEST_TIMEOUT = 30.0
BACKOFF = (1, 2, 4, 8, 15, 30)


class HostError(Exception):
    """A host that cannot be used, with a message that says what to do."""


def require_paramiko() -> None:
    if paramiko is None:
        raise HostError("remote hosts need paramiko: `pip install paramiko`, or use the single-file "
                        "`mlrunner-ssh-<platform>.pyz` built with `python3 build_zipapp.py --with-ssh`")


class _AcceptNew(paramiko.MissingHostKeyPolicy if paramiko else object):
    """--accept-new-hosts: trust and record a key never seen; a changed key still fails (H3)."""

    def __init__(self, known_hosts: str):
        self.known_hosts = known_hosts

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        os.makedirs(os.path.dirname(self.known_hosts), mode=0o700, exist_ok=True)
        with open(self.known_hosts, "a") as stream:
            stream.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


class _Refuse(paramiko.MissingHostKeyPolicy if paramiko else object):
    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        host, _, port = hostname.strip("[").partition("]:")
        scan = f"ssh-keyscan -p {port} {host}" if port else f"ssh-keyscan {hostname}"
        raise HostError(f"unknown host key for {hostname} ({key.get_name()} {key.get_fingerprint().hex()}); "
                        f"check it, then trust it with `{scan} >> ~/.ssh/known_hosts`, or run with --accept-new-hosts")


class Connection:
    """One host: its SSH connection, its agent channel, and the commands running through it."""

    def __init__(self, spec: HostSpec, accept_new: bool, grace: float):
        require_paramiko()
        self.spec = spec
        self.accept_new = accept_new
        self.grace = grace
        self.up = False
        self.given_up = False
        self.workdir = ""
        self._client: Any = None
        self._sftp: Any = None
        self._stdin: Any = None
        self._ids = itertools.count(1)
        self._write_lock = threading.Lock()
        self._sftp_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._replies: Dict[int, List[Any]] = {}  # id -> [event, reply]
        self._processes: Dict[int, "RemoteProcess"] = {}
        self._failures = 0
        self._next_try = 0.0

    # -- connecting -----------------------------------------------------------------------------
    def _settings(self) -> Dict[str, Any]:
        config = paramiko.SSHConfig()
        path = os.path.expanduser("~/.ssh/config")
        if os.path.exists(path):
            config = paramiko.SSHConfig.from_path(path)
        found = config.lookup(self.spec.name)
        return {
            "hostname": found.get("hostname", self.spec.name),
            "port": self.spec.port or int(found.get("port", 22)),
            "username": self.spec.user or found.get("user") or getpass.getuser(),
            "key_filename": [os.path.expanduser(k) for k in found.get("identityfile", [])] or None,
            "known_hosts": os.path.expanduser(found.get("userknownhostsfile", "~/.ssh/known_hosts").split()[0]),
        }

    def connect(self) -> None:
        """Log in, start the agent, and find the working directory; HostError says why not."""
        settings = self._settings()
        known_hosts = settings.pop("known_hosts")
        client = paramiko.SSHClient()
        if os.path.exists(known_hosts):
            client.load_host_keys(known_hosts)
        client.set_missing_host_key_policy(_AcceptNew(known_hosts) if self.accept_new else _Refuse())
        where = f"{settings['username']}@{settings['hostname']}:{settings['port']}"
        try:
            sock = socket.create_connection((settings["hostname"], settings["port"]), timeout=10)
            # Requests are small JSON lines: without TCP_NODELAY each waits ~40 ms for a delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.connect(**settings, sock=sock, allow_agent=True, look_for_keys=True, timeout=10,
                           banner_timeout=10, auth_timeout=10)
        except HostError:
            raise
        except paramiko.BadHostKeyException as error:
            raise HostError(f"host key for {error.hostname} has CHANGED; refusing it. If the change is expected, "
                            f"remove the old key (`ssh-keygen -R '{error.hostname}'`) and trust the new one") from None
        except paramiko.AuthenticationException:
            raise HostError(f"cannot log in to {where}: no key was accepted "
                            "(ssh-agent, ~/.ssh/id_*, IdentityFile in ~/.ssh/config)") from None
        except (OSError, paramiko.SSHException) as error:
            raise HostError(f"cannot reach {where}: {error}") from None
        transport = client.get_transport()
        transport.set_keepalive(5)
        channel = transport.open_session()
        code = pkgutil.get_data("mlrunner.executors", "agent.py").decode()
        # The user's shell starts the agent once, as for `ssh host command` (bash reads ~/.bashrc
        # then), so the agent and its commands get PATH, conda and the rest of that environment.
        channel.exec_command(f"exec python3 -u -c {shlex.quote(code)} {self.grace:g}")
        self._stdin = channel.makefile("wb")
        stdout = channel.makefile("r")
        channel.settimeout(REQUEST_TIMEOUT)
        try:
            hello = json.loads(stdout.readline() or "{}")
        except (socket.timeout, ValueError):
            hello = {}
        if "ready" not in hello:
            error = channel.makefile_stderr("r").read(2000).decode(errors="replace").strip()
            client.close()
            raise HostError(f"cannot start the mlrunner agent on {where} (it needs bash and python3 >= 3.6 "
                            f"there): {error or 'no answer'}")
        channel.settimeout(None)
        self._client = client
        self._sftp = client.open_sftp()
        self.up = True
        threading.Thread(target=self._read, args=(stdout,), daemon=True).start()
        workdir = self.spec.workdir or default_workdir(os.getcwd(), os.path.expanduser("~"))
        self.workdir = self.request("mkdir", path=workdir)["path"]

    def ready(self, finished: Callable[[], bool]) -> bool:
        """Block until the host is up (reconnecting with backoff); False once the run can end."""
        while not self.up:
            if self.given_up or finished():
                return False
            with self._state_lock:
                if not self.up and time.monotonic() >= self._next_try:
                    try:
                        self.connect()
                        self._failures = 0
                        print(f"host {self.spec.name}: connected again", flush=True)
                    except HostError as error:
                        self._failures += 1
                        if self._failures > len(BACKOFF):
                            self.given_up = True
                            print(f"host {self.spec.name}: giving up: {error}", flush=True)
                        else:
                            self._next_try = time.monotonic() + BACKOFF[self._failures - 1]
            time.sleep(0.2)
        return True

    # -- talking to the agent -------------------------------------------------------------------
    def _read(self, stdout: Any) -> None:
        try:
            for line in stdout:
                message = json.loads(line)
                if "exit" in message:
                    process = self._processes.pop(message["id"], None)
                    if process:
                        process.finish(message["exit"])
                    continue
                waiter = self._replies.get(message.get("id"))
                if waiter:
                    waiter[1] = message
                    waiter[0].set()
        except (OSError, ValueError, EOFError):
            pass
        self._lost()

    def _lost(self) -> None:
        with self._state_lock:
            if not self.up:
                return
            self.up = False
        print(f"host {self.spec.name}: connection lost", flush=True)
        for process in list(self._processes.values()):
            process.finish(None)
        self._processes.clear()
        for waiter in list(self._replies.values()):
            waiter[0].set()
        try:
            self._client.close()
        except Exception:  # closing a broken connection may fail in many ways; it is gone either way
            pass

    def request(self, op: str, **fields: Any) -> Dict[str, Any]:
        if not self.up:
            raise HostLost(self.spec.name)
        ident = fields.setdefault("id", next(self._ids))
        waiter: List[Any] = [threading.Event(), None]
        self._replies[ident] = waiter
        try:
            with self._write_lock:
                self._stdin.write((json.dumps(dict(fields, op=op)) + "\n").encode())
                self._stdin.flush()
            if not waiter[0].wait(REQUEST_TIMEOUT) or waiter[1] is None:
                self._lost()
                raise HostLost(self.spec.name)
        except (OSError, EOFError):
            self._lost()
            raise HostLost(self.spec.name) from None
        finally:
            self._replies.pop(ident, None)
        if "error" in waiter[1]:
            raise HostError(f"host {self.spec.name}: {waiter[1]['error']}")
        return waiter[1]

    def run(self, argv: List[str]) -> tuple:
        reply = self.request("run", argv=argv)
        return reply["code"], reply["stdout"], reply["stderr"]

    def start(self, line: str, resource: str, debug: bool) -> "RemoteProcess":
        process = RemoteProcess(self, next(self._ids))
        self._processes[process.ident] = process
        try:
            self.request("start", id=process.ident, line=line, cwd=self.workdir, debug=debug,
                         env={"CUDA_VISIBLE_DEVICES": resource})
        except HostLost:
            process.finish(None)
        return process

    def pull(self, directory: str) -> None:
        with self._sftp_lock:
            pull(self.request, self._sftp, f"{self.workdir}/{directory}", directory, self.spec.exclude)

    def close(self) -> None:
        with self._state_lock:
            self.up = False
        if self._client is not None:
            self._client.close()


class RemoteProcess(Process):
    def __init__(self, connection: Connection, ident: int):
        self.connection = connection
        self.ident = ident
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
            raise HostLost(self.connection.spec.name)
        return self.code

    def signal(self, number: int) -> None:
        try:
            self.connection.request("signal", target=self.ident, signal=int(number))
        except (HostLost, HostError):
            pass

    def group_alive(self) -> bool:
        try:
            return bool(self.connection.request("alive", target=self.ident)["alive"])
        except (HostLost, HostError):
            return False


class SshExecutor(Executor):
    def __init__(self, connection: Connection, resource: str):
        self.connection = connection
        self.resource = resource
        self.host = connection.spec.name
        self.label = f"{self.host}:{resource or 'cpu'}"

    def prepare(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.connection.request("mkdir", path=f"{self.connection.workdir}/{directory}")

    def start(self, line: str, debug: bool = False) -> Process:
        return self.connection.start(line, self.resource, debug)

    def collect(self, directory: str) -> None:
        self.connection.pull(directory)

    def ready(self, finished: Callable[[], bool]) -> bool:
        return self.connection.ready(finished)

    def close(self) -> None:
        self.connection.close()


def connect_hosts(specs: List[HostSpec], accept_new: bool, grace: float) -> List[Executor]:
    """Connect to every host (in parallel); a host that fails is reported and left out (H6)."""
    from ..gpus import discover
    executors: List[Executor] = []
    lock = threading.Lock()

    def one(spec: HostSpec) -> None:
        try:
            connection = Connection(spec, accept_new, grace)
            connection.connect()
            resources = spec.resources
            if resources is None:
                resources, warning = discover(connection.run)
                if warning:
                    print(f"warning: host {spec.name}: {warning}", flush=True)
        except (HostError, HostLost) as error:
            print(f"warning: host {spec.name} left out: {error}", flush=True)
            return
        with lock:
            executors.extend(SshExecutor(connection, r) for r in resources)

    threads = [threading.Thread(target=one, args=(spec,)) for spec in specs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    order = {spec.name: i for i, spec in enumerate(specs)}
    executors.sort(key=lambda e: order[e.host])  # a stable order, whatever host answered first
    return executors
