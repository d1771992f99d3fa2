"""What the command line asked for, as one typed, frozen value: `cli.py` makes it from the parsed
flags and passes it down, so nothing below the CLI sees argparse.

Each field is the flag of the same name (`--no-subdir` is `no_subdir`); the defaults are the
parser's (tests/test_layout.py checks that they agree). A Slurm element rebuilds its submission's
options from the manifest, which holds the ones it needs (`slurm/submit.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple


@dataclass(frozen=True)
class Options:
    # running
    yaml: Optional[str] = None
    output: str = "output"
    force: bool = False
    debug: bool = False
    dry_run: bool = False
    all: bool = False
    fail_fast: bool = False
    retry: int = 0
    no_subdir: bool = False
    # choosing what runs
    title: Optional[str] = None
    command: Optional[List[str]] = None
    sample: Optional[int] = None
    sample_seed: Optional[int] = None
    max_tasks: Optional[int] = None
    no_dedup: bool = False
    rerun_stopped: bool = False
    # changed configs
    rerun_changed: bool = False
    keep_changed: bool = False
    # long runs
    timeout: Optional[float] = None
    grace: float = 10.0
    detach: bool = False
    stop: bool = False
    follow: Optional[str] = None
    # viewing
    status: bool = False
    examine: bool = False
    format: Optional[str] = None
    sort: Optional[str] = None
    best: Optional[Tuple[str, int]] = None
    mean_over: Optional[str] = None
    provenance: bool = False
    report: Optional[str] = None
    # hosts, Slurm, GPUs
    hosts: Optional[str] = None
    accept_new_hosts: bool = False
    slurm: bool = False
    wait: bool = False
    slurm_element: Optional[str] = None  # the manifest of the array element this process runs (S1)
    resource: Optional[List[str]] = None
    # not a flag: the code a Slurm submission recorded for its elements (P1, P2)
    frozen_code: Optional[Dict[str, Any]] = None

    @classmethod
    def from_flags(cls, flags: Any) -> "Options":
        """From argparse's namespace (`cli.py`): every attribute it has must be a field."""
        return cls(**vars(flags))
