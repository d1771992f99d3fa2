"""Real OpenSSH servers on 127.0.0.1 for the tests of remote hosts (SPEC section 4, H1-H7).

Not a test module: a helper, imported as ``import sshd`` (pytest puts ``tests/`` on sys.path, as it
does for ``runlib``). Each :class:`SshServer` is one ``/usr/sbin/sshd -D -e`` process on a free
port of 127.0.0.1, with its own directory::

    <root>/host_ed25519(.pub)  host key            <root>/sshd_config   its configuration
    <root>/authorized_keys     the client key      <root>/sshd.log      sshd's stderr (LogLevel ERROR)
    <root>/bin/nvidia-smi      tests/bin stand-in  <root>/work/         `workdir`: this host's file tree
    <root>/home/               `home`: this host's remote home directory (``set_home=True``, default)
    <root>/ssh_config          Host <alias> -> this server (IdentityFile, known_hosts, BatchMode)
    <root>/known_hosts         `known_hosts_line()`: this server's key, already trusted

All servers log in as the user running the tests (root in CI), so they share one real passwd
home. To keep hosts apart, each server gives its sessions a home of its own (``set_home=True``, the
default): sshd ``SetEnv HOME=<root>/home``, ``internal-sftp -d <root>/home`` (SFTP's "." and relative
paths), and ``<root>/home/.bashrc`` starting with ``cd "$HOME"`` (bash sources ~/.bashrc for
``ssh host command``, so commands start there too; tests may append to that .bashrc, not replace
it). So ``~``, ``$HOME``, SFTP's "." and the starting directory all mean `home`, and a host's default
workdir (H1: relative to the remote home) lands under `home`, never in the real home. `workdir`
(<root>/work) is a separate directory to give mlrunner as a host's explicit ``workdir``.
set_home=False leaves sessions in the real home (and sources the real ~/.bashrc: slower, and a
PATH it prepends comes before the one below).

Commands run through a server get ``PATH=<root>/bin:<dir of sys.executable>:/usr/local/bin:/usr/bin:/bin``
(sshd_config ``SetEnv``), so ``nvidia-smi`` is the stand-in (``FAKE_GPUS``: pass ``gpus=N``, default
2) and ``python3`` is the interpreter running the tests. ``env={...}`` adds more SetEnv variables.

Building fixtures in a test module (module scope: starting a server takes ~0.1 s)::

    import pytest
    import sshd

    @pytest.fixture(scope="module")
    def servers(tmp_path_factory):
        sshd.require_sshd()                  # skip, or fail when CI=true, if sshd is missing
        started = sshd.start_servers(3, tmp_path_factory)   # aliases host1, host2, host3
        yield started
        sshd.stop_servers(started)

    def test_something(servers, tmp_path, monkeypatch):
        home = sshd.make_home(tmp_path, servers)           # ~/.ssh/{config,known_hosts,id_ed25519}
        monkeypatch.setenv("HOME", str(home))              # paramiko reads ~ from $HOME
        ...  # run mlrunner with --hosts host1,host2 and env HOME=home; hosts' files: servers[i].workdir

A test that kills or restarts a server should start its own (function scope) or restart it at the
end, so that the others keep a working server. ``kill()`` is a host that died: the listener, every
connection and every process started through the server end, and new connections are refused;
``restart()`` brings it back on the same port with the same host key. ``drop_connections()`` ends
only the open connections (the listener stays, and commands whose output is redirected go on).
``new_host_key()`` makes the server present a changed key (known_hosts then no longer matches).

The real OpenSSH client ignores $HOME (it reads the passwd home), so use ``ssh -F server.ssh_config
<alias>`` or ``ssh -F <home>/.ssh/config`` with it; paramiko honours $HOME.
"""

from __future__ import annotations

import atexit
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

import pytest

TESTS = Path(__file__).resolve().parent
FAKE_NVIDIA_SMI = TESTS / "bin" / "nvidia-smi"
SSHD = "/usr/sbin/sshd"
LOCALHOST = "127.0.0.1"
MARKER = "MLRUNNER_TEST_SSHD"  # set in every session's environment: finds the processes to kill

INSTALL_HINT = ("sshd (/usr/sbin/sshd) is missing: install it with `apt-get install openssh-server` "
                "(scripts/test.sh does so when run as root)")

_live: "weakref.WeakSet[SshServer]" = weakref.WeakSet()


def sshd_path() -> Optional[str]:
    """The sshd binary: /usr/sbin/sshd, else one on PATH; None when there is none."""
    if os.access(SSHD, os.X_OK):
        return SSHD
    found = shutil.which("sshd")
    return os.path.abspath(found) if found else None


