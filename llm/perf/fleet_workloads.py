"""The fleet benchmark's workloads (``--workload``) and its affinity clients; pure, seeded.

How this works
--------------
A workload is a name with three things: the calls of an open-loop run (:func:`make_calls`),
the endless supply of calls for the closed loop that measures capacity
(:func:`closed_sessions`: the same mix, so "80 % load" is 80 % of the capacity *for that
mix*), and the fleet it runs on (:func:`fleet_overrides`, applied to ``FleetSpec``). Nothing
here opens a socket or reads a clock; the same seed gives the same calls.

- ``mixed`` (the default): ``fleet_model.make_workload``, unchanged (four shared system
  prompts and unique prompts, half and half), on the default fleet. docs/fleet.md.
- ``prefix``: prefix-heavy, multi-turn. :data:`PREFIX_PROMPTS` (24) distinct system prompts
  of 1,024-2,048 tokens (spread evenly, in an order unrelated to their popularity: 36,853
  tokens in all) are more than one instance's prefix cache holds (16,384 tokens, below) and
  about half of what the four caches hold together (65,536). A conversation (*session*)
  picks its system prompt by a Zipf law (weight ``1 / rank ** 1.1``: the first takes 30 %,
  the first three 53 %, the last 0.9 %) and has 2-6 turns (uniform, mean 4). Turn ``k``
  sends the system prompt, the user messages and assistant answers of the turns before it
  (an answer is synthetic text drawn once per turn, so every later turn resends the very
  same bytes) and a new user message of 30-120 tokens (answers: 60-200). So turn ``k + 1``'s
  prompt begins with turn ``k``'s prompt plus its answer, and its cached prefix can be all of
  turn ``k``'s prompt. Sessions start as a Poisson process at ``rate / 4`` (4: the mean turns)
  from :data:`LEAD` seconds before the run, so that the calls' rate is ``rate`` from the
  first second; a turn follows the last one after ``1 s + exponential(mean 2 s)`` (a
  compressed think time), and the calls are the turns that arrive within the run. Each call
  carries its session's id (``Call.session``): the ``least_load+affinity`` client passes it
  as ``session=``. Half of the calls are streamed, ``max_tokens`` as in ``mixed``. In the
  closed loop every worker runs one session after another, each turn as soon as the last one
  was answered.
- ``tenants``: many tenants, single turns, the regime of llm-d's headline figures (150
  tenants with 6k-token prefixes). :data:`TENANTS` (40) system prompts of 1,200-1,800 tokens
  (60,000 tokens: 3.7 times one instance's cache, 92 % of the four caches together), picked
  by a flatter Zipf law (exponent :data:`TENANT_ZIPF`, 0.6), each call one tenant's prompt
  and a question of its own (20-100 tokens). A prefix-blind router makes every instance
  cache every tenant (thrashing); homes split the tenants among the instances, each of
  which can then hold its share.
- ``hot``: one hot prefix. :data:`HOT_SHARE` (80 %) of the calls begin with one system
  prompt of :data:`HOT_TOKENS` (2,048) tokens and ask a question of their own (20-100
  tokens); the rest are unique prompts of 100-400 tokens, as in ``mixed``; no sessions.
  Affinity sends every call that shares a key to the same few homes: this workload checks
  that the hot key does not pile onto them (its p99 should stay within 10 % of plain
  ``least_load``'s).

**The fleet of ``prefix`` and ``hot``**: as ``mixed``'s, but each instance's prefix cache has
:data:`CACHE_BLOCKS` (1,024) blocks of 16 tokens, 16,384 tokens (the default 4,096 blocks
would hold every prefix of the workload on every instance, and routing could not matter),
and prefill costs :data:`PREFILL_MS_PER_TOKEN` (0.2 ms) per uncached prompt token, 5,000
tokens/s at speed 1: between a 70B model (~3k tokens/s) and an 8B one (10-20k) on one GPU.
At the default 0.05 ms a miss on a 2,000-token prefix costs 100 ms, under a third of a
decode step's share at full batch: here it costs 400 ms at speed 1 and 1.6 s at speed 0.25
(the fake adds a step's prefill to that step, which every running sequence waits for), so a
miss is a visible part of TTFT and of the fleet's capacity.

**Clients** (:func:`client_options`): a plain policy name (``round_robin``, ...) is that
``lb_policy``; ``least_load+affinity`` is ``least_load`` with ``llm.affinity.by_prefix`` on
(the library's defaults for ``homes`` and ``spill_ratio``), its session calls passing
``session=<id>``; ``least_load+by_prefix`` is the same without ``session=`` (the key comes
from the prompt's head alone). :func:`affinity_clients` lists those a workload runs by
default (``+by_prefix`` only where there are sessions: elsewhere it is the same client).
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..testing.fleet import BatchingSpec

from .fleet_model import (
    SHARED_QUESTION,
    UNIQUE_PROMPT,
    Call,
    make_workload,
    mix_call,
    system_prompts,
    text_of_tokens,
)

WORKLOADS = ("mixed", "prefix", "hot", "tenants")
DEFAULT_WORKLOAD = "mixed"

# the fleet of "prefix" and "hot" (see the module docstring)
CACHE_BLOCKS = 1024  # x 16-token blocks: 16,384 tokens per instance
PREFILL_MS_PER_TOKEN = 0.2  # 5,000 tokens/s at speed 1

# "prefix"
PREFIX_PROMPTS = 24
PREFIX_TOKENS = (1024, 2048)  # the system prompts' sizes, spread evenly
ZIPF_EXPONENT = 1.1
SESSION_TURNS = (2, 6)  # uniform
USER_TOKENS = (30, 120)  # a turn's new user message
ANSWER_TOKENS = (60, 200)  # a turn's (synthetic) assistant answer, resent by later turns
THINK_MIN, THINK_MEAN = 1.0, 2.0  # seconds between two turns: min + exponential(mean)
LEAD = 30.0  # seconds before the run from which sessions start (a 6-turn one spans ~15 s)

# "hot"
HOT_SHARE = 0.8
HOT_TOKENS = 2048

# "tenants"
TENANTS = 40
TENANT_TOKENS = (1200, 1800)  # the tenants' system prompts, spread evenly
TENANT_ZIPF = 0.6  # flatter than "prefix": many tenants matter

AFFINITY = "least_load+affinity"  # least_load, affinity by_prefix, session= on session calls
BY_PREFIX = "least_load+by_prefix"  # least_load, affinity by_prefix, no session=


@dataclass(frozen=True)
class FleetSpec:
    """The simulated fleet: one speed per instance, and vLLM's batching constants."""

    speeds: tuple[float, ...] = (1.0, 1.0, 0.5, 0.25)
    max_num_seqs: int = 8
    step_base_ms: float = 20.0
    step_per_seq_ms: float = 1.0
    prefill_ms_per_token: float = 0.05
    block_size: int = 16
    cache_blocks: int = 4096

    @property
    def names(self) -> list[str]:
        return [f"i{k}" for k in range(len(self.speeds))]

    @property
    def cache_tokens(self) -> int:
        """What one instance's prefix cache holds, in tokens."""
        return self.cache_blocks * self.block_size

    @property
    def saturating_concurrency(self) -> int:
        """Calls in flight that keep every batch full, the slowest instance's with a queue:
        the closed loop that measures capacity."""
        return math.ceil((self.max_num_seqs + 3) * sum(self.speeds) / min(self.speeds))

    def batching(self, speed: float) -> BatchingSpec:
        """The batching fake's settings for the instance of ``speed``."""
        from ..testing.fleet import BatchingSpec

        return BatchingSpec(
            max_num_seqs=self.max_num_seqs,
            step_base_ms=self.step_base_ms,
            step_per_seq_ms=self.step_per_seq_ms,
            prefill_ms_per_token=self.prefill_ms_per_token,
            block_size=self.block_size,
            cache_blocks=self.cache_blocks,
            speed=speed,
        )


