"""GPU claims shared by every mlrunner on a machine (SPEC G4), on either side of an SSH link.

Standard library only, Python >= 3.6: the runner imports `ClaimDir` for its own machine, and the
agent (`agent.py`) serves `REQUESTS` for a remote one, holding that machine's claims itself, so
that a remote run and a local run by anyone on that machine read and write the same claims.

A claim is {"uuid", "mib", "sid"}: a GPU, the memory reserved on it, and the session of the
command that holds it (its processes' memory in nvidia-smi's list is then ours). Each claim is a
file flocked by the process that holds it while the command runs; the kernel drops the lock of a
process that dies, and the next reader of the same user removes the file.

Any local user can write beside the claims, open them, hold flocks and name any pid; they may make
a run more careful (their live claims count, as memory they hold would), never hang it, crash it,
fail its tasks or make it start more than fits. So: claims are files in /tmp itself (root's,
sticky), with no directory to squat, and a MLRUNNER_LOCK_DIR must be root's or yours, sticky when
shared (`trouble`). The machine's lock is a flock on that directory (no file to swap for a link or
a FIFO), awaited LOCK_WAIT at most, then done without. Only regular `mlrunner-gpu-*.claim` files
are read, without following links or blocking, MAX_BYTES at most; anything else is ignored with
one warning. A claim counts while its file is flocked and the process it names (pid and start
time) lives and belongs to the file's owner: a user vouches for their own processes only (where
/proc hides others' processes, the flock alone vouches). Names are random; a claim is linked into
place whole and flocked, its modes set by fchmod whatever the umask; one that cannot be written is
kept in this process, with a warning, and the run goes on.
"""

import contextlib
import errno
import fcntl
import json
import os
import pwd
import secrets
import stat
import sys
import threading
import time

LOCK_DIR = "/tmp"  # MLRUNNER_LOCK_DIR moves it, on each machine
PREFIX, SUFFIX = "mlrunner-gpu-", ".claim"
MAX_BYTES = 4096  # a claim is ~150 bytes
LOCK_WAIT = 5.0  # seconds a decision waits for the machine's lock: less than a remote runner's deadline
BUSY_WAIT = 0.5  # the same while the last wait ran out, so that one holder cannot slow every decision
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def lock_dir():
    """This machine's claim directory, where every mlrunner here looks."""
    return os.environ.get("MLRUNNER_LOCK_DIR") or LOCK_DIR


def _stat_field(pid, index):
    """A field of /proc/PID/stat after the command's name; None once the process is gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as stream:
            return int(stream.read().rsplit(b")", 1)[1].split()[index])
    except (OSError, IndexError, ValueError):
        return None


def session_of(pid):
    """A process's session (a command's session is its process group: each starts a new one); None once gone."""
    return _stat_field(pid, 3)


def start_of(pid):
    """A process's start time (clock ticks since boot): with its pid, it names one process for good."""
    return _stat_field(pid, 19)


def _uids_of(pid):
    """A process's real and effective uid (from status: its /proc directory is root's when not dumpable)."""
    try:
        with open("/proc/%d/status" % pid, "rb") as stream:
            for line in stream:
                if line.startswith(b"Uid:"):
                    return [int(field) for field in line.split()[1:3]]
    except (OSError, ValueError):
        pass
    return None


def _user(uid):
    try:
        return "%s (uid %d)" % (pwd.getpwuid(uid).pw_name, uid)
    except KeyError:
        return "uid %d" % uid


