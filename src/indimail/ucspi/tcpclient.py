"""tcpclient: connect to a TCP server and run a program on the connection.

``tcpclient [-46hHrRdDqQv] [-T x+y] [-i localip] [-p localport] [-l localname]
[-t n] host port [prog [args]]``

With ``prog``: the connection is on fd 6 (read) and fd 7 (write) and the
environment has ``PROTO``, ``TCPLOCALIP``, ``TCPLOCALPORT``,
``TCPLOCALHOST``, ``TCPREMOTEIP``, ``TCPREMOTEPORT``, ``TCPREMOTEHOST``,
``TCPREMOTEINFO`` (the ``TCP6*`` copies for IPv6).  ``prog`` runs in this
process when it is ours, else it is exec'd.  Without ``prog``: copy stdin
to the server and the server to stdout.

``-T x+y`` (2+58): each address gets x seconds; if every address timed out,
they get y more seconds in a second round.  TLS options of the original
(``-n -c -C -L -f -M -s -m -a -z``) are not implemented yet.
"""

from __future__ import annotations

import getopt
import os
import select
import socket

from indimail.core.errors import EXIT_TEMP, Fatal, UsageError
from indimail.ucspi import addr, context, inproc

USAGE = (
    "usage: tcpclient [ -46hHrRdDqQv ] [ -i localip ] [ -p localport ] [ -T timeoutconn ] "
    "[ -l localname ] [ -t timeoutinfo ] host port [ program ]"
)
TLS_OPTIONS = "nCcLfMsmaz"


def _ptr(ip16: bytes) -> str | None:
    try:
        import dns.exception
        import dns.reversename

        from indimail.deliver import dns as rdns

        env = dict(os.environ)
        env.setdefault("DNSTIMEOUT", "10")
        res = rdns.make_resolver(env)
        text = addr.ip4_fmt(ip16[12:]) if addr.is_v4mapped(ip16) else addr.ip6_fmt(ip16)
        for rr in res.resolve(dns.reversename.from_address(text), "PTR", search=False):
            return rr.target.to_text(omit_final_dot=True)
    except (dns.exception.DNSException, OSError, ValueError, Exception):
        return None
    return None


def _addresses(host: str, port: int, only4: bool) -> list[tuple[int, tuple]]:
    ip16 = addr.parse(host)
    if ip16 is not None:
        if addr.is_v4mapped(ip16):
            return [(socket.AF_INET, (addr.ip4_fmt(ip16[12:]), port))]
        return [(socket.AF_INET6, (addr.ip6_fmt(ip16), port, 0, 0))]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise Fatal(EXIT_TEMP, f"temporarily unable to figure out IP address for {host}") from None
    out = [(fam, sa) for fam, _, _, _, sa in infos if not (only4 and fam == socket.AF_INET6)]
    if not out:
        raise Fatal(100, f"no IP address for {host}")
    return out


def connect(
    host: str, port: int, timeouts: tuple[int, int], localip: str | None, localport: int, only4
) -> socket.socket:
    targets = _addresses(host, port, only4)
    last: OSError | None = None
    for round_, limit in enumerate(timeouts):
        if round_ and not limit:
            break
        timed_out = []
        for fam, sa in targets:
            s = socket.socket(fam, socket.SOCK_STREAM)
            try:
                if localip or localport:
                    s.bind((localip or ("::" if fam == socket.AF_INET6 else "0.0.0.0"), localport))
                s.settimeout(limit or None)
                s.connect(sa)
                s.settimeout(None)
                return s
            except TimeoutError as exc:
                timed_out.append((fam, sa))
                last = exc
                s.close()
            except OSError as exc:
                last = exc
                s.close()
        targets = timed_out
        if not targets:
            break
    reason = last.strerror if last is not None and last.strerror else "timed out"
    raise Fatal(EXIT_TEMP, f"unable to connect to {host}: {reason}")


