"""``LLMFactory``: a provider name and a config (path, mapping or default file) -> a provider.

The registry maps provider names to classes taking an ``LLMConfig``; the first and only one
today is ``vllm_openai``. ``register`` adds another.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

from .config import LLMConfig, load_config, parse_config
from .errors import UnknownProviderError
from .providers.vllm_openai import VLLMOpenAIProvider

__all__ = ["LLMFactory"]


class LLMFactory:
    _providers: ClassVar[dict[str, type[VLLMOpenAIProvider]]] = {
        "vllm_openai": VLLMOpenAIProvider,
    }

    @classmethod
    def known(cls) -> list[str]:
        return sorted(cls._providers)

    @classmethod
    def register(cls, name: str, provider: type[VLLMOpenAIProvider]) -> None:
        cls._providers[name] = provider

    @classmethod
    def create_provider(
        cls,
        name: str | None = None,
        *,
        config_path: str | os.PathLike[str] | None = None,
        config: Mapping[str, Any] | LLMConfig | None = None,
        **options: Any,
    ) -> VLLMOpenAIProvider:
        """Build a provider.

        ``name`` defaults to the config's ``llm.provider``. The config comes from ``config``
        (an ``LLMConfig`` or the same mapping as the YAML), else ``config_path``, else the file
        named by ``LLM_CONFIG``, else ``./config.yaml``. ``options`` go to the provider
        (``transport=``, ``clock=``... mainly for tests).
        """
        if name is not None and name not in cls._providers:
            raise UnknownProviderError(
                f"unknown provider {name!r}; known providers: {', '.join(cls.known())}",
                key_path="provider",
            )
        if isinstance(config, LLMConfig):
            loaded = config
        elif config is not None:
            loaded = parse_config(config)
        else:
            loaded = load_config(config_path)
        chosen = name or loaded.provider
        provider_class = cls._providers.get(chosen)
        if provider_class is None:
            raise UnknownProviderError(
                f"llm.provider: unknown provider {chosen!r}; known providers: "
                + ", ".join(cls.known()),
                key_path="llm.provider",
            )
        return provider_class(loaded, **options)
