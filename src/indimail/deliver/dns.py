"""DNS for qmail-remote: MX and address lookups with qmail's semantics.

* ``mx_ips(domain)``: the MX hosts in preference order, hosts of equal
  preference in random order (qmail's linear congruential shuffle), each
  host's AAAA addresses before its A addresses; no MX (NXDOMAIN or no MX
  data) falls back to the domain's own addresses with preference 0.
* ``host_ips(host)``: addresses of a relay named in smtproutes (no MX).
* An IP literal (``1.2.3.4``, ``[1.2.3.4]``, ``[IPv6:::1]``, ``[::1]``) is
  used as is.

Errors are :class:`DnsSoft` (try later) or :class:`DnsHard` (the name does
not exist).  The resolver comes from ``/etc/resolv.conf``; the environment
variable ``DNSCACHEIP`` (the name djbdns and ucspi-tcp use) overrides it with
a list of servers separated by blanks or commas, each ``ip``, ``ip:port``
(IPv4) or ``[ipv6]:port``, so tests can point at a server on loopback.
``DNSTIMEOUT`` (seconds, default 30) bounds one lookup.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver


class DnsSoft(Exception):
    """Temporary DNS failure."""


class DnsHard(Exception):
    """The name does not exist (or has no usable data)."""


@dataclass(frozen=True)
class MxIp:
    """One address to try, with the MX preference it came from."""

    pref: int
    ip: str
    fqdn: str | None  # the MX (or relay) host name: TLS files are looked up by it

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.ip else socket.AF_INET


def parse_servers(value: str) -> list[tuple[str, int]]:
    """``DNSCACHEIP`` items: ``ip``, ``ip:port``, ``[ip6]:port``, ``ip6``."""
    servers = []
    for item in value.replace(",", " ").split():
        port = 53
        host = item
        if item.startswith("["):
            end = item.find("]")
            if end < 0:
                raise ValueError(f"bad DNS server {item!r}")
            host = item[1:end]
            rest = item[end + 1 :]
            if rest:
                if not rest.startswith(":"):
                    raise ValueError(f"bad DNS server {item!r}")
                port = int(rest[1:])
        elif item.count(":") == 1:
            host, _, p = item.partition(":")
            port = int(p)
        ipaddress.ip_address(host)
        if not 0 < port < 65536:
            raise ValueError(f"bad DNS port in {item!r}")
        servers.append((host, port))
    if not servers:
        raise ValueError("DNSCACHEIP is empty")
    return servers


def make_resolver(environ: Mapping[str, str] | None = None) -> dns.resolver.Resolver:
    """A resolver from DNSCACHEIP, else from /etc/resolv.conf.

    Raises DnsSoft when no resolver can be configured."""
    env = os.environ if environ is None else environ
    try:
        lifetime = float(env.get("DNSTIMEOUT") or 30)
    except ValueError:
        lifetime = 30.0
    cache = env.get("DNSCACHEIP")
    try:
        if cache:
            res = dns.resolver.Resolver(configure=False)
            res.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in parse_servers(cache)]
        else:
            res = dns.resolver.Resolver()
    except (ValueError, dns.resolver.NoResolverConfiguration, OSError) as exc:
        raise DnsSoft(f"no DNS resolver: {exc}") from None
    res.lifetime = lifetime
    res.timeout = min(res.timeout, lifetime)
    res.use_search_by_default = False
    res.cache = None
    return res


def to_ascii(domain: str) -> str:
    """IDNA2008 (UTS 46) A-label form of ``domain``; DnsHard if impossible."""
    if domain.isascii():
        return domain
    import idna

    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        raise DnsHard(f"invalid internationalized domain name {domain!r}") from None


@functools.lru_cache(maxsize=256)  # a pure function, asked before every remote delivery
def ip_literal(host: str) -> str | None:
    """The address of an IP-literal host, or None."""
    h = host
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
        if h[:5].lower() == "ipv6:":
            h = h[5:]
    try:
        return str(ipaddress.ip_address(h))
    except ValueError:
        return None


def _query(res: dns.resolver.Resolver, name: str, rdtype: str) -> dns.resolver.Answer | None:
    """Answer, None for no data / no such name (hard), DnsSoft otherwise."""
    try:
        qname = dns.name.from_text(to_ascii(name))
    except (dns.exception.DNSException, ValueError) as exc:
        raise DnsHard(str(exc)) from None
    try:
        return res.resolve(qname, rdtype, search=False, raise_on_no_answer=True)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    except dns.resolver.YXDOMAIN:
        return None
    except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.exception.DNSException) as exc:
        raise DnsSoft(str(exc)) from None


def host_ips(host: str, res: dns.resolver.Resolver, pref: int = 0) -> list[MxIp]:
    """AAAA then A addresses of ``host`` (dns_ipplus).  DnsHard when neither
    exists, DnsSoft when a lookup failed temporarily and none was found."""
    lit = ip_literal(host)
    if lit is not None:
        return [MxIp(pref, lit, lit)]
    fqdn = host.rstrip(".")
    found: list[MxIp] = []
    errors: list[Exception] = []
    for rdtype in ("AAAA", "A"):
        try:
            ans = _query(res, host, rdtype)
        except DnsSoft as exc:
            errors.append(exc)
            continue
        if ans is None:
            errors.append(DnsHard(host))
            continue
        for rr in ans:
            found.append(MxIp(pref, str(ipaddress.ip_address(rr.address)), fqdn))
    if found or len(errors) < 2:
        return found
    raise errors[-1]  # the A lookup's error, as qmail returns err4


def _shuffle_order(mx: list[tuple[int, str]], rnd: int) -> list[tuple[int, str]]:
    """qmail's selection: repeatedly take the lowest preference, choosing
    among equals with a linear congruential generator seeded by ``rnd``."""
    mx = list(mx)
    order = []
    mask = (1 << 64) - 1
    while mx:
        i = 0
        numsame = 1
        for j in range(1, len(mx)):
            if mx[j][0] < mx[i][0]:
                i = j
                numsame = 1
            elif mx[j][0] == mx[i][0]:
                numsame += 1
                rnd = (rnd * 69069 + 1) & mask
                if (rnd // 2) < (2147483647 // numsame):
                    i = j
        order.append(mx[i])
        mx[i] = mx[-1]
        mx.pop()
    return order


def mx_ips(domain: str, res: dns.resolver.Resolver, rnd: int) -> list[MxIp]:
    """Addresses of the mail exchangers of ``domain`` in the order to try.

    Returns an empty list for a null MX; raises DnsHard when the domain does
    not exist, DnsSoft when the answer could not be had (or no address of any
    MX could be had and one lookup failed temporarily)."""
    lit = ip_literal(domain)
    if lit is not None:
        return [MxIp(0, lit, lit)]
    ans = _query(res, domain, "MX")
    if ans is None:
        return host_ips(domain, res, 0)
    mx = [(int(rr.preference), rr.exchange.to_text(omit_final_dot=True)) for rr in ans]
    if not mx:
        return host_ips(domain, res, 0)
    result: list[MxIp] = []
    soft = False
    for pref, name in _shuffle_order(mx, rnd):
        if name in ("", "."):  # null MX (RFC 7505): nothing to try
            continue
        try:
            result.extend(host_ips(name, res, pref))
        except DnsSoft:
            soft = True
        except DnsHard:
            pass
    if soft and not result:
        raise DnsSoft(domain)
    return result


# -- addresses of this host (qmail's ipme) -----------------------------------


def _ipv4_of_interfaces() -> Iterable[str]:
    import fcntl
    import struct

    siocgifaddr = 0x8915  # Linux
    try:
        names = [n for _, n in socket.if_nameindex()]
    except OSError:
        return []
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in names:
            try:
                req = struct.pack("256s", name.encode()[:15])
                res = fcntl.ioctl(s.fileno(), siocgifaddr, req)
                found.append(socket.inet_ntoa(res[20:24]))
            except OSError:
                continue
    return found


def _ipv6_of_interfaces() -> Iterable[str]:
    found = []
    try:
        with open("/proc/net/if_inet6") as fh:
            for line in fh:
                hexaddr = line.split()[0]
                found.append(str(ipaddress.IPv6Address(bytes.fromhex(hexaddr))))
    except (OSError, ValueError, IndexError):
        pass
    return found


def ipme(more: Iterable[str] = (), notme: Iterable[str] = ()) -> set[str]:
    """Addresses that mean "this host": 0.0.0.0, ::, the interfaces'
    addresses, plus control ``moreipme``, minus control ``notipme``."""
    me = {"0.0.0.0", "::", "127.0.0.1", "::1"}
    me.update(_ipv4_of_interfaces())
    me.update(_ipv6_of_interfaces())
    for ip in more:
        lit = ip_literal(ip.strip())
        if lit:
            me.add(lit)
    for ip in notme:
        lit = ip_literal(ip.strip())
        if lit:
            me.discard(lit)
    return me
