"""Load one YAML document defensively, remembering where every value came from.

PyYAML's safe loader still accepts things a spec must not contain: duplicate keys (it keeps the last one),
alias bombs (expansion is exponential), recursion thousands deep (its composer recurses), YAML 1.1 booleans
such as ``no`` (the "Norway problem"), and any number of documents. This module parses events first,
iteratively and with bounds, then builds plain JSON-like values itself so that every value keeps the line
and column it was written at. Positions are 1-based, as editors show them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
# Counted after alias expansion, so a "billion laughs" document stops here instead of eating memory.
MAX_NODES = 100_000

JsonPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Position:
    line: int
    column: int


@dataclass(frozen=True)
class YamlProblem(Exception):
    """A document that can't be read; position points into the file."""

    position: Position
    message: str

    def __str__(self) -> str:
        return f"{self.position.line}:{self.position.column}: {self.message}"


@dataclass(frozen=True)
class LoadedDocument:
    data: Any
    positions: dict[JsonPath, Position]
    key_positions: dict[JsonPath, Position]

    def position_of(self, path: JsonPath) -> Position:
        """The closest written position for a path: the value itself, else its nearest ancestor."""
        probe = tuple(path)
        while probe:
            if probe in self.positions:
                return self.positions[probe]
            probe = probe[:-1]
        return self.positions.get((), Position(1, 1))


class _Resolver(yaml.resolver.BaseResolver):
    """YAML 1.2 core schema: only true/false are booleans, no octal or sexagesimal surprises."""


_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
_Resolver.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])


class _PyLoader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, yaml.composer.Composer, _Resolver):
    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        _Resolver.__init__(self)


if yaml.__with_libyaml__:
    # libyaml parses about five times faster (a 500-store spec in ~0.1 s instead of ~0.7 s) and reports
    # the same marks; its composer recurses in C, which is safe because the event pass bounds depth first.
    class _CLoader(yaml.cyaml.CParser, _Resolver):  # type: ignore[misc,name-defined]
        def __init__(self, stream: str) -> None:
            yaml.cyaml.CParser.__init__(self, stream)  # type: ignore[attr-defined]
            _Resolver.__init__(self)

    _Loader: type[Any] = _CLoader
else:  # pragma: no cover - PyYAML built without libyaml
    _Loader = _PyLoader


_ALLOWED_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}


def _pos(mark: Any) -> Position:
    if mark is None:
        return Position(1, 1)
    return Position(mark.line + 1, mark.column + 1)


