"""Context-window fit: which routes a call can be sent to at all, by their ``max_model_len``.

How this works
--------------
A route's context window (``RouteState.max_model_len``) comes from the config (a route's
``max_model_len``), else from ``/v1/models`` (every check records it), else from the server's
own 400 when a call did not fit (``judge/context.py``); until one of them tells, a route takes
any call. A call *needs* its estimated prompt tokens (``call/size.py``) plus its
``max_tokens`` (at least 1: vLLM always generates one), and fits a route whose window is at
least that. vLLM refuses a call whose ``max_tokens`` exceed the window or whose prompt fills
it, and cuts short the answer of one whose prompt plus ``max_tokens`` exceed it; a route the
call does not fit is skipped, so the call goes where it fits whole.

``CallPlan`` asks ``unfit`` once per call, only when some route's window is known
(``Balancer.limits_known``), and not at all when the call needs no more than the smallest
window of its pool (``Pool.min_limit``, remembered per pool until a window changes). When no
route of the pool fits, the call goes to the ``context_fallback`` (a route, or a model's
pool) if it fits there; otherwise it fails at once with ``ContextWindowError``, naming the
estimate, ``max_tokens`` and each route's window with where it came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..errors import ContextWindowError
from .state import Pool, RouteState


def need_of(prompt_tokens: int, max_tokens: int) -> int:
    """Tokens of context a call needs: its prompt and at least one token of answer."""
    return prompt_tokens + max(max_tokens, 1)


def unfit(routes: Iterable[RouteState], need: int) -> frozenset[RouteState]:
    """The routes whose known window is smaller than ``need``."""
    return frozenset(
        route for route in routes if route.max_model_len is not None and route.max_model_len < need
    )


def min_limit(pool: Pool, version: int) -> int:
    """The smallest known window of the pool's routes (a route whose window is unknown takes
    any call), remembered until a window changes (``version``)."""
    if pool.limits_version != version:
        known = [r.max_model_len for r in pool.routes if r.max_model_len is not None]
        pool.min_limit = min(known) if known else None
        pool.limits_version = version
    return pool.min_limit if pool.min_limit is not None else 1 << 62


def no_fit_error(
    model: str,
    prompt_tokens: int,
    max_tokens: int,
    routes: Sequence[RouteState],
    fallback: str | None,
) -> ContextWindowError:
    """The error of a call that fits no route it could go to."""
    limits = ", ".join(
        f"{route.name} {route.max_model_len} (from {route.limit_source})" for route in routes
    )
    asked = f"max_tokens {max_tokens}" if max_tokens > 0 else "at least 1 token of answer"
    where = (
        f"nor the context_fallback {fallback!r}"
        if fallback is not None
        else "and no llm.context_fallback is configured"
    )
    return ContextWindowError(
        f"the call does not fit any route serving {model!r} {where}: about {prompt_tokens} "
        f"prompt tokens (estimated as UTF-8 bytes / 4) + {asked} > max_model_len of {limits}",
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        limits={route.name: route.max_model_len for route in routes},
    )
