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
up to ``homes`` of them) unless that home is *saturated*; then the next home; when every home
is saturated, the pool's own policy decides. A home is saturated for a call when either

- it has no free slot (``estimated load + 1 > slots``: the call would wait in its queue): a
  hit in the prefix cache saves a prefill, a place in a queue costs a whole call's wait, so a
  key never queues at home (one hot prefix spreads over the fleet as soon as its homes are
  full, and a fleet that queues everywhere is routed by the policy alone); or
- its expected time for this call (``LeastLoad.costs``: the call's own tokens at the route's
  measured speed, once it has been measured ``WARMUP_SAMPLES`` times) is more than
  ``spill_ratio`` times the best of the homes and the policy's choice: a slow instance is not
  worth its cache.

(A first version let a full home take a call when the best place elsewhere was full too,
within ``spill_ratio``: in the fleet benchmark's prefix workload that queued calls behind the
slow instances' batches, and the p99 time to first token was 1.8 times least load's with one
app replica, 3.7 times with four.)

A call that no home takes goes where the policy would have sent it without a key (its pick
among the whole pool, homes included: the homes may be the fleet's fastest routes, and
keeping the calls they spill off them sent a hot key's overflow to the slowest instances,
p99 2.3 times least load's in the benchmark's ``hot`` workload).

``slots`` is what the server reported running at most (``/metrics``, polled by default under
``least_load``); a server that never said counts one slot, so a home is then used only while
idle or when the fleet is as busy. Counters: ``RouteState.home_calls`` (calls sent to it as a
home), ``home_spills`` (calls whose first home it was, sent elsewhere).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Container, Sequence
from typing import TYPE_CHECKING

from ..config.model import AffinityConfig
from .indexes import usable
from .load import estimated_load
from .state import WARMUP_SAMPLES

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


class Affinity:
    """The homes of a key, and whether a call goes home (see the module's doc)."""

    def __init__(self, config: AffinityConfig, costs: LeastLoad, max_age: float) -> None:
        self.homes = config.homes
        self.spill_ratio = config.spill_ratio
        self.costs = costs
        self.max_age = max_age

    def homes_of(self, pool: Pool, key: bytes) -> tuple[RouteState, ...]:
        cache = pool.homes
        found = cache.get(key)
        if found is None:
            found = cache[key] = ranked(key, pool.routes, self.homes + EXTRA_RANKS)
            if len(cache) > CACHE_KEYS:
                del cache[next(iter(cache))]
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
    ) -> RouteState | None:
        homes = [
            route
            for route in self.homes_of(pool, key)
            if usable(route, now) and route not in exclude
        ][: self.homes]
        # the policy's own choice: where the call goes if no home takes it
        other = policy.choose(pool, exclude, now, stream, tokens)
        if not homes or other is None:
            return other
        costs = self.costs.costs([*homes, other], now, tokens, stream)
        best = min(costs)
        for home, cost in zip(homes, costs, strict=False):
            # a home still warming up is not judged by its speed yet (its first answers
            # carry the client's own connection setup): it must be measured to be judged
            fast_enough = home.latency_samples < WARMUP_SAMPLES or cost <= self.spill_ratio * best
            if fast_enough and self._has_room(home, now):
                home.home_calls += 1
                return home
        homes[0].home_spills += 1
        return other

    def _has_room(self, route: RouteState, now: float) -> bool:
        """A free slot: the call would run at once, not wait in the server's queue."""
        return estimated_load(route, now, self.max_age) + 1.0 <= max(route.slots, 1.0)
