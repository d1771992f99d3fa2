"""The failures at the end of a run, readable at any count: grouped by reason, capped, with the
counts after them (SPEC T6). 200 failures of one cause read as one cause, not 200 lines."""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from .console import log_tail

PER_REASON = 3  # experiments listed for one reason
LISTED = 10  # experiments listed in all
TAIL_LINES = 5  # of the log of the first experiment of each reason


def failure_lines(failures: Sequence, more: str) -> List[str]:
    """`Failed:`, each reason's first experiments (the first with its log's last lines), `… and N
    more: <more>` when some are left out, and the count of each reason when there is more than one
    failure. `failures` have `output`, `command`, `reason`, `log` and `order` (the task's place in the
    plan): each reason's experiments are listed in plan order, whatever order they failed in."""
    groups: Dict[Tuple[str, str], List] = {}
    for failure in sorted(failures, key=lambda failure: failure.order):
        groups.setdefault((failure.command, failure.reason), []).append(failure)
    lines = ["Failed:"]
    listed = 0
    for group in groups.values():
        for position, failure in enumerate(group[:PER_REASON]):
            if listed == LISTED:
                break
            listed += 1
            lines.append(f"    {failure.output} ({failure.command}: {failure.reason})")
            if position == 0 and failure.log:
                lines.append(f"        log: {failure.log}")
                lines.extend(f"        | {line}" for line in log_tail(failure.log, TAIL_LINES))
    if listed < len(failures):
        lines.append(f"    … and {len(failures) - listed} more: {more}")
    if len(failures) > 1:
        counts = sorted(groups.items(), key=lambda item: -len(item[1]))  # stable: first come first among equals
        lines.append("Failed by reason: " + "; ".join(f"{command}: {reason}: {len(group)}"
                                                      for (command, reason), group in counts))
    return lines
