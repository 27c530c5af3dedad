"""Continuous batching for the fake vLLM: a pure scheduler (no sockets, no clock).

How this works
--------------
A real vLLM engine runs in *steps*. At the start of each step the scheduler
admits waiting requests (FIFO) into free slots, up to ``max_num_seqs`` running
sequences; the step then computes the prefill of the newly admitted prompts
and one token for every running sequence. So latency grows with load: a step
takes longer the more sequences run, a request waits while the slots are full,
and its time to first token is its queue wait plus the step that prefilled it.

:class:`Scheduler` is that loop without I/O and without a clock. Its owner
(the fake server's single scheduler task, in ``llm.testing._server``) drives
it::

    duration = sched.begin_step()      # admit; None = nothing runs (sleep on an event)
    ...sleep until step_start + duration...
    tokens, finished = sched.end_step()  # one token each; finished ones leave

* Step duration (seconds) = (``step_base_ms`` + ``step_per_seq_ms`` x running
  + ``prefill_ms_per_token`` x uncached prompt tokens admitted this step)
  / 1000 / ``speed``; ``speed`` 0.25 makes everything four times slower.
* Token accounting costs nothing per token for a non-streamed sequence: it is
  filed under the step number at which it finishes (``first + length``) and
  ``end_step`` pops that bucket. Only streamed sequences (``stream=True``) are
  visited on every step, since each of their tokens is a write. A sequence's
  token count so far is ``step_no - first``.
* :meth:`Scheduler.cancel` (the client went away) takes a sequence out of the
  running set at once (its slot is free for the next step) or out of the queue
  (lazily: the queue entry is skipped when it comes up; the count drops now).
* :attr:`Scheduler.load` is a ``(running, waiting)`` tuple republished on every
  change, so another thread can read a consistent snapshot without a lock.

Prefix cache, like vLLM's automatic prefix caching, simplified: a prompt is
turned into *token units* (:func:`chat_units` / :func:`completion_units`, one
unit per prompt token the fake reports in ``usage.prompt_tokens``, each unit 4
characters of a string), full blocks of ``block_size`` units are chain-hashed
(each block's hash covers the previous block's hash, so a block matches only
after the same whole prefix; :func:`block_hashes`), and :class:`PrefixCache`
keeps an LRU of ``cache_blocks`` block hashes per server. On admission the
leading blocks found in the cache are *cached* (no prefill cost), at most
``(prompt_tokens - 1) // block_size`` blocks, since vLLM always computes the
last prompt token; every full block of the prompt is then (re)inserted, last
block first, so the head of a shared prefix is the last to be evicted. The
counts go to ``usage.prompt_tokens_details`` (``cached_tokens``,
``created_cache_tokens``) and to the prefix-cache counters of /metrics (tokens
queried, tokens hit). KV-cache usage is the blocks held by running sequences
(prompt plus tokens generated so far, rounded up to blocks) / ``cache_blocks``.

Block hashes use Python's ``hash`` (stable within a process, which is the life
of a server's cache), as vLLM's ``builtin`` hash algorithm does.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from llm.testing._vllm import _message_text

__all__ = [
    "BatchingSpec",
    "PrefixCache",
    "Scheduler",
    "Seq",
    "block_hashes",
    "chat_units",
    "completion_units",
    "prompt_block_hashes",
    "token_chunks",
]

UNIT = 4  # characters per token unit in a units string


@dataclass(frozen=True, slots=True)
class BatchingSpec:
    """How a batching fake vLLM behaves; see the module docstring.

    The defaults are a small GPU serving a small model: 8 slots, 20 ms per step
    plus 1 ms per running sequence (one call alone gets ~48 tokens/s, 8 at once
    ~36 tokens/s each), prefill at 20,000 tokens/s (a 1,000-token prompt adds
    50 ms to its first step), 16-token blocks, 4096 cached blocks (65,536
    tokens). ``speed`` divides every duration.
    """

    max_num_seqs: int = 8
    step_base_ms: float = 20.0
    step_per_seq_ms: float = 1.0
    prefill_ms_per_token: float = 0.05
    block_size: int = 16
    cache_blocks: int = 4096
    speed: float = 1.0

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be >= 1")
        if self.block_size < 1:
            raise ValueError("block_size must be >= 1")
        if self.cache_blocks < 1:
            raise ValueError("cache_blocks must be >= 1")
        if min(self.step_base_ms, self.step_per_seq_ms, self.prefill_ms_per_token) < 0:
            raise ValueError("step and prefill costs must be >= 0")
        if not self.speed > 0:
            raise ValueError("speed must be > 0")

    def step_seconds(self, running: int, prefill_tokens: int) -> float:
        """The duration of one step with ``running`` sequences that prefills ``prefill_tokens``."""
        ms = (
            self.step_base_ms
            + self.step_per_seq_ms * running
            + self.prefill_ms_per_token * prefill_tokens
        )
        return ms / 1000.0 / self.speed


# --------------------------------------------------------------------------- token units

_CHAT_PREAMBLE = "\x01" * (10 * UNIT)  # the chat template's 10 fixed tokens
_BOS = "\x01" * UNIT


def _role_unit(role: str) -> str:
    # 3 units: a marker unit and the role's CRC32 in hex (2 units)
    return "\x02" * UNIT + f"{zlib.crc32(role.encode('utf-8', 'surrogatepass')):08x}"


def chat_units(messages: Any) -> str:
    """The token units of a chat prompt: 10 template units, then per message 3 header units,
    ``len(text) // 4`` text units of 4 characters and 1 end unit holding the remaining 0-3
    characters; ``len(result) // 4`` equals the ``prompt_tokens`` the fake reports."""
    parts = [_CHAT_PREAMBLE]
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, dict):
                role = str(m.get("role"))
                text = _message_text(m.get("content"))
            else:
                role, text = "", ""
            cut = len(text) - len(text) % UNIT
            rest = text[cut:]
            parts.append(_role_unit(role))
            parts.append(text[:cut])
            parts.append(rest + "\x00" * (UNIT - 1 - len(rest)) + "\x03")
    return "".join(parts)