def fleet_spec(workload: str) -> FleetSpec:
    """The fleet a workload runs on (:func:`fleet_overrides`)."""
    return FleetSpec(**fleet_overrides(workload))


def check_workload(name: str) -> str:
    """``name`` if it is a workload, else ValueError naming the known ones."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    return name


def fleet_overrides(name: str) -> dict[str, Any]:
    """The ``FleetSpec`` fields a workload changes (none for ``mixed``)."""
    if check_workload(name) == "mixed":
        return {}
    return {"cache_blocks": CACHE_BLOCKS, "prefill_ms_per_token": PREFILL_MS_PER_TOKEN}


def has_sessions(name: str) -> bool:
    return check_workload(name) == "prefix"


# -- clients ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientOptions:
    """How a client of the benchmark sets up its provider and its calls."""

    policy: str  # lb_policy
    affinity: dict[str, Any] | None  # llm.affinity, or None for none
    session: bool  # pass a call's session id as session=


_AFFINITY_CLIENTS = {
    AFFINITY: ClientOptions("least_load", {"by_prefix": True}, session=True),
    BY_PREFIX: ClientOptions("least_load", {"by_prefix": True}, session=False),
}


def client_options(client: str) -> ClientOptions:
    """A client name's provider setup: an affinity client, or a plain policy name."""
    return _AFFINITY_CLIENTS.get(client) or ClientOptions(client, None, session=False)


