"""A vLLM server's own account of its load: the ORCA answer header and ``/metrics``, parsed.

How this works
--------------

vLLM reports its load two ways, and both are read here into one ``LoadReport``:

- ``parse_orca``: the ``endpoint-load-metrics`` header of a non-streamed answer (ORCA), sent
  when the request asks for it with ``endpoint-load-metrics-format: TEXT`` or ``JSON``
  (a streamed answer carries none). vLLM 0.32 sends, byte for byte::

      TEXT named_metrics.num_requests_waiting=0.0, named_metrics.kv_cache_usage_perc=0.0
      JSON {"named_metrics": {"num_requests_waiting": 0.0, "kv_cache_usage_perc": 0.0}}

  Those two named metrics become ``waiting`` and ``kv_usage``; the header has no running
  count and no prefix-cache counters. ORCA's other fields (``cpu_utilization``,
  ``mem_utilization``, ``rps_fractional``, ``eps``, the ``request_cost`` and ``utilization``
  maps, other named metrics) are allowed and ignored; the ``BIN`` format (base64 protobuf)
  and a value without a format prefix give None. This runs on every non-streamed answer, so
  vLLM's two exact shapes are read with a few string operations around the two numbers (no
  JSON decoder); anything else takes the general path (``TEXT``: the ``key=value`` items;
  ``JSON``: ``json.loads``). A value over 4096 characters is not read.

- ``parse_metrics``: the Prometheus text of ``GET /metrics`` (50-100 KB, hundreds of lines).
  Only five series matter::

      vllm:num_requests_waiting{engine="0",model_name="tiny"} 8.0       -> waiting
      vllm:num_requests_running{engine="0",model_name="tiny"} 4.0       -> running
      vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.0009766  -> kv_usage (0..1)
      vllm:prefix_cache_queries_total{engine="0",model_name="tiny"} 2640.0  -> prefix_queries
      vllm:prefix_cache_hits_total{engine="0",model_name="tiny"} 1536.0     -> prefix_hits

  (the two prefix counters count prompt tokens since the server started). The text is never
  split into lines: ``str.find`` jumps from one line starting ``vllm:num_requests_``,
  ``vllm:kv_cache_usage_perc`` or ``vllm:prefix_cache_`` to the next, so the cost is a few
  scans in C over the text plus a handful of lines, and stays linear in the size of the text
  (bytes are searched as bytes, and only the lines found are decoded, bad UTF-8 replaced).
  A name must match exactly: ``vllm:num_requests_waiting_by_reason`` (the same waiting
  requests split by reason) and the counters' ``_created`` series are other names. Labels
  are read as Prometheus quotes them (``\\"``, ``\\\\``, ``\\n`` inside a value), so a
  ``}``, ``,`` or ``"`` in a model name cannot shift a value onto another series. A
  timestamp, or an OpenMetrics exemplar, after the value is allowed. A series (a set of
  labels) given twice counts once, with its last value.

Engines and models. With data parallelism vLLM has one series per engine (``engine="0"``,
``engine="1"``, ...): the counts and counters are summed over them, and ``kv_usage`` is the
largest engine's (the fullest cache is the one a new request may have to wait for). Given
``model``, if some series carry ``model_name`` equal to it, only those are used; if none do,
all are (a route's configured model may be an alias of the name the server reports).

Garbage is ignored, never raised. A load report is advice for choosing a route, never a
reason to fail a call, and both functions run on what a server sends, which may be anything.
They never raise: not for bytes that are not UTF-8, binary junk, a gigantic line (over 16 KiB
for one of the five series), JSON nested too deeply to decode, or a number that overflows. A
value that is NaN, infinite, negative, not a number, or for ``kv_usage`` outside [0, 1],
makes that field None, as does a line of one of the five series that cannot be read (a
truncated body), and so does one such engine among several: a sum missing an engine would
understate the load. More than 8192 lines starting with the three prefixes, or more than
1 MiB of them, is not a real report (a server has a few per engine and model): None, which
also bounds the work hostile text can cause. A field with nothing usable is None, and a report
with no usable field is None.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import AnyStr

from .parse import parse_json

__all__ = ["LoadReport", "parse_metrics", "parse_orca"]

MAX_ORCA_CHARS = 4096  # a longer header value is not read
MAX_METRIC_LINE = 16 * 1024  # a longer line of one of the five series is garbage
MAX_METRIC_LINES = 8192  # more lines of the five series than any real server sends ...
MAX_METRIC_CHARS = 1024 * 1024  # ... or more characters in them


# not frozen: a frozen dataclass is slow to make (half of parse_orca), and answers make many
@dataclass(slots=True)
class LoadReport:
    """What a server says about its load; None where it said nothing usable."""

    waiting: float | None = None  # requests queued, not yet scheduled
    running: float | None = None  # requests in the running batch (not in the ORCA header)
    kv_usage: float | None = None  # fraction of the KV cache in use, 0..1
    prefix_queries: float | None = None  # prompt tokens looked up in the prefix cache (counter)
    prefix_hits: float | None = None  # of those, tokens found there (counter)


# ---------------------------------------------------------------------------- numbers

_NUMERIC = "0123456789.eE+-"  # every character of a number as JSON or Prometheus write one


def _finite(x: float) -> float | None:
    """``x`` if finite and not negative (-0.0 as 0.0), else None."""
    return x + 0.0 if 0.0 <= x < math.inf else None  # the comparison is False for NaN


def _float(token: str) -> float | None:
    """A number from text as JSON or Prometheus write one (no NaN, Inf, ``_`` or spaces)."""
    if token.strip(_NUMERIC):  # a character no number has
        return None
    try:
        return float(token)
    except ValueError:  # "", "1e", "1.2.3", "+-"
        return None


def _number(token: str) -> float | None:
    """A finite, non-negative number from text, else None."""
    x = _float(token)
    return None if x is None else _finite(x)


def _json_number(value: object) -> float | None:
    """A finite, non-negative JSON number (not a bool, not a string), else None."""
    if type(value) is float:
        x = value
    elif type(value) is int:
        try:
            x = float(value)
        except OverflowError:
            return None
    else:
        return None
    return _finite(x)


def _fraction(x: float | None) -> float | None:
    return x if x is not None and x <= 1.0 else None


# ---------------------------------------------------------------------------- ORCA header

# vLLM's two exact shapes, around the two numbers.
_TEXT_HEAD = "TEXT named_metrics.num_requests_waiting="
_TEXT_MID = ", named_metrics.kv_cache_usage_perc="
_JSON_HEAD = 'JSON {"named_metrics": {"num_requests_waiting": '
_JSON_MID = ', "kv_cache_usage_perc": '
_JSON_TAIL = "}}"
_TEXT_AT, _JSON_AT, _JSON_END = len(_TEXT_HEAD), len(_JSON_HEAD), -len(_JSON_TAIL)
_TEXT_WAITING = "named_metrics.num_requests_waiting"
_TEXT_KV = "named_metrics.kv_cache_usage_perc"


def _report(waiting: float | None, kv_usage: float | None) -> LoadReport | None:
    if waiting is None and kv_usage is None:
        return None
    return LoadReport(waiting=waiting, kv_usage=kv_usage)


def parse_orca(value: str) -> LoadReport | None:
    """An ``endpoint-load-metrics`` header value (``TEXT ...`` or ``JSON ...``); None if unusable.

    Sets ``waiting`` and ``kv_usage`` only. Never raises.
    """
    if type(value) is not str or len(value) > MAX_ORCA_CHARS:
        return None
    # vLLM's exact shapes: a few string operations, no JSON decoder. Anything else (other
    # fields, another order, spaces, a number float() refuses) takes the general path.
    if value.startswith(_TEXT_HEAD):
        waiting, sep, kv = value[_TEXT_AT:].partition(_TEXT_MID)
    elif value.startswith(_JSON_HEAD) and value.endswith(_JSON_TAIL):
        waiting, sep, kv = value[_JSON_AT:_JSON_END].partition(_JSON_MID)
    else:
        waiting = sep = kv = ""
    if sep and not waiting.strip(_NUMERIC) and not kv.strip(_NUMERIC):
        try:
            return _report(_finite(float(waiting)), _fraction(_finite(float(kv))))
        except ValueError:
            pass
    kind, _, body = value.strip().partition(" ")
    if kind == "TEXT":
        return _orca_text(body)
    if kind == "JSON":
        return _orca_json(body)
    return None  # BIN (protobuf), no format, or junk


def _orca_text(body: str) -> LoadReport | None:
    waiting = kv_usage = None
    for item in body.split(","):
        key, sep, token = item.partition("=")
        if not sep:
            continue
        key = key.strip()
        if key == _TEXT_WAITING:
            waiting = _number(token.strip())
        elif key == _TEXT_KV:
            kv_usage = _fraction(_number(token.strip()))
    return _report(waiting, kv_usage)


def _orca_json(body: str) -> LoadReport | None:
    try:
        data = parse_json(body)  # deep nesting: NestedTooDeeply, a ValueError
    except ValueError:
        return None
    if type(data) is not dict:
        return None
    named = data.get("named_metrics")
    if type(named) is not dict:
        return None
    return _report(
        _json_number(named.get("num_requests_waiting")),
        _fraction(_json_number(named.get("kv_cache_usage_perc"))),
    )


# ---------------------------------------------------------------------------- /metrics

_WAITING, _RUNNING, _KV, _QUERIES, _HITS = range(5)
_FIELDS = {
    "vllm:num_requests_waiting": _WAITING,
    "vllm:num_requests_running": _RUNNING,
    "vllm:kv_cache_usage_perc": _KV,
    "vllm:prefix_cache_queries_total": _QUERIES,
    "vllm:prefix_cache_hits_total": _HITS,
}
_STARTS = ("vllm:num_requests_", "vllm:kv_cache_usage_perc", "vllm:prefix_cache_")
_NEEDLES = tuple("\n" + start for start in _STARTS)
_NEEDLES_B = tuple(needle.encode() for needle in _NEEDLES)
_STARTS_B = tuple(start.encode() for start in _STARTS)

_QUOTED = r'"[^"\\]*(?:\\.[^"\\]*)*"'  # a label value: quotes, with \" \\ \n inside
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_SET = re.compile(rf'\{{([^"}}]*(?:{_QUOTED}[^"}}]*)*)\}}')
_LABEL = re.compile(rf"[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*({_QUOTED})[ \t]*(?:,|$)")
_ESCAPE = re.compile(r"\\(.)")
_ESCAPED = {"n": "\n", "\\": "\\", '"': '"'}
_BLANK = (" ", "\t")
_EXEMPLAR = " #"  # OpenMetrics: "value [timestamp] # {labels} value [timestamp]"

_Series = tuple[tuple[str, str], ...]


def _unescape(match: re.Match[str]) -> str:
    return _ESCAPED.get(match[1], match[0])


def _labels(raw: str) -> dict[str, str] | None:
    """The labels between ``{`` and ``}``, unescaped; None if they are not well formed."""
    labels: dict[str, str] = {}
    raw = raw.strip(" \t")
    pos, end = 0, len(raw)
    while pos < end:
        match = _LABEL.match(raw, pos)
        if match is None or match[1] in labels:
            return None
        quoted = match[2][1:-1]
        labels[match[1]] = _ESCAPE.sub(_unescape, quoted) if "\\" in quoted else quoted
        pos = match.end()
    return labels


class _Tally:
    """The samples kept for one selection of lines: per field, each series' value (None: bad)."""

    __slots__ = ("bad", "series")

    def __init__(self) -> None:
        self.series: list[dict[_Series, float | None]] = [{} for _ in range(5)]
        self.bad = [False] * 5

    def field(self, index: int) -> float | None:
        values = self.series[index]
        if self.bad[index] or not values:
            return None
        total = 0.0
        for value in values.values():
            if value is None:
                return None
            total = max(total, value) if index == _KV else total + value
        return total if total < math.inf else None

    def report(self) -> LoadReport | None:
        fields = [self.field(index) for index in range(5)]
        if all(value is None for value in fields):
            return None
        return LoadReport(*fields)


