"""Control-file checks of qmail-smtpd: address lists, rcpthosts, relay lists.

Matching follows the original's ``address_match``:

1. ``NAME.cdb`` (key = lower-cased address) when it exists;
2. otherwise the list: the exact address, then ``@domain`` (the part from
   the last ``@``);
3. wildmat patterns from the ``...patterns`` file (or, without one, the
   list's own lines), ``!`` negating; with ``QREGEX`` set non-zero, the
   lines are regular expressions instead (``@dom`` meaning ``.*@dom``).

Everything is compared lower-cased, as bytes.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from pathlib import Path

from indimail.core import cdb, control


class ControlTrouble(Exception):
    """A control file exists but cannot be used: reply 451 and stop."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _encode(items: list[str]) -> tuple[bytes, ...]:
    return tuple(i.encode("utf-8", "surrogateescape") for i in items)


def _lower(items: list[str]) -> tuple[tuple[bytes, ...], frozenset[bytes]]:
    lines = tuple(i.encode("utf-8", "surrogateescape").lower() for i in items)
    return lines, frozenset(lines)


def _lowered(name: str, controldir: Path) -> tuple[tuple[bytes, ...], frozenset[bytes]] | None:
    """(lines lower-cased, their set) of list ``name``; kept while unchanged."""
    try:
        return control.read_list_as(name, "smtpd-lower", _lower, controldir=controldir)
    except control.ControlError:
        raise ControlTrouble(name) from None


def _keyed_lines(name: str, controldir: Path) -> dict[bytes, bytes]:
    """``key:value`` lines of ``name`` as a dict (first key wins); kept while unchanged."""
    try:
        found = control.read_list_as(
            name, "smtpd-keyed", lambda items: _keyed(_encode(items)), controldir=controldir
        )
    except control.ControlError:
        raise ControlTrouble(name) from None
    return found or {}


def _has(name: str, controldir: Path) -> bool:
    return control.exists(name, controldir=controldir)


def _cdb_get(name: str, key: bytes, controldir: Path) -> bool | None:
    path = control.control_path(name + ".cdb", controldir)
    try:
        reader = cdb.Reader(path)
    except FileNotFoundError:
        return None
    except (OSError, cdb.CdbError):
        raise ControlTrouble(name + ".cdb") from None
    with reader:
        return reader.get(key) is not None


class AddressList:
    """badmailfrom, badrcptto, badhelo, relaymailfrom... with their patterns."""

    def __init__(
        self, name: str, controldir: Path, patterns: str | None = None, *, at_char: bytes = b"@"
    ) -> None:
        self.name = name
        self.controldir = controldir
        self.at = at_char
        lowered = _lowered(name, controldir)
        self.present = lowered is not None
        self.lines, self.exact = lowered or ((), frozenset())
        pat = _lowered(patterns, controldir) if patterns else None
        self.patterns = pat[0] if pat is not None else None
        self.has_cdb = _has(name + ".cdb", controldir)

    def match(self, addr: bytes, environ: Mapping[str, str]) -> bool:
        addr = addr.lower()
        if self.has_cdb:
            found = _cdb_get(self.name, addr, self.controldir)
            if found:
                return True
        qregex = environ.get("QREGEX")
        if qregex and qregex.strip() not in ("", "0"):
            return self._regex(addr)
        if addr in self.exact:
            return True
        j = addr.rfind(self.at)
        if j >= 0 and addr[j:] in self.exact:
            return True
        patterns = self.patterns if self.patterns is not None else self.lines
        result = False
        for pat in patterns:
            want = not pat.startswith(b"!")
            body = pat if want else pat[1:]
            if result != want and fnmatch.fnmatchcase(addr, body):
                result = want
        return result

    def _regex(self, addr: bytes) -> bool:
        matched = False
        text = addr.decode("utf-8", "surrogateescape")
        for raw in self.lines:
            line = raw.decode("utf-8", "surrogateescape")
            negate = line.startswith("!")
            if negate:
                line = line[1:]
            if line.startswith(self.at.decode()):
                line = ".*" + line
            try:
                hit = re.search(line, text) is not None
            except re.error:
                raise ControlTrouble(f"{self.name}: bad regex {line!r}") from None
            if hit != negate:
                matched = True
        return matched


class RcptHosts:
    """rcpthosts + morercpthosts.cdb: may we accept mail for this address?"""

    def __init__(self, controldir: Path) -> None:
        self.controldir = controldir
        lowered = _lowered("rcpthosts", controldir)
        self.present = lowered is not None
        self.hosts = lowered[1] if lowered is not None else frozenset()
        self.has_more = _has("morercpthosts.cdb", controldir)
        self.more = control.control_path("morercpthosts.cdb", controldir) if self.has_more else None

    def allowed(self, addr: bytes) -> bool:
        if not self.present:
            return True
        j = addr.rfind(b"@")
        if j < 0:
            return True  # no domain: envnoathost is ours
        host = addr[j + 1 :].lower()
        suffixes = [host] + [host[i:] for i in range(len(host)) if host[i : i + 1] == b"."]
        if any(s in self.hosts for s in suffixes):
            return True
        if self.has_more:
            try:
                reader = cdb.Reader(self.more)
            except FileNotFoundError:
                return False
            except (OSError, cdb.CdbError):
                raise ControlTrouble("morercpthosts.cdb") from None
            with reader:
                return any(reader.get(s) is not None for s in suffixes)
        return False


def _keyed(lines: tuple[bytes, ...] | None) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for line in lines or []:
        key, _, value = line.partition(b":")
        out.setdefault(key.lower(), value)
    return out


def relayclient_for(remoteip: str, remotehost: str, controldir: Path) -> str | None:
    """The RELAYCLIENT value control relayclients / relaydomains give, or None."""
    clients = _keyed_lines("relayclients", controldir)
    if clients:
        ip = remoteip.encode()
        for i in range(len(ip), 0, -1):
            if (i == len(ip) or ip[i - 1 : i] == b".") and ip[:i] in clients:
                return clients[ip[:i]].decode("utf-8", "surrogateescape")
    domains = _keyed_lines("relaydomains", controldir)
    if domains:
        host = remotehost.lower().encode("utf-8", "surrogateescape")
        for i in range(len(host) + 1):
            if (i == 0 or i == len(host) or host[i : i + 1] == b".") and host[i:] in domains:
                return domains[host[i:]].decode("utf-8", "surrogateescape")
    return None
