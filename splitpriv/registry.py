"""One registry style for everything a user can add: models, data sets, defenses and attacks.

A registry maps names to entries of one kind and fills itself by a decorator, as timm registers
models: ``@register_model("my_mlp")`` on a builder function, or a bare ``@register_defense`` on a
class that carries its ``name``. A plugin file (``--plugin``) registers with the same decorators.
"""
from __future__ import annotations

from typing import Any, TypeVar

Entry = TypeVar("Entry")


class Registry(dict):
    """Name -> entry of one ``kind`` (a dict, so lookups and listings are the usual ones)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, target: Any = None, /) -> Any:
        """``@registry.register("name")`` for any entry, or ``@registry.register`` for a class with a
        ``name`` attribute; returns the entry unchanged. A later registration of a name replaces it."""
        if isinstance(target, str):
            return lambda entry: self._add(target, entry)
        name = getattr(target, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"register a {self.kind} with a name: @register(\"name\"), or a class with a 'name' attribute")
        return self._add(name, target)

    def _add(self, name: str, entry: Entry) -> Entry:
        self[name] = entry
        return entry

    def names(self) -> list[str]:
        return sorted(self)


