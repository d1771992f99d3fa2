"""A name made safe as one path component: what both an experiment's directory (the plan) and a
record's files (the run) are named through, so the run's records need nothing of the plan.
"""

from __future__ import annotations

import hashlib

MAX_NAME_BYTES = 255


def safe_name(name: str) -> str:
    """Keep a name one path component of at most 255 bytes, with a stable hash when cut."""
    name = name.replace("/", "_").replace("\0", "_")
    if name in ("", ".", ".."):
        name = "_" + name
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.sha1(encoded).hexdigest()[:10]
    head = encoded[:MAX_NAME_BYTES - len(digest) - 1].decode("utf-8", "ignore")
    return f"{head}-{digest}"