def trouble(path):
    """Why `path` cannot hold this machine's claims, in one line that names the fix; None when it
    can, or does not exist yet (it is then made, shared and sticky)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        return "GPU claim directory %s: %s (set MLRUNNER_LOCK_DIR to another)" % (path, error.strerror)
    return _judge(path, info)


def _judge(path, info):
    fix = "set MLRUNNER_LOCK_DIR to a directory of root's or yours (mode 1777 to share it with other users)"
    if not stat.S_ISDIR(info.st_mode):
        return "GPU claim directory %s is not a directory: %s" % (path, fix)
    if info.st_uid not in (0, os.geteuid()):
        return ("GPU claim directory %s belongs to %s, who could remove other users' claims: %s"
                % (path, _user(info.st_uid), fix))
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX and info.st_uid != os.geteuid():
        return ("GPU claim directory %s lets anyone remove claims (writable without the sticky bit): "
                "have root run `chmod +t %s`, or %s" % (path, path, fix))
    if not os.access(path, os.W_OK | os.X_OK):
        return "GPU claim directory %s: you cannot create files there: %s" % (path, fix)
    return None


def _refuse(constant):
    raise ValueError("%s is no claim's value" % constant)


def _count(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 48:
        raise ValueError("%s is not a count" % name)
    return value


def parse(data):
    """A claim file's content, field by field; ValueError for anything else, whatever it holds."""
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_refuse)
    except (UnicodeDecodeError, RecursionError) as error:
        raise ValueError(str(error)) from None
    if not isinstance(value, dict):
        raise ValueError("not an object")
    uuid = value.get("uuid")
    if not isinstance(uuid, str) or not 0 < len(uuid) <= 128:
        raise ValueError("uuid is not a GPU's")
    claim = {key: _count(value.get(key), key) for key in ("mib", "uid", "pid", "start")}
    claim.update(uuid=uuid, sid=None if value.get("sid") is None else _count(value.get("sid"), "sid"))
    return claim


def _to_stderr(message):
    sys.stderr.write("warning: %s\n" % message)
    sys.stderr.flush()