def _int_unit(x: Any) -> str:
    v = x if isinstance(x, int) else zlib.crc32(str(x).encode("utf-8", "surrogatepass"))
    v &= 0xFFFFFFFFF
    return (
        chr(0xE000 + (v & 0xFFF))
        + chr(0xE000 + ((v >> 12) & 0xFFF))
        + chr(0xE000 + (v >> 24))
        + "\x05"
    )


def _text_units(text: str) -> str:
    # BOS + len(text) // 4 units; the last 0-3 characters never decide a cache hit (vLLM never
    # serves a prompt's last token from the cache), so they are left out.
    return _BOS + text[: len(text) - len(text) % UNIT]


def completion_units(prompt: Any) -> str:
    """The token units of a /v1/completions prompt (a string: BOS + ``len // 4`` units; token
    ids: one unit each; a list of prompts: their units one after the other)."""
    if isinstance(prompt, str):
        return _text_units(prompt)
    if not isinstance(prompt, list):
        return ""
    if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
        return "".join(_int_unit(p) for p in prompt)
    parts: list[str] = []
    for p in prompt:
        if isinstance(p, str):
            parts.append(_text_units(p))
        elif isinstance(p, list):
            parts.append("".join(_int_unit(x) for x in p))
    return "".join(parts)


def block_hashes(units: str, block_size: int) -> list[int]:
    """Chained hashes of the full blocks of ``block_size`` units (a partial last block has none)."""
    span = UNIT * block_size
    out: list[int] = []
    h = 0
    for start in range(0, len(units) - span + 1, span):
        h = hash((h, units[start : start + span]))
        out.append(h)
    return out


def prompt_block_hashes(kind: str, body: Any, prompt_tokens: int, block_size: int) -> list[int]:
    """The chained block hashes of a request's prompt (``kind``: "chat" or "completion")."""
    units = (
        chat_units(body.get("messages"))
        if kind == "chat"
        else completion_units(body.get("prompt"))
    )
    return block_hashes(units[: UNIT * prompt_tokens], block_size)