def _sample(line: str) -> tuple[int, dict[str, str] | None, float | None] | None:
    """(field, labels, value) of a line of one of the five series; None for another name.

    Labels None: the line is one of ours but cannot be read. Only the name and the labels
    are read by regular expressions (which do not backtrack on a well-formed line); the
    value and the timestamp are split off with string methods.
    """
    name = _NAME.match(line)
    if name is None:
        return None
    index = _FIELDS.get(name[0])
    if index is None:  # ..._waiting_by_reason, ..._created and the like
        return None
    if len(line) > MAX_METRIC_LINE:
        return index, None, None
    at = name.end()
    labels: dict[str, str] | None = {}
    if line.startswith("{", at):
        group = _LABEL_SET.match(line, at)
        if group is None:
            return index, None, None
        labels = _labels(group[1])
        at = group.end()
    if labels is None or not line.startswith(_BLANK, at):
        return index, None, None
    tokens = line[at:].partition(_EXEMPLAR)[0].split()
    if not 1 <= len(tokens) <= 2 or (len(tokens) == 2 and _float(tokens[1]) is None):
        return index, None, None  # no value, or something else than a timestamp after it
    value = _number(tokens[0])
    return index, labels, _fraction(value) if index == _KV else value


def _candidates(text: AnyStr, needles: tuple[AnyStr, ...], newline: AnyStr) -> list[AnyStr] | None:
    """The lines that start with a needle (each needle begins with the newline before the
    line); None if there are more than ``MAX_METRIC_LINES`` or ``MAX_METRIC_CHARS`` in them,
    which bounds the work on the lines. A line longer than ``MAX_METRIC_LINE`` is cut just
    past it (and then is not read)."""
    found: list[AnyStr] = []
    chars = 0
    for needle in needles:
        at = text.find(needle)
        while at >= 0:
            start = at + 1
            stop = text.find(newline, start)
            if stop < 0:
                stop = len(text)
            line = text[start : min(stop, start + MAX_METRIC_LINE + 1)]
            found.append(line)
            chars += len(line)
            if len(found) > MAX_METRIC_LINES or chars > MAX_METRIC_CHARS:
                return None
            at = text.find(needle, stop)
    return found


