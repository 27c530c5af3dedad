"""The fleet benchmark's pure parts: the workload, the oracle's choice, the statistics.

How this works
--------------
Nothing here opens a socket, reads a clock or sleeps; ``llm.perf.fleet`` and
``llm.perf.fleet_client`` do the I/O around it, and tests/test_fleet_bench.py tests it alone.

- **Workload** (:func:`make_workload`): open-loop Poisson arrivals at ``rate`` calls/s for
  ``duration`` seconds, as offsets from the start (exponential gaps, one seeded
  ``random.Random``). Each call (:func:`mix_call`) draws, from the same generator: shared or
  unique prompt (half and half), streamed or not (half and half), and ``max_tokens`` uniform
  in ``[low, high]``. A shared call starts with one of four long system prompts
  (:data:`SYSTEM_TOKENS`, 400-800 tokens: a prefix cache can serve it) and asks a short
  question of its own; a unique call is one user message of 100-400 tokens that begins with
  its own number (no prefix in common with any other call). Text is words from a fixed
  list; the fake vLLM counts about one token per four characters of text, and
  :func:`text_of_tokens` writes that many characters. The same seed gives the same calls.
- **Replicas** (:func:`assign_replicas`): each call goes to one of ``n`` app replicas by a
  seeded random draw, so every replica sees a Poisson stream of its own.
- **Oracle** (:func:`oracle_choice`): join the shortest queue, knowing the speeds: the
  instance with the least ``(outstanding + 1) / speed`` (the lowest index on a tie).
- **Statistics**: :func:`percentile` (linear between order statistics, as numpy's default),
  :func:`imbalance` (over samples of every instance's waiting count: the worst and the mean
  ``max / mean`` over the samples whose mean is at least 1), :func:`shares`,
  :func:`prefix_hit_rate` (from the counters before and after a run), and
  :func:`summarize`, which turns one client's per-call records into a :class:`Figures`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SYSTEM_TOKENS = (400, 533, 667, 800)  # the four shared system prompts
SHARED_QUESTION = (20, 100)  # tokens of a shared call's own question
UNIQUE_PROMPT = (100, 400)  # tokens of a unique call's prompt
CHARS_PER_TOKEN = 4  # how the fake vLLM counts: len(text) // 4

_WORDS = (
    "fleet batch token queue replica instance latency prefix cache route oracle policy "
    "stream answer server request model weight engine sample window decode prefill block "
    "metric gauge counter shard region cluster node pod health retry budget deadline "
    "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river mountain "
    "forest harbor bridge lantern meadow canyon glacier orchard valley summit"
)
WORDS = tuple(_WORDS.split())


@dataclass(frozen=True)
class Call:
    """One call of the workload: when it arrives and what it asks."""

    index: int
    at: float  # seconds from the start (open loop); 0 in a closed loop
    messages: tuple[tuple[str, str], ...]  # (role, content)
    max_tokens: int
    stream: bool
    shared: int | None  # which system prompt, or None for a unique prompt
    session: str | None = None  # the conversation a turn belongs to (``fleet_workloads``)

    def as_messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def to_json(self) -> list[Any]:
        head = [self.index, self.at, self.messages, self.max_tokens, self.stream, self.shared]
        return head if self.session is None else [*head, self.session]

    @classmethod
    def from_json(cls, data: Sequence[Any]) -> Call:
        index, at, messages, max_tokens, stream, shared, *rest = data
        session = rest[0] if rest else None
        pairs = tuple((r, c) for r, c in messages)
        return cls(index, at, pairs, max_tokens, bool(stream), shared, session)


def text_of_tokens(rng: random.Random, tokens: int, head: str = "") -> str:
    """About ``tokens`` tokens of words (the fake counts ``len(text) // 4``)."""
    chars = tokens * CHARS_PER_TOKEN
    parts = [head] if head else []
    length = len(head)
    while length < chars:
        word = rng.choice(WORDS)
        parts.append(word)
        length += len(word) + 1
    return " ".join(parts)[:chars]


def system_prompts() -> tuple[str, ...]:
    """The four long system prompts shared by half of the calls (the same in every run)."""
    return tuple(
        text_of_tokens(random.Random(f"system-{k}"), tokens, f"You are assistant {k}.")
        for k, tokens in enumerate(SYSTEM_TOKENS)
    )


def mix_call(
    rng: random.Random,
    index: int,
    at: float,
    max_tokens: tuple[int, int],
    prompts: Sequence[str],
    tag: str = "",
) -> Call:
    """One call of the mix, drawn from ``rng`` (see the module docstring)."""
    shared = rng.random() < 0.5
    stream = rng.random() < 0.5
    budget = rng.randint(*max_tokens)
    if shared:
        which = rng.randrange(len(prompts))
        question = text_of_tokens(rng, rng.randint(*SHARED_QUESTION), f"Question {tag}{index}:")
        messages: tuple[tuple[str, str], ...] = (
            ("system", prompts[which]),
            ("user", question),
        )
        return Call(index, at, messages, budget, stream, which)
    text = text_of_tokens(rng, rng.randint(*UNIQUE_PROMPT), f"Request {tag}{index}:")
    return Call(index, at, (("user", text),), budget, stream, None)


def make_workload(
    seed: int,
    rate: float,
    duration: float,
    max_tokens: tuple[int, int] = (16, 160),
) -> list[Call]:
    """Poisson arrivals at ``rate`` per second over ``duration`` seconds, each a mixed call."""
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    rng = random.Random(seed)
    prompts = system_prompts()
    calls: list[Call] = []
    at = rng.expovariate(rate)
    while at < duration:
        calls.append(mix_call(rng, len(calls), at, max_tokens, prompts, f"{seed}-"))
        at += rng.expovariate(rate)
    return calls


def assign_replicas(count: int, replicas: int, seed: int) -> list[int]:
    """Which app replica sends each of ``count`` calls: a seeded uniform draw."""
    if replicas < 1:
        raise ValueError("replicas must be at least 1")
    rng = random.Random(f"replicas-{seed}-{replicas}")
    return [rng.randrange(replicas) for _ in range(count)]


def oracle_choice(outstanding: Sequence[int], speeds: Sequence[float]) -> int:
    """Join the shortest queue, weighted by speed: argmin of (outstanding + 1) / speed."""
    best, best_cost = 0, math.inf
    for i, (calls, speed) in enumerate(zip(outstanding, speeds, strict=True)):
        cost = (calls + 1) / speed
        if cost < best_cost:
            best, best_cost = i, cost
    return best


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100), linear between order statistics; None when empty."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError("q must be within 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def imbalance(samples: Iterable[Sequence[float]]) -> tuple[float | None, float | None, int]:
    """(worst, mean, samples counted) of ``max / mean`` waiting over samples with mean >= 1."""
    ratios = []
    for waiting in samples:
        if not waiting:
            continue
        mean = sum(waiting) / len(waiting)
        if mean >= 1:
            ratios.append(max(waiting) / mean)
    if not ratios:
        return None, None, 0
    return max(ratios), sum(ratios) / len(ratios), len(ratios)


