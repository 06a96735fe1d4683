"""One small registry for models, datasets, attacks and defenses (after timm's ``_registry``)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from medshield.errors import MedShieldError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories; ``create`` drops ``None`` kwargs so CLI defaults never override a
    component's own defaults, and unknown names get a did-you-mean suggestion."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@REG.register("pgd")`` on a class or factory function."""

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            key = name.lower()
            if key in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[key] = factory
            return factory

        return deco

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._factories

    def get(self, name: str) -> Callable[..., T]:
        key = name.lower().strip()
        if key not in self._factories:
            raise MedShieldError(unknown_name_message(self.kind, name, self.names()))
        return self._factories[key]

    def create(self, name: str, **kwargs: Any) -> T:
        return self.get(name)(**{k: v for k, v in kwargs.items() if v is not None})


def unknown_name_message(kind: str, name: str, choices: list[str]) -> str:
    """``unknown model 'resnt18'; did you mean 'resnet18'? (choices: ...)``"""
    close = difflib.get_close_matches(name.lower(), choices, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}{hint} (choices: {', '.join(choices)})"
