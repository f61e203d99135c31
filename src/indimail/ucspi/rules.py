"""tcprules: compile rule lines into cdb records, and look rules up.

Rule line (tcprules(1))::

    address:allow|deny[,VAR="value"][,!VAR]...

Any character may quote a value (the one after ``=`` opens it, its next
occurrence closes it).  A cdb value is ``D\\0`` for deny, then
``+VAR=value\\0`` per variable set and ``-VAR\\0`` per variable unset.

Addresses become keys as follows (``docs/tcpserver.md``):

* ``a.b.c.X-Y`` / ``a.b.X-Y.`` - one key per number in the range;
* an IPv6 address - the original's compact text (:func:`addr.ip6_fmt`);
  ``info@<IPv6>`` - the expanded text, as the lookup asks for it;
* CIDR ``a.b/n`` - ``_`` + the first n characters of the IPv4 bit string,
  ``x::/n`` - ``^`` + the first n characters of the IPv6 bit string (the
  keys the lookup side asks for, ARCHITECTURE section 6); ``/0`` is the
  empty key (matches everything, last);
* anything else (``=host``, ``=.suffix``, ``=``, prefixes ``1.2.``,
  ``info@1.2.3.4``, the empty address) is stored as written.

Lookup order (first key present wins; :func:`candidate_keys`):
``info@ip``, ``info@=host``, expanded IPv6, ``ip``, ``=host``, IPv4
prefixes ending in ``.`` (longest first), CIDR keys (longest prefix
first), ``=.suffix`` host suffixes (longest first), ``=``, and ``""``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator

from indimail.core import control
from indimail.core.cdb import Reader
from indimail.core.record import Record
from indimail.ucspi import addr

MAX_RANGE_KEYS = 256


class RuleSyntaxError(ValueError):
    """A rule line the compiler cannot parse."""


class Decision(Record):
    """What the rules say for one connection."""

    _fields = ("key", "deny", "env", "data")
    __slots__ = _fields

    def __init__(
        self,
        key: bytes | None,  # the rule's key; None = no rule matched (default allow)
        deny: bool = False,
        env: list[tuple[str, str | None]] | None = None,  # None as a value = unset
        data: bytes = b"",  # the cdb value as stored
    ) -> None:
        self._set("key", key)
        self._set("deny", deny)
        self._set("env", [] if env is None else env)
        self._set("data", data)

    @property
    def allow(self) -> bool:
        return not self.deny


# -- compiling ---------------------------------------------------------------


def _find_separator(line: bytes) -> int:
    """Position of the colon that is followed by ``allow`` or ``deny``."""
    pos = 0
    while True:
        colon = line.find(b":", pos)
        if colon < 0:
            return -1
        rest = line[colon + 1 :]
        if rest.startswith(b"deny") or rest.startswith(b"allow"):
            return colon
        pos = colon + 1


def parse_instructions(text: bytes) -> bytes:
    """``allow|deny[,VAR="v"][,!VAR]...`` -> the cdb value bytes."""
    data = bytearray()
    if text.startswith(b"deny"):
        data += b"D\0"
        x = text[4:]
    elif text.startswith(b"allow"):
        x = text[5:]
    else:
        raise RuleSyntaxError("expected allow or deny after the colon")
    while x:
        if x[:1] != b",":
            raise RuleSyntaxError(f"expected a comma before {x[:20]!r}")
        body = x[1:]
        comma = body.find(b",")
        seg_end = len(body) if comma < 0 else comma
        eq = body.find(b"=")
        if eq < 0 or eq > seg_end:  # no '=' in this item: !VAR
            item = body[:seg_end]
            if len(item) < 2 or item[:1] != b"!":
                raise RuleSyntaxError(f"expected VAR=value or !VAR, got {item!r}")
            data += b"-" + item[1:] + b"\0"
            x = body[seg_end:]
            continue
        name = body[:eq]
        rest = body[eq + 1 :]
        if not rest:
            raise RuleSyntaxError(f"no value for {name.decode(errors='replace')}")
        quote = rest[:1]
        end = rest.find(quote, 1)
        if end < 0:
            raise RuleSyntaxError(
                f"value of {name.decode(errors='replace')} lacks its closing "
                f"{quote.decode(errors='replace')}"
            )
        data += b"+" + name + b"=" + rest[1:end] + b"\0"
        x = rest[end + 1 :]
    return bytes(data)


def _cidr_key(address: bytes) -> bytes:
    text = address.decode("ascii", "replace")
    net, _, bits_text = text.partition("/")
    if not bits_text.isdigit():
        raise RuleSyntaxError(f"bad prefix length in {text!r}")
    n = int(bits_text)
    if ":" in net:
        try:
            ip16 = ipaddress.IPv6Address(net).packed
        except ValueError:
            raise RuleSyntaxError(f"bad IPv6 network {net!r}") from None
        if n > 128:
            raise RuleSyntaxError(f"prefix /{n} longer than 128 bits")
        return b"^" + addr.ip6_bits(ip16)[:n] if n else b""
    parts = net.split(".")
    if not 1 <= len(parts) <= 4 or not all(p.isdigit() and int(p) <= 255 for p in parts):
        raise RuleSyntaxError(f"bad IPv4 network {net!r}")
    if n > 32:
        raise RuleSyntaxError(f"prefix /{n} longer than 32 bits")
    if n > 8 * len(parts):
        raise RuleSyntaxError(f"{net!r} gives fewer bits than the prefix /{n}")
    return b"_" + addr.ip4_bits(bytes(int(p) for p in parts))[:n] if n else b""


def _range_keys(address: bytes) -> list[bytes]:
    dash = address.find(b"-")
    left = address.rfind(b".", 0, dash) + 1
    right = address.find(b".", dash + 1)
    if right < 0:
        right = len(address)
    bot_t, top_t = address[left:dash], address[dash + 1 : right]
    if not bot_t.isdigit() or not top_t.isdigit():
        raise RuleSyntaxError(f"bad range {address.decode(errors='replace')!r}")
    bot, top = int(bot_t), min(int(top_t), 255)
    if top - bot >= MAX_RANGE_KEYS:
        raise RuleSyntaxError("range too large")
    return [address[:left] + str(n).encode() + address[right:] for n in range(bot, top + 1)]


def address_keys(address: bytes) -> list[bytes]:
    """The cdb keys one rule address stands for."""
    if b"=" in address:
        return [address]
    if b"@" in address:
        info, _, ip = address.rpartition(b"@")
        if b":" in ip:
            expanded = addr.ip6_expand(ip.decode("ascii", "replace"))
            if expanded is not None:
                return [info + b"@" + expanded.encode()]
        return [address]
    if b"/" in address:
        return [_cidr_key(address)]
    if b"-" in address:
        return _range_keys(address)
    if b":" in address:
        ip16 = addr.parse(address.decode("ascii", "replace"))
        if ip16 is not None:
            return [addr.ip6_fmt(ip16).encode()]
    return [address]


def compile_line(raw: bytes) -> list[tuple[bytes, bytes]]:
    """Records for one input line ([] for a comment or blank line)."""
    if raw.startswith(b"#"):
        return []
    line = raw.rstrip(b"\n \t")
    if not line:
        return []
    colon = _find_separator(line)
    if colon < 0:
        raise RuleSyntaxError("no colon followed by allow or deny")
    data = parse_instructions(line[colon + 1 :])
    return [(key, data) for key in address_keys(line[:colon])]


def compile_lines(lines: Iterator[bytes] | list[bytes]) -> Iterator[tuple[bytes, bytes]]:
    """Records of every line; RuleSyntaxError carries ``lineno`` and ``line``."""
    for n, raw in enumerate(lines, 1):
        try:
            yield from compile_line(raw)
        except RuleSyntaxError as exc:
            exc.lineno = n  # type: ignore[attr-defined]
            exc.line = raw.rstrip(b"\n")  # type: ignore[attr-defined]
            raise


# -- lookup --------------------------------------------------------------------


def parse_value(data: bytes) -> tuple[bool, list[tuple[str, str | None]]]:
    """(deny, env changes) from a cdb value, as tcpserver applies it."""
    deny = False
    env: list[tuple[str, str | None]] = []
    for item in data.split(b"\0")[:-1]:  # a trailing item without NUL is ignored
        if not item:
            continue
        kind, rest = item[:1], item[1:]
        if kind == b"D":
            deny = True
        elif kind == b"+":
            name, eq, value = rest.partition(b"=")
            if eq:
                env.append((_s(name), _s(value)))
        elif kind == b"-":
            env.append((_s(rest), None))
    return deny, env


def _s(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _b(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def candidate_keys(ip: str, host: str | None = None, info: str | None = None) -> Iterator[bytes]:
    """Keys in the order the original's rule lookup asks for them."""
    ipb = _b(ip)
    ipv6 = ":" in ip
    expanded = _b(addr.ip6_expand(ip) or "") if ipv6 else b""
    hostb = _b(host) if host is not None else None
    if info is not None:
        infob = _b(info)
        yield infob + b"@" + (expanded or ipb)
        if hostb is not None:
            yield infob + b"@=" + hostb
    if expanded:
        yield expanded
    yield ipb
    if hostb is not None:
        yield b"=" + hostb
    if not ipv6:
        for n in range(len(ipb) - 1, 0, -1):
            if ipb[n - 1 : n] in (b".", b":"):
                yield ipb[:n]
    ip16 = addr.parse(ip)
    if ip16 is not None:
        if ipv6:
            bits = addr.ip6_bits(ip16)
            for p in range(128, 0, -1):
                yield b"^" + bits[:p]
        elif addr.is_v4mapped(ip16):
            bits = addr.ip4_bits(ip16[12:])
            for p in range(32, 0, -1):
                yield b"_" + bits[:p]
    if hostb is not None:
        for n, ch in enumerate(hostb):
            if ch == 0x2E:
                yield b"=" + hostb[n:]
        yield b"="
    yield b""