def _lines(text: str | bytes) -> list[str] | None:
    """The lines of ``text`` that may be one of the five series, as text."""
    if isinstance(text, str):
        if text.startswith(_STARTS):
            text = "\n" + text
        return _candidates(text, _NEEDLES, "\n")
    if text.startswith(_STARTS_B):
        text = b"\n" + text
    found = _candidates(text, _NEEDLES_B, b"\n")
    return None if found is None else [line.decode("utf-8", "replace") for line in found]


def parse_metrics(text: str | bytes, model: str | None = None) -> LoadReport | None:
    """A ``GET /metrics`` text (Prometheus exposition), summed over engines; None if unusable.

    Given ``model``, only the series with that ``model_name`` count, if there are any.
    Never raises.
    """
    if isinstance(text, (bytearray, memoryview)):
        try:
            text = bytes(text)
        except (ValueError, TypeError):  # a released memoryview
            return None
    if not isinstance(text, (str, bytes)):
        return None
    lines = _lines(text)
    if lines is None:
        return None
    every, mine = _Tally(), _Tally()
    matched = False
    for line in lines:
        sample = _sample(line)
        if sample is None:
            continue
        index, labels, value = sample
        if labels is None:  # one of ours, unreadable: its model is unknown
            every.bad[index] = mine.bad[index] = True
            continue
        series = tuple(sorted(labels.items()))
        every.series[index][series] = value
        if model is not None and labels.get("model_name") == model:
            mine.series[index][series] = value
            matched = True
    return (mine if matched else every).report()