def _decode(raw: bytes) -> str:
    if len(raw) > MAX_BYTES:
        raise YamlProblem(Position(1, 1), f"file is {len(raw):,} bytes; a spec may be at most {MAX_BYTES:,} bytes")
    if b"\x00" in raw:
        offset = raw.index(b"\x00")
        line = raw.count(b"\n", 0, offset) + 1
        column = offset - (raw.rfind(b"\n", 0, offset) + 1) + 1
        raise YamlProblem(Position(line, column), "binary data (NUL byte): a spec is a UTF-8 YAML text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise YamlProblem(Position(line, column), f"not valid UTF-8 (byte 0x{raw[exc.start]:02x})") from None
    return text.removeprefix("\ufeff")


def _check_events(text: str) -> None:
    """Walk the event stream (PyYAML's parser is iterative) to bound depth and refuse extra documents."""
    depth = 0
    documents = 0
    loader: Any = None
    try:
        loader = _Loader(text)  # the reader rejects control characters already here
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise YamlProblem(
                        _pos(event.start_mark), "more than one YAML document: a spec file holds exactly one"
                    )
            elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise YamlProblem(_pos(event.start_mark), f"nested more than {MAX_DEPTH} levels deep")
            elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                depth -= 1
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if "nesting depth" in problem:  # libyaml's own, lower-level limit (1,000) on flow collections
            raise YamlProblem(_pos(mark), f"nested more than {MAX_DEPTH} levels deep") from None
        if mark is not None and "\t" in text.splitlines()[mark.line : mark.line + 1][0][: mark.column + 1]:
            problem += " (YAML indentation must use spaces, not tabs)"
        raise YamlProblem(_pos(mark), f"YAML syntax error: {problem}") from None
    except yaml.reader.ReaderError as exc:  # control characters and the like
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        character = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
        raise YamlProblem(
            Position(line, column), f"YAML syntax error: control character {character} is not allowed"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


class _Builder:
    def __init__(self) -> None:
        self.nodes = 0
        self.positions: dict[JsonPath, Position] = {}
        self.key_positions: dict[JsonPath, Position] = {}

    def build(self, node: yaml.Node, path: JsonPath, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise YamlProblem(
                _pos(node.start_mark),
                f"document expands to more than {MAX_NODES:,} values (an alias bomb?)",
            )
        if depth > MAX_DEPTH:
            raise YamlProblem(_pos(node.start_mark), f"nested more than {MAX_DEPTH} levels deep (through aliases)")
        self.positions.setdefault(path, _pos(node.start_mark))
        if node.tag not in _ALLOWED_TAGS:
            raise YamlProblem(
                _pos(node.start_mark),
                f"tag {node.tag!r} is not allowed: a spec holds plain strings, numbers, booleans, lists and maps",
            )
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, index), depth + 1) for index, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        return self._scalar(node)

    def _mapping(self, node: yaml.MappingNode, path: JsonPath, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        seen: dict[str, Position] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise YamlProblem(_pos(key_node.start_mark), "merge keys (<<) are not supported in a spec")
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlProblem(_pos(key_node.start_mark), "mapping keys must be plain strings")
            key = key_node.value
            key_position = _pos(key_node.start_mark)
            if key in seen:
                first = seen[key]
                raise YamlProblem(
                    key_position,
                    f"duplicate key {key!r} (first defined at line {first.line}); each key may appear once",
                )
            seen[key] = key_position
            self.key_positions[(*path, key)] = key_position
            result[key] = self.build(value_node, (*path, key), depth + 1)
        return result

    @staticmethod
    def _scalar(node: yaml.ScalarNode) -> Any:
        value: str = node.value
        tag = node.tag
        if tag == "tag:yaml.org,2002:null":
            return None
        if tag == "tag:yaml.org,2002:bool":
            return value.lower() == "true"
        if tag == "tag:yaml.org,2002:int":
            try:
                if value.startswith("0o"):
                    return int(value[2:], 8)
                if value.startswith("0x"):
                    return int(value[2:], 16)
                return int(value)
            except ValueError:
                raise YamlProblem(_pos(node.start_mark), f"{value!r} is not an integer") from None
        if tag == "tag:yaml.org,2002:float":
            lowered = value.lower()
            if lowered.endswith("inf") or lowered.endswith("nan"):
                raise YamlProblem(_pos(node.start_mark), f"{value!r}: infinities and NaN are not allowed")
            try:
                return float(value)
            except ValueError:
                raise YamlProblem(_pos(node.start_mark), f"{value!r} is not a number") from None
        return value


def load_yaml(raw: bytes) -> LoadedDocument:
    """Parse bytes into JSON-like data plus the position of every value; raise YamlProblem otherwise."""
    text = _decode(raw)
    _check_events(text)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:  # already caught by _check_events; kept for safety
        raise YamlProblem(_pos(exc.problem_mark), f"YAML syntax error: {exc.problem}") from None
    finally:
        loader.dispose()
    if node is None:
        raise YamlProblem(Position(1, 1), "the file is empty: a spec is a YAML mapping with at least `version`")
    builder = _Builder()
    data = builder.build(node, (), 0)
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__} scalar"
        raise YamlProblem(_pos(node.start_mark), f"the document is {kind}: a spec must be a YAML mapping")
    return LoadedDocument(data=data, positions=builder.positions, key_positions=builder.key_positions)
