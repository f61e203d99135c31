"""Test helpers for qmail-remote: a scripted SMTP server and a tiny DNS server.

Dialogue script (``NN-name.dialog``), one directive per line::

    # comment
    @env NAME=value          environment for qmail-remote
    @control name=value      a control file (``\\n`` in value = new line)
    @args HOST SENDER RECIP  (default: example.test from@example.org to@example.test)
    @route                   smtproutes line (default HOST:<server1 ip>:<port>)
    @mx PREF SERVER          serve MX records via DNS: HOST -> mxSERVER.HOST
                             (server N listens on 127.0.0.(N+1)); route HOST::port
    M: text                  a message line (LF added); default message if none
    @server N                the lines below belong to server N (default 1)
    @connection              start the script of the next connection
    S: text                  server sends text CRLF
    S: <RAW>text             server sends text as is (\\r \\n escapes)
    S: <CLOSE>               server closes the connection
    S: <STARTTLS>            server starts TLS (context given by the test)
    C: text                  server reads a line; expected to be ``text``
    C!: text                 as C:, and the line must already be buffered
                             (the client pipelined it)
    C: <MESSAGE>             server reads the DATA body up to ``.``

``.expect``: the expected stdout of qmail-remote, one record per line with
Python escapes (``\\0``, ``\\n``); ``{ip}`` is server 1's address, ``{ip2}``
server 2's, ``{port}`` the port.
"""

from __future__ import annotations

import codecs
import io
import os
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from indimail.deliver import qmail_remote

DEFAULT_MESSAGE = b"Subject: test\n\nhello\n"


def server_ip(n: int) -> str:
    return f"127.0.0.{n + 1}"


@dataclass
class Dialog:
    env: dict[str, str] = field(default_factory=dict)
    controls: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(
        default_factory=lambda: ["example.test", "from@example.org", "to@example.test"]
    )
    route: str | None = None
    mx: list[tuple[int, int]] = field(default_factory=list)
    message: bytes | None = None
    # server -> connections -> steps (kind, text)
    servers: dict[int, list[list[tuple[str, str]]]] = field(default_factory=dict)


def parse_dialog(text: str) -> Dialog:
    d = Dialog()
    msg_lines: list[str] = []
    current = 1
    d.servers[1] = [[]]
    for raw in text.splitlines():
        line = raw.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("@env "):
            k, _, v = line[5:].partition("=")
            d.env[k.strip()] = v
        elif line.startswith("@control "):
            k, _, v = line[9:].partition("=")
            d.controls[k.strip()] = v.replace("\\n", "\n")
        elif line.startswith("@args "):
            d.args = line[6:].split()
        elif line.startswith("@route "):
            d.route = line[7:]
        elif line.startswith("@mx "):
            pref, srv = line[4:].split()
            d.mx.append((int(pref), int(srv)))
        elif line.startswith("@server "):
            current = int(line[8:])
            d.servers.setdefault(current, [[]])
        elif line.strip() == "@connection":
            d.servers[current].append([])
        elif line.startswith("M:"):
            msg_lines.append(line[3:] if line.startswith("M: ") else line[2:])
        elif line.startswith(("S: ", "C: ", "C!: ")):
            kind, _, rest = line.partition(": ")
            d.servers[current][-1].append((kind, rest))
        else:
            raise ValueError(f"bad dialog line: {line!r}")
    if msg_lines:
        d.message = "".join(x + "\n" for x in msg_lines).encode()
    return d


class ScriptedServer:
    """Plays one script per connection on (ip, port), in a thread."""

    def __init__(
        self,
        ip: str,
        connections: list[list[tuple[str, str]]],
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
    ):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, port))
        self.sock.listen(5)
        self.sock.settimeout(15)
        self.ip = ip
        self.port = self.sock.getsockname()[1]
        self.connections = connections
        self.tls = tls
        self.implicit_tls = implicit_tls
        self.received: list[list[str]] = []
        self.messages: list[bytes] = []
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> ScriptedServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.thread.join(20)
        self.sock.close()

    def expected(self) -> list[list[str]]:
        return [[t for k, t in conn if k in ("C", "C!")] for conn in self.connections]

    def _serve(self) -> None:
        for script in self.connections:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            got: list[str] = []
            self.received.append(got)
            try:
                self._play(conn, script, got)
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            finally:
                try:
                    conn.close()
                except OSError:
                    pass

    def _play(self, conn: socket.socket, script: list[tuple[str, str]], got: list[str]) -> None:
        conn.settimeout(15)
        if self.implicit_tls:
            assert self.tls is not None
            conn = self.tls.wrap_socket(conn, server_side=True)
        buf = bytearray()

        def readline(must_be_buffered: bool = False) -> bytes | None:
            nonlocal buf
            if must_be_buffered and b"\n" not in buf:
                return b"<NOT PIPELINED>"
            while b"\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return None
                buf += data
            i = buf.index(b"\n")
            line = bytes(buf[: i + 1])
            del buf[: i + 1]
            return line

        for kind, text in script:
            if kind == "S":
                if text == "<CLOSE>":
                    return
                if text == "<STARTTLS>":
                    assert self.tls is not None
                    conn = self.tls.wrap_socket(conn, server_side=True)
                    buf = bytearray()
                    continue
                if text.startswith("<RAW>"):
                    conn.sendall(codecs.escape_decode(text[5:].encode())[0])
                    continue
                conn.sendall(text.encode() + b"\r\n")
                continue
            if text == "<MESSAGE>":
                data = bytearray()
                while True:
                    line = readline()
                    if line is None:
                        got.append("<EOF>")
                        return
                    if line == b".\r\n":
                        break
                    data += line
                self.messages.append(bytes(data))
                got.append("<MESSAGE>")
                continue
            line = readline(kind == "C!")
            if line is None:
                got.append("<EOF>")
                return
            got.append(line.decode("utf-8", "replace").rstrip("\r\n"))


