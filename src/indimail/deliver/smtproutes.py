"""smtproutes: which relay qmail-remote uses for a domain.

One route per line (control ``smtproutes`` or the file named by
``SMTPROUTESFILE``; the ``SMTPROUTE`` / ``X-SMTPROUTES`` environment
variables replace the file)::

    domain:relay[:port[:penalty[:max_tolerance]]][ user pass[ envstr]]
    domain:relay[:port...] /s | /r | /token     (credentials from remote_auth.cdb)

* ``domain`` is matched case-insensitively against the whole recipient host,
  then against each suffix starting at a dot (``.example.com`` matches every
  host under example.com), then the empty domain (the default route).
* ``!@`` is the route for messages with the null sender (bounces).
* an empty relay means "no relay: look up the MX" (``domain:``); with a port
  (``domain::2525``) the MX hosts are used on that port (an extension: the
  original cannot express this).
* ``relay`` is a host name, an IPv4 address, ``[ipv4]`` or ``[ipv6]``.
* ``port`` 465 means implicit TLS (SMTPS); default 25.
* ``penalty`` / ``max_tolerance`` tune the tcpto table (penalty 0 disables
  it for the route).
* ``envstr`` is ``VAR=value,VAR2=`` (set, or unset when the value is empty).

When the same domain appears twice, the last line wins (qmail's constmap).
Lines without ``:`` are ignored.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

PORT_SMTP = 25


@dataclass
class Route:
    relay: str  # "" = use the MX of the recipient host
    port: int = PORT_SMTP
    penalty: int | None = None
    tolerance: int | None = None
    user: str | None = None
    password: str | None = None
    envstr: str | None = None
    auth_lookup: str | None = None  # "/s", "/r" or "/token" (remote_auth.cdb)
    raw: str = ""


def build_map(lines: Iterable[str]) -> dict[str, str]:
    """``key:value`` lines to a dict with lower-cased keys, last line winning."""
    table: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition(":")
        if not sep:
            continue
        table[key.lower()] = value
    return table


def _scan_ulong(s: str) -> int | None:
    digits = ""
    for ch in s:
        if not ch.isdigit() or not ch.isascii():
            break
        digits += ch
    return int(digits) if digits else None


def parse_value(value: str) -> Route:
    """The part after ``domain:``."""
    route = Route(relay="", raw=value)
    hostpart, sp, authpart = value.partition(" ")
    if sp and authpart:
        if authpart.startswith("/"):
            route.auth_lookup = authpart
        else:
            user, sp2, rest = authpart.partition(" ")
            if sp2 and user:
                password, sp3, envstr = rest.partition(" ")
                if password:
                    route.user = user
                    route.password = password
                    if sp3 and envstr:
                        route.envstr = envstr
    if hostpart.startswith("["):
        end = hostpart.find("]")
        if end >= 0:
            route.relay = hostpart[: end + 1]
            rest = hostpart[end + 1 :]
            fields = rest[1:].split(":") if rest.startswith(":") else []
        else:
            route.relay = hostpart
            fields = []
    else:
        relay, _, rest = hostpart.partition(":")
        route.relay = relay
        fields = rest.split(":") if _ else []
    if fields:
        port = _scan_ulong(fields[0])
        if port:
            route.port = port
    if len(fields) > 1:
        route.penalty = _scan_ulong(fields[1])
    if len(fields) > 2:
        route.tolerance = _scan_ulong(fields[2])
    return route


def suffixes(host: str) -> list[str]:
    """The lookup keys for ``host``: itself, each ``.suffix``, then ``""``."""
    keys = [host]
    for i, ch in enumerate(host):
        if ch == "." and i > 0:
            keys.append(host[i:])
    keys.append("")
    return keys


def lookup(
    table: Mapping[str, str],
    host: str,
    null_sender: bool = False,
    extra: Mapping[str, str] | None = None,
) -> Route | None:
    """The route for ``host`` (None: no route, use the MX).

    ``extra`` is a second table (moresmtproutes.cdb) consulted after
    ``table`` at each level."""
    if null_sender:
        for t in (table, extra or {}):
            value = t.get("!@")
            if value:
                return parse_value(value)
    h = host.lower()
    for key in suffixes(h):
        for t in (table, extra or {}):
            value = t.get(key)
            if value is not None:
                if value == "":
                    return None
                return _parsed(value)
    return None


# parse_value kept per value: a worker delivers message after message on
# the same routes, and callers only read a Route.
_parsed = functools.lru_cache(maxsize=1024)(parse_value)


def parse_envstr(envstr: str) -> dict[str, str | None]:
    """``VAR=value,VAR2=`` to {VAR: value, VAR2: None (unset)}."""
    result: dict[str, str | None] = {}
    for item in envstr.split(","):
        if not item:
            continue
        name, _, value = item.partition("=")
        if name:
            result[name] = value if value else None
    return result
