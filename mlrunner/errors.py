"""Errors that the user can act on: each is printed as one line, never as a traceback."""

from __future__ import annotations

import reprlib
from typing import Any, Optional

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_HANGUP = 129
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class UserError(Exception):
    """A mistake in the config file or the command line (exit status 2)."""

    def __init__(self, message: str, path: Optional[str] = None, line: Optional[int] = None):
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line

    def __str__(self) -> str:
        if self.path and self.line:
            return f"{self.path}:{self.line}: {self.message}"
        if self.path:
            return f"{self.path}: {self.message}"
        return self.message


_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 200
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 8
_SHOWN.maxlevel = 3


def shown(value: Any, limit: int = 200) -> str:
    """A value from the user's file as an error quotes it: its repr, at most about `limit`
    characters, built without expanding the rest (a YAML bomb is 10^9 items behind one alias)."""
    text = _SHOWN.repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"