def copy_loop(sock: socket.socket) -> int:
    """No program: stdin -> server, server -> stdout."""
    stdin_open = True
    while True:
        fds = [sock] + ([0] if stdin_open else [])
        r, _, _ = select.select(fds, [], [])
        if sock in r:
            data = sock.recv(65536)
            if not data:
                return 0
            view = memoryview(data)
            while view:
                view = view[os.write(1, view) :]
        if stdin_open and 0 in r:
            data = os.read(0, 65536)
            if not data:
                stdin_open = False
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            else:
                sock.sendall(data)


def main(argv: list[str]) -> int:
    try:
        opts, rest = getopt.getopt(argv[1:], "46hHrRdDqQvT:i:p:l:t:n:C:c:L:f:M:s:m:a:ez")
    except getopt.GetoptError as exc:
        raise UsageError(f"{exc.msg}\n{USAGE}") from None
    only4 = False
    remotehost = remoteinfo = True
    delay = True
    verbosity = 1
    timeouts = (2, 58)
    localip = None
    localport = 0
    localname = None
    itimeout = 26
    for opt, val in opts:
        c = opt[1]
        if c == "4":
            only4 = True
        elif c == "6":
            pass
        elif c in "hH":
            remotehost = c == "h"
        elif c in "rR":
            remoteinfo = c == "r"
        elif c in "dD":
            delay = c == "d"
        elif c == "q":
            verbosity = 0
        elif c == "Q":
            verbosity = 1
        elif c == "v":
            verbosity = 2
        elif c == "T":
            x, _, y = val.partition("+")
            if not x.isdecimal() or (y and not y.isdecimal()):
                raise UsageError(f"-T needs x+y seconds\n{USAGE}")
            timeouts = (int(x), int(y or 0))
        elif c == "i":
            localip = val
        elif c == "p":
            if not val.isdecimal():
                raise UsageError(f"-p needs a port number\n{USAGE}")
            localport = int(val)
        elif c == "l":
            localname = val
        elif c == "t":
            itimeout = int(val) if val.isdecimal() else itimeout
        elif c == "e":
            pass
        elif c in TLS_OPTIONS:
            raise Fatal(100, f"-{c}: TLS in tcpclient is not implemented yet")
    if len(rest) < 2:
        raise UsageError(USAGE)
    host, port_text, prog = rest[0], rest[1], rest[2:]
    port = addr.port_number(port_text)
    if port is None:
        raise Fatal(EXIT_TEMP, f"unable to figure out port number for {port_text}")
    if host in ("", "0"):
        host = "127.0.0.1"
    sock = connect(host, port, timeouts, localip, localport, only4)
    if not delay:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    local, remote = sock.getsockname(), sock.getpeername()
    lip16 = addr.parse(local[0]) or b"\0" * 16
    rip16 = addr.parse(remote[0]) or b"\0" * 16
    v6 = sock.family == socket.AF_INET6 and not addr.is_v4mapped(rip16)
    lip, rip = addr.ip_fmt(lip16), addr.ip_fmt(rip16)
    if verbosity >= 2:
        os.write(2, f"tcpclient: connected to {rip} port {remote[1]}\n".encode())
    if not prog:
        return copy_loop(sock)
    lhost = localname if localname is not None else _ptr(lip16)
    rhost = _ptr(rip16) if remotehost else None
    rinfo = None
    if remoteinfo:
        from indimail.ucspi.ident import remote_info

        rinfo = remote_info(local[0], local[1], remote[0], remote[1], itimeout)
    values = {
        "PROTO": "TCP6" if v6 else "TCP",
        "TCPLOCALIP": lip,
        "TCPLOCALPORT": str(local[1]),
        "TCPLOCALHOST": lhost,
        "TCPREMOTEIP": rip,
        "TCPREMOTEPORT": str(remote[1]),
        "TCPREMOTEHOST": rhost,
        "TCPREMOTEINFO": rinfo,
    }
    if v6:
        for k in list(values):
            if k.startswith("TCP"):
                values["TCP6" + k[3:]] = values[k]
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    fd = sock.fileno()
    os.dup2(fd, 6)
    os.dup2(fd, 7)
    context.set_current(context.Connection(sock))
    return inproc.run_or_exec(prog, "tcpclient")
