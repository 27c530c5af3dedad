"""httpx transports that route: any httpx-based client gets balancing and failover.

``RoutingTransport`` / ``AsyncRoutingTransport`` take a request aimed at any host (say
``http://llm-routes/v1/chat/completions``), run it through the provider's engine (pick a route,
rewrite URL, credentials and ``model`` for it, retry and fail over) and hand back an ordinary
``httpx.Response``. So ``openai.OpenAI(base_url=..., http_client=provider.http_client())``
and LangChain's ``ChatOpenAI`` get the same routing without code of their own.

- The client's own Authorization header is dropped: each route's key goes only to that route.
- The body's ``model`` picks the pool; a model no route serves gets an OpenAI-shaped 404.
- Final error statuses come back as responses (the SDK turns them into its own errors); when
  no route answered at all, ``RoutesUnavailableError`` (an ``httpx.ConnectError`` and an
  ``LLMError``) is raised, or ``RoutesTimeoutError`` (an ``httpx.ReadTimeout``) when the
  call's deadline passed.
- Endpoints other than (chat) completions: a 404 is the request's fault (the server lacks
  the endpoint), and the call never goes to the fallback route (another model).
- ``GET /v1/models`` lists every model of the fleet, and ``GET /v1/models/{id}`` (which
  vLLM lacks) is answered from the list of ``id``'s pool (``model_list.py``).
- The request's own timeout (the SDK's ``timeout=``) is the call's deadline when shorter than
  the config's.
- Streams are handed over once their first token has arrived, so a route that dies before
  that is failed over transparently.
- ``response.extensions["llm_route"]`` and ``["llm_attempts"]`` say where the answer came from.
- A ``X-LLM-Routes-Session`` header is the call's ``session=`` (its affinity key, see
  ``call/affinity.py``): ``extra_headers={"X-LLM-Routes-Session": conversation_id}`` in the
  SDK. Like every header of the client's, it is not sent on to the server.

Two packages speak this API: ``httpx`` (openai 2.x, LangChain with openai 2) and its
successor ``httpx2`` (openai 3). The functions here (``handle`` / ``ahandle`` do a request's
whole work) take the package (``hx``) as an argument and work for both; the classes below are
httpx's, ``transport_httpx2.py`` has httpx2's, each a few lines around those functions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, cast

import httpx

from ..call.spec import AnswerKind, CallSpec
from ..errors import (
    AllRoutesFailedError,
    APIStatusError,
    LLMError,
    NoRouteError,
    RouteTimeoutError,
)
from ..judge.parse import parse_json
from ..results import Reply
from ._async.engine import AsyncEngine
from ._async.stream import AsyncStream
from ._sync.engine import SyncEngine
from ._sync.stream import SyncStream
from .model_list import Listed, Listing, listing_of, merged_listing

__all__ = [
    "SESSION_HEADER",
    "AsyncRoutingTransport",
    "RoutesTimeoutError",
    "RoutesUnavailableError",
    "RoutingTransport",
]

SESSION_HEADER = "X-LLM-Routes-Session"

_HOP_HEADERS = frozenset({"content-length", "transfer-encoding", "content-encoding", "connection"})


class RoutesUnavailableError(httpx.ConnectError, LLMError):
    """No route could be reached (raised to httpx clients, which expect a transport error)."""


class RoutesTimeoutError(httpx.ReadTimeout, LLMError):
    """The call's deadline (the client's timeout for the request, or the config's) passed
    before any route answered: the OpenAI SDK raises its ``APITimeoutError``."""


def _deadline(request: Any, configured: float) -> float:
    """The call's deadline: the config's, or the client's timeout for this request (httpx's
    read timeout: the SDK's ``timeout=``) when that is shorter."""
    timeout = request.extensions.get("timeout")
    read = timeout.get("read") if isinstance(timeout, dict) else None
    if isinstance(read, (int, float)) and not isinstance(read, bool) and 0 < read < configured:
        return float(read)
    return configured


def spec_for(request: Any, content: bytes, deadline: float) -> CallSpec:
    path = request.url.raw_path.decode("ascii")
    if path.startswith("/v1/") or path == "/v1":
        path = path[3:]
    body: dict[str, Any] | None = None
    model: str | None = None
    stream = False
    if content:
        try:
            decoded = parse_json(content)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            body = decoded
            model = decoded.pop("model", None)
            stream = decoded.get("stream") is True
    endpoint = path.split("?")[0]
    expect: AnswerKind | None = None  # another endpoint: any JSON object will do
    if endpoint.endswith("/chat/completions"):
        expect = "chat"
    elif endpoint.endswith("/completions"):
        expect = "completion"
    session = request.headers.get(SESSION_HEADER) or None
    spec = CallSpec(
        deadline=_deadline(request, deadline),
        fallback=expect is not None,  # an embedding is never answered by another model
        path=path,
        session=session,
        method=request.method,
        body=body,
        raw_body=content or None,
        raw_model=model if isinstance(model, str) else None,
        model=model if isinstance(model, str) else None,
        stream=stream,
        expect=expect,
    )
    return spec