def shares(instances: Iterable[str | None], names: Sequence[str]) -> dict[str, float]:
    """Per cent of the calls each instance answered (calls with no instance left out)."""
    counts = dict.fromkeys(names, 0)
    for name in instances:
        if name is not None:
            counts[name] = counts.get(name, 0) + 1
    total = sum(counts.values())
    return {name: 100.0 * n / total if total else 0.0 for name, n in counts.items()}


def prefix_hit_rate(
    before: Mapping[str, tuple[float, float]], after: Mapping[str, tuple[float, float]]
) -> float | None:
    """Per cent of prefix-cache query tokens that hit, summed over the instances.

    ``before`` and ``after`` map an instance to its (queries, hits) counters; an instance
    restarted in between (a counter went down) counts from zero."""
    queries = hits = 0.0
    for name, (q_after, h_after) in after.items():
        q_before, h_before = before.get(name, (0.0, 0.0))
        if q_after < q_before or h_after < h_before:
            q_before = h_before = 0.0
        queries += q_after - q_before
        hits += h_after - h_before
    return 100.0 * hits / queries if queries > 0 else None


@dataclass
class Figures:
    """One client's results in one run (latencies in seconds)."""

    client: str
    replicas: int  # app replicas (processes) sending the calls
    calls: int
    failed: int
    p50: float | None
    p95: float | None
    p99: float | None
    ttft_p50: float | None
    ttft_p99: float | None
    calls_per_s: float
    shares: dict[str, float]
    prefix_hit: float | None
    imbalance_worst: float | None
    imbalance_mean: float | None
    max_lag: float  # the latest a call left after its arrival time, seconds
    errors: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    p99_ratio: float | None = None  # to the oracle of the same table
    ttft_p99_ratio: float | None = None


def summarize(
    client: str,
    replicas: int,
    records: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    waiting_samples: Iterable[Sequence[float]] = (),
    prefix_hit: float | None = None,
) -> Figures:
    """Per-call records (``ok``, ``lat``, ``ttft``, ``inst``, ``at``, ``lag``, ``err``) -> figures.

    Latency and time to first token count from the call's arrival time; the rate is the
    completed calls over the span from the first arrival to the last completion."""
    done = [r for r in records if r["ok"]]
    latencies = [r["lat"] for r in done]
    ttfts = [r["ttft"] for r in done if r.get("ttft") is not None]
    if done:
        first = min(r["at"] for r in records)
        last = max(r["at"] + r["lat"] for r in done)
        rate = len(done) / (last - first) if last > first else 0.0
    else:
        rate = 0.0
    worst, mean, _ = imbalance(waiting_samples)
    errors = sorted({str(r.get("err")) for r in records if not r["ok"]})
    return Figures(
        client=client,
        replicas=replicas,
        calls=len(records),
        failed=len(records) - len(done),
        p50=percentile(latencies, 50),
        p95=percentile(latencies, 95),
        p99=percentile(latencies, 99),
        ttft_p50=percentile(ttfts, 50),
        ttft_p99=percentile(ttfts, 99),
        calls_per_s=rate,
        shares=shares((r.get("inst") for r in done), names),
        prefix_hit=prefix_hit,
        imbalance_worst=worst,
        imbalance_mean=mean,
        max_lag=max((r.get("lag", 0.0) for r in records), default=0.0),
        errors=errors,
    )


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return value / reference


def with_ratios(figures: Sequence[Figures], oracle: Figures) -> list[Figures]:
    """Each client's p99 and TTFT p99 as a ratio to the oracle's (set in place, returned)."""
    for item in figures:
        item.p99_ratio = ratio(item.p99, oracle.p99)
        item.ttft_p99_ratio = ratio(item.ttft_p99, oracle.ttft_p99)
    return list(figures)


def capacity(completions: Iterable[float], start: float, end: float) -> float:
    """Completed calls per second within ``[start, end)`` (completion times in seconds)."""
    if end <= start:
        raise ValueError("the window must not be empty")
    return sum(1 for t in completions if start <= t < end) / (end - start)


__all__ = [
    "Call",
    "Figures",
    "assign_replicas",
    "capacity",
    "imbalance",
    "make_workload",
    "mix_call",
    "oracle_choice",
    "percentile",
    "prefix_hit_rate",
    "shares",
    "summarize",
    "system_prompts",
    "with_ratios",
]
