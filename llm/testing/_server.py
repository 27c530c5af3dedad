"""FakeVLLM: a fake vLLM 0.32 server running on its own event loop in a daemon thread.

How this works
--------------
``FakeVLLM.start()`` spawns a daemon thread that creates a private asyncio event
loop, binds a listening socket (127.0.0.1, port 0 = ephemeral) with
:class:`~llm.testing._http.HttpConnection` as the protocol, and runs the loop
forever. Because the loop is private, the fake works the same from sync tests
and from async tests running their own loop.

Requests are routed by :meth:`_Core.handle` (runs on the server loop):

* GET ``/health``, ``/version``, ``/v1/models``, ``/metrics``; POST
  ``/v1/chat/completions``, ``/v1/completions``, ``/tokenize``;
  ``/_fake/control`` (POST: inject faults from another process, GET: counters).
* For ``/v1`` POSTs the order is: count + record -> API-key check (401) ->
  ``hang`` -> ``fail_next`` -> ``fail_fraction`` -> ``respond_garbage`` ->
  content-type / JSON / vLLM validation -> generation.
* Answers that need no waiting are written synchronously from
  ``data_received`` (one ``transport.write``); anything with latency, token
  delay or a stream fault becomes a per-connection task that is cancelled when
  the peer disconnects or the server stops.

Control methods (``fail_next``, ``hang``, ``set_latency``, ...) are called from
any thread: they only mutate fields under a ``threading.Lock`` and take effect
for the next request. ``down()``/``up()``/``stop()`` hop onto the server loop
with ``run_coroutine_threadsafe`` and wait with a bound.

Continuous batching (``FakeVLLM(batching=BatchingSpec(...))``, off by default):
a /v1 POST that passes the fault decisions and validation becomes a sequence
of :class:`llm.testing.fleet.Scheduler`, driven by one task per server
(:class:`_Batcher`): admit, sleep the step on absolute times, hand out one
token each. The request is answered without a task of its own: the
connection is *held* (``HttpConnection.hold``) until the scheduler answers it
(non-streamed: the usual body, with ``prompt_tokens_details``, when its last
token comes; streamed: the usual SSE frames, grouped by the token that
releases them) or the peer goes away (the sequence is dropped at once).
``latency`` delays the entry into the queue; ``token_delay`` is ignored (the
steps pace the tokens); stream cuts and hangs happen after the same number
of events as without batching.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from llm.testing import _vllm as V
from llm.testing import fleet as F
from llm.testing._http import HttpConnection, Request

GarbageKind = Literal[
    "malformed_json",
    "truncated",
    "html",
    "empty",
    "wrong_content_type",
    "malformed_shape",
    "malformed_chunk",
    "deep_json",
    "processing_forever",
    "trickled_headers",
]
GARBAGE_KINDS: frozenset[str] = frozenset(
    {
        "malformed_json",
        "truncated",
        "html",
        "empty",
        "wrong_content_type",
        "malformed_shape",  # a 200 whose choices are [null]
        "malformed_chunk",  # an event stream whose second chunk has choices "abc"
        "deep_json",  # a 200 of JSON nested 100,000 deep
        "processing_forever",  # "102 Processing" every 50 ms, never an answer
        "trickled_headers",  # a status line, then a header a byte every 50 ms, forever
    }
)
_TRICKLE = 0.05  # seconds between two bytes (or interim answers) of a trickling fault

_SSE = "text/event-stream; charset=utf-8"
_JSON = "application/json"
_V1_POST = frozenset({"/v1/chat/completions", "/v1/completions"})
_GET_ROUTES = frozenset({"/health", "/version", "/v1/models", "/metrics", "/ping"})
_POST_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/tokenize", "/ping"})
_CONTROL = "/_fake/control"
_MAX_RECORDED = 1000
# Without batching, the prefix cache works in vLLM CPU's KV blocks of 128 tokens (a GPU
# build uses 16); 8192 blocks is a million tokens, vLLM's CPU cache with 1 GiB on this model.
_PLAIN_BLOCK = 128
_PLAIN_CACHE_BLOCKS = 8192
_CONTROL_KEYS = frozenset(
    {
        "fail_next",
        "fail_status",
        "fail_message",
        "retry_after",
        "fail_fraction",
        "cut_streams_after",
        "hang_streams_after",
        "hang",
        "latency",
        "token_delay",
        "reset",
        "respond_garbage",
    }
)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    body: bytes = b""
    time: float = 0.0


@dataclass(frozen=True, slots=True)
class _Decision:
    """What to do with one /v1 POST, snapshotted under the lock."""

    action: Literal["ok", "hang", "fail", "garbage"]
    status: int = 0
    message: str | None = None
    retry_after: float | None = None
    garbage: str | None = None
    latency: float = 0.0
    token_delay: float = 0.0
    cut_after: int | None = None
    hang_after: int | None = None


def _fmt_seconds(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


class _Core:
    """Request handling; lives on the server loop. Fault fields are guarded by ``lock``."""

    def __init__(self, owner: FakeVLLM) -> None:
        self.owner = owner
        self.spec = owner._spec
        self.lock = owner._lock
        self.conns: set[HttpConnection] = set()
        self.accepting = True
        self.every: weakref.WeakSet[HttpConnection] = weakref.WeakSet()
        self.ids = random.Random()
        self.running = 0
        self.success = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.prefix = F.PrefixCache(_PLAIN_CACHE_BLOCKS)  # without batching (_admit_prompt)
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.model_created = int(time.time())
        self.perm_id = f"modelperm-{self.ids.getrandbits(64):016x}"
        spec = owner._batching
        self.batcher: _Batcher | None = None if spec is None else _Batcher(self, spec)

    # -------------------------------------------------------------- connections

    def track(self, conn: HttpConnection) -> HttpConnection:
        self.every.add(conn)
        return conn

    def abort_every(self) -> None:
        """Abort every connection ever made that is still open (the last word at shutdown)."""
        for conn in list(self.every):
            transport = conn.transport
            if transport is not None and not transport.is_closing():
                conn.abort()

    def connection_opened(self, conn: HttpConnection) -> None:
        if not self.accepting:
            # Accepted by the kernel just before down(): drop it like a dead host would.
            conn.abort()
            return
        self.conns.add(conn)
        with self.lock:
            self.owner._connections_accepted += 1

    def connection_closed(self, conn: HttpConnection) -> None:
        self.conns.discard(conn)

    # -------------------------------------------------------------- routing

    def handle(self, conn: HttpConnection, req: Request) -> Coroutine[Any, Any, None] | None:
        path = req.path
        method = req.method
        if path == _CONTROL:
            self._control(conn, req)
            return None
        parsed: Any = None
        bad_json = False
        if req.body and _is_json_ct(req):
            try:
                parsed = json.loads(req.body)
            except ValueError:
                bad_json = True
        rec = RecordedRequest(method, path, req.headers, parsed, req.body, time.time())
        owner = self.owner
        is_v1_post = method == "POST" and path in _V1_POST
        with self.lock:
            owner._recorded.append(rec)
            if is_v1_post:
                owner._request_count += 1
            api_key = owner._api_key
        if (
            api_key is not None
            and path.startswith("/v1")
            and method != "OPTIONS"
            and req.headers.get("authorization") != f"Bearer {api_key}"
        ):
            conn.send(401, b'{"error":"Unauthorized"}')
            return None
        if is_v1_post:
            return self._generate(conn, req, path, None if bad_json else parsed)
        is_head = method == "HEAD"
        if (method == "GET" or is_head) and path in _GET_ROUTES:
            self._get(conn, path, is_head)
            return None
        if method == "POST" and path in _POST_ROUTES:
            if path == "/tokenize":
                self._tokenize(conn, req)
                return None
            conn.send(200, b"", None)  # /ping
            return None
        if path in _GET_ROUTES or path in _POST_ROUTES:
            allow = []
            if path in _GET_ROUTES:
                allow.append("GET, HEAD")
            if path in _POST_ROUTES:
                allow.append("POST")
            conn.send(
                405, b'{"detail":"Method Not Allowed"}', _JSON, (("allow", ", ".join(allow)),)
            )
            return None
        conn.send(404, b'{"detail":"Not Found"}')
        return None

    def _get(self, conn: HttpConnection, path: str, is_head: bool) -> None:
        with self.lock:
            override = self.owner._get_overrides.get(path)
        if override is not None:  # set by FakeVLLM.answer_get()
            status, payload, override_ctype = override
            if is_head:
                conn.send_raw(conn.head(status, override_ctype, len(payload)).encode("latin-1"))
            else:
                conn.send(status, payload, override_ctype)
            return
        ctype: str | None = _JSON
        if path in ("/health", "/ping"):
            body, ctype = b"", None
        elif path == "/version":
            body = b'{"version":"%s"}' % V.VLLM_VERSION.encode()
        elif path == "/v1/models":
            body = V.render_models(self.spec, self.model_created, self.perm_id)
        elif self.batcher is not None:  # /metrics of a batching server
            sched = self.batcher.sched
            body = V.render_metrics(
                self.spec.model,
                sched.running,
                sched.waiting,
                self.success,
                self.prompt_tokens_total,
                self.generation_tokens_total,
                kv_usage=sched.kv_usage(),
                prefix_cache=(sched.prefix_queries, sched.prefix_hits),
            )
        else:  # /metrics
            body = V.render_metrics(
                self.spec.model,
                self.running,
                0,
                self.success,
                self.prompt_tokens_total,
                self.generation_tokens_total,
                prefix_cache=(self.prefix_queries, self.prefix_hits),
            )
            ctype = "text/plain; version=0.0.4; charset=utf-8"
        if is_head:
            conn.send_raw(conn.head(200, ctype, len(body)).encode("latin-1"))
        else:
            conn.send(200, body, ctype)

    def _tokenize(self, conn: HttpConnection, req: Request) -> None:
        style = self.spec.error_style
        if not _is_json_ct(req):
            _send_err(conn, V.unsupported_media_type(style))
            return
        body, err = V.parse_json_body(style, req.body)
        if err is not None:
            _send_err(conn, err)
            return
        out = V.render_tokenize(self.spec, body)
        if isinstance(out, V.HttpError):
            _send_err(conn, out)
        else:
            conn.send(200, out)

    # -------------------------------------------------------------- control

    def _control(self, conn: HttpConnection, req: Request) -> None:
        if req.method == "GET":
            o = self.owner
            conn.send(
                200,
                V.dumpb(
                    {
                        "request_count": o.request_count,
                        "connections_accepted": o.connections_accepted,
                        "in_flight": self.running,
                    }
                ),
            )
            return
        if req.method != "POST":
            conn.send(405, b'{"detail":"Method Not Allowed"}', _JSON, (("allow", "GET, POST"),))
            return
        try:
            body = json.loads(req.body or b"{}")
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            unknown = sorted(set(body) - _CONTROL_KEYS)
            if unknown:
                raise ValueError(f"unknown keys: {', '.join(unknown)}")
            self.owner.apply_control(body)
        except (ValueError, TypeError) as exc:
            conn.send(400, V.dumpb({"ok": False, "error": str(exc)}))
            return
        conn.send(200, b'{"ok":true}')

    # -------------------------------------------------------------- generation

    def _decide(self) -> _Decision:
        o = self.owner
        with self.lock:
            common: dict[str, Any] = {
                "latency": o._latency,
                "token_delay": o._token_delay,
                "cut_after": o._cut_after,
                "hang_after": o._hang_after,
            }
            if o._hang:
                return _Decision("hang", **common)
            if o._fail_n > 0:
                o._fail_n -= 1
                return _Decision(
                    "fail",
                    status=o._fail_status,
                    message=o._fail_message,
                    retry_after=o._fail_retry_after,
                    **common,
                )
            if o._fail_p > 0.0 and o._rng.random() < o._fail_p:
                return _Decision("fail", status=o._fail_p_status, **common)
            if o._garbage is not None:
                return _Decision("garbage", garbage=o._garbage, **common)
            return _Decision("ok", **common)

    def _generate(
        self, conn: HttpConnection, req: Request, path: str, parsed: Any
    ) -> Coroutine[Any, Any, None] | None:
        d = self._decide()
        style = self.spec.error_style
        if d.action == "hang":
            return self._hang_forever()
        if d.action == "fail":
            status = d.status
            msg = d.message or V.default_error_message(status)
            body = V.error_body(style, msg, V.error_type_for(status), None, status)
            extra: tuple[tuple[str, str], ...] = ()
            if d.retry_after is not None:
                extra = (("retry-after", _fmt_seconds(d.retry_after)),)
            conn.send(status, body, _JSON, extra)
            return None
        if d.action == "garbage":
            return self._garbage(conn, d.garbage or "")
        if not _is_json_ct(req):
            _send_err(conn, V.unsupported_media_type(style))
            return None
        body = parsed
        if body is None:  # empty or malformed body: build vLLM's exact error
            body, err = V.parse_json_body(style, req.body)
            if err is not None:
                _send_err(conn, err)
                return None
        plan = (
            V.plan_chat(self.spec, body)
            if path == "/v1/chat/completions"
            else V.plan_completion(self.spec, body)
        )
        if isinstance(plan, V.HttpError):
            _send_err(conn, plan)
            return None
        created = int(time.time())
        rnd = self.ids.getrandbits(64)
        tool_id = f"chatcmpl-tool-{self.ids.getrandbits(128):032x}"
        self.success += 1
        self.prompt_tokens_total += plan.prompt_tokens
        self.generation_tokens_total += plan.completion_tokens
        batcher = self.batcher
        details = None if batcher is not None else self._admit_prompt(body, plan)
        if not plan.stream:
            orca = req.headers.get(V.ORCA_FORMAT_HEADER)
            if batcher is not None:
                batcher.accept(conn, body, plan, d, rnd, created, tool_id, orca)
                return None
            if plan.kind == "chat":
                rid = f"chatcmpl-{rnd:016x}"
                out = V.render_chat(plan, self.spec, rid, created, tool_id, details)
            else:
                out = V.render_completion(plan, self.spec, f"cmpl-{rnd:016x}", created, details)
            # generating takes as long as when streamed: a token delay per token
            delay = d.latency + d.token_delay * plan.completion_tokens
            if delay > 0:
                return self._delayed(conn, out, delay, orca)
            conn.send(200, out, _JSON, self._orca(orca) if orca else ())
            return None
        if plan.kind == "chat":
            rid = f"chatcmpl-{rnd:016x}"
            events = V.render_chat_stream(plan, self.spec, rid, created, tool_id, details)
        else:
            rid = f"cmpl-{rnd:016x}"
            events = V.render_completion_stream(plan, self.spec, rid, created, details)
        frames = [_sse_chunk(text) for text, _ in events]
        if (
            batcher is not None
            and (d.cut_after is None or d.cut_after > 0)
            and (d.hang_after is None or d.hang_after > 0)  # else: no token ever, as below
        ):
            batcher.accept_stream(conn, body, plan, d, frames, [p for _, p in events])
            return None
        if d.latency <= 0 and d.token_delay <= 0 and d.cut_after is None and d.hang_after is None:
            conn.send_raw(
                conn.head(200, _SSE, None).encode("latin-1") + b"".join(frames) + b"0\r\n\r\n"
            )
            return None
        paced = [p for _, p in events]
        return self._stream(conn, frames, paced, d)

    def _admit_prompt(self, body: dict[str, Any], plan: V.Plan) -> V.PromptDetails | None:
        """The prompt through the prefix cache (without batching): the /metrics counters
        move, and the usage's ``prompt_tokens_details`` when the server shows them."""
        hashes = F.prompt_block_hashes(plan.kind, body, plan.prompt_tokens, _PLAIN_BLOCK)
        hit, created = self.prefix.admit(hashes, (plan.prompt_tokens - 1) // _PLAIN_BLOCK)
        self.prefix_queries += plan.prompt_tokens
        self.prefix_hits += hit * _PLAIN_BLOCK
        if not self.owner.prompt_tokens_details:
            return None
        return hit * _PLAIN_BLOCK, created * _PLAIN_BLOCK

    def _garbage(self, conn: HttpConnection, kind: str) -> Coroutine[Any, Any, None] | None:
        if kind in ("processing_forever", "trickled_headers"):
            return self._trickle(conn, kind)
        if kind == "malformed_shape":
            conn.send(200, b'{"id":"x","object":"chat.completion","created":0,"choices":[null]}')
        elif kind == "deep_json":
            conn.send(200, b"[" * 100_000 + b"]" * 100_000)
        elif kind == "malformed_chunk":
            conn.start_stream(200, _SSE)
            role = b'{"id":"x","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}'
            conn.send_chunk(b"data: " + role + b"\n\n")
            conn.send_chunk(b'data: {"id":"x","choices":"abc"}\n\n')
            conn.end_stream()
        elif kind == "malformed_json":
            conn.send(200, b'{"id": "x", "choices": [')
        elif kind == "truncated":
            full = (
                b'{"id":"chatcmpl-truncated","object":"chat.completion","created":0,"choices":[]}'
            )
            sent = full[: len(full) // 2]
            conn.keep_alive = False
            head = conn.head(200, _JSON, len(full))
            conn.send_raw(head.encode("latin-1") + sent)
            conn.close()
        elif kind == "html":
            status_line = "HTTP/1.1 502 Bad Gateway\r\n"
            hdrs = (
                f"Server: nginx/1.24.0\r\nDate: {_http_date()}\r\nContent-Type: text/html\r\n"
                f"Content-Length: {len(V.NGINX_502)}\r\n"
                f"Connection: {'keep-alive' if conn.keep_alive else 'close'}\r\n\r\n"
            )
            conn.send_raw((status_line + hdrs).encode("latin-1") + V.NGINX_502)
        elif kind == "empty":
            conn.send(200, b"", _JSON)
        else:  # wrong_content_type
            conn.send(200, b"hello", "text/plain; charset=utf-8")
        return None

    async def _trickle(self, conn: HttpConnection, kind: str) -> None:
        """Never an answer: interim ``102 Processing`` answers, or headers a byte at a time,
        until the client goes away (the connection then cancels this task)."""
        self.running += 1
        try:
            piece = b"HTTP/1.1 102 Processing\r\n\r\n"
            if kind == "trickled_headers":
                conn.send_raw(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-slow: ")
                piece = b"a"
            while not conn.closing:
                conn.send_raw(piece)
                await asyncio.sleep(_TRICKLE)
        finally:
            self.running -= 1

    async def _hang_forever(self) -> None:
        self.running += 1
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            self.running -= 1

    def _orca(self, fmt: str) -> tuple[tuple[str, str], ...]:
        """The ORCA load report of a non-batching server: nothing waits; KV from in-flight."""
        return V.orca_headers(fmt, 0.0, V.inflight_kv_usage(self.running))

    async def _delayed(
        self, conn: HttpConnection, body: bytes, latency: float, orca: str | None = None
    ) -> None:
        self.running += 1
        try:
            await asyncio.sleep(latency)
        finally:
            # not in flight any more *before* the client can see the answer
            self.running -= 1
        conn.send(200, body, _JSON, self._orca(orca) if orca else ())

    async def _stream(
        self, conn: HttpConnection, frames: list[bytes], paced: list[bool], d: _Decision
    ) -> None:
        self.running += 1
        counted = True

        def release() -> None:
            # leave the in-flight gauge before the client can see the end of the stream
            nonlocal counted
            if counted:
                counted = False
                self.running -= 1

        try:
            conn.start_stream(200, _SSE)
            cut, hang_after = d.cut_after, d.hang_after
            if cut is not None and cut <= 0:
                await conn.flush()
                release()
                conn.abort()
                return
            if hang_after is not None and hang_after <= 0:
                await asyncio.get_running_loop().create_future()
            if d.latency > 0:
                await asyncio.sleep(d.latency)
            delay = d.token_delay
            last = len(frames) - 1
            for i, frame in enumerate(frames):
                if delay > 0 and paced[i]:
                    await asyncio.sleep(delay)
                sent = i + 1
                if i == last and cut is None and hang_after is None:
                    release()
                conn.send_raw(frame)
                if conn.paused:
                    await conn.drain()
                if cut is not None and sent >= cut:
                    break
                if hang_after is not None and sent >= hang_after:
                    await asyncio.get_running_loop().create_future()
            if cut is not None:
                await conn.flush()
                release()
                conn.abort()
                return
            if hang_after is not None:
                await asyncio.get_running_loop().create_future()
            release()
            conn.end_stream()
        finally:
            release()


class _BatchCall(F.Seq):
    """One /v1 POST of a batching server: a scheduler sequence plus what answers it."""

    __slots__ = (
        "batcher",
        "chunks",
        "conn",
        "counted",
        "created",
        "cut_at",
        "end_ok",
        "orca",
        "plan",
        "rnd",
        "timer",
        "tool_id",
    )

    def __init__(
        self, batcher: _Batcher, conn: HttpConnection, plan: V.Plan, body: dict[str, Any]
    ) -> None:
        spec = batcher.sched.spec
        hashes = F.prompt_block_hashes(plan.kind, body, plan.prompt_tokens, spec.block_size)
        length = max(plan.completion_tokens_per_choice, default=0)
        super().__init__(plan.prompt_tokens, length, hashes, stream=plan.stream)
        self.batcher = batcher
        self.conn = conn
        self.plan = plan
        self.counted = False
        self.timer: asyncio.TimerHandle | None = None
        self.chunks: list[bytes | None] = []
        self.cut_at = -1  # streams: abort the connection after the chunk of this token
        self.end_ok = True  # False: a cut or hung stream, never ended properly
        self.orca: str | None = None
        self.rnd = 0
        self.created = 0
        self.tool_id = ""

    def lost(self) -> None:
        self.batcher.drop(self)


class _Batcher:
    """The scheduler task of a batching server: thin I/O around :class:`F.Scheduler`."""

    def __init__(self, core: _Core, spec: F.BatchingSpec) -> None:
        self.core = core
        self.sched: F.Scheduler[_BatchCall] = F.Scheduler(spec)
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.cuts: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- entry

    def accept(
        self,
        conn: HttpConnection,
        body: dict[str, Any],
        plan: V.Plan,
        d: _Decision,
        rnd: int,
        created: int,
        tool_id: str,
        orca: str | None,
    ) -> None:
        call = _BatchCall(self, conn, plan, body)
        call.rnd, call.created, call.tool_id, call.orca = rnd, created, tool_id, orca
        self._enter(call, d.latency)

    def accept_stream(
        self,
        conn: HttpConnection,
        body: dict[str, Any],
        plan: V.Plan,
        d: _Decision,
        frames: list[bytes],
        paced: list[bool],
    ) -> None:
        call = _BatchCall(self, conn, plan, body)
        cut, hang = d.cut_after, d.hang_after
        limit: int | None = None
        if cut is not None and (hang is None or cut <= hang):
            limit = cut
        elif hang is not None:
            limit = hang
        end = b"0\r\n\r\n" if limit is None else b""
        call.chunks, last = F.token_chunks(frames, paced, call.length, limit=limit, end=end)
        if limit is not None:
            call.end_ok = False
            if limit == cut:
                call.cut_at = last
        conn.start_stream(200, _SSE)
        self._enter(call, d.latency)

    def _enter(self, call: _BatchCall, latency: float) -> None:
        call.counted = True
        self.core.running += 1
        call.conn.hold(call.lost)
        if latency > 0:
            call.timer = asyncio.get_running_loop().call_later(latency, self.submit, call)
        else:
            self.submit(call)

    def submit(self, call: _BatchCall) -> None:
        call.timer = None
        self.sched.submit(call)
        task = self.task
        if task is None or task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())
        self.wake.set()

    def drop(self, call: _BatchCall) -> None:
        """The client went away: the sequence leaves the scheduler now."""
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        self.sched.cancel(call)
        self._uncount(call)

    def _uncount(self, call: _BatchCall) -> None:
        if call.counted:
            call.counted = False
            self.core.running -= 1

    # ---------------------------------------------------------------- the loop

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        sched = self.sched
        wake = self.wake
        at = loop.time()  # when the current step started / ends (absolute)
        while True:
            duration = sched.begin_step()
            if duration is None:
                wake.clear()
                await wake.wait()
                at = loop.time()
                continue
            now = loop.time()
            if now - at > _MAX_LAG:  # too late to catch up: start afresh
                at = now
            at += duration
            if at > now:
                await asyncio.sleep(at - now)
            tokens, finished = sched.end_step()
            if tokens or finished:
                self._deliver(tokens, finished)

    def _deliver(self, tokens: list[_BatchCall], finished: list[_BatchCall]) -> None:
        step = self.sched.step_no
        for call in finished:  # out of the in-flight count before the client sees the end
            if call.end_ok:
                self._uncount(call)
        for call in tokens:
            i = step - call.first - 1
            data = call.chunks[i]
            if data is not None:
                call.conn.send_raw(data)
            if i == call.cut_at:
                self._cut(call)
        for call in finished:
            conn = call.conn
            if call.stream:
                if call.end_ok:
                    conn.release()
                continue  # a hung stream stays held (and in flight) until the client leaves
            conn.send(200, self._render(call), _JSON, self._orca(call.orca) if call.orca else ())
            conn.release()

    def _render(self, call: _BatchCall) -> bytes:
        plan, spec = call.plan, self.core.spec
        details = (call.cached_tokens, call.created_tokens)
        if plan.kind == "chat":
            rid = f"chatcmpl-{call.rnd:016x}"
            return V.render_chat(plan, spec, rid, call.created, call.tool_id, details)
        return V.render_completion(plan, spec, f"cmpl-{call.rnd:016x}", call.created, details)

    def _orca(self, fmt: str) -> tuple[tuple[str, str], ...]:
        sched = self.sched
        return V.orca_headers(fmt, sched.waiting, sched.kv_usage())

    def _cut(self, call: _BatchCall) -> None:
        self.sched.cancel(call)
        self._uncount(call)
        task = asyncio.get_running_loop().create_task(_abort_after_flush(call.conn))
        self.cuts.add(task)
        task.add_done_callback(self.cuts.discard)


_MAX_LAG = 0.05  # seconds a step may start late and still be caught up on


async def _abort_after_flush(conn: HttpConnection) -> None:
    await conn.flush()
    conn.abort()


def _http_date() -> str:
    from llm.testing._http import http_date

    return http_date()


def _sse_chunk(text: str) -> bytes:
    data = b"data: %b\n\n" % text.encode("utf-8")
    return b"%x\r\n%b\r\n" % (len(data), data)


def _is_json_ct(req: Request) -> bool:
    ct = req.headers.get("content-type", "").lower()
    return ct.split(";", 1)[0].strip() == "application/json"


def _send_err(conn: HttpConnection, err: V.HttpError) -> None:
    conn.send(err.status, err.body, _JSON, err.headers)


class FakeVLLM:
    """A fake vLLM 0.32 OpenAI-compatible server; see the module docstring.

    Use as a context manager (``with FakeVLLM() as srv: ...``) or call
    :meth:`start` / :meth:`stop`. ``srv.base_url`` is the ``.../v1`` URL to give
    an OpenAI-compatible client.
    """

    def __init__(
        self,
        model: str = "tiny",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        tokens: int = 8,
        token_delay: float = 0.0,
        max_model_len: int = 512,
        reasoning: bool = False,
        error_style: Literal["nested", "flat"] = "nested",
        api_key: str | None = None,
        name: str | None = None,
        seed: int = 0,
        keep_alive_timeout: float | None = None,
        batching: F.BatchingSpec | None = None,
        prompt_tokens_details: bool = False,
    ) -> None:
        if error_style not in ("nested", "flat"):
            raise ValueError(f"error_style must be 'nested' or 'flat', not {error_style!r}")
        if tokens < 0:
            raise ValueError("tokens must be >= 0")
        self.model = model
        self.host = host
        self.port = port
        self.name = name
        # vLLM's --enable-prompt-tokens-details: usage shows cached_tokens (always with batching)
        self.prompt_tokens_details = prompt_tokens_details
        self._spec = V.ServerSpec(
            model=model,
            max_model_len=max_model_len,
            tokens=tokens,
            reasoning=reasoning,
            error_style=error_style,
        )
        self._lock = threading.Lock()
        self._api_key = api_key
        self._seed = seed
        self._rng = random.Random(seed)
        self._base_latency = float(latency)
        self._base_token_delay = float(token_delay)
        self._keep_alive_timeout = keep_alive_timeout
        if batching is not None and not isinstance(batching, F.BatchingSpec):
            raise TypeError("batching must be a BatchingSpec or None")
        self._batching = batching
        self._recorded: deque[RecordedRequest] = deque(maxlen=_MAX_RECORDED)
        self._request_count = 0
        self._connections_accepted = 0
        self._reset_faults_locked()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._core: _Core | None = None
        self._lifecycle = threading.Lock()

    # ------------------------------------------------------------------ properties

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def request_count(self) -> int:
        """Number of /v1 POST requests (chat + completions) received."""
        return self._request_count

    @property
    def connections_accepted(self) -> int:
        """Number of TCP connections accepted since start."""
        return self._connections_accepted

    @property
    def in_flight(self) -> int:
        """Requests currently being answered slowly (latency/stream/hang)."""
        core = self._core
        return core.running if core is not None else 0

    @property
    def batching(self) -> F.BatchingSpec | None:
        """The continuous-batching spec, or None (the default: every call is answered at once)."""
        return self._batching

    def batch_load(self) -> tuple[int, int]:
        """(running, waiting) now, from any thread. Without batching: (in flight, 0)."""
        core = self._core
        if core is None:
            return (0, 0)
        batcher = core.batcher
        if batcher is None:
            return (core.running, 0)
        return batcher.sched.load

    @property
    def requests(self) -> list[RecordedRequest]:
        """The last 1000 requests (every path except /_fake/*), oldest first."""
        with self._lock:
            return list(self._recorded)

    @property
    def running(self) -> bool:
        return self._thread is not None

    def __repr__(self) -> str:
        label = f" {self.name}" if self.name else ""
        return f"<FakeVLLM{label} model={self.model!r} url={self.url}>"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeVLLM:
        """Start listening (in a daemon thread); returns self once the socket is bound."""
        with self._lifecycle:
            if self._thread is not None:
                raise RuntimeError("FakeVLLM already started")
            ready = threading.Event()
            errors: list[BaseException] = []
            thread = threading.Thread(
                target=self._run,
                args=(ready, errors),
                name=f"fake-vllm-{self.name or self.model}",
                daemon=True,
            )
            thread.start()
            if not ready.wait(10.0):
                raise RuntimeError("FakeVLLM did not start within 10 s")
            if errors or self._server is None:
                thread.join(2.0)
                self._loop = None
                self._core = None
                if errors:
                    raise errors[0]
                raise RuntimeError("FakeVLLM failed to start")
            self._thread = thread
        return self

    def _run(self, ready: threading.Event, errors: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            try:
                self._core = _Core(self)
                loop.run_until_complete(self._listen())
            except OSError as exc:
                errors.append(exc)
                return
            finally:
                ready.set()
            loop.run_forever()
        finally:
            try:
                tasks = asyncio.all_tasks(loop)
                for t in tasks:
                    t.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
                # Run what is still scheduled (connection_made of late accepts, which abort
                # themselves once not accepting), abort whatever is still open, and let the
                # aborted transports close their sockets.
                loop.run_until_complete(asyncio.sleep(0.01))
                if self._core is not None:
                    self._core.abort_every()
                loop.run_until_complete(asyncio.sleep(0.01))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        core = self._core
        assert core is not None
        core.accepting = True
        server = await loop.create_server(
            lambda: core.track(HttpConnection(core, loop, self._keep_alive_timeout)),
            self.host,
            self.port,
            reuse_address=True,
            backlog=1024,
        )
        self._server = server
        self.port = server.sockets[0].getsockname()[1]

    async def _close_all(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        core = self._core
        if core is not None:
            core.accepting = False
            for conn in list(core.conns):
                conn.abort()
                task = conn.task
                if task is not None:
                    task.cancel()
        # Let connection_lost callbacks, cancellations and accepts already in progress (whose
        # connections are then aborted by connection_opened) run before going on.
        for _ in range(3):
            await asyncio.sleep(0)
        await asyncio.sleep(0.02)
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    async def _shutdown(self) -> None:
        await self._close_all()
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)

    def _call(self, coro: Coroutine[Any, Any, None], timeout: float) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            coro.close()
            raise RuntimeError("FakeVLLM is not running")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("FakeVLLM control methods cannot be called from its own loop")
        fut = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()

    def stop(self) -> None:
        """Close everything (cancel in-flight requests) and join the thread; bounded ~2 s."""
        with self._lifecycle:
            thread, loop = self._thread, self._loop
            if thread is None or loop is None:
                return
            with contextlib.suppress(RuntimeError):
                self._call(self._shutdown(), 1.5)
            self._thread = None
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
            thread.join(2.0)
            self._loop = None
            self._core = None

    def down(self) -> None:
        """Stop listening and drop every open connection (new connects are refused)."""
        with self._lifecycle:
            self._call(self._close_all(), 2.0)

    def up(self) -> None:
        """Listen again on the same port after :meth:`down`."""
        with self._lifecycle:
            if self._server is not None:
                return
            loop = self._loop
            if loop is None or self._thread is None:
                raise RuntimeError("FakeVLLM is not running")
            fut = asyncio.run_coroutine_threadsafe(self._listen(), loop)
            fut.result(5.0)

    def __enter__(self) -> FakeVLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ faults

    def _reset_faults_locked(self) -> None:
        self._hang = False
        self._fail_n = 0
        self._fail_status = 503
        self._fail_message: str | None = None
        self._fail_retry_after: float | None = None
        self._fail_p = 0.0
        self._fail_p_status = 500
        self._cut_after: int | None = None
        self._hang_after: int | None = None
        self._garbage: str | None = None
        self._get_overrides: dict[str, tuple[int, bytes, str | None]] = {}
        self._latency = self._base_latency
        self._token_delay = self._base_token_delay

    def reset(self) -> None:
        """Clear all faults; latency and token delay go back to the constructor values."""
        with self._lock:
            self._reset_faults_locked()

    def fail_next(
        self,
        n: int,
        status: int = 503,
        *,
        message: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        """The next ``n`` /v1 POSTs answer ``status`` with a vLLM-shaped error body."""
        if n < 0:
            raise ValueError("n must be >= 0")
        with self._lock:
            self._fail_n = n
            self._fail_status = status
            self._fail_message = message
            self._fail_retry_after = retry_after

    def fail_fraction(self, p: float, status: int = 500) -> None:
        """Each /v1 POST fails with probability ``p`` (seeded RNG)."""
        if not 0.0 <= p <= 1.0:
            raise ValueError("p must be within [0, 1]")
        with self._lock:
            self._fail_p = float(p)
            self._fail_p_status = status

    def cut_streams_after(self, k: int | None) -> None:
        """Streams: abort the connection after ``k`` SSE events (0 = after the headers)."""
        with self._lock:
            self._cut_after = k

    def hang_streams_after(self, k: int | None) -> None:
        """Streams: send ``k`` SSE events, then go silent with the connection open."""
        with self._lock:
            self._hang_after = k

    def hang(self, on: bool = True) -> None:
        """/v1 POSTs are read but never answered (those already hanging stay hung)."""
        with self._lock:
            self._hang = on

    def respond_garbage(self, kind: str | None) -> None:
        """/v1 POSTs get a broken response of the given kind; None turns it off."""
        if kind is not None and kind not in GARBAGE_KINDS:
            raise ValueError(f"unknown garbage kind {kind!r}; one of {sorted(GARBAGE_KINDS)}")
        with self._lock:
            self._garbage = kind

    def answer_get(
        self,
        path: str,
        status: int | None,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> None:
        """GET ``path`` (``/health``, ``/v1/models``, ``/version``, ...) answers ``status`` with
        ``body`` instead of the real answer, e.g. ``answer_get("/health", 503)`` (a dead engine)
        or ``answer_get("/v1/models", 200, b"<html>...", "text/html")``; ``status=None`` (or
        :meth:`reset`) restores the real answer. The API-key check still comes first."""
        if path not in _GET_ROUTES:
            raise ValueError(f"answer_get: {path!r} is not one of {sorted(_GET_ROUTES)}")
        with self._lock:
            if status is None:
                self._get_overrides.pop(path, None)
            else:
                self._get_overrides[path] = (int(status), bytes(body), content_type)

    def set_latency(self, seconds: float) -> None:
        with self._lock:
            self._latency = float(seconds)

    def set_token_delay(self, seconds: float) -> None:
        with self._lock:
            self._token_delay = float(seconds)

    def apply_control(self, body: dict[str, Any]) -> None:
        """Apply a /_fake/control JSON object (also usable in-process)."""
        if body.get("reset"):
            self.reset()
        if "fail_next" in body:
            self.fail_next(
                int(body["fail_next"]),
                int(body.get("fail_status", 503)),
                message=body.get("fail_message"),
                retry_after=body.get("retry_after"),
            )
        if "fail_fraction" in body:
            self.fail_fraction(float(body["fail_fraction"]), int(body.get("fail_status", 500)))
        if "cut_streams_after" in body:
            v = body["cut_streams_after"]
            self.cut_streams_after(None if v is None else int(v))
        if "hang_streams_after" in body:
            v = body["hang_streams_after"]
            self.hang_streams_after(None if v is None else int(v))
        if "hang" in body:
            self.hang(bool(body["hang"]))
        if "latency" in body:
            self.set_latency(float(body["latency"]))
        if "token_delay" in body:
            self.set_token_delay(float(body["token_delay"]))
        if "respond_garbage" in body:
            self.respond_garbage(body["respond_garbage"])


@contextlib.contextmanager
def start_fleet(n: int, **kwargs: Any) -> Iterator[list[FakeVLLM]]:
    """Start ``n`` FakeVLLM servers (same kwargs, names ``fake-0`` ...) and stop them all.

    ``batching`` may also be a list of ``n`` specs (or None), one per server, e.g. one
    slow instance: ``[spec, spec, dataclasses.replace(spec, speed=0.25)]``."""
    if "port" in kwargs and kwargs["port"] not in (0, None) and n > 1:
        raise ValueError("start_fleet: a fixed port only works with n == 1")
    per_server = kwargs.get("batching")
    if isinstance(per_server, (list, tuple)) and len(per_server) != n:
        raise ValueError("start_fleet: batching needs one spec per server")
    servers: list[FakeVLLM] = []
    try:
        for i in range(n):
            kw = dict(kwargs)
            kw.setdefault("name", f"fake-{i}")
            if isinstance(per_server, (list, tuple)):
                kw["batching"] = per_server[i]
            servers.append(FakeVLLM(**kw).start())
        yield servers
    finally:
        for s in servers:
            s.stop()
