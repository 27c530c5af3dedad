"""The fleet benchmark's clients: one OS process each, sending its share of the workload.

How this works
--------------
``python -m llm.perf.fleet_client SPEC.json`` is started by ``llm.perf.fleet`` (the parent,
which runs the fake fleet). The spec names the client (``"oracle"`` or a routing policy), the
instances (name, URL, speed), and either an open-loop slice of the workload (the workload file,
this replica's number, the replica count and the seed that assigns calls to replicas) or a
closed loop (concurrency, duration, seed, workload: the capacity measurement; each worker
sends the calls of one ``fleet_workloads.closed_sessions`` group after another, a session's
turns in order).

The handshake keeps every replica on one schedule: the child sets everything up (a provider,
or an aiohttp session for the oracle), prints ``ready``, and reads one line from stdin: the
start time ``t0`` as wall-clock seconds (``time.time()``, shared by the processes of the
machine). It maps ``t0`` once onto its event loop's monotonic clock; call ``i`` is then sent
at ``t0 + at_i`` by a dispatcher that sleeps to each absolute time (no drift) and never waits
for earlier calls (open loop: each call is its own task). Latency and time to first content
count from the scheduled time, so a client that falls behind pays for it; ``lag`` records how
late each call actually left.

- **provider clients**: ``LLMFactory.create_provider("vllm_openai", config=...)`` with one
  route per instance and ``lb_policy`` set; ``achat_completion`` or ``astream_events``. An
  affinity client (``fleet_workloads.client_options``: ``least_load+affinity``, ...) also sets
  ``llm.affinity``, and one that passes sessions sends a call's ``session`` as ``session=``.
- **oracle**: raw ``aiohttp``; it counts its own calls outstanding per instance (it sends every
  call of the run, so its counts are the truth) and sends each call to
  :func:`~llm.perf.fleet_model.oracle_choice`.

Per-call records (JSON) go to the spec's ``out`` file with this process's CPU time (user +
system) over the run; the process then prints ``done`` and exits.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from .fleet_model import Call, assign_replicas, oracle_choice
from .fleet_workloads import DEFAULT_WORKLOAD, client_options, closed_sessions

Record = dict[str, Any]
Send = Callable[[Call, float], Awaitable[Record]]  # (call, scheduled loop time) -> record


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _failure(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:300]


def _cached(usage: Mapping[str, Any] | None) -> int | None:
    if not usage:
        return None
    details = usage.get("prompt_tokens_details")
    if isinstance(details, Mapping) and isinstance(details.get("cached_tokens"), int):
        return int(details["cached_tokens"])
    return None


def provider_config(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The provider's config: one route per instance, the policy, generous timeouts."""
    routes = {
        item["name"]: {"base_url": item["url"] + "/v1", "model": spec["model"]}
        for item in spec["instances"]
    }
    options = client_options(spec["client"])
    llm: dict[str, Any] = {
        "routes": routes,
        "lb_policy": options.policy,
        "params": {"timeout": spec.get("timeout", 300.0), "deadline": spec.get("deadline", 600.0)},
    }
    if spec.get("load_poll") is not None:
        llm["load"] = {"poll_interval": spec["load_poll"]}
    if options.affinity is not None:
        llm["affinity"] = dict(options.affinity)
    return {"llm": llm}


async def _provider_client(spec: Mapping[str, Any]) -> tuple[Send, Callable[[], Awaitable[None]]]:
    # The provider imports aiohttp on its first call: that would block this loop for some
    # 0.3-0.6 s just as the first calls arrive (an application pays it once, at startup).
    import aiohttp  # noqa: F401

    from ..factory import LLMFactory

    provider = LLMFactory.create_provider("vllm_openai", config=provider_config(spec))
    sessions = client_options(spec["client"]).session
    loop = asyncio.get_running_loop()

    async def send(call: Call, due: float) -> Record:
        record: Record = {"inst": None, "ttft": None, "cached": None}
        messages = call.as_messages()
        options: dict[str, Any] = {"max_tokens": call.max_tokens}
        if sessions and call.session is not None:
            options["session"] = call.session
        if not call.stream:
            result = await provider.achat_completion(messages, **options)
            record["inst"] = result.route
            record["cached"] = _cached(result.usage)
            return record
        async for event in provider.astream_events(messages, **options):
            if event.kind == "content" and event.text and record["ttft"] is None:
                record["ttft"] = loop.time() - due
            elif event.kind == "usage":
                record["cached"] = _cached(event.usage)
            elif event.kind == "end":
                record["inst"] = event.route
        return record

    return send, provider.aclose


