"""The instances of a discovering route: their addresses, and a route config for each.

A route with ``discover`` is a *group*: its config is a template, and each instance found at
run time (an A/AAAA record of its host, a line of its file; ``probes/discovery.py`` finds
them) becomes a route of its own, made here by ``member``: the template with the instance's
address in ``base_url`` (scheme, port unless the instance names its own, and path kept),
named ``<group>@<host>:<port>`` so that every app replica names it alike (affinity's homes
hash those names), and ``group`` set to the template's name. Secrets (``api_key``,
``headers``) are the template's, so the config's masking covers them.

A file of instances holds one per line: ``host``, ``host:port``, ``[v6 address]:port`` or a
URL (only its host and port are used); blank lines and ``#`` comments are skipped, a line that
is none of these is reported, not guessed at.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from urllib.parse import urlsplit, urlunsplit

from .model import RouteConfig

Address = tuple[str, int]
_HOST = re.compile(r"^[A-Za-z0-9._-]{1,253}$")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def template_address(template: RouteConfig) -> Address:
    """The host and port of a template's ``base_url`` (the port its scheme implies if none)."""
    parts = urlsplit(template.base_url)
    return parts.hostname or "", parts.port or _DEFAULT_PORTS.get(parts.scheme, 80)


def netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def member(template: RouteConfig, host: str, port: int) -> RouteConfig:
    """The route config of the instance at ``host:port`` of the group ``template``."""
    parts = urlsplit(template.base_url)
    where = netloc(host, port)
    url = urlunsplit((parts.scheme, where, parts.path, parts.query, parts.fragment))
    return dataclasses.replace(
        template, name=f"{template.name}@{where}", base_url=url, discover=None, group=template.name
    )


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOST.match(host)) and not host.startswith(("-", "."))


def parse_instance(line: str, default_port: int) -> Address | None:
    """One line of an instances file as an address, or None when it is not one."""
    text = line.strip()
    if "://" in text:
        parts = urlsplit(text)
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            return None
        if not host or parts.username or parts.password:
            return None  # no credentials in a file of addresses: they belong in the config
        return (
            (host, port or _DEFAULT_PORTS.get(parts.scheme, default_port))
            if _valid_host(host)
            else None
        )
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return None
        port = int(port_text)
    else:
        port = default_port
    return (host, port) if host and _valid_host(host) else None


def parse_instances(text: str, default_port: int) -> tuple[list[Address], list[str]]:
    """The addresses of an instances file (in file order, without repeats), and a note for
    each line that is not one (its number, and at most 60 characters of it)."""
    found: dict[Address, None] = {}
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        address = parse_instance(line, default_port)
        if address is None:
            shown = "".join(ch for ch in line[:60] if ch.isprintable())
            if "@" in line:
                shown = "(a URL with a user name: not shown)"
            problems.append(f"line {number}: not an address: {shown!r}")
        else:
            found[address] = None
    return list(found), problems
