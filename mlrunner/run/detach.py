"""`--detach`: after every check, the run goes on as a daemon that outlives the terminal (SPEC D1).

A clean double fork: the first child starts a new session (no controlling terminal, so no SIGHUP
when the terminal closes) and forks again, so the daemon is not a session leader and can never
gain a terminal. The daemon's stdio is `<output>/mlrunner.log` (appended: two detached runs on
one tree keep both consoles). The foreground process waits on a pipe until the daemon has
started its workers and written its run record, echoes what the daemon printed so far, prints
the daemon's pid and the commands to follow and stop it. If the daemon ends before that (no
worker could start), the foreground says so with the log's last lines and exits 1.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import time
from typing import Optional

from .. import __version__
from ..errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UserError
from .signals import RECORDER

LOG_NAME = "mlrunner.log"

_ready_fd: Optional[int] = None  # the daemon's end of the pipe, until it says "ready"
_log: Optional[str] = None  # the daemon's console file


def console_log() -> Optional[str]:
    """Where this process's console goes, when it is a detached run."""
    return _log


def announce_ready() -> None:
    """Tell the waiting foreground process that the run has started (called by the run record)."""
    global _ready_fd
    if _ready_fd is None:
        return
    try:
        os.write(_ready_fd, b"ready\n")
    except OSError:  # the foreground process is gone (its terminal closed): nobody to tell
        pass
    os.close(_ready_fd)
    _ready_fd = None


def _invocation() -> str:
    """How the user started mlrunner, so that the printed commands can be pasted as they are."""
    program = sys.argv[0]
    if program.endswith("__main__.py") or program == "-m":
        return f"{os.path.basename(sys.executable)} -m mlrunner"
    if program.endswith(".pyz"):
        return f"{os.path.basename(sys.executable)} {shlex.quote(program)}"
    return os.path.basename(program) or "mlrunner"


def detach(output: str) -> Optional[int]:
    """Fork the daemon. Returns None in the daemon (it goes on with the run), else the exit status."""
    global _ready_fd, _log
    log = os.path.join(output, LOG_NAME)
    try:  # opened here, so that a console file that cannot be written is one line and exit 2
        os.makedirs(output, exist_ok=True)
        console = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as error:
        raise UserError(f"--detach: cannot write {log} ({error.strerror})") from None
    offset = os.lseek(console, 0, os.SEEK_END)
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(read_end)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
        except BaseException:  # never let a failed child go on as a second foreground process
            os._exit(1)
        _become_daemon(console, write_end)
        _ready_fd, _log = write_end, log
        RECORDER.after_fork()
        return None
    os.close(console)
    os.close(write_end)
    os.waitpid(child, 0)  # the first child exits at once
    replies = b""
    try:
        RECORDER.release()  # here Ctrl-C only stops the waiting, as KeyboardInterrupt
        while True:
            chunk = os.read(read_end, 4096)
            if not chunk:
                break
            replies += chunk
    except KeyboardInterrupt:
        started = replies.decode().split()
        which = f" (pid {started[0]})" if started else ""
        print(f"mlrunner: stopped waiting; the detached run{which} goes on; --stop ends it", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        os.close(read_end)
    lines = replies.decode().split()
    try:
        with open(log, encoding="utf-8", errors="replace") as stream:
            stream.seek(offset)
            printed = stream.read().splitlines()[1:]  # without the daemon's header line
    except OSError:
        printed = []
    if "ready" not in lines:
        print("\n".join(printed[-20:]))
        print(f"mlrunner: the detached run ended before it started (its console: {log})", file=sys.stderr)
        return EXIT_FAILED
    pid = lines[0]
    me = _invocation()
    quoted = shlex.quote(output)
    print("\n".join(printed))
    print(f"Detached: pid {pid} on {socket.gethostname()}; its console goes to {log}\n"
          f"  follow: {me} -o {quoted} --follow\n"
          f"  status: {me} -o {quoted} --status\n"
          f"  stop:   {me} -o {quoted} --stop")
    return EXIT_OK


def _become_daemon(console: int, ready_fd: int) -> None:
    """In the grandchild: stdio to the console file, say our pid, write the console's first line."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(console, 1)
    os.dup2(console, 2)
    os.close(console)
    _close_inherited()
    # The records name their owner by pid (R6): it is ours now, not the foreground process's.
    from .processes import OWNER, process_start
    OWNER.update(pid=os.getpid(), pid_start=process_start(os.getpid()))
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    try:
        os.write(ready_fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass
    print(f"mlrunner {__version__}, pid {os.getpid()} on {socket.gethostname()}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(shlex.quote(a) for a in sys.argv)}")


def _close_inherited() -> None:
    """Close what the shell or a CI harness passed down beyond stdio (Python's own descriptors are
    not inheritable): a daemon holding one would keep `ssh host mlrunner --detach`, or the step
    that ran it, waiting for an end of file that never comes."""
    try:
        descriptors = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc: nothing to learn the open descriptors from
        return
    for descriptor in descriptors:
        try:
            if descriptor > 2 and os.get_inheritable(descriptor):
                os.close(descriptor)
        except OSError:  # the listing's own descriptor, closed by now
            pass