def sshd_available() -> bool:
    """True when sshd and ssh-keygen are installed (the OpenSSH client is not needed by this module)."""
    return sshd_path() is not None and shutil.which("ssh-keygen") is not None


def require_sshd() -> None:
    """Skip the test when sshd is missing; fail it instead when CI=true, where it must be there."""
    if sshd_available():
        return
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"CI=true but {INSTALL_HINT}", pytrace=False)
    pytest.skip(INSTALL_HINT)


def require_paramiko() -> None:
    """Skip without paramiko; fail when CI=true (the `test` extra installs it)."""
    try:
        import paramiko  # noqa: F401
    except ImportError:
        message = "paramiko is missing: pip install -e '.[test]' (or pip install paramiko)"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"CI=true but {message}", pytrace=False)
        pytest.skip(message)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOCALHOST, 0))
        return probe.getsockname()[1]


def keygen(path: Path, comment: str = "mlrunner-test") -> Path:
    """Write an ed25519 keypair without passphrase at `path` and `path`.pub; return `path`."""
    for stale in (path, path.with_name(path.name + ".pub")):
        if stale.exists():
            stale.unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    path.chmod(0o600)
    return path


def _root_password_locked() -> bool:
    """As root, sshd with UsePAM no refuses a user whose shadow password starts with '!' (locked)."""
    if os.geteuid() != 0:
        return False  # a non-root sshd cannot read /etc/shadow, so it never sees the lock
    user = getpass.getuser()
    try:
        with open("/etc/shadow") as shadow:
            for line in shadow:
                name, _, rest = line.partition(":")
                if name == user:
                    return rest.startswith("!")
    except OSError:
        pass
    return False


