"""Prefix affinity: send the calls that share a key to the same few routes, every replica alike.

How this works
--------------
vLLM caches the KV blocks of the prompts it has seen, per instance: a call whose long prefix
(a system prompt, a conversation so far) is cached where it lands skips most of its prefill.
A call with an *affinity key* (its ``session=``, or a hash of its prompt's head, see
``call/affinity.py``) has *homes*: the routes of its pool ranked by rendezvous hashing
(highest random weight): each route's score is ``-weight / ln(u)`` where ``u`` in (0, 1) is
a stable hash of the key and the route's name, and the highest scores are the homes. Every app
replica computes the same ranking from the same names, with no shared state; a route that
leaves the pool moves only the keys it was home to (to their next-ranked route), and a route
that joins takes only the keys it now ranks first for. The ranking is cached per pool and key
(a pool is rebuilt when its routes change, and its cache with it).

A call goes to its first usable home (rank order, skipping ejected and already-tried routes,
up to ``homes`` of them) that passes two tests, else to the pool's own policy's choice (its
pick among the whole pool, homes included):

- **bounded load** (consistent hashing with bounded loads, Mirrokni, Thorup and Zadimoghaddam,
  2016; HAProxy's ``hash-balance-factor``): the home has a free slot (``estimated load + 1 <=
  slots``: the call runs at once), or its occupancy with this call, ``(load + 1) / capacity``,
  is at most ``load_bound`` times the pool's, ``(sum of loads + 1) / sum of capacities``. A
  route's capacity is its slots times its weight over its seconds per generated token (its
  latency, unless every route has a token time). So no home is ever more than ``load_bound``
  times as busy as the fleet as a whole, however hot its keys, and in a fleet that queues
  everywhere a key still goes home while home's queue is no longer than the others'.
- **worth it**: the home's expected time for the call (``LeastLoad.costs``: its wait for a
  slot plus its own tokens at the route's speed) is at most ``1 + (spill_ratio - 1) x
  min(1, prompt tokens / 1024)`` times that of the policy's choice. What a home saves is the
  prefill of a cached prompt, so a short prompt (little to save) goes home only where it is
  about as fast as elsewhere, and a prompt of 1,024 tokens or more may pay up to
  ``spill_ratio`` times: a slow instance's homes are worth it for long prompts only. A home
  that has not answered yet is judged by neither: it takes a call only into a free slot
  (``slots`` is 1 until ``/metrics`` says more), as ``least_load`` holds an unmeasured route
  to one call at a time. Its capacity is unknown (an unmeasured route counts as fast as the
  fastest), and a slow instance trusted as fast at start-up collects a queue that the run's
  tail pays for (on the simulation's 50-second runs, the length of the fleet benchmark's:
  TTFT p99 1.48x least load's with 4 replicas in the ``prefix`` workload, 0.71x with this
  rule).

**Hot keys spread.** Each pool counts its keys' calls (decayed: halved every ``DECAY`` keyed
calls). A key with a share ``s`` of them gets ``ceil(HOT_SPREAD x s x routes)`` homes when that
is more than ``homes``, and goes to the least occupied of them (bounded load still applies);
when that covers the whole pool, the policy decides alone. A prompt that is 80 % of the
traffic is cached on every instance anyway: holding it to two homes would only queue it there.
The count is this replica's own, but every replica sees about the same shares.

Measured on the fleet benchmark's simulation (``llm.perf.fleet_sim``), against ``least_load``
in the same runs: an earlier rule (home only with a free slot) did nothing once the fleet
queued (90 % of keyed calls spilled, hit rate 1.04x); bounded load alone lifted the
``tenants`` hit rate 1.9x but put short unique prompts on the slowest instance (the ``hot``
workload's p99 1.3x); a cost bound alone (home within ``spill_ratio`` of the best) queued
calls at home (TTFT p99 2-5x).

``slots`` is what the server reported running at most (``/metrics``, polled by default under
``least_load``); a server that never said counts one slot. Counters:
``RouteState.home_calls`` (calls sent to it as a home), ``home_spills`` (calls whose first
home it was, sent elsewhere).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Container, Sequence
from typing import TYPE_CHECKING

from ..config.model import AffinityConfig
from .indexes import usable
from .load import estimated_load
from .policies import speeds

if TYPE_CHECKING:
    from .policies import LeastLoad, Policy
    from .state import Pool, RouteState

EXTRA_RANKS = 2  # ranks kept beyond ``homes``: an ejected home hands its keys to the next one
CACHE_KEYS = 4096  # keys whose ranking a pool keeps (the oldest is dropped first)
_SCALE = 2.0**-64


def rendezvous_score(key: bytes, name: str, weight: float = 1.0) -> float:
    """The route's weight for ``key``: ``-weight / ln(u)``, ``u`` a stable hash in (0, 1).
    A stable hash (BLAKE2b), not ``hash()``, which differs between processes."""
    digest = hashlib.blake2b(key + name.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 0.5) * _SCALE
    return -weight / math.log(u)


def ranked(key: bytes, routes: Sequence[RouteState], count: int) -> tuple[RouteState, ...]:
    """The ``count`` routes of highest rendezvous score for ``key`` (ties by pool order)."""
    scored = sorted(
        ((-rendezvous_score(key, route.name, route.weight), i) for i, route in enumerate(routes))
    )
    return tuple(routes[i] for _, i in scored[:count])


PROMPT_FULL = 1024  # prompt tokens from which a home may cost the whole spill_ratio
HOT_SPREAD = 2.0  # a key with a share s of the calls has ceil(2 x s x routes) homes at least
DECAY = 1024  # keyed calls between two halvings of the key counts
HOT_MIN_CALLS = 16  # keyed calls seen before a key's share counts


class Affinity:
    """The homes of a key, and whether a call goes home (see the module's doc)."""

    def __init__(self, config: AffinityConfig, costs: LeastLoad, max_age: float) -> None:
        self.homes = config.homes
        self.spill_ratio = config.spill_ratio
        self.load_bound = config.load_bound
        self.costs = costs
        self.max_age = max_age

    def homes_of(self, pool: Pool, key: bytes, count: int = 0) -> tuple[RouteState, ...]:
        """The key's ranking: ``homes + EXTRA_RANKS`` routes (cached), or ``count``."""
        cache = pool.homes
        found = cache.get(key)
        if found is None:
            found = cache[key] = ranked(key, pool.routes, self.homes + EXTRA_RANKS)
            if len(cache) > CACHE_KEYS:
                del cache[next(iter(cache))]
        if count > len(found) and len(found) < len(pool.routes):
            return ranked(key, pool.routes, count)
        return found

    def choose(
        self,
        pool: Pool,
        exclude: Container[RouteState],
        now: float,
        stream: bool,
        tokens: int,
        key: bytes,
        policy: Policy,
        prompt_tokens: int = 0,
    ) -> RouteState | None:
        # the policy's own choice: where the call goes if no home takes it
        other = policy.choose(pool, exclude, now, stream, tokens)
        if other is None:
            return None
        wanted = self._spread(pool, key)
        if wanted > self.homes and wanted >= len(pool.routes):
            return other  # a hot key: cached everywhere, the policy spreads it
        occupancy = _Occupancy(pool, exclude, now, self.max_age)
        homes = [route for route in self.homes_of(pool, key, wanted) if route in occupancy.load]
        homes = homes[:wanted]
        if not homes:
            return other
        if wanted > self.homes:  # a warm key: its least occupied home
            homes = [min(homes, key=occupancy.of)]
        costs = self.costs.costs([*homes, other], now, tokens, stream)
        allowed = 1.0 + (self.spill_ratio - 1.0) * min(1.0, prompt_tokens / PROMPT_FULL)
        limit = allowed * costs[-1]
        bound = self.load_bound * occupancy.mean
        for home, cost in zip(homes, costs, strict=False):
            if not home.latency_samples:  # not measured yet: a free slot, or it is no home
                if not occupancy.has_room(home):
                    continue
            elif not (occupancy.has_room(home) or occupancy.of(home) <= bound) or cost > limit:
                continue
            home.home_calls += 1
            return home
        homes[0].home_spills += 1
        return other

    def _spread(self, pool: Pool, key: bytes) -> int:
        """How many homes the key gets: ``homes``, more for a hot key (see the module doc)."""
        counts = pool.key_calls
        count = counts[key] = counts.get(key, 0.0) + 1.0
        total = pool.keyed_calls = pool.keyed_calls + 1.0
        if total >= DECAY:
            pool.keyed_calls = total / 2
            for name in list(counts):
                half = counts[name] = counts[name] / 2
                if half < 0.5:
                    del counts[name]
        if total < HOT_MIN_CALLS:
            return self.homes
        return max(self.homes, math.ceil(HOT_SPREAD * count / total * len(pool.routes)))


class _Occupancy:
    """Each open route's estimated load and capacity, and the pool's mean occupancy."""

    __slots__ = ("capacity", "load", "mean")

    def __init__(
        self, pool: Pool, exclude: Container[RouteState], now: float, max_age: float
    ) -> None:
        routes = [route for route in pool.routes if usable(route, now) and route not in exclude]
        self.load: dict[RouteState, float] = {}
        self.capacity: dict[RouteState, float] = {}
        total_load, total_capacity = 1.0, 0.0
        for route, speed in zip(routes, speeds(routes), strict=True):
            load = self.load[route] = estimated_load(route, now, max_age)
            capacity = self.capacity[route] = max(route.slots, 1.0) * speed
            total_load += load
            total_capacity += capacity
        self.mean = total_load / total_capacity if total_capacity else 0.0

    def of(self, route: RouteState) -> float:
        """The route's occupancy with one more call."""
        return (self.load[route] + 1.0) / self.capacity[route]

    def has_room(self, route: RouteState) -> bool:
        """A free slot: the call would run at once, not wait in the server's queue."""
        return self.load[route] + 1.0 <= max(route.slots, 1.0)
