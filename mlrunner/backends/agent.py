"""The remote end of an SSH host: one long-lived process that starts and ends commands there.

mlrunner sends this file's source to `python3 -c` over one SSH channel per host, started once
by the user's shell as `ssh host command` would be, so commands see the environment the shell
start-up sets (PATH, conda) without paying for a new shell per command. Requests and replies are
JSON lines; quick requests are served at once, slow ones (listing, bundles, `nvidia-smi`) each in
a thread of its own, so a big sync never holds up a `start`, a `wait` or the heartbeat (SPEC H8). Standard library only, Python >= 3.6, Linux: it runs
on whatever python3 the GPU server has.

It also serves the `gpu:` policy for its machine (SPEC G4, G6; `claims.py`): it holds the run's
claims in the machine's shared lock directory, so a claim lives exactly as long as the agent (the
kernel drops its flocks when it dies), and it finds the session of a GPU process where it runs.

Nothing but JSON travels on stdout: commands get /dev/null for stdin, stdout and stderr (their
shell line redirects to their log), and so does the agent's own stderr once it is up (H9).

A command's process group is known only while the agent started it and it still runs: the
group leader is left unreaped (a zombie) until no process of its group is left, so its pid
cannot be reused meanwhile, and the group is forgotten when it is reaped (H10). When stdin
closes, a reply cannot be written, a signal arrives, or the runner has been silent for ORPHANED
seconds, every group still known is ended, SIGTERM then SIGKILL after the grace period, and the
agent exits.
"""

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

import claims  # beside this file; over SSH the runner defines it first (see ssh/host.py)

GRACE = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
# The runner pings every few seconds. This long without a word, it is gone (a dead link without
# FIN, a frozen machine) and has given this host up and requeued its tasks: end the commands.
ORPHANED = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
_last_heard = [time.monotonic()]
_out_lock = threading.Lock()
_lock = threading.Lock()  # guards _groups and _temporary
_groups = {}  # request id -> Popen of a command whose group may still have processes
_temporary = set()  # bundle files this agent made: the only paths `discard` removes
_ending = threading.Event()
FOLLOW_EVERY = 0.2  # seconds between two reads of the logs an early_stop rule follows (A2)
_follow_lock = threading.Lock()  # guards the three below; never held while taking _lock
_follows = {}  # request id -> logwatch.LogWatch of that command's log
_exited = set()  # request ids whose exit was reported: a late `follow` reads the log to its end at once
_follower = []  # [True] while the thread that polls _follows runs


def send(message):
    data = (json.dumps(message) + "\n").encode()
    try:
        with _out_lock:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
    except (OSError, ValueError):  # the connection is gone: nobody will ever end our commands
        shutdown()


def members(pgid):
    """Live processes of a process group (zombies, the unreaped leader among them, do not count)."""
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            handle = os.open("/proc/" + entry + "/stat", os.O_RDONLY)
            try:
                fields = os.read(handle, 1024).rsplit(b")", 1)[1].split(None, 4)
            finally:
                os.close(handle)
        except (OSError, IndexError):
            continue
        if fields[2] == b"%d" % pgid and fields[0] != b"Z":
            count += 1
    return count


def watch(ident, process):
    """Report the exit at once; reap the leader (and forget the group) only when the group is empty."""
    info = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
    code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
    with _follow_lock:  # the log's last values before the exit, so the runner has them all when it ends
        _exited.add(ident)
        reader = _follows.pop(ident, None)
        pairs = reader.poll(final=True) if reader is not None else []
        if pairs:
            send({"id": ident, "metric": pairs})
    send({"id": ident, "exit": code})
    while members(process.pid):  # a /proc scan: a few ms, so not too often
        time.sleep(0.5)
    with _lock:
        process.wait()
        _groups.pop(ident, None)


def command_env(forced):
    env = dict(os.environ)
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # GPU numbers as nvidia-smi shows them
    # bash reads ~/.bashrc again when it thinks sshd started it (SSH_CLIENT set, SHLVL < 2): this
    # agent already has that environment, and a command should not pay for (or cd in) it again.
    env["SHLVL"] = str(max(int(env.get("SHLVL") or 0), 1))
    env.update(forced)
    return env