def token_chunks(
    frames: Sequence[bytes],
    paced: Sequence[bool],
    length: int,
    *,
    limit: int | None = None,
    end: bytes = b"",
) -> tuple[list[bytes | None], int]:
    """Group a stream's frames by the token that releases them: ``chunks[t]`` is written
    when the sequence produces its token ``t`` (None: nothing then).

    A new group starts at each paced frame (the frames that follow a token delay without
    batching), so group ``g`` goes out with token ``g``; the last group (the final delta,
    the usage chunk, ``[DONE]``) goes out with the last token, plus ``end``. With ``limit``,
    only the first ``limit`` frames are sent (a cut or hung stream) and ``end`` is left out.
    Returns the chunks and the token that sends the last frame."""
    last_tok = max(1, length) - 1
    gids: list[int] = []
    g = -1
    for i, p in enumerate(paced):
        if i == 0 or p:
            g += 1
        gids.append(g)
    last_group = g
    n = len(frames) if limit is None else max(0, min(limit, len(frames)))
    parts: dict[int, list[bytes]] = {}
    t = 0
    for i in range(n):
        gi = gids[i]
        t = last_tok if gi == last_group else min(gi, last_tok)
        bucket = parts.get(t)
        if bucket is None:
            parts[t] = [frames[i]]
        else:
            bucket.append(frames[i])
    if limit is None and end:
        parts.setdefault(last_tok, []).append(end)
        t = last_tok
    chunks: list[bytes | None] = [None] * (last_tok + 1)
    for tok, ps in parts.items():
        chunks[tok] = b"".join(ps)
    return chunks, t


# --------------------------------------------------------------------------- prefix cache


