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
# PyYAML's scalar constructors trust the tag: ``!!int abc``, ``!!bool maybe`` or a date such as
# 2024-13-45 raise these plain Python errors instead of a YAMLError.
_CONSTRUCTION_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError)
_SHORT_TAG = "tag:yaml.org,2002:"


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

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise yaml.MarkedYAMLError(
                    problem=f"more than {MAX_ALIASES} aliases (*name) in one file",
                    problem_mark=mark,
                )
        return super().compose_node(parent, index)

    def construct_object(self, node, deep=False):  # type: ignore[no-untyped-def]
        try:
            return super().construct_object(node, deep=deep)
        except _CONSTRUCTION_ERRORS:
            tag = node.tag.replace(_SHORT_TAG, "!!")
            raise yaml.constructor.ConstructorError(
                problem=f"this value cannot be read as {tag}", problem_mark=node.start_mark
            ) from None

    def construct_unknown(self, node: yaml.Node) -> None:
        tag = node.tag.replace(_SHORT_TAG, "!!")
        raise yaml.constructor.ConstructorError(
            problem=f"the tag {tag} is not allowed in a spec", problem_mark=node.start_mark
        )

    def _expect(self, node: yaml.Node, kind: type[yaml.Node], what: str) -> None:
        # an explicit !!map or !!seq tag can sit on the other kind of node
        if not isinstance(node, kind):
            raise yaml.constructor.ConstructorError(
                problem=f"expected {what}, but found {node.id}", problem_mark=node.start_mark
            )

    def construct_located_mapping(self, node: yaml.MappingNode) -> LocatedDict:
        self._expect(node, yaml.MappingNode, "a mapping")
        self.flatten_mapping(node)
        result = LocatedDict()
        result.where = _location(self.file, node)
        result.key_where, result.value_where = {}, {}
        for key_node, value_node in node.value:
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
            if key in result:
                first = result.key_where[key]
                self.problems.append(
                    where.problem(
                        f"duplicate key {key!r} (first defined on line {first.line})",
                        "remove one of them; YAML keeps only the last",
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
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        if isinstance(exc, yaml.constructor.ConstructorError):
            # about a value (a tag, a date that does not exist), not the syntax
            message = f"YAML error: {exc.problem or exc.context}"
            hint = "remove the tag, or quote the value to make it text"
        else:
            message = f"YAML syntax error: {exc.problem or exc.context}"
            hint = "indent with spaces, not tabs" if "\\t" in str(exc.problem) else "fix the YAML"
        return None, [Problem(file, line, column, message, hint)]
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