def _headers_of(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    # httpx's Headers (multi_items) and aiohttp's multidict (items) hand out repeated headers.
    multi_items = getattr(headers, "multi_items", None)
    items = multi_items() if multi_items is not None else headers.items()
    return [(k, v) for k, v in items if k.lower() not in _HOP_HEADERS]


def error_response(
    hx: Any,
    request: Any,
    error: LLMError,
    unavailable: type[Exception],
    timed_out: type[Exception],
) -> Any:
    """An error the client should see as a status (a ``hx.Response``); raises ``timed_out``
    or ``unavailable`` (transport errors of ``hx``) when there is no status to give."""
    status_error: APIStatusError | None = None
    if isinstance(error, APIStatusError):
        status_error = error
    elif isinstance(error, AllRoutesFailedError) and isinstance(error.last_error, APIStatusError):
        status_error = error.last_error
    if status_error is not None:
        body = (status_error.body or "").encode()
        response = hx.Response(
            status_error.status_code,
            headers={"content-type": "application/json"},
            content=body,
            request=request,
        )
    elif isinstance(error, NoRouteError):
        payload = {
            "error": {
                "message": f"llm-routes: {error}",
                "type": "NotFoundError",
                "param": "model",
                "code": 404,
            }
        }
        response = hx.Response(404, json=payload, request=request)
    elif isinstance(error, RouteTimeoutError) or (
        isinstance(error, AllRoutesFailedError) and isinstance(error.last_error, RouteTimeoutError)
    ):
        raise timed_out(str(error), request=request) from error  # type: ignore[call-arg]
    else:
        raise unavailable(str(error), request=request) from error  # type: ignore[call-arg]
    response.extensions["llm_attempts"] = list(getattr(error, "attempts", ()))
    return response


def routed(
    hx: Any,
    request: Any,
    answer: Reply | SyncStream | AsyncStream,
    body: Any = None,
) -> Any:
    """The ``hx.Response`` handed to the client for an answer (or an open stream with its
    ``body``, a byte stream of ``hx``)."""
    headers = _headers_of(answer.headers)
    if body is None:
        assert isinstance(answer, Reply)
        response = hx.Response(
            answer.status_code, headers=headers, content=answer.content, request=request
        )
    else:
        response = hx.Response(answer.status_code, headers=headers, stream=body, request=request)
    response.extensions["llm_route"] = answer.route
    response.extensions["llm_attempts"] = answer.attempts
    return response


Errors = tuple[type[Exception], type[Exception]]  # (unavailable, timed out) of the package
StreamBody = Callable[[Any], Any]  # an open stream -> the package's byte stream over it


def listing(hx: Any, request: Any, asked: Listing, answers: list[Listed], errors: Errors) -> Any:
    """The ``hx.Response`` for ``GET /v1/models``: the pools' lists joined (or the entry
    ``GET /v1/models/{id}`` asked for)."""
    merged = merged_listing(answers, asked.wanted)
    if isinstance(merged, LLMError):
        return error_response(hx, request, merged, *errors)
    body, attempts = merged
    response = hx.Response(
        200, headers={"content-type": "application/json"}, content=body, request=request
    )
    response.extensions["llm_attempts"] = attempts
    return response


def handle(
    hx: Any, engine: SyncEngine, request: Any, content: bytes, body: StreamBody, errors: Errors
) -> Any:
    """One request of a sync client, routed: the ``hx.Response`` to hand back."""
    spec = spec_for(request, content, engine.config.deadline)
    try:
        asked = listing_of(engine.config, spec)
        if asked is not None:
            answers = [_listed(engine.request, call) for call in asked.calls]
            return listing(hx, request, asked, answers, errors)
        if spec.stream:
            stream = engine.open_stream(spec)
            return routed(hx, request, stream, body(stream))
        return routed(hx, request, engine.request(spec))
    except LLMError as error:
        return error_response(hx, request, error, *errors)


async def ahandle(
    hx: Any, engine: AsyncEngine, request: Any, content: bytes, body: StreamBody, errors: Errors
) -> Any:
    """The async twin of ``handle``; the pools of a model list are asked at once."""
    spec = spec_for(request, content, engine.config.deadline)
    try:
        asked = listing_of(engine.config, spec)
        if asked is not None:
            answers = await asyncio.gather(*(_alisted(engine.request, c) for c in asked.calls))
            return listing(hx, request, asked, list(answers), errors)
        if spec.stream:
            stream = await engine.open_stream(spec)
            return routed(hx, request, stream, body(stream))
        return routed(hx, request, await engine.request(spec))
    except LLMError as error:
        return error_response(hx, request, error, *errors)


def _listed(ask: Callable[[CallSpec], Reply], spec: CallSpec) -> Listed:
    try:
        return ask(spec)
    except LLMError as error:
        return error


async def _alisted(ask: Callable[[CallSpec], Any], spec: CallSpec) -> Listed:
    try:
        return cast(Reply, await ask(spec))
    except LLMError as error:
        return error


_ERRORS: Errors = (RoutesUnavailableError, RoutesTimeoutError)


class RoutingTransport(httpx.BaseTransport):
    def __init__(self, engine: SyncEngine) -> None:
        self._engine = engine

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        content = request.read()
        return cast(
            httpx.Response, handle(httpx, self._engine, request, content, _SyncStreamBody, _ERRORS)
        )

    def close(self) -> None:
        """Nothing to do: the provider owns the connections (close the provider instead)."""


class AsyncRoutingTransport(httpx.AsyncBaseTransport):
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        content = await request.aread()
        answer = await ahandle(httpx, self._engine, request, content, _AsyncStreamBody, _ERRORS)
        return cast(httpx.Response, answer)

    async def aclose(self) -> None:
        """Nothing to do: the provider owns the connections (close the provider instead)."""


class _SyncStreamBody(httpx.SyncByteStream):
    def __init__(self, stream: SyncStream) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream.iter_raw()

    def close(self) -> None:
        self._stream.close()


class _AsyncStreamBody(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncStream) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream.aiter_raw():
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()
