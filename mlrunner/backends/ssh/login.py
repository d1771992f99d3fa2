"""Logging in to a host: ~/.ssh/config settings, host keys (H2, H3), and connects that leak nothing (H12).

paramiko's own complaints (its log, its threads' errors) are one stderr line each, with the host.

paramiko is imported here only, and this package only when hosts are used (H7).
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import sys
import threading
from typing import Any, Dict, Optional

try:
    import paramiko
except ImportError:  # pragma: no cover - exercised by the H7 test in a bare interpreter
    paramiko = None

from ...plan.hosts import HostSpec

CONNECT_TIMEOUT = 10.0


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


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


def settings(spec: HostSpec) -> Dict[str, Any]:
    """Where and as whom to log in: the spec, then ~/.ssh/config, then the defaults ssh uses."""
    config = paramiko.SSHConfig()
    path = os.path.expanduser("~/.ssh/config")
    if os.path.exists(path):
        config = paramiko.SSHConfig.from_path(path)
    found = config.lookup(spec.name)
    return {
        "hostname": found.get("hostname", spec.name),
        "port": spec.port or int(found.get("port", 22)),
        "username": spec.user or found.get("user") or getpass.getuser(),
        "key_filename": [os.path.expanduser(k) for k in found.get("identityfile", [])] or None,
        "known_hosts": os.path.expanduser(found.get("userknownhostsfile", "~/.ssh/known_hosts").split()[0]),
    }


def unresolvable(spec: HostSpec) -> Optional[str]:
    """Why the host's name (after ~/.ssh/config) does not resolve, or None when it does (H12)."""
    hostname = settings(spec)["hostname"]
    try:
        socket.getaddrinfo(hostname, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        return f"host '{spec.name}' does not resolve ({hostname}: {error})"
    return None


def open_client(spec: HostSpec, accept_new: bool) -> Any:
    """A logged-in paramiko SSHClient; on any failure its socket and transport thread are closed."""
    found = settings(spec)
    known_hosts = found.pop("known_hosts")
    where = f"{found['username']}@{found['hostname']}:{found['port']}"
    quiet_paramiko()
    client = paramiko.SSHClient()
    sock: Optional[socket.socket] = None
    try:
        if os.path.exists(known_hosts):
            client.load_host_keys(known_hosts)
        client.set_missing_host_key_policy(_AcceptNew(known_hosts) if accept_new else _Refuse())
        sock = socket.create_connection((found["hostname"], found["port"]), timeout=CONNECT_TIMEOUT)
        # Requests are small JSON lines: without TCP_NODELAY each waits ~40 ms for a delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.connect(**found, sock=sock, allow_agent=True, look_for_keys=True, timeout=CONNECT_TIMEOUT,
                       banner_timeout=CONNECT_TIMEOUT, auth_timeout=CONNECT_TIMEOUT)
        client.get_transport().set_log_channel(LOG_CHANNEL + spec.name)  # its channels and SFTP follow
        return client
    except BaseException as error:
        client.close()  # stops the transport thread, if it started
        if sock is not None:
            sock.close()
        if isinstance(error, HostError):
            raise
        if paramiko and isinstance(error, paramiko.BadHostKeyException):
            raise HostError(f"host key for {error.hostname} has CHANGED; refusing it. If the change is expected, "
                            f"remove the old key (`ssh-keygen -R '{error.hostname}'`) and trust the new one") from None
        if paramiko and isinstance(error, paramiko.AuthenticationException):
            raise HostError(f"cannot log in to {where}: no key was accepted "
                            "(ssh-agent, ~/.ssh/id_*, IdentityFile in ~/.ssh/config)") from None
        if isinstance(error, (OSError, EOFError)) or (paramiko and isinstance(error, paramiko.SSHException)):
            raise HostError(f"cannot reach {where}: {error or type(error).__name__}") from None
        raise


LOG_CHANNEL = "paramiko.host."  # + the host's name: paramiko's loggers of one connection


def _host_of(logger_name: str) -> str:
    """The host a paramiko logger (`paramiko.host.<name>[.sftp]`) speaks for, or '' for another one."""
    if not logger_name.startswith(LOG_CHANNEL):
        return ""
    name = logger_name[len(LOG_CHANNEL):]
    return name[:-len(".sftp")] if name.endswith(".sftp") else name


class _OneLine(logging.Handler):
    """paramiko's errors as one stderr line each, with the host: the tracebacks it logs line by line
    (from 'Traceback' to the empty line that ends them) are left out."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self._in_traceback: Dict[str, bool] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Traceback"):
            self._in_traceback[record.name] = True
        if self._in_traceback.get(record.name) or not message.strip():
            self._in_traceback[record.name] = bool(message.strip())
            return
        host = _host_of(record.name)
        print(f"warning: {f'host {host}: ' if host else ''}ssh: {message}", file=sys.stderr, flush=True)


def _thread_error(args: Any) -> None:
    """A paramiko thread that dies (an SFTP prefetch on a dropped connection): one line, with its host.
    The copy it served fails on its own and is tried again; other threads' errors go where they went."""
    frames, traceback = [], args.exc_traceback
    while traceback is not None:
        frames.append(traceback.tb_frame)
        traceback = traceback.tb_next
    if not any(f"{os.sep}paramiko{os.sep}" in frame.f_code.co_filename for frame in frames):
        _previous_hook(args)
        return
    host = ""
    for frame in frames:
        owner = frame.f_locals.get("self")
        logger = getattr(owner, "logger", None) or getattr(getattr(owner, "sftp", None), "logger", None)
        host = host or _host_of(getattr(logger, "name", ""))
    error = f"{args.exc_type.__name__}: {args.exc_value}" if str(args.exc_value) else args.exc_type.__name__
    print(f"warning: {f'host {host}: ' if host else ''}ssh: a paramiko thread ended: {error}", file=sys.stderr,
          flush=True)


_previous_hook = threading.excepthook


def quiet_paramiko() -> None:
    """Route paramiko's logging and its threads' errors to one line each (once per process)."""
    global _previous_hook
    logger = logging.getLogger("paramiko")
    if not any(isinstance(handler, _OneLine) for handler in logger.handlers):
        logger.addHandler(_OneLine())
        logger.propagate = False
    if threading.excepthook is not _thread_error:
        _previous_hook, threading.excepthook = threading.excepthook, _thread_error