class ClaimDir:
    """The claim files of one machine; a claim is known to its holder by its file's path."""

    def __init__(self, path, warn=None):
        self.path = path
        self._warn = warn or _to_stderr
        self._warned = set()
        self._mutex = threading.Lock()
        self._held = {}  # path -> (the descriptor that holds its flock, its record)
        self._kept = {}  # path -> a claim that could not be written, seen by this process only
        self._serial = 0
        self._slow = False  # the last wait for the lock ran out
        self._hidden = not os.path.isdir("/proc/1")  # /proc mounted hidepid: other users' pids are not shown
        self._fd = self._open()

    def warn(self, kind, message):
        """Say `message` once in this directory's life: a hostile neighbour must not flood the console."""
        if kind not in self._warned:
            self._warned.add(kind)
            self._warn(message)

    def _open(self):
        """The directory, made or checked (see `trouble`); None, after a warning, when it cannot hold claims."""
        try:
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
            try:
                os.mkdir(self.path, 0o700)  # no moment when others may write without the sticky bit
                made = True
            except FileExistsError:
                made = False
            descriptor = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as error:
            self.warn("dir", "GPU claims: cannot use %s (%s): this run's GPU claims are seen by it alone"
                      % (self.path, error.strerror))
            return None
        info = os.fstat(descriptor)
        if info.st_uid == os.geteuid() and (made or info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX):
            os.fchmod(descriptor, 0o1777 if made else stat.S_IMODE(info.st_mode) | stat.S_ISVTX)
            info = os.fstat(descriptor)
        problem = _judge(self.path, info)
        if problem:
            os.close(descriptor)
            self.warn("dir", problem + "; until then this run's GPU claims are seen by it alone")
            return None
        return descriptor

    # -- the machine's lock --------------------------------------------------------------------
    def lock(self, wait=None):
        """The machine-wide lock around one decision (read every claim, then add ours): a descriptor
        to close, or None when held by someone else for `wait` s (LOCK_WAIT; BUSY_WAIT after a wait
        ran out), and the decision goes ahead without it. Never blocks: signals still end the run."""
        if self._fd is None:
            return None
        if wait is None:
            wait = BUSY_WAIT if self._slow else LOCK_WAIT
        try:
            descriptor = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self._fd)
        except OSError as error:  # out of descriptors, say: decided without, as when held
            self.warn("lock", "GPU claims: cannot lock %s (%s): deciding without it" % (self.path, error.strerror))
            return None
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._slow = False
                return descriptor
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(descriptor)
                    self._slow = True
                    self.warn("lock", "another process held the GPU claim lock on %s for %g s: deciding without it"
                              % (self.path, wait))
                    return None
                time.sleep(0.02)

    @contextlib.contextmanager
    def locked(self):
        descriptor = self.lock()
        try:
            yield
        finally:
            if descriptor is not None:
                os.close(descriptor)

    # -- reading -----------------------------------------------------------------------------
    def claims(self):
        """Every live claim; one of ours whose holder died is removed, anything else unfit is ignored."""
        with self._mutex:
            found = [dict(claim) for claim in self._kept.values()]
        if self._fd is None:
            return found
        try:  # listed through a descriptor of its own: two listings never share one offset
            listing = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self._fd)
            try:
                names = os.listdir(listing)
            finally:
                os.close(listing)
        except OSError as error:
            self.warn("list", "GPU claims: cannot list %s (%s)" % (self.path, error.strerror))
            return found
        for name in names:
            if name.startswith(PREFIX) and name.endswith(SUFFIX):
                claim = self._read(name)
                if claim is not None:
                    found.append(claim)
        return found

    def _read(self, name):
        try:
            descriptor = os.open(name, _OPEN, dir_fd=self._fd)
        except OSError as error:
            if error.errno != errno.ENOENT:  # gone since the listing: nothing to say
                self._odd(name, error.strerror)
            return None
        try:
            info = os.fstat(descriptor)
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_BYTES:
                self._odd(name, "not a regular file" if not stat.S_ISREG(info.st_mode) else "too large")
                return None
            try:
                fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
                held = False
            except BlockingIOError:
                held = True
            try:
                claim = parse(os.pread(descriptor, MAX_BYTES, 0))
            except ValueError as error:
                self._odd(name, str(error))
                claim = None
            if held and claim is not None and self._vouched(claim, info.st_uid):
                return {"uuid": claim["uuid"], "mib": claim["mib"], "sid": claim["sid"]}
            if not held and info.st_uid == os.geteuid():
                _unlink_same(self._fd, name, info)  # a dead runner's, of ours: the sticky bit lets only us
            return None
        except OSError as error:
            self._odd(name, error.strerror)
            return None
        finally:
            os.close(descriptor)

    def _vouched(self, claim, owner):
        """The claim's holder is alive, the same process it names, and the file's owner's."""
        if claim["uid"] != owner:
            return False
        uids = _uids_of(claim["pid"])
        if uids is None:
            return self._hidden and owner != os.geteuid()
        return owner in uids and start_of(claim["pid"]) == claim["start"]

    def _odd(self, name, why):
        self.warn("odd", "GPU claims: ignoring %s in %s (%s), and any other file there that is no claim"
                  % (name, self.path, why))

    # -- writing -----------------------------------------------------------------------------
    def add(self, claim):
        """Write and lock a claim (while holding `lock`); its path names it to `attach` and `remove`.
        Never fails: a claim that cannot be written is kept by this process alone, with a warning."""
        record = {"uuid": str(claim["uuid"]), "mib": int(claim["mib"]), "sid": claim.get("sid"),
                  "uid": os.geteuid(), "pid": os.getpid(), "start": start_of(os.getpid())}
        attempts = 3 if self._fd is not None else 0  # another name, should someone hold the first one's lock
        for _ in range(attempts):
            path = self._write(record)
            if path is not None:
                return path
        with self._mutex:
            self._serial += 1
            path = "%s/(kept in memory %d)" % (self.path, self._serial)
            self._kept[path] = {"uuid": record["uuid"], "mib": record["mib"], "sid": record["sid"]}
        self.warn("kept", "GPU claims: cannot write one in %s: this run's claims are seen by it alone" % self.path)
        return path

    def _write(self, record):
        """The claim's file, whole and flocked before its name appears; None, with nothing left behind, if not."""
        hidden = ".%s%s.tmp" % (PREFIX, secrets.token_hex(16))
        name = "%s%s%s" % (PREFIX, secrets.token_hex(16), SUFFIX)
        try:
            descriptor = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                                 dir_fd=self._fd)
        except OSError:
            return None
        linked = False
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.fchmod(descriptor, 0o644)  # readable by every user, whatever the umask
            data = json.dumps(record).encode()
            if os.pwrite(descriptor, data, 0) != len(data):
                raise OSError(errno.ENOSPC, "short write")
            os.link(hidden, name, src_dir_fd=self._fd, dst_dir_fd=self._fd, follow_symlinks=False)
            linked = True
            os.unlink(hidden, dir_fd=self._fd)
        except OSError:
            info = os.fstat(descriptor)
            for written in (hidden, name) if linked else (hidden,):
                _unlink_same(self._fd, written, info)
            os.close(descriptor)
            return None
        path = os.path.join(self.path, name)
        with self._mutex:
            self._held[path] = (descriptor, record)
        return path

    def attach(self, path, sid):
        """Name the session whose processes hold a claim's memory. One write, padded to the old
        length, so that a reader sees the old claim or the new one, never half of either."""
        with self._mutex:
            if path in self._kept:
                self._kept[path]["sid"] = sid
                return
            if path not in self._held:
                return
            descriptor, record = self._held[path]
            old = len(json.dumps(record))
            record["sid"] = sid
            data = json.dumps(record)
            try:
                os.pwrite(descriptor, data.ljust(old).encode(), 0)
            except OSError as error:
                self.warn("attach", "GPU claims: cannot update %s (%s)" % (path, error.strerror))

    def remove(self, path):
        """Give a claim back; a path this holder does not hold (an earlier agent's) is left alone."""
        with self._mutex:
            self._kept.pop(path, None)
            held = self._held.pop(path, None)
        if held is not None:
            _unlink_same(self._fd, os.path.basename(path), os.fstat(held[0]))
            os.close(held[0])


