"""llm-routes: several OpenAI-compatible inference servers behind one provider object.

    from llm.factory import LLMFactory
    provider = LLMFactory.create_provider("vllm_openai")   # ./config.yaml or $LLM_CONFIG
    print(provider.chat([{"role": "user", "content": "Hello"}]))

The library logs through loguru and is silent until the application calls
``logger.enable("llm")``.
"""

from loguru import logger as _logger

from .config import LLMConfig, RouteConfig, load_config, parse_config
from .errors import (
    AllRoutesFailedError,
    APIStatusError,
    Attempt,
    AuthenticationError,
    BadRequestError,
    ConfigError,
    InvalidRequestError,
    InvalidResponseError,
    LLMError,
    NoRouteError,
    NotFoundError,
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

_logger.disable("llm")

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
    "InvalidRequestError",
    "InvalidResponseError",
    "LLMConfig",
    "LLMError",
    "LLMFactory",
    "NoRouteError",
    "NotFoundError",
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