def start(request):
    argv = ["bash", "-o", "pipefail", "-c", request["line"]] if request.get("debug") else ["bash", "-c", request["line"]]
    with _lock:
        if _ending.is_set():
            raise RuntimeError("the agent is ending")
        process = subprocess.Popen(argv, cwd=os.path.expanduser(request["cwd"]), env=command_env(request["env"]),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        _groups[request["id"]] = process
    threading.Thread(target=watch, args=(request["id"], process), daemon=True).start()
    return {"pid": process.pid}


def signal_command(request):
    """Signal a command's group, only while it is ours: its leader is unreaped, so the pid is too."""
    with _lock:
        process = _groups.get(request["target"])
        if process is None:
            return {"known": False}
        try:
            os.killpg(process.pid, request["signal"])
        except (ProcessLookupError, PermissionError):
            pass
    return {"known": True}


def follow(request):
    """Read a command's log here, where it is written, for an early_stop rule (A2): its new (step,
    value) pairs go to the runner as events, nothing else of the log crosses the link."""
    import logwatch  # mlrunner/run/early_stop/watch.py: over SSH the runner defines it first, as claims
    path = os.path.join(os.path.expanduser(request["cwd"]), request["log"])
    reader = logwatch.LogWatch(path, re.compile(request["step"]), re.compile(request["value"]))
    with _follow_lock:
        if request["target"] in _exited:
            return {"pairs": reader.poll(final=True)}
        _follows[request["target"]] = reader
        if not _follower:
            _follower.append(True)
            threading.Thread(target=follower, daemon=True).start()
    return {"pairs": []}


def follower():
    """Poll the followed logs until none is left."""
    while True:
        time.sleep(FOLLOW_EVERY)
        with _follow_lock:
            if not _follows:
                _follower.clear()
                return
            for ident, reader in list(_follows.items()):
                pairs = reader.poll()
                if pairs:
                    send({"id": ident, "metric": pairs})


def alive(request):
    with _lock:
        process = _groups.get(request["target"])
    return {"alive": process is not None and members(process.pid) > 0}


def run(request):
    """A short command's status and output (nvidia-smi); past `timeout` seconds it is killed: 124."""
    seconds = request.get("timeout", 30)
    try:
        done = subprocess.run(request["argv"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=seconds)
        return {"code": done.returncode, "stdout": done.stdout.decode(errors="replace"),
                "stderr": done.stderr.decode(errors="replace")}
    except FileNotFoundError:
        return {"code": 127, "stdout": "", "stderr": request["argv"][0] + ": not found"}
    except subprocess.TimeoutExpired:
        return {"code": 124, "stdout": "", "stderr": "%s timed out after %g s" % (request["argv"][0], seconds)}


def kind(mode):
    if stat.S_ISREG(mode):
        return "f"
    return "l" if stat.S_ISLNK(mode) else "o"


def listing(request):
    """Every entry under a directory, not following symlinks: [path, size, mtime_ns, kind] rows."""
    root = os.path.expanduser(request["path"])
    files = []
    for directory, subdirectories, names in os.walk(root):
        for name in names + [d for d in subdirectories if os.path.islink(os.path.join(directory, d))]:
            path = os.path.join(directory, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            files.append([os.path.relpath(path, root), info.st_size, info.st_mtime_ns, kind(info.st_mode)])
    return {"files": files}


def stats(request):
    """Size, mtime_ns and kind of each named path under a root (None when missing), for code push."""
    root = os.path.expanduser(request["root"])
    found = []
    for name in request["files"]:
        try:
            info = os.lstat(os.path.join(root, name))
            found.append([info.st_size, info.st_mtime_ns, kind(info.st_mode)])
        except OSError:
            found.append(None)
    return {"stats": found}


def temporary():
    handle, path = tempfile.mkstemp(prefix="mlrunner-sync-", suffix=".tar")
    os.close(handle)
    with _lock:
        _temporary.add(path)
    return path


def pack(request):
    """Many small regular files as one tar, fetched in one go instead of file by file."""
    root = os.path.expanduser(request["path"])
    path = temporary()
    with tarfile.open(path, mode="w") as archive:
        for name in request["files"]:
            full = os.path.join(root, name)
            try:
                if kind(os.lstat(full).st_mode) == "f":
                    archive.add(full, arcname=name, recursive=False)
            except OSError:
                pass  # removed meanwhile: the next sync sees it gone
    return {"path": path}


def inside(root, name):
    """The path of `name` under `root`, or an error when it could leave it (runner-side checks too)."""
    parts = name.split("/")
    if name.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError("refused path " + repr(name))
    for depth in range(1, len(parts)):
        if os.path.islink(os.path.join(root, *parts[:depth])):
            raise ValueError("refused path through a symlink " + repr(name))
    return os.path.join(root, *parts)


def unpack(request):
    """Code push: place a bundle's files under a root with the sender's mtimes (nanoseconds)."""
    root = os.path.expanduser(request["root"])
    with _lock:
        if request["path"] not in _temporary:
            raise ValueError("not a bundle of this agent")
    mtimes = request["mtimes"]
    placed = 0
    with tarfile.open(request["path"]) as archive:
        for member in archive:
            if member.name not in mtimes or not (member.isfile() or member.issym()):
                continue
            target = inside(root, member.name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            staging = os.path.join(os.path.dirname(target), ".%s.mlrunner-push" % os.path.basename(target))
            if os.path.lexists(staging):
                os.unlink(staging)
            if member.issym():
                os.symlink(member.linkname, staging)
            else:
                source = archive.extractfile(member)
                with open(staging, "xb") as stream:
                    shutil.copyfileobj(source, stream, 1 << 16)
                os.chmod(staging, member.mode & 0o777)
            os.utime(staging, ns=(mtimes[member.name], mtimes[member.name]), follow_symlinks=False)
            os.replace(staging, target)
            placed += 1
    discard(request)
    return {"placed": placed}


def discard(request):
    with _lock:
        if request["path"] in _temporary:
            _temporary.discard(request["path"])
            os.unlink(request["path"])
    return {}


def mkdir(request):
    path = os.path.expanduser(request["path"])
    os.makedirs(path, exist_ok=True)
    return {"path": os.path.abspath(path)}


# Served inline: no thread to start (claims.QUICK: never one that waits for a lock).
QUICK = ("start", "signal", "alive", "follow", "mkdir", "ping", "temporary", "discard") + claims.QUICK
HANDLERS = {"start": start, "signal": signal_command, "alive": alive, "follow": follow, "run": run, "list": listing,
            "stat": stats, "pack": pack, "unpack": unpack, "discard": discard, "mkdir": mkdir,
            "temporary": lambda request: {"path": temporary()}, "ping": lambda request: {}, **claims.REQUESTS}


def serve(request):
    try:
        reply = HANDLERS[request["op"]](request)
    except Exception as error:  # the runner shows it; the agent keeps serving
        reply = {"error": "%s: %s" % (type(error).__name__, error)}
    reply["id"] = request.get("id")
    send(reply)


def end_all():
    """SIGTERM every group still ours, SIGKILL what is left after the grace period."""
    with _lock:
        _ending.set()
        groups = list(_groups.values())
        for process in groups:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except OSError:
                pass
    deadline = time.monotonic() + GRACE
    while time.monotonic() < deadline and any(members(p.pid) for p in groups):
        time.sleep(0.05)
    with _lock:
        for process in _groups.values():  # only those not reaped meanwhile: their pids are still ours
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except OSError:
                pass
        for path in _temporary:
            try:
                os.unlink(path)
            except OSError:
                pass


_shutdown_lock = threading.Lock()
_shutdown_owner = []  # the thread doing the cleanup


def shutdown(*_):
    """End our commands and exit. The first caller does it; any other caller waits for the exit,
    except the cleaning thread itself, when a signal handler interrupts it."""
    if not _shutdown_lock.acquire(blocking=False):
        if _shutdown_owner == [threading.get_ident()]:
            return
        while True:
            time.sleep(1)
    _shutdown_owner.append(threading.get_ident())
    try:
        end_all()
    finally:
        os._exit(0)


def watchdog():
    while time.monotonic() - _last_heard[0] < ORPHANED:
        time.sleep(min(1.0, ORPHANED / 4))
    shutdown()


def main():
    for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(number, shutdown)
    send({"ready": os.getpid(), "home": os.path.expanduser("~")})
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 2)  # from here on, nothing may write to the channel's stderr unread
    threading.Thread(target=watchdog, daemon=True).start()
    try:
        for line in sys.stdin.buffer:
            _last_heard[0] = time.monotonic()
            request = json.loads(line.decode())
            if request.get("op") in QUICK:
                serve(request)
            else:
                threading.Thread(target=serve, args=(request,), daemon=True).start()
    finally:
        shutdown()


main()
