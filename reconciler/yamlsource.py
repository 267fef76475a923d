"""YAML reading that remembers where every value came from.

PyYAML's safe loader silently keeps the last of two equal keys and forgets
line numbers once it has built Python objects. Specs need both: a duplicate
key is an error, and every error names ``file:line:column``. This loader
builds ``Node``-located dicts and lists and collects problems instead of
stopping at the first one.
"""

from __future__ import annotations

from typing import Any

import attrs
import yaml

from reconciler.errors import Problem

# Anchors and aliases are legitimate YAML, but a handful of nested aliases
# expand into billions of nodes when walked ("billion laughs"). Specs never
# need many.
MAX_ALIASES = 64
# ... and even 64 can double a list 32 times: cap how many values aliases add, since every
# check and message that walks or prints a value would expand them.
MAX_ALIAS_EXPANSION = 10_000
# PyYAML's scalar constructors trust the tag: ``!!int abc``, ``!!bool maybe`` or a date such as
# 2024-13-45 raise these plain Python errors instead of a YAMLError.
_MERGE_TAG = "tag:yaml.org,2002:merge"
_CONSTRUCTION_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError)


@attrs.frozen(order=True)
class Location:
    """Where a value sits in a source file (1-based line and column)."""

    file: str
    line: int
    column: int

    def problem(self, message: str, hint: str = "") -> Problem:
        return Problem(self.file, self.line, self.column, message, hint)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class LocatedDict(dict):
    """A mapping that knows where it, each key and each value came from."""

    where: Location
    key_where: dict[Any, Location]
    value_where: dict[Any, Location]


class LocatedList(list):
    """A sequence that knows where it and each item came from."""

    where: Location
    item_where: list[Location]


class _Refused(yaml.MarkedYAMLError):
    """Something this loader refuses, at a place in the file, with the way out."""

    def __init__(self, problem: str, mark: yaml.Mark, hint: str) -> None:
        super().__init__(problem=problem, problem_mark=mark)
        self.hint = hint


def _location(file: str, node: yaml.Node) -> Location:
    mark = node.start_mark
    return Location(file, mark.line + 1, mark.column + 1)


class _Loader(yaml.SafeLoader):
    """SafeLoader with located containers, duplicate-key and alias checks."""

    def __init__(self, stream: str, file: str) -> None:
        super().__init__(stream)
        self.file = file
        self.problems: list[Problem] = []
        self.aliases = 0
        self.first_alias: yaml.Mark | None = None

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            self.first_alias = self.first_alias or self.peek_event().start_mark
            if self.aliases > MAX_ALIASES:
                raise _Refused(
                    f"more than {MAX_ALIASES} aliases (*name) in one file",
                    self.peek_event().start_mark,
                    "write the values out; a spec never needs that many aliases",
                )
        return super().compose_node(parent, index)

    def construct_document(self, node):
        expanded, written = _sizes(node)
        if expanded - written > MAX_ALIAS_EXPANSION:
            raise _Refused(
                f"the aliases (*name) expand to {expanded:,} values",
                self.first_alias or node.start_mark,
                "write the values out; a spec never needs aliases nested this deep",
            )
        return super().construct_document(node)

    def construct_object(self, node, deep=False):
        if node in self.recursive_objects:
            raise _Refused(
                "an alias (*name) refers to the mapping or list that contains it",
                node.start_mark,
                "write the values out instead of the alias",
            )
        try:
            return super().construct_object(node, deep=deep)
        except _CONSTRUCTION_ERRORS:
            raise _Refused(
                f"this value cannot be read as {_short(node.tag)}",
                node.start_mark,
                "quote the value to make it text, or remove the tag",
            ) from None

    def construct_unknown(self, node: yaml.Node) -> None:
        raise _Refused(
            f"the tag {_short(node.tag)} is not allowed in a spec",
            node.start_mark,
            "remove the tag; a spec holds plain mappings, lists, strings and numbers",
        )

    def _expect(self, node: yaml.Node, kind: type[yaml.Node], what: str) -> None:
        # an explicit !!map or !!seq tag can sit on the other kind of node
        if not isinstance(node, kind):
            raise _Refused(
                f"{_short(node.tag)} expects {what}, but found a {node.id}",  # type: ignore[attr-defined]
                node.start_mark,
                "remove the tag",
            )

    def construct_located_mapping(self, node: yaml.MappingNode) -> LocatedDict:
        self._expect(node, yaml.MappingNode, "a mapping")
        own = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
        self.flatten_mapping(node)
        # flatten_mapping puts the entries of "<<: *base" first; a key written after them
        # overrides them (that is what merging is for), it is no duplicate
        merged = len(node.value) - own
        result = LocatedDict()
        result.where = _location(self.file, node)
        result.key_where, result.value_where = {}, {}
        overridable: set[str] = set()
        for index, (key_node, value_node) in enumerate(node.value):
            key = self.construct_object(key_node, deep=True)
            where = _location(self.file, key_node)
            if not isinstance(key, str):
                self.problems.append(
                    where.problem(
                        f"key {key!r} is not a string",
                        f'quote it: "{key}"' if key is not None else "give the key a name",
                    )
                )
                key = str(key)
            if key in overridable:
                del result[key]
            if index < merged:
                overridable.add(key)
            else:
                overridable.discard(key)
            if key in result:
                first = result.key_where[key]
                self.problems.append(
                    where.problem(
                        f"duplicate key {key!r} (first defined on line {first.line})",
                        "remove one of them (many YAML tools silently keep only the last)",
                    )
                )
                continue
            result[key] = self.construct_object(value_node, deep=True)
            result.key_where[key] = where
            result.value_where[key] = _location(self.file, value_node)
        return result

    def construct_located_sequence(self, node: yaml.SequenceNode) -> LocatedList:
        self._expect(node, yaml.SequenceNode, "a list")
        result = LocatedList(self.construct_object(child, deep=True) for child in node.value)
        result.where = _location(self.file, node)
        result.item_where = [_location(self.file, child) for child in node.value]
        return result


