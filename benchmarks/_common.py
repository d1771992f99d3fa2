"""What the benchmark scripts share."""

from __future__ import annotations

import os
import time
from typing import List, Optional


def busy_cores(seconds: float = 2.0) -> Optional[float]:
    """Cores kept busy by others while this script sleeps (/proc/stat): such load skews every figure."""
    def sample() -> List[int]:
        with open("/proc/stat", encoding="ascii") as stream:
            return [int(x) for x in stream.readline().split()[1:]]
    try:
        before = sample()
        time.sleep(seconds)
        after = sample()
    except OSError:
        return None
    delta = [b - a for a, b in zip(before, after)]
    total, idle = sum(delta), delta[3] + delta[4]  # idle + iowait
    return (total - idle) / total * (os.cpu_count() or 1) if total else None
