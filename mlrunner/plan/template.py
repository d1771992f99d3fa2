"""Command templates: `{p}` and `[p]` placeholders -> one shell line (SPEC C6, C7, R2)."""

from __future__ import annotations

import re
import shlex
from typing import Any, List, Mapping, Optional, Tuple, Union

RESERVED = ("_output", "_name", "_time", "_resource", "_host")
# `{{`, `}}`, `[[` and `]]` are literal braces and brackets (I6), matched first so that `{{x}}` is
# the text `{x}`; `${VAR}` is the shell's own syntax, so a `{` right after `$` is left alone.
PLACEHOLDER_RE = re.compile(r"(\{\{|\}\}|\[\[|\]\])|(?<!\$)\{([A-Za-z0-9_-]+)\}|\[([A-Za-z0-9_-]+)\]")
LINE_BREAK_RE = re.compile(r"\s*\n\s*")

Segment = Union[str, Tuple[str, str]]  # literal text, or (kind, param) with kind "{" or "["


def quote(value: Any) -> str:
    """Shell-quote a value so that it always reaches the command as one literal argument."""
    return shlex.quote(value if isinstance(value, str) else str(value))


class Template:
    """A command template, parsed once so that rendering a task is a join of strings."""

    def __init__(self, name: str, text: str, line: Optional[int] = None):
        self.name = name
        self.line = line  # where the template is in params.yaml, for errors found at expansion
        self.text = LINE_BREAK_RE.sub(" ", text).strip()
        self.segments: List[Segment] = []
        self.braced = set()  # params used as {p}: a bool there is an error (C6)
        position = 0
        literal = ""
        for match in PLACEHOLDER_RE.finditer(self.text):
            literal += self.text[position:match.start()]
            position = match.end()
            if match.group(1):
                literal += match.group(1)[0]
                continue
            self.segments.append(literal)
            literal = ""
            param = match.group(2) or match.group(3)
            if param.startswith("_") and param not in RESERVED:
                raise ValueError(f"template '{name}': unknown reserved placeholder '{match.group(0)}' "
                                 f"(reserved: {', '.join('{' + r + '}' for r in RESERVED)})")
            kind = "{" if match.group(2) else "["
            if kind == "{":
                self.braced.add(param)
            self.segments.append((kind, param))
        self.segments.append(literal + self.text[position:])
        self.params = {seg[1] for seg in self.segments if isinstance(seg, tuple) and not seg[1].startswith("_")}

    def render(self, values: Mapping[str, Any]) -> str:
        """Fill the placeholders; `values` holds the task's params and the reserved `_` names."""
        out: List[str] = []
        for index, segment in enumerate(self.segments):
            if isinstance(segment, str):
                out.append(segment)
                continue
            kind, param = segment
            value = values[param]
            if kind == "{":
                out.append(quote(value))
            elif value is True:
                out.append(f"--{param}")
            elif value is False:
                # Drop the flag and one space beside it, so `a [flag] b` becomes `a b`; the text
                # after a placeholder is always a literal, and `a [flag]b` must stay two words.
                if out and out[-1].endswith(" ") and self.segments[index + 1].startswith(" "):
                    out[-1] = out[-1][:-1]
            else:
                out.append(f"--{param} {quote(value)}")
        return "".join(out).strip()


def shell_line(command: str, resource: str, log: str, debug: bool = False) -> str:
    """The line a worker runs under bash (R2, I6); in debug mode the log is also shown (R9 -d).

    The command runs as one group under the redirect, so `a; b`, `a && b` and `a | b` log all
    their output, and the group's status is the one bash gives the line. The group closes on a
    line of its own, so a trailing `# comment`, `&` or `;` in the command stays harmless.
    """
    group = f"export CUDA_VISIBLE_DEVICES={quote(resource)}; {{ {command}\n}}"
    if debug:
        return f"{group} 2>&1 | tee {quote(log)}"
    return f"{group} > {quote(log)} 2>&1"


def log_name(command: str, time: str, name: Optional[str] = None) -> str:
    """`log.<cmd>.<time>`, with the experiment name appended under --no-subdir."""
    return f"log.{command}.{time}" + (f".{name}" if name is not None else "")