_Loader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _Loader.construct_located_mapping
)
_Loader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _Loader.construct_located_sequence
)
# Only the safe tags have constructors; anything else (!!python/object, !custom) is refused.
_Loader.add_constructor(None, _Loader.construct_unknown)


def load_yaml(text: str, file: str) -> tuple[Any, list[Problem]]:
    """Parse ``text`` (from ``file``) into located containers.

    Returns the document (``None`` for an empty one) and the problems found
    while building it. A syntax error comes back as the only problem and a
    ``None`` document; nothing is raised.
    """
    try:
        loader = _Loader(text, file)
    except yaml.reader.ReaderError as exc:  # checked up front, for the whole text
        return None, [_unprintable(text, file, exc)]
    try:
        document = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        return None, [_marked(exc, file)]
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, [Problem(file, 1, 1, f"YAML error: {first}", "fix the YAML")]
    except RecursionError:
        mark = loader.get_mark()  # where the reader had got to: inside the deepest nesting
        where = (mark.line + 1, mark.column + 1)
        return None, [Problem(file, *where, "YAML nested too deeply", "flatten the document")]
    finally:
        loader.dispose()
    return document, loader.problems


def _sizes(root: yaml.Node) -> tuple[int, int]:
    """How many values the document has with aliases expanded, and as written."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = 1  # a cycle counts once; construction refuses it
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(key) + size(value) for key, value in node.value)
        sizes[id(node)] = total
        return total

    return size(root), len(sizes)


def _short(tag: str) -> str:
    return tag.replace("tag:yaml.org,2002:", "!!")


def _marked(exc: yaml.MarkedYAMLError, file: str) -> Problem:
    """One located problem from a PyYAML error (or a _Refused one)."""
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    if isinstance(exc, _Refused):
        return Problem(file, line, column, f"YAML error: {exc.problem}", exc.hint)
    problem, context, opened = exc.problem or "", exc.context or "", exc.context_mark
    hint = "fix the YAML"
    if "\\t" in problem:
        hint = "indent with spaces, not tabs"
    elif context.startswith("expected a single document"):
        problem = "a second document (---) in one file"
        hint = "keep one document per spec file"
    elif isinstance(exc, yaml.constructor.ConstructorError):
        hint = "remove the tag, or quote the value to make it text"
    elif context.startswith("while ") and opened is not None and opened.line + 1 != line:
        # e.g. an unclosed [ is only noticed lines later: say where it began
        what = context.removeprefix("while parsing ").removeprefix("while scanning ")
        problem = f"{problem} (in {what} that starts on line {opened.line + 1})"
    # a constructor error is about a value (a tag, a shape), not the syntax
    value = isinstance(exc, yaml.constructor.ConstructorError)
    kind = "YAML error" if value else "YAML syntax error"
    return Problem(file, line, column, f"{kind}: {problem or context}", hint)


def _unprintable(text: str, file: str, exc: yaml.reader.ReaderError) -> Problem:
    """A character YAML does not allow (a NUL, another control character), located."""
    position = exc.position
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    return Problem(
        file,
        line,
        column,
        f"character U+{exc.character:04X} is not allowed in YAML",
        "remove it; a spec is plain text",
    )
