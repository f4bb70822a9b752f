"""The method registry: a name in ``SparsityConfig.method`` maps to a PruningMethod subclass.

Importing this module runs ``hf_sparse/methods/__init__.py`` first, which imports (and so registers)
every built-in method: a lookup needs no import of its own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .base import PruningMethod

_METHODS: dict[str, type["PruningMethod"]] = {}


def register_method(name: str) -> Callable[[type["PruningMethod"]], type["PruningMethod"]]:
    """Class decorator: ``@register_method("rigl")`` makes the class available by name."""

    def decorator(cls: type["PruningMethod"]) -> type["PruningMethod"]:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered by {_METHODS[name].__name__}")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return decorator


def get_method_class(name: str) -> type["PruningMethod"]:
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; available methods: {available_methods()}")
    return _METHODS[name]


def available_methods() -> list[str]:
    return sorted(_METHODS)
