"""Fast reading and writing of the small YAML mappings in `param` and `stat`.

PyYAML builds every scalar through Python-level constructor calls, even with the C parser, which
makes reading 10^4 `param` files take seconds. These files are block mappings of plain or
single-quoted scalars, nested mappings and sequences of mappings (as PyYAML writes them, and as
0.5.9 wrote them), so a line reader handles them; any line it is not sure of sends the whole text to PyYAML.
Scalars are typed by PyYAML's own implicit resolvers, so both paths give the same values.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterator, List, Optional, Tuple

import yaml

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_RESOLVERS = yaml.SafeLoader.yaml_implicit_resolvers
# A line `key: value` or `- key: value`; a single-quoted value may go on over indented lines
# (and blank ones), as PyYAML writes a shell line with line breaks.
_ROW = r"( *)(- )?([A-Za-z0-9_.-]+):(?: ('(?:[^'\n]|''|\n(?=[ \n]))*'(?=\n|\Z)|[^\n]*))?(?:\n|\Z)"
_ROW_RE = re.compile(_ROW)
_TEXT_RE = re.compile(rf"(?:{_ROW})*\Z")
_DECIMAL_RE = re.compile(r"-?[0-9]+\.[0-9]+\Z")
_INDICATORS = "[]{}&*!|>%@`\"#?,-"  # a plain scalar starting with one of these is not plain
_memo: Dict[str, Any] = {}


class _Unsure(Exception):
    """The fast reader met YAML it does not handle; PyYAML reads the text instead."""


def _scalar(text: str) -> Any:
    """A plain or single-quoted scalar, typed exactly as PyYAML types it; short ones are memoised."""
    if text in _memo:
        return _memo[text]
    value = _resolve(text.strip())
    if len(text) <= 64:
        if len(_memo) > 100_000:
            _memo.clear()
        _memo[text] = value
    return value


def _resolve(text: str) -> Any:
    if text.startswith("'"):
        if len(text) < 2 or not text.endswith("'") or "'" in text[1:-1].replace("''", ""):
            raise _Unsure
        return text[1:-1].replace("''", "'")
    if (not text or text[0] in _INDICATORS or ": " in text or " #" in text or text.endswith(":")
            or "\t" in text):
        raise _Unsure  # substring tests: a regex alternation costs more on long shell lines
    if not any(regexp.match(text) for _, regexp in _RESOLVERS.get(text[0], ())):
        return text
    if text.isdigit() and (text[0] != "0" or len(text) == 1):  # YAML 1.1 reads 017 as octal
        return int(text)
    if _DECIMAL_RE.match(text):  # `1795841675.507`: PyYAML's float() of it, without its loader
        return float(text)
    return yaml.load(text, Loader=_Loader)  # another number, a bool or null


def _rows(text: str) -> List[Tuple[str, str, str, str]]:
    """(indent, item mark, key, value) of every line, a single-quoted value over several lines
    folded into one; two regex passes in C when the whole text has this shape."""
    if not _TEXT_RE.match(text):
        raise _Unsure
    rows = _ROW_RE.findall(text)
    for position, (spaces, item, key, value) in enumerate(rows):
        if "\n" in value:
            lines = value.split("\n")
            rows[position] = (spaces, item, key, _fold(lines[0], iter(lines[1:])))
    return rows


def _closed(value: str) -> bool:
    """Is this a whole single-quoted scalar (`''` is an escaped quote, not an end)?"""
    return len(value) >= 2 and value.endswith("'") and "'" not in value[1:-1].replace("''", "")


def _fold(first: str, lines: Iterator[str]) -> str:
    """A single-quoted scalar over several lines, as one line: PyYAML writes each run of k line
    breaks in the value as k + 1 breaks and indents the rest; one break alone is a space."""
    parts, breaks = [first], 0
    for line in lines:
        if not line.strip():
            breaks += 1
            continue
        parts.append("\n" * breaks if breaks else " ")
        parts.append(line.strip(" \t"))
        breaks = 0
        if _closed("".join(parts)):
            return "".join(parts)
    raise _Unsure


def _fast(text: str) -> Dict[Any, Any]:
    """Block mappings and sequences of block mappings, as PyYAML dumps `param` and `stat`.

    `frames` holds the open containers: a mapping with the indent of its keys, or a sequence with
    the indent of its `- ` marks. A `key:` with nothing after it opens whatever the next line
    holds: a deeper mapping, a sequence, or nothing (null).
    """
    top: Dict[Any, Any] = {}
    frames: List[Tuple[bool, int, Any]] = [(False, 0, top)]  # (is a sequence, indent, container)
    pending: Optional[Tuple[Dict[Any, Any], Any, int]] = None
    memo = _memo
    for spaces, item, key_text, value in _rows(text):
        indent = len(spaces)
        if pending is not None:
            parent, parent_key, parent_indent = pending
            pending = None
            if item and indent >= parent_indent:
                parent[parent_key] = []
                frames.append((True, indent, parent[parent_key]))
            elif not item and indent > parent_indent:
                parent[parent_key] = {}
                frames.append((False, indent, parent[parent_key]))
        while frames[-1][1] > indent or (frames[-1][0] and frames[-1][1] == indent and not item):
            frames.pop()
        is_sequence, level, container = frames[-1]
        if level != indent or is_sequence != bool(item):
            raise _Unsure
        if item:
            mapping: Dict[Any, Any] = {}
            container.append(mapping)
            frames.append((False, indent + 2, mapping))
            indent += 2
        else:
            mapping = container
        key = memo[key_text] if key_text in memo else _scalar(key_text)
        if not value.strip():
            mapping[key] = None
            pending = (mapping, key, indent)
        else:
            mapping[key] = memo[value] if value in memo else _scalar(value)
    if not top:
        raise _Unsure  # an empty text is null in YAML, not {}
    return top


def loads(text: str) -> Any:
    """Parse a `param` or `stat` file's text; any YAML is accepted, the common shape is fast."""
    try:
        return _fast(text)
    except _Unsure:
        return yaml.load(text, Loader=_Loader)


def dumps(data: Dict[str, Any], sort_keys: bool = True) -> str:
    return yaml.dump(data, Dumper=_Dumper, default_flow_style=False, width=1 << 20, allow_unicode=True,
                     sort_keys=sort_keys)

