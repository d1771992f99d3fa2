"""Which remote hosts to use, from `--hosts` and the `hosts:` key (SPEC H1). Pure: no network here."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..errors import UserError
from ..run.gpus import GPU_ID_HINT, gpu_id

HOST_RE = re.compile(r"(?:(?P<user>[^@\s,]+)@)?(?P<host>[A-Za-z0-9_.\-]+)(?::(?P<port>\d+))?\Z")
HOST_KEYS = ("resource", "workdir")


@dataclass
class HostSpec:
    name: str  # as the user wrote it: an alias of ~/.ssh/config or a host name
    user: Optional[str] = None
    port: Optional[int] = None
    resources: Optional[List[str]] = None  # None: ask the host's nvidia-smi
    workdir: Optional[str] = None
    exclude: List[str] = field(default_factory=list)  # sync globs left on the host (H5)
    push: List[str] = field(default_factory=list)  # local paths copied to the workdir first (H13)
    code: str = ""  # the run's code snapshot (P2), relative: pushed instead of `push`
    start: str = ""  # where in the snapshot commands start, relative like `code`


@dataclass
class SyncSettings:
    exclude: List[str] = field(default_factory=list)
    push: List[str] = field(default_factory=list)


def parse_address(text: str, where: str) -> HostSpec:
    match = HOST_RE.match(text.strip())
    if not match:
        raise UserError(f"{where}: {text!r} is not a host (use host, user@host or user@host:port)")
    port = int(match.group("port")) if match.group("port") else None
    return HostSpec(name=match.group("host"), user=match.group("user"), port=port)


def parse_flag(text: str) -> List[HostSpec]:
    """`gpu1,alice@gpu2:2222` -> specs, in order."""
    return [parse_address(part, "--hosts") for part in text.split(",") if part.strip()]


def parse_config(raw: Dict[Any, Any], path: str) -> List[HostSpec]:
    """`hosts: {gpu1: {resource: [0, 1], workdir: ~/proj}, gpu2: {}}` -> specs."""
    specs = []
    for address, settings in raw.items():
        spec = parse_address(str(address), f"{path}: hosts")
        settings = settings or {}
        if not isinstance(settings, dict):
            raise UserError(f"hosts: '{address}' must map to settings like {{resource: [0, 1], workdir: ~/proj}}", path)
        for key in settings:
            if key not in HOST_KEYS:
                raise UserError(f"hosts: '{address}': unknown key '{key}' (allowed: {', '.join(HOST_KEYS)})", path)
        resource = settings.get("resource")
        if resource is not None and resource != "auto":
            if not isinstance(resource, list) or not resource or any(isinstance(r, bool) for r in resource):
                raise UserError(f"hosts: '{address}': 'resource' must be a list like [0, 1] or 'auto'", path)
            if any(gpu_id(r) is None for r in resource):
                bad = next(r for r in resource if gpu_id(r) is None)
                raise UserError(f"hosts: '{address}': resource entry {bad!r} is not a GPU id ({GPU_ID_HINT})", path)
            spec.resources = [gpu_id(r) for r in resource]
        workdir = settings.get("workdir")
        if workdir is not None and not isinstance(workdir, str):
            raise UserError(f"hosts: '{address}': 'workdir' must be a path", path)
        spec.workdir = workdir
        specs.append(spec)
    return specs


def parse_sync(raw: Dict[Any, Any], path: str) -> SyncSettings:
    """`sync: {exclude: ["*.pt"], push: [".", "data/small"]}` -> settings; push paths must exist here."""
    unknown = set(raw) - {"exclude", "push"}
    if unknown:
        raise UserError(f"sync: unknown key '{sorted(map(str, unknown))[0]}' (allowed: exclude, push)", path)
    exclude = raw.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(g, str) for g in exclude):
        raise UserError("sync: 'exclude' must be a list of globs like ['*.pt']", path)
    push = raw.get("push") or []
    if not isinstance(push, list) or not all(isinstance(p, str) and p for p in push):
        raise UserError("sync: 'push' must be a list of paths like ['.', 'data/small']", path)
    for local in push:
        parts = local.replace("\\", "/").split("/")
        if os.path.isabs(local) or ".." in parts:
            raise UserError(f"sync: push: '{local}' must be a path inside the working directory", path)
        if not os.path.lexists(local):
            raise UserError(f"sync: push: '{local}' does not exist here", path)
    return SyncSettings(exclude, [os.path.normpath(p) for p in push])


def select(flag: Optional[str], configured: List[HostSpec], sync: SyncSettings) -> List[HostSpec]:
    """`--hosts` chooses the hosts; settings for the same host still come from the file."""
    by_name = {spec.name: spec for spec in configured}
    chosen = configured
    if flag:
        chosen = []
        for spec in parse_flag(flag):
            known = by_name.get(spec.name)
            if known:
                spec.resources, spec.workdir = known.resources, known.workdir
                spec.user, spec.port = spec.user or known.user, spec.port or known.port
            chosen.append(spec)
    for spec in chosen:
        spec.exclude, spec.push = list(sync.exclude), list(sync.push)
    return chosen


def default_workdir(cwd: str, home: str) -> str:
    """The same place relative to the remote home as the working directory is to the local one."""
    relative = os.path.relpath(cwd, home)
    return cwd if relative.startswith("..") else relative
