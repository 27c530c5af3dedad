"""The vLLM / OpenAI-compatible provider: several servers behind one object.

``VLLMOpenAIProvider`` has every call method twice, sync and async, over one balancer:
``chat``/``achat``, ``chat_completion``, ``stream``, ``stream_events``, ``complete``,
``list_models``, ``is_available``, ``health_checks``, ``health`` (``_sync/api.py``, generated
from ``_async/api.py``), plus ``stats``, the httpx clients for the OpenAI SDK & co
(``http_client``/``async_http_client``, through ``send.transport``) and closing.

Call keywords that steer the call rather than the body: ``route`` (pin a route), ``model``
(pick the pool), ``deadline`` (seconds for all attempts), ``max_retries``. A keyword set to
None removes a config default from the body (``max_tokens=None``); ``extra_body={...}`` is
merged into the body as it is. Bad calls fail before any I/O with an ``InvalidRequestError``
(``call.validate``).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from typing import Any, Literal

import httpx

from ..send.transport import AsyncRoutingTransport, RoutingTransport
from ._async.api import AsyncAPI
from ._sync.api import SyncAPI

__all__ = ["VLLMOpenAIProvider"]

_CLIENT_BASE_URL = "http://llm-routes/v1"  # the host is never contacted: the transport routes
_CLIENT_TIMEOUT_MARGIN = 5.0  # seconds past the deadline before the client itself gives up
CLOSE_TIMEOUT = 10.0  # seconds close() waits for the calls in flight


Flavor = Literal["auto", "httpx", "httpx2"]


def _use_httpx2(flavor: Flavor) -> bool:
    """Whether to hand out an httpx2 client: asked for, or (``auto``) the installed openai is
    3.x or later (built on httpx2, which it then brings)."""
    if flavor not in ("auto", "httpx", "httpx2"):
        raise ValueError(f"flavor must be 'auto', 'httpx' or 'httpx2', not {flavor!r}")
    if flavor != "auto":
        return flavor == "httpx2"
    try:
        major = version("openai").split(".", 1)[0]
    except PackageNotFoundError:
        return False
    return major.isdigit() and int(major) >= 3 and find_spec("httpx2") is not None


class VLLMOpenAIProvider(SyncAPI, AsyncAPI):
    """Several OpenAI-compatible servers behind one object. Thread-safe; one per process."""

    def http_client(self, *, flavor: Flavor = "auto", **kwargs: Any) -> Any:
        """A client whose transport routes every request (for the OpenAI SDK & co): an
        ``httpx2.Client`` when the installed openai is 3.x (built on httpx2), else an
        ``httpx.Client``; ``flavor="httpx"`` or ``"httpx2"`` chooses. ``kwargs`` go to the
        client.

        Use it with a base_url ending in /v1, e.g.
        ``openai.OpenAI(base_url="http://llm-routes/v1", api_key="unused", http_client=...)``.
        """
        if _use_httpx2(flavor):
            import httpx2

            from ..send.transport_httpx2 import RoutingTransport2

            self._client_defaults(kwargs, httpx2.Timeout)
            return httpx2.Client(transport=RoutingTransport2(self._engine), **kwargs)
        self._client_defaults(kwargs, httpx.Timeout)
        return httpx.Client(transport=RoutingTransport(self._engine), **kwargs)

    def async_http_client(self, *, flavor: Flavor = "auto", **kwargs: Any) -> Any:
        """The async twin of ``http_client`` (``httpx2.AsyncClient`` or ``httpx.AsyncClient``)."""
        if _use_httpx2(flavor):
            import httpx2

            from ..send.transport_httpx2 import AsyncRoutingTransport2

            self._client_defaults(kwargs, httpx2.Timeout)
            return httpx2.AsyncClient(transport=AsyncRoutingTransport2(self._aengine), **kwargs)
        self._client_defaults(kwargs, httpx.Timeout)
        return httpx.AsyncClient(transport=AsyncRoutingTransport(self._aengine), **kwargs)

    def _client_defaults(self, kwargs: dict[str, Any], timeout: Any) -> None:
        kwargs.setdefault("base_url", _CLIENT_BASE_URL)
        kwargs.setdefault("timeout", timeout(self.config.deadline + _CLIENT_TIMEOUT_MARGIN))

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Take no new call; wait up to ``timeout`` seconds for the calls in flight (sync
        ones in other threads); then stop the background checks and close the sync
        connections. A call still running then ends with ``ProviderClosedError``, and any
        call after this raises it at once. From async code, use ``aclose``."""
        self._life.close()
        self._life.wait_idle(timeout)
        if self._checker is not None:
            self._checker.stop()
        if self._poller is not None:
            self._poller.stop()
        if self._discoverer is not None:
            self._discoverer.stop()
        self._engine.close()

    async def aclose(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """As ``close``, waiting without blocking the loop, and closing the async
        connections too (call it from the loop that opened them)."""
        self._life.close()
        await self._life.await_idle(timeout)
        await self._aengine.aclose()
        self.close(timeout=0)

    def __enter__(self) -> VLLMOpenAIProvider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> VLLMOpenAIProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
