"""Typed method settings: each method's ``Args`` dataclass is the one description of its ``method_args``.

A method declares its options as a small dataclass (type, default, ``metadata={"help": ...}``),
the way peft types each method's config. From that one description come the check of a user's
``method_args`` (a dict or a JSON string: unknown keys and values of the wrong type are refused,
naming the method and the field), the printout of ``python -m hf_sparse config`` and the methods
table of the README (``methods_table``).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Union

if TYPE_CHECKING:
    from .base import PruningMethod

#: Markers around the generated table in README.md (``python -m hf_sparse config --methods --readme README.md``).
TABLE_BEGIN = "<!-- methods table: generated from each method's Args by `python -m hf_sparse config --methods --readme README.md` -->"
TABLE_END = "<!-- end of the generated methods table -->"


@dataclass(frozen=True)
class Setting:
    """One field of a method's ``Args``: what ``config`` and the README show."""

    name: str
    type: str
    default: Any
    help: str


def _type_name(kind: Any) -> str:
    if kind is type(None):
        return "None"
    if typing.get_origin(kind) is Union:
        return " | ".join(_type_name(a) for a in typing.get_args(kind))
    return getattr(kind, "__name__", str(kind))


def _hints(args_class: type) -> dict[str, Any]:
    return typing.get_type_hints(args_class)


def settings_of(method_class: type["PruningMethod"]) -> list[Setting]:
    """The method's options in declaration order, with their types, defaults and help."""
    hints = _hints(method_class.Args)
    out = []
    for f in dataclasses.fields(method_class.Args):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append(Setting(f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
    return out


def _accepts(kind: Any, value: Any) -> bool:
    """Whether ``value`` has the declared type (an int is a float; a bool is no number)."""
    if typing.get_origin(kind) is Union:
        return any(_accepts(a, value) for a in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is Any:
        return True
    origin = typing.get_origin(kind) or kind
    return isinstance(origin, type) and isinstance(value, origin)


def as_mapping(method_args: Union[Mapping[str, Any], str, None], method: str) -> dict[str, Any]:
    """``method_args`` as a dict: a JSON object string is parsed, None is ``{}``."""
    if method_args is None:
        return {}
    if isinstance(method_args, str):
        text = method_args.strip()
        try:
            method_args = json.loads(text) if text else {}
        except json.JSONDecodeError as err:
            raise ValueError(f"method {method!r}: method_args must be a dict or a JSON object string: {err}") from err
    if not isinstance(method_args, Mapping):
        raise ValueError(f"method {method!r}: method_args must be a dict (or a JSON object), got {method_args!r}")
    return dict(method_args)


def parse_method_args(method_class: type["PruningMethod"], method_args: Union[Mapping[str, Any], str, None]) -> Any:
    """Check ``method_args`` against ``method_class.Args`` and build it (its ``__post_init__`` checks ranges).

    Unknown key: a ValueError naming the method, the key and the valid keys. A value of the wrong
    type: a ValueError naming the method and the field.
    """
    name = method_class.name
    given = as_mapping(method_args, name)
    valid = [f.name for f in dataclasses.fields(method_class.Args)]
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ValueError(f"method {name!r}: unknown method_args {unknown}; valid keys: {valid}")
    hints = _hints(method_class.Args)
    for key, value in given.items():
        if not _accepts(hints[key], value):
            raise ValueError(
                f"method {name!r}: method_args.{key} must be of type {_type_name(hints[key])}, got {value!r}"
            )
    try:
        return method_class.Args(**given)
    except TypeError as err:  # a __post_init__ comparing a value of an unexpected type
        raise ValueError(f"method {name!r}: bad method_args: {err}") from err


def resolved_method_args(method_class: type["PruningMethod"], method_args: Union[Mapping[str, Any], str, None]) -> dict:
    """Every option's value for these ``method_args``: the given ones, the defaults for the rest."""
    return dataclasses.asdict(parse_method_args(method_class, method_args))


def describe_method(method_class: type["PruningMethod"]) -> str:
    """Plain text: the method's summary, its paper and each option with type, default and help."""
    lines = [f"{method_class.name}: {method_class.summary}"]
    if method_class.paper:
        lines.append(f"paper: {method_class.paper}")
    settings = settings_of(method_class)
    lines.append("method_args:" if settings else "method_args: none")
    for s in settings:
        lines.append(f"  {s.name} ({s.type}, default {json.dumps(s.default)}): {s.help}")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def methods_table(method_classes: list[type["PruningMethod"]]) -> str:
    """The README's methods table (markdown), one row per method, options from its ``Args``."""
    rows = ["| `method` | what it does | `method_args` (default) | paper |", "| --- | --- | --- | --- |"]
    for cls in method_classes:
        options = ", ".join(f"`{s.name}` {json.dumps(s.default)}" for s in settings_of(cls)) or "-"
        rows.append(f"| `{cls.name}` | {_cell(cls.summary)} | {_cell(options)} | {_cell(cls.paper or '-')} |")
    return "\n".join(rows)


def replace_table(text: str, table: str) -> str:
    """``text`` (a README) with the block between the markers replaced by ``table``."""
    if text.count(TABLE_BEGIN) != 1 or text.count(TABLE_END) != 1:
        raise ValueError(f"expected the markers {TABLE_BEGIN!r} and {TABLE_END!r} once each")
    head, rest = text.split(TABLE_BEGIN)
    _, tail = rest.split(TABLE_END)
    return f"{head}{TABLE_BEGIN}\n{table}\n{TABLE_END}{tail}"


def table_in(text: str) -> str:
    """The table currently between the markers of ``text``."""
    if text.count(TABLE_BEGIN) != 1 or text.count(TABLE_END) != 1:
        raise ValueError(f"expected the markers {TABLE_BEGIN!r} and {TABLE_END!r} once each")
    return text.split(TABLE_BEGIN)[1].split(TABLE_END)[0].strip("\n")