async def _oracle_client(spec: Mapping[str, Any]) -> tuple[Send, Callable[[], Awaitable[None]]]:
    import aiohttp

    instances = spec["instances"]
    names = [item["name"] for item in instances]
    urls = [item["url"] + "/v1/chat/completions" for item in instances]
    speeds = [float(item["speed"]) for item in instances]
    outstanding = [0] * len(instances)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=spec.get("deadline", 600.0)),
    )
    headers = {"content-type": "application/json", "accept": "application/json"}
    loop = asyncio.get_running_loop()

    async def send(call: Call, due: float) -> Record:
        body: dict[str, Any] = {
            "model": spec["model"],
            "messages": call.as_messages(),
            "max_tokens": call.max_tokens,
        }
        if call.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        chosen = oracle_choice(outstanding, speeds)
        outstanding[chosen] += 1
        record: Record = {"inst": names[chosen], "ttft": None, "cached": None}
        try:
            data = json.dumps(body).encode()
            async with session.post(urls[chosen], data=data, headers=headers) as response:
                if response.status != 200:
                    text = (await response.read())[:200].decode("utf-8", "replace")
                    raise RuntimeError(f"HTTP {response.status} from {names[chosen]}: {text}")
                if not call.stream:
                    answer = json.loads(await response.read())
                    record["cached"] = _cached(answer.get("usage"))
                    return record
                async for line in response.content:
                    if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                        continue
                    event = json.loads(line[6:])
                    if event.get("usage"):
                        record["cached"] = _cached(event["usage"])
                    if record["ttft"] is None:
                        for choice in event.get("choices") or ():
                            if (choice.get("delta") or {}).get("content"):
                                record["ttft"] = loop.time() - due
                                break
                return record
        finally:
            outstanding[chosen] -= 1

    return send, session.close


async def _measured(send: Send, call: Call, due: float, records: list[Record]) -> None:
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        record = await send(call, due)
        record["ok"] = True
    except Exception as error:  # noqa: BLE001 - every failure is a figure of the benchmark
        record = {"ok": False, "err": _failure(error), "inst": None, "ttft": None}
    end = loop.time()
    record.update(
        i=call.index, at=call.at, lag=began - due, lat=end - due, stream=call.stream,
        shared=call.shared, end=end,
    )  # fmt: skip
    records.append(record)


async def open_loop(send: Send, calls: list[Call], anchor: float, bound: float) -> list[Record]:
    """Send each call at ``anchor + call.at`` (loop time), each in its own task."""
    loop = asyncio.get_running_loop()
    records: list[Record] = []
    tasks: dict[asyncio.Task[None], Call] = {}
    for call in sorted(calls, key=lambda c: c.at):
        due = anchor + call.at
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks[asyncio.ensure_future(_measured(send, call, due, records))] = call
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=max(1.0, anchor + bound - loop.time()))
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
        for task in pending:  # cancelled at the bound: failures, never dropped silently
            call = tasks[task]
            records.append(
                {"ok": False, "err": "unfinished at the run's bound", "i": call.index,
                 "at": call.at, "lag": 0.0, "lat": bound, "stream": call.stream, "inst": None}
            )  # fmt: skip
    return records


async def closed_loop(
    send: Send,
    anchor: float,
    duration: float,
    concurrency: int,
    seed: int,
    tokens: list[int],
    workload: str = DEFAULT_WORKLOAD,
) -> list[Record]:
    """``concurrency`` workers, each sending its next call as soon as the last one ended
    (a session's turns in order, then the next session's), until ``duration``; the calls
    still in flight then are cancelled (not recorded)."""
    loop = asyncio.get_running_loop()
    groups = closed_sessions(workload, seed, (tokens[0], tokens[1]))
    records: list[Record] = []

    async def worker() -> None:
        while loop.time() < anchor + duration:
            for call in next(groups):
                if loop.time() >= anchor + duration:
                    break
                at = loop.time() - anchor  # arrival: when the worker sends it
                await _measured(send, replace(call, at=at), anchor + at, records)

    delay = anchor - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)
    workers = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    await asyncio.wait(workers, timeout=max(0.0, anchor + duration - loop.time()) + 0.05)
    for task in workers:
        task.cancel()
    await asyncio.wait(workers, timeout=10)
    return records


async def run(spec: Mapping[str, Any], read_start: Callable[[], float]) -> dict[str, Any]:
    """Set up, signal ready, wait for the start time, run, and return the records."""
    calls: list[Call] = []
    if spec["mode"] == "open":
        with open(spec["calls_path"], encoding="utf-8") as source:
            every = [Call.from_json(item) for item in json.load(source)]
        owner = assign_replicas(len(every), spec["replicas"], spec["seed"])
        calls = [call for call in every if owner[call.index] == spec["replica"]]
    if spec["client"] == "oracle":
        send, close = await _oracle_client(spec)
    else:
        send, close = await _provider_client(spec)
    loop = asyncio.get_running_loop()
    try:
        t0 = await loop.run_in_executor(None, read_start)
        anchor = loop.time() + (t0 - time.time())
        cpu = _cpu()
        if spec["mode"] == "open":
            records = await open_loop(send, calls, anchor, spec["bound"])
        else:
            records = await closed_loop(
                send, anchor, spec["duration"], spec["concurrency"], spec["seed"], spec["tokens"],
                spec.get("workload", DEFAULT_WORKLOAD),
            )  # fmt: skip
        cpu = _cpu() - cpu
    finally:
        await close()
    for record in records:  # completion times relative to t0, for the capacity window
        if "end" in record:
            record["end"] = record["end"] - anchor
    return {"records": records, "cpu": cpu, "calls": len(calls)}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    with open(args[0], encoding="utf-8") as source:
        spec = json.load(source)

    def read_start() -> float:
        print("ready", flush=True)
        line = sys.stdin.readline()
        if not line.strip():
            raise SystemExit("no start time on stdin")
        return float(line)

    result = asyncio.run(run(spec, read_start))
    with open(spec["out"], "w", encoding="utf-8") as out:
        json.dump(result, out)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