def _unlink_same(directory, name, info):
    """Remove `name` only while it is still the file `info` describes."""
    try:
        now = os.stat(name, dir_fd=directory, follow_symlinks=False)
        if (now.st_dev, now.st_ino) == (info.st_dev, info.st_ino):
            os.unlink(name, dir_fd=directory)
    except OSError:
        pass


# -- the agent's requests, for a runner deciding from another machine -----------------------------

_mine = []  # the agent's ClaimDir, made at its first GPU request
_decision = []  # the descriptor of the machine's lock while the runner decides
_warnings = []  # the agent's ClaimDir's warnings, sent with the next gpu_lock reply
_made = threading.Lock()


def _claim_dir():
    with _made:
        if not _mine:
            _mine.append(ClaimDir(lock_dir(), warn=_warnings.append))
        return _mine[0]


def _lock(request):
    """The runner decides for this machine: hold its lock until `gpu_unlock`; here are the claims.
    Waits LOCK_WAIT at most, so that the reply always comes before the runner stops waiting for it;
    a lock held longer by someone else is decided without, as a local runner would."""
    claims = _claim_dir()
    descriptor = claims.lock()
    if descriptor is not None:
        _decision.append(descriptor)
    reply = {"claims": claims.claims(), "warnings": list(_warnings)}
    del _warnings[:]
    return reply


def _unlock(request):
    while _decision:
        os.close(_decision.pop())
    return {}


REQUESTS = {
    "gpu_lock": _lock,
    "gpu_unlock": _unlock,
    "gpu_claim": lambda request: {"path": _claim_dir().add(request["claim"])},
    "gpu_attach": lambda request: _claim_dir().attach(request["path"], request["sid"]) or {},
    "gpu_unclaim": lambda request: _claim_dir().remove(request["path"]) or {},
    "sessions": lambda request: {"sessions": [session_of(pid) for pid in request["pids"]]},
}
# Served inline by the agent. Never one that waits for the machine's lock (gpu_lock): the request
# that frees it could not be read meanwhile.
QUICK = ("gpu_unlock", "gpu_claim", "gpu_unclaim", "sessions")
