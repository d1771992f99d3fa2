"""The remote end of an SSH host: one long-lived process that starts and ends commands there.

mlrunner sends this file's source to `python3 -c` over one SSH channel per host, started once
by the user's shell as `ssh host command` would be, so commands see the environment the shell
start-up sets (PATH, conda) without paying for a new shell per command. Requests and replies are JSON lines.
Standard library only, Python >= 3.6: it runs on whatever python3 the GPU server has.

When its stdin closes (the runner ended, or the connection died) it ends every command's process
group, SIGTERM then SIGKILL, so nothing outlives the run.
"""

import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

GRACE = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
_out_lock = threading.Lock()
_groups = {}  # request id -> process group id


def send(message):
    with _out_lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def signal_group(pgid, number):
    try:
        os.killpg(pgid, number)
    except (ProcessLookupError, PermissionError):
        pass


def watch(ident, process):
    code = process.wait()
    send({"id": ident, "exit": code})


def command_env(forced):
    env = dict(os.environ)
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # GPU numbers as nvidia-smi shows them
    # bash reads ~/.bashrc again when it thinks sshd started it (SSH_CLIENT set, SHLVL < 2): this
    # agent already has that environment, and a command should not pay for (or cd in) it again.
    env["SHLVL"] = str(max(int(env.get("SHLVL") or 0), 1))
    env.update(forced)
    return env


def start(request):
    process = subprocess.Popen(
        ["bash", "-o", "pipefail", "-c", request["line"]] if request.get("debug") else ["bash", "-c", request["line"]],
        cwd=os.path.expanduser(request["cwd"]), env=command_env(request["env"]),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
    _groups[request["id"]] = process.pid
    threading.Thread(target=watch, args=(request["id"], process), daemon=True).start()
    return {"pid": process.pid}


def run(request):
    try:
        done = subprocess.run(request["argv"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=30)
        return {"code": done.returncode, "stdout": done.stdout.decode(errors="replace"),
                "stderr": done.stderr.decode(errors="replace")}
    except FileNotFoundError:
        return {"code": 127, "stdout": "", "stderr": request["argv"][0] + ": not found"}


def listing(request):
    """Every file under a directory with its size and mtime, in one reply (not one per directory)."""
    root = os.path.expanduser(request["path"])
    files = []
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            try:
                info = os.stat(path)
            except OSError:
                continue
            files.append([os.path.relpath(path, root), info.st_size, int(info.st_mtime)])
    return {"files": files}


def pack(request):
    """Many small files as one tar in a temporary file, fetched in one go instead of file by file."""
    root = os.path.expanduser(request["path"])
    handle, path = tempfile.mkstemp(prefix="mlrunner-sync-", suffix=".tar")
    with os.fdopen(handle, "wb") as stream, tarfile.open(fileobj=stream, mode="w") as archive:
        for name in request["files"]:
            try:
                archive.add(os.path.join(root, name), arcname=name, recursive=False)
            except OSError:
                pass  # removed meanwhile: the next sync sees it gone
    return {"path": path}


def handle(request):
    op = request["op"]
    if op == "start":
        return start(request)
    if op == "signal":
        signal_group(_groups[request["target"]], request["signal"])
        return {}
    if op == "alive":
        return {"alive": group_alive(_groups[request["target"]])}
    if op == "mkdir":
        path = os.path.expanduser(request["path"])
        os.makedirs(path, exist_ok=True)
        return {"path": os.path.abspath(path)}
    if op == "run":
        return run(request)
    if op == "list":
        return listing(request)
    if op == "pack":
        return pack(request)
    if op == "unlink":
        os.unlink(request["path"])
        return {}
    raise ValueError("unknown op " + repr(op))


def end_all():
    groups = [pgid for pgid in _groups.values() if group_alive(pgid)]
    for pgid in groups:
        signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    while time.monotonic() < deadline and any(group_alive(pgid) for pgid in groups):
        time.sleep(0.05)
    for pgid in groups:
        signal_group(pgid, signal.SIGKILL)


def main():
    send({"ready": os.getpid(), "home": os.path.expanduser("~")})
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = handle(request)
            reply["id"] = request.get("id")
        except Exception as error:  # the runner shows it; the agent keeps serving
            reply = {"id": request.get("id"), "error": "%s: %s" % (type(error).__name__, error)}
        send(reply)
    end_all()


main()
