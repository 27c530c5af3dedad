"""Discovered instances: a route's A/AAAA records, or a file of addresses, looked at again.

How this works
--------------
A route with ``discover`` (``dns``, or ``file: PATH``) is a group of instances
(``config/members.py``). A daemon thread looks at each group every ``interval`` seconds: its
host's addresses through the ``resolver`` (``socket.getaddrinfo`` unless one is injected:
tests map names to 127.0.0.2, 127.0.0.3 ...; a Kubernetes headless Service resolves to its
ready pods), or the addresses in its file (read again only when its size or modification time
changed). Then, against the instances the balancer has now:

- a new address *joins* only after a passing check (``GET /health`` and ``/v1/models``, as
  the active checker does, the model's ``max_model_len`` kept): a pod that is still loading
  its model is not sent calls; one that fails is looked at again next round;
- a vanished address is *retired* at once: it is in no pool any more, its calls in flight
  finish (``Balancer.set_members``), and it is dropped when the last one ends;
- a lookup that fails (the name does not resolve, the file cannot be read) changes nothing:
  a DNS hiccup must not drain a healthy fleet. A lookup that succeeds with no address retires
  every instance (the Service has no ready pod).

The first round runs in the provider's constructor, so that its first call finds the
instances up then: its checks are bounded by the check timeout, a DNS lookup by the system
resolver's own timeouts. Each change is
logged (``send/log.py``); ``Balancer.group_status`` says what the last round found, and
``provider.stats()`` shows each instance with ``discovered_by``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence

from ..config import RouteConfig
from ..config.members import Address, member, parse_instances, template_address
from ..routing.balancer import Balancer
from ..send.log import log_discovery
from ..send.protocols import SyncSender
from .background import Background
from .check import CheckSettings
from .run import check_routes

Resolver = Callable[[str, int], Sequence[str]]
_FILE_LIMIT = 1024 * 1024  # bytes of an instances file read at most


def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (A and AAAA), sorted, without repeats."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


class Discoverer(Background):
    """The background thread that keeps the balancer's discovered instances current."""

    def __init__(
        self,
        groups: Sequence[RouteConfig],
        balancer: Balancer,
        sender: SyncSender,
        settings: CheckSettings,
        resolver: Resolver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.groups = list(groups)
        self.balancer = balancer
        self.sender = sender
        self.settings = settings
        self.resolver = resolver or resolve
        self.clock = clock
        self._due: dict[str, float] = {}
        self._file_seen: dict[str, tuple[int, int]] = {}
        self._file_addresses: dict[str, list[Address]] = {}
        self._limits: dict[str, int] = {}  # max_model_len of instances, from their join check
        super().__init__("llm-routes-discovery", settings.timeout * 2 + 1.0)

    def restarted(self) -> Discoverer:
        """A discoverer like this one, running (in a forked child)."""
        again = Discoverer(
            self.groups, self.balancer, self.sender, self.settings, self.resolver, self.clock
        )
        return again.start()

    def pause(self) -> float:
        return min(group.discover.interval for group in self.groups if group.discover)

    def run_once(self) -> None:
        now = self.clock()
        for group in self.groups:
            if self._due.get(group.name, now) <= now and group.discover is not None:
                self._due[group.name] = now + group.discover.interval
                self.look(group)

    def look(self, template: RouteConfig) -> tuple[list[str], list[str]]:
        """One look at a group: the instances that joined and those retired."""
        balancer = self.balancer
        name = template.name
        addresses, problem = self.addresses(template)
        if addresses is None:
            balancer.group_status[name] = f"lookup failed: {problem}"
            log_discovery(name, [], [], problem)
            return [], []
        wanted = [member(template, host, port) for host, port in addresses]
        current = {config.name for config in balancer.members(name)}
        new = [config for config in wanted if config.name not in current]
        passed = set()
        failed = []
        if new:
            for check in check_routes(new, self.sender, self.settings):
                if check.max_model_len is not None:
                    self._limits[check.route] = check.max_model_len
                if check.healthy:
                    passed.add(check.route)
                else:
                    failed.append(f"{check.route}: {check.error}")
        keep = [c for c in wanted if c.name in current or c.name in passed]
        joined, retired = balancer.set_members(name, keep)
        for joiner in joined:  # its window, as /v1/models said in its check (not over a config's)
            balancer.learn_limit(joiner, self._limits.pop(joiner, None), "models")
        waiting = f"; {len(failed)} not joined yet (failed their check)" if failed else ""
        balancer.group_status[name] = f"{len(keep)} instance(s){waiting}"
        if joined or retired or failed or problem:
            note = "; ".join(filter(None, [problem, *failed])) or None
            log_discovery(name, joined, retired, note)
        return joined, retired

    def addresses(self, template: RouteConfig) -> tuple[list[Address] | None, str | None]:
        """The group's addresses now, and a note on what went wrong (None, note: the lookup
        failed and nothing may change)."""
        discover = template.discover
        host, port = template_address(template)
        if discover is None:
            return None, "not a discovering route"
        if discover.file is None:
            try:
                found = self.resolver(host, port)
            except (OSError, UnicodeError, ValueError) as exc:
                return None, f"{host} did not resolve ({type(exc).__name__}: {exc})"
            return [(address, port) for address in dict.fromkeys(found)], None
        return self._file(template.name, discover.file, port)

    def _file(self, name: str, path: str, port: int) -> tuple[list[Address] | None, str | None]:
        try:
            stat = os.stat(path)
            seen = (stat.st_mtime_ns, stat.st_size)
            if self._file_seen.get(name) == seen:
                return self._file_addresses[name], None
            with open(path, "rb") as source:
                data = source.read(_FILE_LIMIT + 1)
        except OSError as exc:
            return None, f"instances file {path!r} could not be read ({exc.strerror or exc})"
        if len(data) > _FILE_LIMIT:
            return None, f"instances file {path!r} is larger than {_FILE_LIMIT} bytes"
        addresses, problems = parse_instances(data.decode("utf-8", "replace"), port)
        self._file_seen[name] = seen
        self._file_addresses[name] = addresses
        note = f"{path}: " + "; ".join(problems[:3]) if problems else None
        return addresses, note
