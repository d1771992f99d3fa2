"""`params.yaml` as YAML documents that remember the line of every key, read fast (libyaml when
PyYAML has it) and with one clear `file:line:` error for a file that is not YAML (SPEC C1)."""

from __future__ import annotations

from typing import Any, Iterator, List, Optional

import yaml

from ..errors import UserError, shown


class Doc:
    """A constructed YAML document that still knows the line of every mapping key."""

    def __init__(self, node: yaml.Node, data: Any):
        self.node = node
        self.data = data

    def line(self, *keys: Any) -> Optional[int]:
        node = self.node
        found = node.start_mark.line + 1
        for key in keys:
            if not isinstance(node, yaml.MappingNode):
                break
            for key_node, value_node in node.value:
                if key_node.value == str(key):
                    node, found = value_node, key_node.start_mark.line + 1
                    break
            else:
                break
        return found


_INT_TAG = "tag:yaml.org,2002:int"
_STR_TAG = "tag:yaml.org,2002:str"


def _plain_decimal(value: str) -> bool:
    """`7`, `100000`: what fills long sweep lists, an int to YAML 1.1 (`017` is octal, `1_0` has a `_`)."""
    return value.isdigit() and value.isascii() and (value[0] != "0" or len(value) == 1)


def _loader(base: type) -> type:
    """`base` with a shortcut for plain decimals; every other scalar goes through PyYAML's resolvers."""

    class Loader(base):  # type: ignore[misc, valid-type]
        def resolve(self, kind: type, value: Any, implicit: Any) -> str:
            if kind is yaml.ScalarNode and implicit[0] and value.isdigit() and value.isascii() \
                    and (value[0] != "0" or len(value) == 1):  # _plain_decimal, inlined: 10^5 calls
                return _INT_TAG
            return super().resolve(kind, value, implicit)

    return Loader


# libyaml's parser when PyYAML has it (a long sweep list parses ~10x faster); a file it refuses is
# parsed again by PyYAML's own, so that every install says the same thing.
_FAST_LOADER = _loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader))
_PURE_LOADER = _loader(yaml.SafeLoader)


class _Constructor(yaml.SafeLoader):
    """PyYAML's safe constructor, but a list's plain ints and strings are built without a call each."""

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> List[Any]:
        out = []
        for child in node.value:
            if type(child) is yaml.ScalarNode and child.tag == _INT_TAG and _plain_decimal(child.value):
                out.append(int(child.value))
            elif type(child) is yaml.ScalarNode and child.tag == _STR_TAG:
                out.append(child.value)
            else:
                out.append(self.construct_object(child, deep=deep))
        return out


def _nodes(root: yaml.Node, scalars: bool = True) -> Iterator[yaml.Node]:
    """Every node once, in file order (without scalars: the containers only); an anchor can make
    the graph cyclic (`x: &a [*a]`)."""
    seen = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        if isinstance(node, yaml.MappingNode):
            stack.extend(reversed([child for pair in node.value for child in pair]))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value if scalars else
                                  [child for child in node.value if type(child) is not yaml.ScalarNode]))


def _check_duplicate_keys(root: yaml.Node, path: str) -> None:
    """PyYAML keeps the last of two equal keys silently; a sweep would lose values."""
    for node in _nodes(root, scalars=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue  # `? [a, b]`: PyYAML itself rejects it as unhashable, with its line
                if (key_node.tag, key_node.value) in seen:
                    raise UserError(f"duplicate key '{key_node.value}'", path, key_node.start_mark.line + 1)
                seen.add((key_node.tag, key_node.value))


def _construct(root: yaml.Node, path: str) -> Any:
    """Build the document; PyYAML raises a bare ValueError for `2020-13-45` or `!!int abc`, with no line."""
    try:
        return _Constructor("").construct_document(root)
    except (ValueError, TypeError, OverflowError) as error:
        for node in _nodes(root):
            if isinstance(node, yaml.ScalarNode):
                try:
                    yaml.SafeLoader("").construct_object(node)
                except (ValueError, TypeError, OverflowError):
                    raise UserError(f"invalid value {shown(node.value)}: {shown(str(error))}", path,
                                    node.start_mark.line + 1) from None
        raise UserError(f"invalid value: {error}", path, root.start_mark.line + 1) from None


def read_docs(path: str) -> List[Doc]:
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except FileNotFoundError:
        raise UserError("file not found (create it, or name another one with -y)", path) from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read: {error}", path) from None
    try:
        try:
            nodes = list(yaml.compose_all(text, Loader=_FAST_LOADER))
        except yaml.YAMLError:
            nodes = list(yaml.compose_all(text, Loader=_PURE_LOADER))
        docs = []
        for node in nodes:
            _check_duplicate_keys(node, path)
            docs.append(Doc(node, _construct(node, path)))
    except yaml.YAMLError as error:
        raise _yaml_error(error, text, path) from None
    return docs


def _yaml_error(error: yaml.YAMLError, text: str, path: str) -> UserError:
    """PyYAML's sentence, except where it points at the wrong place or speaks in parser terms."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    line = mark.line + 1 if mark else None
    if "'\\t'" in problem:  # "found character '\t' that cannot start any token"
        tabbed = [n for n, row in enumerate(text.splitlines(), 1) if "\t" in row[:len(row) - len(row.lstrip())]]
        before = [n for n in tabbed if line is None or n <= line]
        return UserError("a tab in the indentation: YAML indents with spaces only",
                         path, (before or tabbed or [line])[-1])
    context = getattr(error, "context", None) or ""
    context_mark = getattr(error, "context_mark", None)
    if context in ("while parsing a flow sequence", "while parsing a flow mapping") and context_mark is not None:
        opener, closer = ("[", "]") if "sequence" in context else ("{", "}")
        return UserError(f"'{opener}' is never closed: no '{closer}' before line {line}",
                         path, context_mark.line + 1)
    last = len(text.rstrip().splitlines())
    if line is not None and line > last:  # "<stream end>" is past the last line: name the last one
        line = last
    return UserError(f"invalid YAML: {problem}", path, line)
