"""Who runs the commands: the one place that turns `resource`, `-r` and `hosts` into executors (SPEC R1, H1)."""

from __future__ import annotations

import sys
from typing import Any, List, Optional

from ..options import Options
from ..plan.config import Config
from ..errors import UserError
from ..backends.base import Executor
from ..backends.local import LocalExecutor
from .gpus import inherited_devices, translate


def resolve_resources(option: Optional[List[str]], configured: Optional[List[str]]) -> List[str]:
    """Workers' CUDA_VISIBLE_DEVICES strings: `-r` wins over the file; `auto` asks nvidia-smi (R1).

    Under an inherited CUDA_VISIBLE_DEVICES, `auto` is the GPUs it names, and numbers in entries
    count within it: the command gets the physical GPU (G11)."""
    chosen = option if option else configured
    visible = inherited_devices()
    if chosen is None or list(chosen) == ["auto"]:
        from .gpus import discover
        found, warning = discover()
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        elif visible is not None:
            found = visible or [""]
            if not visible:
                print("warning: CUDA_VISIBLE_DEVICES is empty: running one CPU worker", file=sys.stderr)
        return found
    try:
        return [translate(str(r), visible) for r in chosen]
    except ValueError as error:
        raise UserError(f"{'-r' if option else 'resource'}: {error}") from None


def check_resources(option: Optional[List[str]], configured: Optional[List[str]]) -> Optional[List[str]]:
    """The chosen entries as the commands will get them; entries that name more GPUs than an
    inherited CUDA_VISIBLE_DEVICES shows are refused before anything starts (G11). `auto` (None)
    is left to nvidia-smi."""
    chosen = option if option else configured
    if chosen and list(chosen) != ["auto"]:
        return resolve_resources(option, configured)
    return chosen


def host_specs(config: Config, args: Options) -> List[Any]:
    """The hosts to use, checked before anything starts: a bad setting or a host name that does
    not resolve is a UserError (C10, H12)."""
    if not (args.hosts or config.hosts):
        return []
    from ..plan import hosts
    specs = hosts.select(args.hosts, hosts.parse_config(config.hosts, config.path),
                         hosts.parse_sync(config.sync, config.path))
    from ..backends.ssh import HostError, require_paramiko, unresolvable
    try:
        require_paramiko()
    except HostError as error:
        raise UserError(str(error)) from None
    for spec in specs:
        why = unresolvable(spec)
        if why:
            raise UserError(f"--hosts: {why}" if args.hosts else f"hosts: {why}", None if args.hosts else config.path)
    return specs


def build_executors(config: Config, args: Options, specs: List[Any],
                    notes: Optional[List[str]] = None) -> List[Executor]:
    """Local workers (unless `-r` with no value empties them) plus every reachable host's GPUs.

    A host that cannot be reached is a warning on stderr, also appended to `notes` for the summary.
    """
    local = [] if args.resource == [] else resolve_resources(args.resource, config.resources)
    executors: List[Executor] = [LocalExecutor(r) for r in local]
    if specs:
        from ..backends.ssh import connect_hosts
        executors += connect_hosts(specs, args.accept_new_hosts, args.grace, notes)
    return executors
