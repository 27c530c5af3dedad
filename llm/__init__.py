"""llm-routes: several OpenAI-compatible inference servers behind one provider object.

    from llm.factory import LLMFactory
    provider = LLMFactory.create_provider("vllm_openai")   # ./config.yaml or $LLM_CONFIG
    print(provider.chat([{"role": "user", "content": "Hello"}]))

The library logs through loguru and is silent until the application calls
``logger.enable("llm")``.

How importing works
-------------------
``import llm`` loads this file only (``sys`` and ``__future__`` aside): the public names below
are imported from their modules the first time they are used (``llm.LLMFactory``,
``from llm import LLMFactory``) by the module's ``__getattr__`` (PEP 562), and kept. So a
program pays for httpx, PyYAML, loguru and the engines only when it uses them. Type checkers
see ordinary imports (the ``TYPE_CHECKING`` block) and still flag unknown names.

Silence: ``logger.disable("llm")`` must run before the library can log, but importing loguru
here would cost more than all the rest of ``import llm``. When loguru is already loaded, it
runs now. Otherwise ``_SilenceLoguruOnImport``, a finder put first in ``sys.meta_path``, waits
for the first ``import loguru`` (the application's or the library's own, whichever comes
first) and has loguru's loader run it right after loguru's module has executed, before the
importer gets the module; then it takes itself out. So an application's
``logger.enable("llm")`` after ``import llm`` wins, and so does one before it: what loguru's
activation list (a private attribute, read defensively: if loguru changes it, the library
stays silent, as it must) said of ``llm`` and its modules is said again after the silencing.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a few ms)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.abc import Loader
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

    from .config import LLMConfig, RouteConfig, load_config, parse_config
    from .errors import (
        AllRoutesFailedError,
        APIStatusError,
        Attempt,
        AuthenticationError,
        BadRequestError,
        ConfigError,
        ContextWindowError,
        InvalidRequestError,
        InvalidResponseError,
        LLMError,
        NoRouteError,
        NotFoundError,
        ProviderClosedError,
        RateLimitError,
        RouteConnectionError,
        RouteError,
        RouteTimeoutError,
        ServerError,
        StreamInterruptedError,
        UnknownProviderError,
    )
    from .factory import LLMFactory
    from .providers.vllm_openai import VLLMOpenAIProvider
    from .results import ChatResult, CompletionResult, StreamEvent

__version__ = "0.1.0"

__all__ = [
    "APIStatusError",
    "AllRoutesFailedError",
    "Attempt",
    "AuthenticationError",
    "BadRequestError",
    "ChatResult",
    "CompletionResult",
    "ConfigError",
    "ContextWindowError",
    "InvalidRequestError",
    "InvalidResponseError",
    "LLMConfig",
    "LLMError",
    "LLMFactory",
    "NoRouteError",
    "NotFoundError",
    "ProviderClosedError",
    "RateLimitError",
    "RouteConfig",
    "RouteConnectionError",
    "RouteError",
    "RouteTimeoutError",
    "ServerError",
    "StreamEvent",
    "StreamInterruptedError",
    "UnknownProviderError",
    "VLLMOpenAIProvider",
    "load_config",
    "parse_config",
]

# public name -> the submodule defining it
_LAZY: dict[str, str] = {
    **dict.fromkeys(("LLMConfig", "RouteConfig", "load_config", "parse_config"), "config"),
    **dict.fromkeys(("ChatResult", "CompletionResult", "StreamEvent"), "results"),
    "LLMFactory": "factory",
    "VLLMOpenAIProvider": "providers.vllm_openai",
}
_LAZY.update(dict.fromkeys(set(__all__) - set(_LAZY), "errors"))


if not TYPE_CHECKING:  # type checkers use the imports above, and flag unknown names

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from importlib import import_module

        value = getattr(import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # next time, a plain attribute
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


# --------------------------------------------------------------------------- silence

if TYPE_CHECKING:
    _LoaderBase = Loader
else:
    _LoaderBase = object


class _SilenceLoguruOnImport:
    """A meta path finder that finds nothing itself: asked for ``loguru``, it wraps the loader
    that the finders after it give in ``_SilenceAfter`` (which takes this finder out of
    ``sys.meta_path`` when loguru is loaded, not merely looked up by ``find_spec``)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != "loguru":
            return None
        for finder in sys.meta_path:
            if _is_hook(finder):
                continue
            find_spec = getattr(finder, "find_spec", None)
            spec: ModuleSpec | None = (
                None if find_spec is None else find_spec(fullname, path, target)
            )
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _SilenceAfter(spec.loader)
                return spec
        return None


class _SilenceAfter(_LoaderBase):
    """loguru's own loader, plus ``logger.disable("llm")`` once the module has executed. The
    module keeps its own loader in ``__loader__`` and ``__spec__``, as if this one had never
    been there."""

    def __init__(self, loader: Loader) -> None:
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        sys.meta_path[:] = [finder for finder in sys.meta_path if not _is_hook(finder)]
        _silence(module.logger)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not set yet: no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)


def _is_hook(finder: object) -> bool:
    # by name: after importlib.reload(llm) the class is another object
    return type(finder).__name__ == "_SilenceLoguruOnImport"


def _silence(logger: Any) -> None:
    """``logger.disable("llm")``, then what the application said of ``llm`` and its modules
    before (``enable("llm")``, ``enable("llm.send")``, ...) said again, shallowest first."""
    core = getattr(logger, "_core", None)
    said: list[tuple[str, bool]] = []
    try:
        for name, status in getattr(core, "activation_list", None) or ():
            if isinstance(name, str) and (name + ".").startswith(f"{__name__}."):
                said.append((name.rstrip("."), bool(status)))
    except (TypeError, ValueError):  # not the list of pairs loguru 0.7 keeps: stay silent
        said = []
    logger.disable(__name__)
    for name, status in sorted(said, key=lambda entry: entry[0].count(".")):
        (logger.enable if status else logger.disable)(name)


if "loguru" in sys.modules:
    _silence(sys.modules["loguru"].logger)
elif not any(_is_hook(finder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _SilenceLoguruOnImport())