def lookup(reader: Reader, ip: str, host: str | None = None, info: str | None = None) -> Decision:
    """The rule for a connection (``Decision(key=None)`` when none matches)."""
    for key in candidate_keys(ip, host, info):
        data = reader.get(key)
        if data is not None:
            deny, env = parse_value(data)
            return Decision(key, deny, env, data)
    return Decision(None)


class Cache:
    """One rules file's decisions, for a process that serves connection
    after connection (a tcpserver pool worker).

    tcpserver reads its rules at every connection, so that a new
    ``tcprules`` build (a rename: a new inode) or any edit counts from the
    next one.  Opening and mapping the cdb and hashing up to a dozen
    candidate keys cost a pooled session more than the rest of tcpserver's
    setup; here a connection costs one ``stat()`` when its (address, host,
    info) was looked up before in the same file.  The decisions are kept
    under the file's stat key (``control.stable_key``: device, inode, size,
    mtime and ctime, and only once unchanged for two seconds), taken by
    ``fstat`` of the descriptor the cdb was read from, so a decision is
    never filed under another file's key; any other key empties the cache.
    Raises as :class:`Reader` and :func:`lookup` do (FileNotFoundError when
    the file is missing).
    """

    MAX = 1024  # distinct clients remembered; the cache restarts when full

    def __init__(self, path: str) -> None:
        self.path = path
        self.key: tuple[int, int, int, int, int] | None = None
        self.decisions: dict[tuple[str, str | None, str | None], Decision] = {}

    def lookup(self, ip: str, host: str | None = None, info: str | None = None) -> Decision:
        client = (ip, host, info)
        if self.decisions and control.stable_key(self.path) == self.key:
            hit = self.decisions.get(client)
            if hit is not None:
                return hit
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            key = control.settled_key(os.fstat(fd))
            reader = Reader.from_fd(fd)
        finally:
            os.close(fd)
        try:
            decision = lookup(reader, ip, host, info)
        finally:
            reader.close()
        if key != self.key or len(self.decisions) >= self.MAX:
            self.decisions.clear()
            self.key = key
        if key is not None:
            self.decisions[client] = decision
        return decision


def describe(decision: Decision) -> str:
    """tcprulescheck's text for a decision."""
    if decision.key is None:
        return "default:\nallow connection\n"
    out = [f"rule {_s(decision.key)}:"]
    for item in decision.data.split(b"\0")[:-1]:
        kind = item[:1]
        if kind == b"D":
            out.append("deny connection")
            return "\n".join(out) + "\n"
        if kind == b"+":
            out.append(f"set environment variable {_s(item[1:])}")
        elif kind == b"-":
            out.append(f"unset environment variable {_s(item[1:])}")
    out.append("allow connection")
    return "\n".join(out) + "\n"
