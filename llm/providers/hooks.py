"""Registering hooks on a provider (``llm.events``): by object, or by reference in the config.

How this works
--------------
``ProviderHooks`` owns the provider's dispatcher: ``add`` wraps a function as a hook, hands a
hook with an ``attach(provider)`` method its provider (the Prometheus hook reads the
provider's state at scrape time), and swaps a new ``Hooks`` into the balancer, where every
call's plan finds it; ``remove`` swaps in one without it (``None`` when none is left, so calls
pay nothing again). A swap is one attribute write: a call already planned keeps the
dispatcher it started with.

``resolve`` turns the config's ``llm.hooks`` references into hooks: a built-in name
(``prometheus``, ``opentelemetry``) or ``package.module:attribute``, imported now; a class is
instantiated without arguments. Anything that fails is a ``ConfigError`` naming the key path
and why (the module is not installed, it has no such attribute, the class needs arguments).

A hook that raises is logged once per hook and event kind, through loguru (silent until the
application enables ``llm``), and the call goes on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from importlib import import_module
from typing import Any

from loguru import logger

from ..config.sections import BUILTIN_HOOKS
from ..errors import ConfigError
from ..events import Event, HealthChange, Hook, Hooks, as_hook
from ..routing.balancer import Balancer

__all__ = ["ProviderHooks", "resolve"]

HookLike = Hook | Callable[[Event], object]


class ProviderHooks:
    """The hooks of one provider, kept in its balancer (``balancer.hooks``)."""

    def __init__(self, balancer: Balancer, provider: object) -> None:
        self._balancer = balancer
        self._provider = provider
        self._lock = threading.Lock()
        self._reported: set[tuple[int, str]] = set()

    def add(self, hook: HookLike) -> Hook:
        wrapped = as_hook(hook)
        attach = getattr(wrapped, "attach", None)
        if callable(attach):
            attach(self._provider)
        with self._lock:
            current = self._balancer.hooks
            self._balancer.hooks = (
                current.with_hook(wrapped)
                if current is not None
                else Hooks([wrapped], self._failed)
            )
        return wrapped

    def remove(self, hook: object) -> None:
        with self._lock:
            current = self._balancer.hooks
            if current is not None:
                self._balancer.hooks = current.without_hook(hook)

    def health_changed(self, change: HealthChange) -> None:
        """The balancer's health listener's second half (the first logs the change)."""
        hooks = self._balancer.hooks
        if hooks is not None and hooks.on_route_health:
            hooks.emit(hooks.on_route_health, change)

    def _failed(self, hook: Hook, kind: str, error: BaseException) -> None:
        key = (id(hook), kind)
        if key in self._reported:
            return
        self._reported.add(key)
        logger.opt(exception=error).error(
            "hook {!r} raised on {} (logged once; the call went on): {}: {}",
            hook,
            kind,
            type(error).__name__,
            error,
        )


def resolve(references: Iterable[str], path: str = "llm.hooks") -> list[Hook]:
    """The hooks the config's references name (see the module's text)."""
    hooks = []
    for i, reference in enumerate(references):
        where = f"{path}[{i}]"
        target = BUILTIN_HOOKS.get(reference, reference)
        module_name, _, attribute = target.partition(":")
        try:
            found: Any = import_module(module_name)
        except ImportError as exc:
            builtin = reference in BUILTIN_HOOKS
            extra = f" (pip install 'llm-routes[{reference}]')" if builtin else ""
            raise ConfigError(
                f"{where}: cannot import {module_name!r}: {exc}{extra}", where
            ) from None
        for part in attribute.split("."):
            try:
                found = getattr(found, part)
            except AttributeError:
                raise ConfigError(
                    f"{where}: module {module_name!r} has no attribute {attribute!r}", where
                ) from None
        if isinstance(found, type):
            try:
                found = found()
            except Exception as exc:  # noqa: BLE001 - whatever the class raises, named
                raise ConfigError(
                    f"{where}: {target} could not be made without arguments: "
                    f"{type(exc).__name__}: {exc}",
                    where,
                ) from None
        try:
            hooks.append(as_hook(found))
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}", where) from None
    return hooks
