"""Fast reading and writing of the small YAML mappings in `param` and `stat`.

PyYAML builds every scalar through Python-level constructor calls, even with the C parser, which
makes reading 10^4 `param` files take seconds. These files are block mappings of plain or
single-quoted scalars, nested mappings and sequences of mappings (as PyYAML writes them, and as
0.5.9 wrote them), so a line reader handles them; any line it is not sure of sends the whole text to PyYAML.
Scalars are typed by PyYAML's own implicit resolvers, so both paths give the same values. Writing
the same shapes with f-strings gives PyYAML's bytes at a fraction of its cost.
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
# Only `\n` ends a line here: a text holding another of YAML's line breaks (`\r`, U+0085, U+2028,
# U+2029), which PyYAML folds inside a quoted value, does not match and goes to PyYAML whole.
_ROW = (r"( *)(- )?([A-Za-z0-9_.-]+):"
        r"(?: ('(?:[^'\n\r\x85\u2028\u2029]|''|\n(?=[ \n]))*'(?=\n|\Z)|[^\n\r\x85\u2028\u2029]*))?(?:\n|\Z)")
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
    digits = text[1:] if text.startswith("-") else text
    if digits.isdigit() and digits.isascii() and (digits[0] != "0" or len(digits) == 1):  # 017 is octal
        return int(text)
    if _DECIMAL_RE.match(text):  # `1795841675.507`: PyYAML's float() of it, without its loader
        return float(text)
    if (not text or (text[0] in _INDICATORS and not (text[0] == "-" and text[1:2] not in ("", " ")))
            or ": " in text or " #" in text or text.endswith(":") or "\t" in text):
        raise _Unsure  # substring tests: a regex alternation costs more on long shell lines
    if not any(regexp.match(text) for _, regexp in _RESOLVERS.get(text[0], ())):
        return text
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


# --- writing ---------------------------------------------------------------------------------------
# The writer produces PyYAML's bytes without PyYAML for the shapes the runner writes: mappings of
# ASCII scalars, nested mappings, and lists of mappings (`_runs`). It follows PyYAML's emitter
# (`analyze_scalar`, `choose_scalar_style`, `write_single_quoted`) for these shapes only; anything
# else (non-ASCII text, a tab, a very long line, a repeated object, a float in exponent form) is
# handed to PyYAML whole, so the bytes never depend on which path wrote them.

_WRITE_RESOLVERS = yaml.SafeDumper.yaml_implicit_resolvers
_PRINTABLE_RE = re.compile(r"[ -~\n]*\Z")  # ASCII without control characters: no escapes needed
_LEADING_INDICATORS = "#,[]{}&*!|>'\"%@`"
_LONGEST = 10_000  # far below the 2**20 columns at which PyYAML would fold a line


def _plain(text: str) -> bool:
    """Would PyYAML write this string unquoted (a block-context plain scalar that reads back as str)?"""
    return not (text[0] in _LEADING_INDICATORS or text[0] == " " or text[-1] == " " or "\n" in text
                or (text[0] in "?:-" and (len(text) == 1 or text[1] == " "))
                or ": " in text or text[-1] == ":" or " #" in text or text.startswith(("---", "..."))
                or any(regexp.match(text) for _, regexp in _WRITE_RESOLVERS.get(text[0], ())))


def _string(text: str, indent: int, key: bool) -> str:
    """A string as PyYAML writes it, plain or single-quoted; `indent`: where a broken line goes on."""
    if len(text) > _LONGEST or not _PRINTABLE_RE.match(text) or " \n" in text or "\n " in text:
        raise _Unsure  # double-quoted or folded by PyYAML
    if key and (not text or "\n" in text or len(text) > 100):
        raise _Unsure  # a complex key (`? `) for PyYAML
    if text and _plain(text):
        return text
    quoted = text.replace("'", "''")
    if "\n\n" in quoted:  # a run of k line breaks is written as k + 1, then the indent
        quoted = re.sub(r"(\n+)", r"\1\n" + " " * indent, quoted)
    elif "\n" in quoted:
        quoted = quoted.replace("\n", "\n\n" + " " * indent)
    return f"'{quoted}'"


_KEYS: Dict[str, str] = {}  # `key: ` as written, for keys met before (the same few in every file)
_VALUES: Dict[str, str] = {}  # short one-line strings as written, for values met before


def _key_text(key: Any) -> str:
    if type(key) is not str:
        raise _Unsure
    text = _KEYS.get(key)
    if text is None:
        text = _string(key, 0, key=True)
        if len(_KEYS) > 10_000:
            _KEYS.clear()
        _KEYS[key] = text
    return text


def _scalar_text(value: Any, indent: int) -> str:
    kind = type(value)
    if kind is str:
        text = _VALUES.get(value)
        if text is None:
            text = _string(value, indent, key=False)
            if len(value) <= 24 and "\n" not in value:  # a status, a host, a label: not a path, no indent
                if len(_VALUES) > 10_000:
                    _VALUES.clear()
                _VALUES[value] = text
        return text
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if kind is float:
        text = repr(value)
        if _DECIMAL_RE.match(text):
            return text
    elif value is None:
        return "null"
    raise _Unsure


def _write_mapping(mapping: Dict[Any, Any], indent: int, sort_keys: bool, out: List[str], seen: set,
                   first: str) -> None:
    """`first` is what starts the first key's line (`- ` of a sequence item), the others are indented."""
    if not mapping or id(mapping) in seen:
        raise _Unsure  # `{}` in flow style, or an object PyYAML would write once and then alias
    seen.add(id(mapping))
    pad = " " * indent
    start = first
    for key, value in sorted(mapping.items()) if sort_keys else mapping.items():
        kind = type(value)
        if kind is dict:
            out.append(f"{start}{_key_text(key)}:\n")
            _write_mapping(value, indent + 2, sort_keys, out, seen, pad + "  ")
        elif kind is list:
            if not value or id(value) in seen:
                raise _Unsure
            seen.add(id(value))
            out.append(f"{start}{_key_text(key)}:\n")
            for item in value:
                if type(item) is not dict:
                    raise _Unsure
                _write_mapping(item, indent + 2, sort_keys, out, seen, pad + "- ")
        else:
            out.append(f"{start}{_key_text(key)}: {_scalar_text(value, indent + 2)}\n")
        start = pad


def _pyyaml_dumps(data: Any, sort_keys: bool = True, dumper: Any = _Dumper) -> str:
    return yaml.dump(data, Dumper=dumper, default_flow_style=False, width=1 << 20, allow_unicode=True,
                     sort_keys=sort_keys)


def dumps(data: Dict[str, Any], sort_keys: bool = True) -> str:
    """A `param` or `stat` file's text: exactly PyYAML's, written without it for the usual shapes."""
    if type(data) is dict:
        out: List[str] = []
        try:
            _write_mapping(data, 0, sort_keys, out, set(), "")
            return "".join(out)
        except (_Unsure, TypeError):  # TypeError: keys that do not sort
            pass
    return _pyyaml_dumps(data, sort_keys)