def affinity_clients(workload: str) -> list[str]:
    """The affinity clients a workload runs by default (when the config takes them)."""
    return [AFFINITY, BY_PREFIX] if has_sessions(workload) else [AFFINITY]


def all_affinity_clients() -> list[str]:
    return list(_AFFINITY_CLIENTS)


# -- "prefix" -----------------------------------------------------------------------------


def prefix_prompt_tokens() -> tuple[int, ...]:
    """Each system prompt's size in tokens, by popularity rank: the sizes spread evenly over
    ``PREFIX_TOKENS``, put in an order unrelated to popularity (rank ``k`` takes size
    ``7 k mod 24``, 7 being prime to 24)."""
    return spread_sizes(PREFIX_TOKENS, PREFIX_PROMPTS)


def spread_sizes(bounds: tuple[int, int], n: int) -> tuple[int, ...]:
    """``n`` sizes spread evenly over ``bounds``, rank ``k`` taking the ``7 k mod n``-th (7
    prime to ``n``): sizes in an order unrelated to popularity."""
    low, high = bounds
    sizes = [low + (high - low) * j // (n - 1) for j in range(n)]
    return tuple(sizes[(7 * k) % n] for k in range(n))


@functools.lru_cache(maxsize=1)
def prefix_prompts() -> tuple[str, ...]:
    """The workload's system prompts, most popular first (the same in every run)."""
    return tuple(
        text_of_tokens(random.Random(f"prefix-system-{k}"), tokens, f"You are agent {k}.")
        for k, tokens in enumerate(prefix_prompt_tokens())
    )


def zipf_weights(count: int = PREFIX_PROMPTS, exponent: float = ZIPF_EXPONENT) -> list[float]:
    """Popularity by rank, ``1 / rank ** exponent``, normalized to sum 1."""
    raw = [1.0 / (rank**exponent) for rank in range(1, count + 1)]
    total = sum(raw)
    return [w / total for w in raw]


def make_session(rng: random.Random, session: str, max_tokens: tuple[int, int]) -> list[Call]:
    """One conversation's turns (``index``: the turn; ``at``: seconds after its first turn)."""
    prompts = prefix_prompts()
    which = rng.choices(range(len(prompts)), weights=zipf_weights(len(prompts)))[0]
    history: tuple[tuple[str, str], ...] = (("system", prompts[which]),)
    turns: list[Call] = []
    at = 0.0
    for turn in range(rng.randint(*SESSION_TURNS)):
        if turn:
            at += THINK_MIN + rng.expovariate(1.0 / THINK_MEAN)
        user = text_of_tokens(rng, rng.randint(*USER_TOKENS), f"Session {session} turn {turn}:")
        messages = (*history, ("user", user))
        stream = rng.random() < 0.5
        budget = rng.randint(*max_tokens)
        turns.append(Call(turn, at, messages, budget, stream, which, session))
        answer = text_of_tokens(rng, rng.randint(*ANSWER_TOKENS), f"Answer {session}/{turn}:")
        history = (*messages, ("assistant", answer))
    return turns


def mean_turns() -> float:
    return (SESSION_TURNS[0] + SESSION_TURNS[1]) / 2


def prefix_workload(
    seed: int, rate: float, duration: float, max_tokens: tuple[int, int] = (16, 160)
) -> list[Call]:
    """Sessions starting at ``rate / mean_turns()`` per second from ``-LEAD``; their turns
    within ``[0, duration)``, in arrival order, numbered from 0."""
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    starts = random.Random(f"prefix-{seed}")
    session_rate = rate / mean_turns()
    turns: list[Call] = []
    start = -LEAD + starts.expovariate(session_rate)
    for number in itertools.count():
        if start >= duration:
            break
        rng = random.Random(f"prefix-{seed}-{number}")
        for call in make_session(rng, f"s{seed}-{number}", max_tokens):
            at = start + call.at
            if 0 <= at < duration:
                turns.append(replace(call, at=at))
        start += starts.expovariate(session_rate)
    turns.sort(key=lambda call: call.at)
    return [replace(call, index=index) for index, call in enumerate(turns)]


# -- "hot" --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def hot_prompt() -> str:
    return text_of_tokens(random.Random("hot-system"), HOT_TOKENS, "You are the hot assistant.")


def hot_call(
    rng: random.Random, index: int, at: float, max_tokens: tuple[int, int], tag: str = ""
) -> Call:
    """One call of ``hot``: the hot system prompt and a question (``HOT_SHARE``), or unique."""
    hot = rng.random() < HOT_SHARE
    stream = rng.random() < 0.5
    budget = rng.randint(*max_tokens)
    if hot:
        question = text_of_tokens(rng, rng.randint(*SHARED_QUESTION), f"Question {tag}{index}:")
        messages: tuple[tuple[str, str], ...] = (("system", hot_prompt()), ("user", question))
        return Call(index, at, messages, budget, stream, 0)
    text = text_of_tokens(rng, rng.randint(*UNIQUE_PROMPT), f"Request {tag}{index}:")
    return Call(index, at, (("user", text),), budget, stream, None)


def hot_workload(
    seed: int, rate: float, duration: float, max_tokens: tuple[int, int] = (16, 160)
) -> list[Call]:
    """Poisson arrivals at ``rate`` per second over ``duration`` seconds, each a hot call."""
    return poisson_calls(random.Random(f"hot-{seed}"), rate, duration, max_tokens, seed, hot_call)


CallMaker = Callable[[random.Random, int, float, tuple[int, int], str], Call]


def poisson_calls(
    rng: random.Random,
    rate: float,
    duration: float,
    max_tokens: tuple[int, int],
    seed: int,
    make: CallMaker,
) -> list[Call]:
    """Poisson arrivals at ``rate`` per second over ``duration`` seconds, each call made by
    ``make`` from the same ``rng`` that draws the arrivals."""
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    calls: list[Call] = []
    at = rng.expovariate(rate)
    while at < duration:
        calls.append(make(rng, len(calls), at, max_tokens, f"{seed}-"))
        at += rng.expovariate(rate)
    return calls


# -- "tenants" ----------------------------------------------------------------------------


def tenant_prompt_tokens() -> tuple[int, ...]:
    """Each tenant's system prompt size, by popularity rank, spread evenly over
    ``TENANT_TOKENS`` in an order unrelated to popularity (rank ``k`` takes size ``7 k mod
    40``, 7 being prime to 40)."""
    return spread_sizes(TENANT_TOKENS, TENANTS)


@functools.lru_cache(maxsize=1)
def tenant_prompts() -> tuple[str, ...]:
    """The tenants' system prompts, most popular first (the same in every run)."""
    return tuple(
        text_of_tokens(random.Random(f"tenant-system-{k}"), tokens, f"You serve tenant {k}.")
        for k, tokens in enumerate(tenant_prompt_tokens())
    )


def tenant_call(
    rng: random.Random, index: int, at: float, max_tokens: tuple[int, int], tag: str = ""
) -> Call:
    """One call of ``tenants``: a tenant's system prompt (by a Zipf law) and a question."""
    prompts = tenant_prompts()
    which = rng.choices(range(TENANTS), weights=zipf_weights(TENANTS, TENANT_ZIPF))[0]
    stream = rng.random() < 0.5
    budget = rng.randint(*max_tokens)
    question = text_of_tokens(rng, rng.randint(*SHARED_QUESTION), f"Question {tag}{index}:")
    messages: tuple[tuple[str, str], ...] = (("system", prompts[which]), ("user", question))
    return Call(index, at, messages, budget, stream, which)


def tenants_workload(
    seed: int, rate: float, duration: float, max_tokens: tuple[int, int] = (16, 160)
) -> list[Call]:
    """Poisson arrivals at ``rate`` per second over ``duration`` seconds, each a tenant's."""
    rng = random.Random(f"tenants-{seed}")
    return poisson_calls(rng, rate, duration, max_tokens, seed, tenant_call)


# -- by name ------------------------------------------------------------------------------


def make_calls(
    name: str, seed: int, rate: float, duration: float, max_tokens: tuple[int, int]
) -> list[Call]:
    """The open-loop calls of workload ``name``."""
    if check_workload(name) == "prefix":
        return prefix_workload(seed, rate, duration, max_tokens)
    if name == "hot":
        return hot_workload(seed, rate, duration, max_tokens)
    if name == "tenants":
        return tenants_workload(seed, rate, duration, max_tokens)
    return make_workload(seed, rate, duration, max_tokens)


def closed_sessions(name: str, seed: int, max_tokens: tuple[int, int]) -> Iterator[list[Call]]:
    """The closed loop's supply: endless groups of calls, each group sent in order by one
    worker (a session's turns; a single call otherwise). ``at`` is 0: the worker sets it."""
    counter = itertools.count()
    if check_workload(name) == "prefix":
        for number in counter:
            rng = random.Random(f"prefix-closed-{seed}-{number}")
            turns = make_session(rng, f"c{seed}-{number}", max_tokens)
            yield [replace(call, at=0.0) for call in turns]
    elif name == "hot":
        rng = random.Random(f"hot-saturation-{seed}")
        for index in counter:
            yield [hot_call(rng, index, 0.0, max_tokens, f"s{seed}-")]
    elif name == "tenants":
        rng = random.Random(f"tenants-saturation-{seed}")
        for index in counter:
            yield [tenant_call(rng, index, 0.0, max_tokens, f"s{seed}-")]
    else:  # exactly the calls the closed loop drew before there were workloads
        rng = random.Random(f"saturation-{seed}")
        prompts = system_prompts()
        for index in counter:
            yield [mix_call(rng, index, 0.0, max_tokens, prompts, f"s{seed}-")]


def session_turns(calls: Sequence[Call]) -> dict[str, list[Call]]:
    """The calls of each session, in arrival order."""
    out: dict[str, list[Call]] = {}
    for call in sorted(calls, key=lambda c: c.at):
        if call.session is not None:
            out.setdefault(call.session, []).append(call)
    return out


__all__ = [
    "AFFINITY",
    "BY_PREFIX",
    "CACHE_BLOCKS",
    "HOT_SHARE",
    "HOT_TOKENS",
    "PREFILL_MS_PER_TOKEN",
    "TENANTS",
    "WORKLOADS",
    "ClientOptions",
    "FleetSpec",
    "affinity_clients",
    "check_workload",
    "client_options",
    "closed_sessions",
    "fleet_overrides",
    "fleet_spec",
    "has_sessions",
    "hot_workload",
    "make_calls",
    "make_session",
    "prefix_prompt_tokens",
    "prefix_prompts",
    "prefix_workload",
    "tenant_prompt_tokens",
    "tenants_workload",
    "zipf_weights",
]
