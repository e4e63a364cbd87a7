"""Reading an architecture file: YAML text → parsed document → ``Architecture``.

The YAML loader is where hostile text is stopped: the text is size-capped before it is read,
anchors and aliases are refused (a "billion laughs" document cannot expand), nodes and nesting
are capped, duplicate keys are errors, and booleans and timestamps are read as Go's yaml.v3
reads them. Every failure, syntax or limit, is an ``InvalidArchitecture`` with a line and column.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, NoReturn

import yaml

from machines.architecture.document import MAX_ARCHITECTURE_BYTES, MAX_DEPTH, MAX_NODES
from machines.architecture.schema import Architecture
from machines.errors import InvalidArchitecture

__all__ = ["load_architecture", "parse_yaml"]

_LIBYAML: Any
try:
    from yaml._yaml import CParser as _LIBYAML
except ImportError:  # pragma: no cover - a PyYAML built without libyaml: the pure-Python parser
    _LIBYAML = None


def _refuse(problem: str, event: yaml.Event) -> NoReturn:
    """Stop composing with a YAML error pointing at ``event`` (reported like any parse error)."""
    mark: Any = event.start_mark  # the C and pure-Python loaders have distinct Mark types
    raise yaml.composer.ComposerError(None, None, problem, mark)


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (``yes``/``on`` stay strings, as in Go's yaml.v3),
    timestamps kept as strings, duplicate keys refused, and no anchors or aliases (an alias is
    how a 2 KB "billion laughs" document expands to gigabytes), at most ``MAX_NODES`` nodes
    nested at most ``MAX_DEPTH`` deep."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)  # the pure-Python reader still checks the text is printable
        self._nodes = 0
        self._depth = 0
        # The events come from libyaml when PyYAML has it (~7× faster than the pure-Python
        # scanner and parser); they are still composed into nodes here, in Python, so every
        # node passes through ``compose_node``'s checks.
        self._events: Any = _LIBYAML(stream) if _LIBYAML is not None else None

    def check_event(self, *choices: Any) -> bool:
        return bool(self._events.check_event(*choices)) if self._events is not None else super().check_event(*choices)

    def peek_event(self) -> Any:
        return self._events.peek_event() if self._events is not None else super().peek_event()  # type: ignore[no-untyped-call]

    def get_event(self) -> Any:
        return self._events.get_event() if self._events is not None else super().get_event()  # type: ignore[no-untyped-call]

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            _refuse(f"found alias *{event.anchor}: anchors and aliases are not supported (write the value out)", event)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            _refuse(f"found anchor &{anchor}: anchors and aliases are not supported (write the value out)", event)
        self._nodes += 1
        if self._nodes > MAX_NODES:
            _refuse(f"more than {MAX_NODES} nodes: too large for an architecture", event)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                _refuse(f"nested more than {MAX_DEPTH} levels deep", event)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                duplicate = False
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            with contextlib.suppress(TypeError):
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def parse_yaml(text: str, source: str = "<architecture>") -> Any:
    """Parse YAML text; a syntax error becomes ``InvalidArchitecture`` with its line and column.

    Text over ``MAX_ARCHITECTURE_BYTES`` is refused unread; anchors and aliases are refused. Any
    other failure of the parser (a 5000-digit integer, a recursion limit) is an
    ``InvalidArchitecture`` too: what a user sent never becomes a crash or a redelivery.
    """
    size = len(text) if len(text) > MAX_ARCHITECTURE_BYTES else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_ARCHITECTURE_BYTES:
        raise InvalidArchitecture(
            [f"(yaml): the text is {size} bytes; an architecture may have at most {MAX_ARCHITECTURE_BYTES}"],
            source=source,
        )
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = (
            f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"
        )
        what = exc.problem or "malformed YAML"
        if exc.context:
            what += f" ({exc.context})"
        raise InvalidArchitecture([f"(yaml) {where}: {what}"], source=source) from exc
    except yaml.YAMLError as exc:
        raise InvalidArchitecture([f"(yaml): {exc}"], source=source) from exc
    except (RecursionError, ValueError, TypeError, OverflowError) as exc:
        raise InvalidArchitecture([f"(yaml): cannot be read: {_short_error(exc)}"], source=source) from exc


def _short_error(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def load_architecture(text: str, source: str = "<architecture>") -> Architecture:
    """Parse and validate an architecture file. Raises ``InvalidArchitecture`` listing every problem."""
    return Architecture.from_dict(parse_yaml(text, source), source=source)