class PrefixCache:
    """An LRU of block hashes (see the module docstring)."""

    __slots__ = ("_lru", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._lru: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._lru

    def admit(self, hashes: Sequence[int], max_hit: int) -> tuple[int, int]:
        """Look a prompt's block hashes up, then insert them all; returns (leading blocks
        found, at most ``max_hit``; blocks newly inserted)."""
        lru = self._lru
        hit = 0
        for h in hashes:
            if hit >= max_hit or h not in lru:
                break
            hit += 1
        created = 0
        for h in reversed(hashes):  # the head last: most recently used, evicted last
            if h in lru:
                lru.move_to_end(h)
            else:
                lru[h] = None
                created += 1
        while len(lru) > self.capacity:
            lru.popitem(last=False)
        return hit, created


# --------------------------------------------------------------------------- scheduler

NEW = "new"
WAITING = "waiting"
RUNNING = "running"
DONE = "done"
CANCELLED = "cancelled"


class Seq:
    """One request in the scheduler: ``length`` tokens to generate (at least 1)."""

    __slots__ = (
        "cached_tokens",
        "created_tokens",
        "due",
        "first",
        "hashes",
        "length",
        "prompt_tokens",
        "state",
        "stream",
    )

    def __init__(
        self,
        prompt_tokens: int,
        length: int,
        hashes: Sequence[int] = (),
        *,
        stream: bool = False,
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.length = max(1, length)
        self.hashes = hashes
        self.stream = stream
        self.state = NEW
        self.first = 0  # step_no when admitted: its k-th token comes at step first + k
        self.due = 0  # step_no at which its last token comes
        self.cached_tokens = 0
        self.created_tokens = 0


S = TypeVar("S", bound=Seq)


# (streamed sequences that got a token this step, finishing ones included;
#  sequences whose last token came this step, which have left the running set)
StepResult = tuple[list[S], list[S]]


class Scheduler(Generic[S]):
    """vLLM's continuous batching, simplified; see the module docstring."""

    def __init__(self, spec: BatchingSpec | None = None) -> None:
        self.spec = spec if spec is not None else BatchingSpec()
        self.cache = PrefixCache(self.spec.cache_blocks)
        self.step_no = 0  # steps completed
        self.waiting = 0  # live sequences in the queue
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0  # prompt tokens found there
        self.load: tuple[int, int] = (0, 0)  # (running, waiting), republished on change
        self._queue: deque[S] = deque()
        self._running: dict[S, None] = {}
        self._streams: dict[S, None] = {}
        self._due: dict[int, list[S]] = {}

    # ---------------------------------------------------------------- state

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def idle(self) -> bool:
        return not self._running and not self.waiting

    def running_seqs(self) -> list[S]:
        return list(self._running)

    def waiting_seqs(self) -> list[S]:
        return [s for s in self._queue if s.state == WAITING]

    def generated(self, seq: S) -> int:
        """Tokens ``seq`` has produced so far."""
        if seq.state == RUNNING:
            return self.step_no - seq.first
        return seq.length if seq.state == DONE else 0

    def kv_usage(self) -> float:
        """Blocks held by the running sequences / ``cache_blocks`` (at most 1.0)."""
        bs = self.spec.block_size
        step = self.step_no
        blocks = 0
        for s in self._running:
            blocks += -(-(s.prompt_tokens + step - s.first) // bs)
        return min(1.0, blocks / self.spec.cache_blocks)

    def _publish(self) -> None:
        self.load = (len(self._running), self.waiting)

    # ---------------------------------------------------------------- events

    def submit(self, seq: S) -> None:
        """``seq`` joins the end of the queue; it runs from the next step with a free slot."""
        if seq.state != NEW:
            raise ValueError(f"cannot submit a sequence in state {seq.state!r}")
        seq.state = WAITING
        self._queue.append(seq)
        self.waiting += 1
        self._publish()

    def cancel(self, seq: S) -> bool:
        """Drop ``seq`` now (waiting or running); False if it was not in the scheduler."""
        state = seq.state
        if state == WAITING:
            self.waiting -= 1
            if not self.waiting:
                self._queue.clear()
        elif state == RUNNING:
            del self._running[seq]
            if seq.stream:
                del self._streams[seq]
            bucket = self._due.get(seq.due)
            if bucket is not None:
                bucket.remove(seq)
                if not bucket:
                    del self._due[seq.due]
        else:
            return False
        seq.state = CANCELLED
        self._publish()
        return True

    def begin_step(self) -> float | None:
        """Admit waiting sequences into free slots (FIFO) and return the step's duration in
        seconds; None when nothing runs (the owner then sleeps until the next submit)."""
        spec = self.spec
        free = spec.max_num_seqs - len(self._running)
        prefill = 0
        if free > 0 and self.waiting:
            queue = self._queue
            bs = spec.block_size
            cache = self.cache
            step = self.step_no
            admitted = 0
            while free > 0 and queue:
                seq = queue.popleft()
                if seq.state != WAITING:  # cancelled while waiting
                    continue
                pt = seq.prompt_tokens
                hit, created = cache.admit(seq.hashes, (pt - 1) // bs) if seq.hashes else (0, 0)
                cached = hit * bs
                seq.cached_tokens = cached
                seq.created_tokens = created * bs
                self.prefix_queries += pt
                self.prefix_hits += cached
                prefill += pt - cached
                seq.state = RUNNING
                seq.first = step
                due = step + seq.length
                seq.due = due
                bucket = self._due.get(due)
                if bucket is None:
                    self._due[due] = [seq]
                else:
                    bucket.append(seq)
                self._running[seq] = None
                if seq.stream:
                    self._streams[seq] = None
                free -= 1
                admitted += 1
            self.waiting -= admitted
            if not self.waiting:
                queue.clear()
            self._publish()
        if not self._running:
            return None
        return spec.step_seconds(len(self._running), prefill)

    def end_step(self) -> StepResult[S]:
        """The step is over: every running sequence has one more token. Returns the streamed
        sequences that got one and the sequences that finished (they leave now)."""
        self.step_no += 1
        tokens = list(self._streams) if self._streams else []
        finished = self._due.pop(self.step_no, None)
        if finished is None:
            return tokens, []
        running, streams = self._running, self._streams
        for seq in finished:
            seq.state = DONE
            del running[seq]
            if seq.stream:
                del streams[seq]
        self._publish()
        return tokens, finished