def _ppids() -> Dict[int, int]:
    """pid -> parent pid for every process (Linux /proc)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stream:
                    table[int(entry)] = int(stream.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return table


def _descendants(pid: int) -> List[int]:
    children: Dict[int, List[int]] = {}
    for child, parent in _ppids().items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _marked(value: str) -> List[int]:
    """Processes whose environment holds MARKER=value (those started through one server)."""
    needle = f"{MARKER}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as stream:
                    if needle in stream.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                pass
    return found


def _signal_all(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except OSError:
            pass


class SshServer:
    """One sshd on 127.0.0.1 reachable as `alias`; see the module docstring."""

    def __init__(self, root: Union[str, Path], alias: str = "host1", *, gpus: Optional[int] = None,
                 env: Optional[Dict[str, str]] = None, set_home: bool = True,
                 client_key: Optional[Path] = None, port: Optional[int] = None):
        if not sshd_available():
            raise RuntimeError(INSTALL_HINT)
        self.alias = alias
        self.host = LOCALHOST
        self.user = getpass.getuser()
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host_key = self.root / "host_ed25519"
        self.sshd_config = self.root / "sshd_config"
        self.authorized_keys = self.root / "authorized_keys"
        self.pid_file = self.root / "sshd.pid"
        self.log = self.root / "sshd.log"
        self.ssh_config = self.root / "ssh_config"
        self.known_hosts = self.root / "known_hosts"
        self.bin_dir = self.root / "bin"
        self.workdir = self.root / "work"
        self.home = self.root / "home"
        self.set_home = set_home
        for directory in (self.bin_dir, self.workdir, self.home):
            directory.mkdir(exist_ok=True)
        shutil.copy2(FAKE_NVIDIA_SMI, self.bin_dir / "nvidia-smi")
        (self.bin_dir / "nvidia-smi").chmod(0o755)
        self.path = ":".join(dict.fromkeys(
            [str(self.bin_dir), os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin"]))
        self.env: Dict[str, str] = {"PATH": self.path, MARKER: str(self.root)}
        if gpus is not None:
            self.env["FAKE_GPUS"] = str(gpus)
        if set_home:
            self.env["HOME"] = str(self.home)
            (self.home / ".bashrc").write_text(
                '# sshd.py: sessions of this test server start in its own home ($HOME)\ncd "$HOME" || exit 1\n')
        self.env.update(env or {})
        keygen(self.host_key, f"host-key-{alias}")
        self.client_key = Path(client_key) if client_key else keygen(self.root / "id_ed25519", "client")
        self.authorized_keys.write_text(self.client_key.with_name(self.client_key.name + ".pub").read_text())
        self.authorized_keys.chmod(0o600)
        self.process: Optional[subprocess.Popen] = None
        self._write_files()

    # -- files -------------------------------------------------------------------------------

    def _write_files(self) -> None:
        setenv = " ".join(f'"{name}={value}"' for name, value in self.env.items())
        use_pam = "yes" if _root_password_locked() else "no"
        self.sshd_config.write_text("\n".join([
            f"ListenAddress {self.host}",
            f"Port {self.port}",
            f"HostKey {self.host_key}",
            f"PidFile {self.pid_file}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin yes",
            "StrictModes no",
            f"UsePAM {use_pam}",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "MaxSessions 100",
            "MaxStartups 100",
            "MaxAuthTries 20",
            "LogLevel ERROR",
            f"Subsystem sftp internal-sftp -d {self.home}" if self.set_home else "Subsystem sftp internal-sftp",
            f"SetEnv {setenv}",
            "",
        ]))
        self.ssh_config.write_text(ssh_config_text([self], identity=self.client_key,
                                                   known_hosts=self.known_hosts, batch=True))
        self.known_hosts.write_text(self.known_hosts_line() + "\n")

    def public_host_key(self) -> str:
        """'ssh-ed25519 AAAA...' (no comment)."""
        kind, blob = self.host_key.with_name(self.host_key.name + ".pub").read_text().split()[:2]
        return f"{kind} {blob}"

    def known_hosts_line(self) -> str:
        """'[127.0.0.1]:PORT ssh-ed25519 AAAA...', as ssh and paramiko record a non-22 port."""
        return f"[{self.host}]:{self.port} {self.public_host_key()}"

    def new_host_key(self) -> None:
        """Replace the host key (a 'changed host key'); restarts sshd when it runs. The server's own
        known_hosts and ssh_config follow; fake homes made before do not."""
        running = self.running
        if running:
            self.kill()
        keygen(self.host_key, f"host-key-{self.alias}")
        self._write_files()
        if running:
            self.start()

    # -- process -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.running else None

    def start(self, timeout: float = 10.0) -> "SshServer":
        """Start sshd and wait until its port accepts connections. A first start whose port was
        taken meanwhile moves to another free port; a restart keeps the port (and waits for it)."""
        if self.running:
            return self
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
        deadline = time.monotonic() + timeout
        movable = not getattr(self, "_started_once", False)
        while True:
            error = self._launch(deadline)
            if error is None:
                self._started_once = True
                _live.add(self)
                return self
            taken = "bind" in error.lower() or "address already in use" in error.lower()
            if not taken or time.monotonic() >= deadline:
                raise RuntimeError(f"sshd for {self.alias} on port {self.port} did not start: {error}")
            if movable:
                self.port = free_port()
                self._write_files()
            else:
                time.sleep(0.1)

    def _launch(self, deadline: float) -> Optional[str]:
        """One try: None once sshd listens, else sshd's complaint."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sshd_path(), "-D", "-e", "-f", str(self.sshd_config)],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        while True:
            if self.process.poll() is not None:
                with open(self.log, "rb") as log:
                    log.seek(offset)
                    said = log.read().decode(errors="replace").strip()
                self.process = None
                return said or "sshd exited without a message"
            if self._pid_file_says(self.process.pid):
                return None  # sshd writes its PidFile once its socket listens
            if time.monotonic() >= deadline:
                self.process.kill()
                self.process.wait()
                self.process = None
                return "its port did not accept connections in time"
            time.sleep(0.01)

    def _pid_file_says(self, pid: int) -> bool:
        try:
            return self.pid_file.read_text().strip() == str(pid)
        except OSError:
            return False

    def kill(self, sessions: bool = True) -> None:
        """The host dies: SIGKILL the listening sshd and, with `sessions`, every connection and
        every process started through this server (found by parentage and by the MARKER variable
        sshd sets in their environment). sessions=False kills only the listener: open connections
        go on, new ones are refused."""
        process = self.process
        if process is not None and process.poll() is None:
            if sessions:
                _signal_all([process.pid], signal.SIGSTOP)  # no new connections while collecting
                _signal_all(_descendants(process.pid), signal.SIGKILL)
            process.kill()
            process.wait()
        if sessions:
            self._kill_marked()
        self.process = None

    def _kill_marked(self) -> None:
        """SIGKILL what still carries this server's MARKER; scan again, as a process caught in the
        middle of an exec may show no environment for a moment."""
        quiet = 0
        for _ in range(50):
            found = _marked(str(self.root))
            _signal_all(found, signal.SIGKILL)
            quiet = 0 if found else quiet + 1
            if quiet == 2:
                return
            time.sleep(0.005)

    def drop_connections(self) -> None:
        """SIGKILL the per-connection sshd processes (the connections break); the listener and the
        commands started through them stay (a network blip rather than a dead host)."""
        if not self.running:
            return
        table = _ppids()
        for pid, parent in table.items():
            if parent == self.process.pid:
                _signal_all([pid] + [p for p in _descendants(pid) if _is_sshd(p)], signal.SIGKILL)

    def restart(self, timeout: float = 10.0) -> "SshServer":
        """kill() if running, then start again on the same port with the same host key."""
        self.kill()
        return self.start(timeout)

    def stop(self) -> None:
        self.kill(sessions=True)
        _live.discard(self)

    def __enter__(self) -> "SshServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SshServer({self.alias} {self.user}@{self.host}:{self.port}, running={self.running})"

    # -- clients -----------------------------------------------------------------------------

    def ssh_command(self, *command: str) -> List[str]:
        """argv for the real OpenSSH client: ['ssh', '-F', ssh_config, alias, *command]."""
        return ["ssh", "-F", str(self.ssh_config), self.alias, *command]

    def ssh(self, command: str, timeout: float = 20, **kwargs) -> subprocess.CompletedProcess:
        """Run `command` with the real OpenSSH client; text output captured."""
        return subprocess.run(self.ssh_command(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=timeout, **kwargs)

    def paramiko_client(self, timeout: float = 10):
        """A paramiko SSHClient connected to this server, host key checked (RejectPolicy)."""
        import paramiko
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        # Without TCP_NODELAY every exec on a paramiko connection waits ~40 ms (Nagle + delayed ACK).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            client.connect(self.host, port=self.port, username=self.user, key_filename=str(self.client_key),
                           look_for_keys=False, allow_agent=False, timeout=timeout, sock=sock)
        except BaseException:
            sock.close()
            raise
        return client