class DnsServer:
    """UDP DNS server on 127.0.0.1 answering from ``records``:
    {(name, TYPE): [rdata text, ...]}; unknown names get NXDOMAIN,
    known names without the type an empty NOERROR answer."""

    def __init__(self, records: dict[tuple[str, str], list[str]]):
        self.records = {(n.lower().rstrip("."), t): v for (n, t), v in records.items()}
        self.names = {n for n, _ in self.records}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.queries: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> DnsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:
                continue
            resp = dns.message.make_response(query)
            resp.flags |= dns.flags.AA
            q = query.question[0]
            name = q.name.to_text(omit_final_dot=True).lower()
            rtype = dns.rdatatype.to_text(q.rdtype)
            self.queries.append((name, rtype))
            if name not in self.names:
                resp.set_rcode(dns.rcode.NXDOMAIN)
            else:
                values = self.records.get((name, rtype), [])
                if values:
                    rrset = dns.rrset.from_text_list(
                        q.name, 300, dns.rdataclass.IN, q.rdtype, values
                    )
                    resp.answer.append(rrset)
            self.sock.sendto(resp.to_wire(), peer)


def run_remote(
    argv: list[str],
    message: bytes,
    env: dict[str, str],
    tmp: Path,
    cache: qmail_remote.ConnCache | None = None,
) -> tuple[int, bytes]:
    """qmail-remote in process: (exit code, stdout bytes); with ``cache``
    as a delivery worker runs it (a kept connection)."""
    msgfile = tmp / "mess"
    msgfile.write_bytes(message)
    out = io.BytesIO()
    fd = os.open(msgfile, os.O_RDONLY)
    try:
        code = qmail_remote.run(argv, fd, out, env, cache)
    finally:
        os.close(fd)
    return code, out.getvalue()


def transaction() -> list[tuple[str, str]]:
    """One accepted message, MAIL to the final 250, as a script part."""
    return [
        ("C", "MAIL FROM:<from@example.org>"),
        ("S", "250 ok"),
        ("C", "RCPT TO:<to@example.test>"),
        ("S", "250 ok"),
        ("C", "DATA"),
        ("S", "354 go"),
        ("C", "<MESSAGE>"),
        ("S", "250 ok"),
    ]


def base_env(tmp: Path) -> dict[str, str]:
    control = tmp / "control"
    control.mkdir(exist_ok=True)
    (control / "me").write_text("helo.example.test\n")
    certs = tmp / "certs"
    certs.mkdir(exist_ok=True)
    return {
        "CONTROLDIR": str(control),
        "CERTDIR": str(certs),
        "PATH": "/usr/bin:/bin",
        "DNSCACHEIP": "127.0.0.1:9",  # nothing there: tests that need DNS set their own
        "DNSTIMEOUT": "3",
    }


def expect_bytes(text: str, **subst: str) -> bytes:
    out = b""
    for line in text.splitlines():
        if not line:
            continue
        for k, v in subst.items():
            line = line.replace("{" + k + "}", v)
        out += codecs.escape_decode(line.encode())[0]
    return out


def free_port(ips: list[str]) -> int:
    """A port that is free on every address of ``ips``."""
    for _ in range(50):
        s = socket.socket()
        s.bind((ips[0], 0))
        port = s.getsockname()[1]
        s.close()
        ok = True
        for ip in ips[1:]:
            t = socket.socket()
            try:
                t.bind((ip, port))
            except OSError:
                ok = False
            finally:
                t.close()
        if ok:
            return port
    raise RuntimeError("no common free port")
