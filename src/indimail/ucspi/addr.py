"""IP address text forms used by tcpserver, tcprules and rblsmtpd.

Every address is handled as 16 bytes (IPv4 as the IPv4-mapped IPv6 address
``::ffff:a.b.c.d``), as the original does.  The text forms are the ones the
original produces, because rule keys and log lines depend on them:

* :func:`ip6_fmt` - the compact form of the original's ``ip6_fmt``: the
  *first* run of two or more zero groups becomes ``::`` (not the longest run
  as RFC 5952 asks), lowercase hex, and an IPv4-mapped address ends in
  dotted decimal (``::ffff:1.2.3.4``).
* :func:`ip6_expand` - eight groups of four hex digits (rule keys
  ``info@<expanded>`` and ``<expanded>``).
* :func:`ip4_bits` / :func:`ip6_bits` - the CIDR bit strings of the
  original's rule lookup.  Both replace every one-bit by a letter so that
  the keys differ from plain binary: for IPv4 the one-bit at position ``i``
  (0-based) is ``"abcdefghijklmnopqrstuvwxyz123456"[i]``; for IPv6 the
  n-th one-bit (0-based) is the byte ``96 + n`` (mod 256); a zero bit is
  ``0`` in both.  A prefix of length p is the first p characters.
"""

from __future__ import annotations

import ipaddress
import socket

V4MAPPED = b"\0" * 10 + b"\xff\xff"
_IP4_LETTERS = b"abcdefghijklmnopqrstuvwxyz123456"


def parse(text: str) -> bytes | None:
    """16 bytes of an IPv4 or IPv6 address text, or None."""
    t = text.strip()
    for sep in ("%", "Z"):
        if sep in t and ":" in t:
            t = t.split(sep, 1)[0]
    try:
        ip = ipaddress.ip_address(t)
    except ValueError:
        return None
    if ip.version == 4:
        return V4MAPPED + ip.packed
    return ip.packed


def is_v4mapped(ip16: bytes) -> bool:
    return ip16[:12] == V4MAPPED


def ip4_fmt(ip4: bytes) -> str:
    return f"{ip4[0]}.{ip4[1]}.{ip4[2]}.{ip4[3]}"


def ip6_fmt(ip16: bytes) -> str:
    """The original's compact text of a 16-byte address."""
    groups = [(ip16[i] << 8) | ip16[i + 1] for i in range(0, 16, 2)]
    out: list[str] = []
    compressing = compressed = False
    for n in range(8):
        if n == 6 and is_v4mapped(ip16):
            out.append(ip4_fmt(ip16[12:]))
            break
        cur = groups[n]
        # The original reads the next group only when not compressing; past
        # the end it reads beyond the array: treat that as non-zero.
        nxt = groups[n + 1] if n < 7 else 1
        if cur == 0 and (compressing or nxt == 0) and not compressed:
            if not compressing:
                compressing = True
                if n == 0:
                    out.append(":")
            continue
        if compressing:
            compressing = False
            compressed = True
            out.append(":")
        out.append(f"{cur:x}")
        if n < 7:
            out.append(":")
    if compressing:
        out.append(":")
    return "".join(out)


def ip_fmt(ip16: bytes) -> str:
    """Dotted quad for an IPv4-mapped address, else :func:`ip6_fmt`."""
    if is_v4mapped(ip16):
        return ip4_fmt(ip16[12:])
    return ip6_fmt(ip16)


def ip6_expand(text: str) -> str | None:
    """``0000:0000:...`` form of an IPv6 (or IPv4-mapped) address text."""
    ip16 = parse(text)
    if ip16 is None or (":" not in text):
        return None
    return ":".join(ip16[i : i + 2].hex() for i in range(0, 16, 2))


def ip4_bits(octets: bytes) -> bytes:
    """The original's substituted bit string of IPv4 octets (8 per octet)."""
    out = bytearray()
    pos = 0
    for octet in octets:
        for shift in range(7, -1, -1):
            out.append(_IP4_LETTERS[pos] if (octet >> shift) & 1 else 0x30)
            pos += 1
    return bytes(out)


def ip6_bits(ip16: bytes) -> bytes:
    """The original's substituted 128-character bit string of an address."""
    out = bytearray()
    ones = 0
    for byte in ip16:
        for shift in range(7, -1, -1):
            if (byte >> shift) & 1:
                out.append((96 + ones) & 0xFF)
                ones += 1
            else:
                out.append(0x30)
    return bytes(out)


def reverse_name(ip_text: str, proto: str = "") -> str | None:
    """DNSBL query prefix: ``d.c.b.a.`` for IPv4 (and IPv4-mapped), the 32
    reversed nibbles of the expanded address for IPv6; None if unparsable."""
    ip16 = parse(ip_text)
    if ip16 is None:
        return None
    if is_v4mapped(ip16):
        return "".join(f"{b}." for b in reversed(ip16[12:]))
    return "".join(f"{c}." for c in reversed(ip16.hex()))


def port_number(text: str) -> int | None:
    """A TCP port given as digits or as a service name (``smtp``); None
    when /etc/services does not know the name or the number is past 65535
    (ucspi-tcp would silently take it modulo 65536)."""
    if text.isdigit():
        if not text.isascii() or len(text) > 5:
            return None
        port = int(text)
        return port if port <= 65535 else None
    try:
        return socket.getservbyname(text, "tcp")
    except OSError:
        return None