def _is_sshd(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as stream:
            return stream.read().strip().startswith("sshd")
    except OSError:
        return False


def ssh_config_text(servers: Sequence[SshServer], identity: Union[str, Path, None] = None,
                    known_hosts: Union[str, Path, None] = None, batch: bool = False) -> str:
    """~/.ssh/config text with one `Host <alias>` block per server (HostName, Port, User, and the
    IdentityFile/UserKnownHostsFile given, else each server's own client key)."""
    blocks = []
    for server in servers:
        lines = [f"Host {server.alias}",
                 f"    HostName {server.host}",
                 f"    Port {server.port}",
                 f"    User {server.user}",
                 f"    IdentityFile {identity or server.client_key}",
                 "    IdentitiesOnly yes"]
        if known_hosts:
            lines += [f"    UserKnownHostsFile {known_hosts}", "    StrictHostKeyChecking yes"]
        if batch:
            lines += ["    BatchMode yes", "    LogLevel ERROR"]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def start_servers(count: int, tmp: Union[Path, str, "pytest.TempPathFactory"], prefix: str = "host",
                  **options) -> List[SshServer]:
    """Start `count` servers, aliases <prefix>1..<prefix>N, sharing one client key. `tmp` is a
    directory or pytest's tmp_path_factory. `options` go to SshServer (gpus=, env=, set_home=)
    and apply to every server."""
    if hasattr(tmp, "mktemp"):
        base = Path(tmp.mktemp("sshd"))
    else:
        base = Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
    client_key = keygen(base / "id_ed25519", "client")
    servers: List[SshServer] = []
    try:
        for number in range(1, count + 1):
            alias = f"{prefix}{number}"
            servers.append(SshServer(base / alias, alias, client_key=client_key, **options).start())
    except BaseException:
        stop_servers(servers)
        raise
    return servers


def stop_servers(servers: Iterable[SshServer]) -> None:
    for server in servers:
        server.stop()


def make_home(tmp_path: Union[str, Path], servers: Sequence[SshServer], trust: bool = True,
              name: str = "home") -> Path:
    """A fake HOME at tmp_path/name with ~/.ssh/config (every server under its alias, IdentityFile
    ~/.ssh/id_ed25519), ~/.ssh/id_ed25519(.pub) (the client key; servers need the same one, as
    start_servers gives them) and ~/.ssh/known_hosts (the servers' keys if `trust`, else empty)."""
    keys = {str(server.client_key) for server in servers}
    if len(keys) > 1:
        raise ValueError("make_home needs servers that share one client key (use start_servers)")
    home = Path(tmp_path) / name
    dot_ssh = home / ".ssh"
    dot_ssh.mkdir(parents=True, exist_ok=True)
    dot_ssh.chmod(0o700)
    if servers:
        key = Path(keys.pop())
        shutil.copyfile(key, dot_ssh / "id_ed25519")
        shutil.copyfile(key.with_name(key.name + ".pub"), dot_ssh / "id_ed25519.pub")
        (dot_ssh / "id_ed25519").chmod(0o600)
    (dot_ssh / "config").write_text(ssh_config_text(servers, identity="~/.ssh/id_ed25519"))
    (dot_ssh / "known_hosts").write_text(
        "".join(server.known_hosts_line() + "\n" for server in servers) if trust else "")
    return home


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_live):
        try:
            server.stop()
        except Exception:
            pass
