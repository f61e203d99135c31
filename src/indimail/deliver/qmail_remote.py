"""qmail-remote: deliver one message to a remote host over SMTP.

Usage (the interface of qmail/indimail-mta's qmail-remote, no options)::

    qmail-remote host sender qqeh size recip [recip...]

The message is read from fd 0 (LF line ends).  The result goes to fd 1 as
NUL-terminated records: for every recipient ``r`` (accepted), ``h``
(permanently refused) or ``s`` (temporarily refused), then one message
report ``K`` (delivered), ``Z`` (try again later) or ``D`` (give up).  The
exit status is 0 (or the exit status of an ONSUCCESS_REMOTE /
ONFAILURE_REMOTE / ONTEMPORARY_REMOTE hook), whatever happened to the mail.

For the spawner, :func:`run` does the whole job in the calling process::

    run(argv, msgfd, out, environ=None) -> int

``argv`` as above (``argv[0]`` = "qmail-remote"), ``msgfd`` an fd open on
the message (read from its current offset), ``out`` a binary file that gets
the records (flushed after each), ``environ`` the environment to use
(default ``os.environ``; never modified).  It never raises for anything a
remote host, DNS or a control file does: every outcome is a record.

A delivery worker (qmail-rspawn) passes a :class:`ConnCache` as ``cache``:
after a delivery the connection stays open, without QUIT, for the next
message to the same host through the same address, name and route, for
``SMTP_REUSE`` seconds (default 2; 0: one connection per message, as the
original).  The standalone command never keeps one.

Routing: SMTPROUTE / X-SMTPROUTES environment, else control ``smtproutes``
(``SMTPROUTESFILE``), plus ``moresmtproutes.cdb``; else the MX hosts of the
recipient host, else its A/AAAA.  See docs/remote-delivery.md.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import mmap
import os
import select
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from indimail.core import control as _control
from indimail.core import paths as _paths
from indimail.deliver import dns as _dns
from indimail.deliver import smtproutes as _routes
from indimail.deliver import tcpto as _tcpto

PORT_SMTP = 25
HUGESMTPTEXT = 5000  # reply text kept for the report, as the original
MAX_REPLY_LINE = 8192  # one reply line longer than this: the server is broken
MAX_REPLY_LINES = 512  # continuation lines of one reply
CHUNK = 65536

# RFC 5321 atext plus the characters qmail's quote.c accepts unquoted.
_OK = frozenset(
    b"!#$%&'*+-/0123456789=?ABCDEFGHIJKLMNOPQRSTUVWXYZ^_`abcdefghijklmnopqrstuvwxyz{|}~."
)


class _Done(Exception):
    """The message report has been written."""


class _Dropped(Exception):
    """The connection failed while talking to the server."""


class _Overlong(Exception):
    """The server sent a reply beyond our bounds."""


class _NextMX(Exception):
    """Try the next address (4xx greeting and similar)."""


class _RetryPlain(Exception):
    """TLS negotiation failed: reconnect to the same address without TLS."""


def quote_need(local: bytes) -> bool:
    if not local:
        return True
    for ch in local:
        if ch < 128 and ch not in _OK:
            return True
    if local.startswith(b".") or local.endswith(b"."):
        return True
    return b".." in local


def quote_local(local: bytes) -> bytes:
    """qmail's quote(): a quoted string when the local part needs it.

    Unlike the original, bytes >= 128 (UTF-8, RFC 6531) need no quoting."""
    if not quote_need(local):
        return local
    out = bytearray(b'"')
    for ch in local:
        if ch in b'\r\n"\\':
            out += b"\\"
        out.append(ch)
    out += b'"'
    return bytes(out)


def addrmangle(addr: bytes) -> bytes:
    """``local@host`` with the local part quoted as needed."""
    if not addr:
        return b""
    at = addr.rfind(b"@")
    if at < 0:
        return quote_local(addr)
    return quote_local(addr[:at]) + addr[at:]


def xtext(s: bytes) -> bytes:
    """The original's xtext for ``AUTH=<user>``."""
    out = bytearray()
    for ch in s:
        if ch == 0x2B:
            out += b"+2B"
        elif ch == 0x3D:
            out += b"+3D"
        elif ch < 33 or ch > 126:
            out += b"+3F"
        else:
            out.append(ch)
    return bytes(out)


def safe(b: bytes) -> bytes:
    """outsafe(): bytes outside ``!``..``~`` become ``?``."""
    return bytes(ch if 33 <= ch <= 126 else 0x3F for ch in b)


def match_partner(name: str, fqdn: str) -> bool:
    """RFC 2595 name check of the original: exact, or ``*.domain``."""
    if name.lower() == fqdn.lower():
        return True
    if name.startswith("*"):
        dot = fqdn.find(".")
        domain = fqdn[dot:] if dot >= 0 else ""
        return name[1:].lower() == domain.lower()
    return False


def _has_utf8_received(msg: bytes | mmap.mmap) -> bool:
    """A ``Received: ... with UTF8...`` header (the original's scan)."""
    end = msg.find(b"\n\n")
    head = bytes(msg[: end + 1 if end >= 0 else min(len(msg), 1 << 20)])
    field = b""
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            field += b" " + line.strip()
            continue
        if field.lower().startswith(b"received:") and b" with utf8" in field.lower().replace(
            b"\t", b" "
        ):
            return True
        field = line
    return bool(
        field.lower().startswith(b"received:")
        and b" with utf8" in field.lower().replace(b"\t", b" ")
    )


class _Stale(Exception):
    """A kept connection died before its first reply: nothing was reported
    yet, so the caller connects afresh."""


REUSE_IDLE = 2.0  # seconds a kept connection waits for the next message
REUSE_AGE = 300.0  # seconds a connection is used for at most
REUSE_COUNT = 100  # messages one connection carries at most


class Kept:
    """A connection kept open after a delivery, with what the session
    learnt (the EHLO keywords), for :meth:`Remote.connect_loop` to reuse."""

    __slots__ = ("born", "conn", "ehlokw", "idle_since", "key", "used")

    def __init__(self, key: tuple, conn: Conn, ehlokw: dict[str, str], born: float) -> None:
        self.key = key
        self.conn = conn
        self.ehlokw = ehlokw
        self.born = born
        self.idle_since = time.monotonic()
        self.used = 1


class ConnCache:
    """The one connection a delivery worker keeps between its deliveries.

    Why: a connection per message costs both ends a TCP handshake, the
    greeting, EHLO and QUIT, and TLS when used; a busy route (a smarthost,
    a big provider) gets one message after another.  One slot is enough:
    qmail-rspawn hands a worker the next message for the host it last
    delivered to when it can.  Created empty in the spawner and used only
    in a worker (:meth:`enable`), so a one-off child or the command never
    keeps a connection that would be dropped without QUIT."""

    def __init__(self, idle: float = REUSE_IDLE) -> None:
        self.idle = idle
        self.kept: Kept | None = None
        self.enabled = False

    def enable(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        text = env.get("SMTP_REUSE")
        if text:
            try:
                self.idle = max(0.0, float(text))
            except ValueError:
                pass
        self.enabled = self.idle > 0

    def take(self, key: tuple) -> Kept | None:
        """The kept connection for ``key`` if it is still good; a dead or
        expired one is closed."""
        kept = self.kept
        if kept is None or kept.key != key:
            return None
        self.kept = None
        now = time.monotonic()
        if (
            now - kept.idle_since > self.idle
            or now - kept.born > REUSE_AGE
            or kept.used >= REUSE_COUNT
            or not kept.conn.quiet()
        ):
            self._quit(kept)
            return None
        kept.used += 1
        return kept

    def put(self, kept: Kept) -> None:
        if self.kept is not None:
            self._quit(self.kept)
        kept.idle_since = time.monotonic()
        self.kept = kept

    def due(self) -> float | None:
        """When the kept connection is to be closed (time.monotonic())."""
        return None if self.kept is None else self.kept.idle_since + self.idle

    def expire(self) -> None:
        """Close the kept connection politely (idle, or the worker ends)."""
        if self.kept is not None:
            kept, self.kept = self.kept, None
            self._quit(kept)

    @staticmethod
    def _quit(kept: Kept) -> None:
        conn = kept.conn
        if conn.quiet():  # as after a delivery: QUIT, not waiting for the 221
            conn.timeout = min(conn.timeout, 5)
            try:
                conn.send(b"QUIT\r\n")
            except _Dropped:
                pass
        conn.close()


class Conn:
    """A socket (maybe TLS) with a bounded line reader and timeouts."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock: socket.socket = sock
        self.timeout = timeout
        self.buf = bytearray()
        self.tls = False
        self.ssl_err: str | None = None

    def _arm(self) -> None:
        """The socket's timeout as ``self.timeout`` says (settimeout is a
        system call: only when it changed)."""
        if self.sock.gettimeout() != self.timeout:
            self.sock.settimeout(self.timeout)

    def send(self, data: bytes) -> None:
        try:
            self._arm()
            self.sock.sendall(data)
        except ssl.SSLError as exc:
            self.ssl_err = exc.reason or str(exc)
            raise _Dropped() from None
        except OSError:
            raise _Dropped() from None

    def readline(self) -> bytes:
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line = bytes(self.buf[: nl + 1])
                del self.buf[: nl + 1]
                return line
            if len(self.buf) > MAX_REPLY_LINE:
                raise _Overlong()
            try:
                self._arm()
                data = self.sock.recv(4096)
            except ssl.SSLError as exc:
                self.ssl_err = exc.reason or str(exc)
                raise _Dropped() from None
            except OSError:
                raise _Dropped() from None
            if not data:
                raise _Dropped()
            self.buf += data

    def quiet(self) -> bool:
        """Whether the server has said nothing since its last reply: a kept
        connection it closed (or sent a 421 on) reads as not quiet."""
        if self.buf:
            return False
        pending = getattr(self.sock, "pending", None)
        if pending is not None and pending():
            return False
        try:
            return not select.select([self.sock], [], [], 0)[0]
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Remote:
    """One run of qmail-remote."""

    def __init__(
        self,
        argv: list[str],
        msgfd: int,
        out: BinaryIO,
        environ: Mapping[str, str],
        cache: ConnCache | None = None,
    ):
        self.argv = argv
        self.cache = cache if cache is not None and cache.enabled else None
        self.key: tuple | None = None  # what a kept connection must match
        self.born = 0.0  # when the connection in use was opened
        self.kept: Kept | None = None  # the kept connection in use, if reused
        self.reused = False
        self.authed = False
        self.msgfd = msgfd
        self.outf = out
        self.env: dict[str, str] = dict(environ)
        self.obuf = bytearray()
        self.text = bytearray()  # last reply (smtptext)
        self.code = -1
        self.partner: _dns.MxIp | None = None
        self.conn: Conn | None = None
        self.inside_greeting = False
        self.flagcritical = False
        self.flagtcpto = True
        self.min_penalty = _tcpto.MIN_PENALTY
        self.max_tolerance = _tcpto.MAX_TOLERANCE
        self.port = PORT_SMTP
        self.smtps = False
        self.notls = False
        self.msg: bytes | mmap.mmap = b""
        self.tcpto: _tcpto.Table | None = None
        self.user: bytes = b""
        self.password: bytes = b""
        self.use_auth: str | None = None
        self.ehlokw: dict[str, str] = {}
        self.auth_mechs: set[str] = set()

    # -- output ------------------------------------------------------------

    def out(self, s: str | bytes) -> None:
        self.obuf += s.encode("utf-8", "surrogateescape") if isinstance(s, str) else s

    def zero(self) -> None:
        self.obuf += b"\0"
        try:
            self.outf.write(bytes(self.obuf))
            self.outf.flush()
        except (OSError, ValueError):
            pass
        self.obuf.clear()

    def outhost(self) -> None:
        self.out(self.partner.ip if self.partner else "")

    def outsmtptext(self) -> None:
        if self.text:
            self.out(b"Remote host said: ")
            self.out(bytes(self.text).replace(b"\0", b"?"))
            self.smtpenv = bytes(self.text)
            self.text = bytearray()

    def zerodie(self, status: str, succ: int) -> None:
        """End the run: flush the record, run the hook, stop."""
        self.zero()
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.exitcode = self.run_script(status[:1] or "Z", succ)
        raise _Done()

    def die_text(self, record: str, succ: int = -1) -> None:
        """A one-line report (``Z...`` / ``D...``) without a connection."""
        self.smtpenv = record[1:].rstrip("\n").encode("utf-8", "surrogateescape")
        self.out(record)
        self.zerodie(record[:1], succ)

    def quit(
        self, code: int, die: int, prepend: str, *parts: str | bytes, keep: bool = False
    ) -> None:
        """Send QUIT, report ``prepend<ip>parts.`` and the reply text, stop.
        With ``keep`` (a delivery done) and a cache, the connection is kept
        for the next message instead."""
        if keep and self.cache is not None and self.key is not None and self.conn is not None:
            # a reused connection goes back as it was taken (its age and
            # message count go on); a new one starts its record
            self.cache.put(self.kept or Kept(self.key, self.conn, self.ehlokw, self.born))
            self.conn = None
        elif self.conn is not None:
            try:
                self.conn.send(b"QUIT\r\n")
            except _Dropped:
                pass
        self.out(prepend)
        self.outhost()
        for p in parts:
            self.out(p)
        self.out(".\n")
        self.code = code
        self.outsmtptext()
        self.zerodie(prepend, -1 if die == -1 else (0 if die else 1))

    def run_script(self, status: str, succ: int) -> int:
        """ONSUCCESS_REMOTE / ONFAILURE_REMOTE / ONTEMPORARY_REMOTE hooks."""
        names = {1: "ONSUCCESS_REMOTE", 0: "ONFAILURE_REMOTE", -1: "ONTEMPORARY_REMOTE"}
        name = names.get(succ)
        prog = self.env.get(name) if name else None
        if not prog:
            return 0
        env = dict(self.env)
        for other in names.values():
            if other != name:
                env.pop(other, None)
        env["SMTPSTATUS"] = status
        text = getattr(self, "smtpenv", b"") or bytes(self.text)
        if text:
            env["SMTPTEXT"] = text.rstrip(b"\n").decode("utf-8", "replace").replace("\0", "?")
        env["SMTPCODE"] = str(self.code if self.code >= 0 else 0)
        if self.partner:
            env["SMTPHOST"] = self.partner.ip
        try:
            res = subprocess.run(
                [self.argv[0], *self.argv[1:]], executable=prog, env=env, stdin=subprocess.DEVNULL
            )
        except OSError as exc:
            sys.stderr.write(f"alert: Unable to run: {prog}: {exc.strerror}\n")
            return 1
        if res.returncode < 0:
            sys.stderr.write(f"alert: {prog}: crashed\n")
            return 1
        return res.returncode

    # -- fixed failure texts --------------------------------------------------

    def temp_control(self, what: str = "Unable to read control file") -> None:
        self.die_text(f"Z{what}. (#4.3.0)\n")

    def perm_dns(self, host: str) -> None:
        self.out("DSorry, I couldn't find any host named ")
        self.out(safe(host.encode("utf-8", "surrogateescape")))
        self.smtpenv = f"Sorry, I couldn't find any host named {host}. (#5.1.2)".encode(
            "utf-8", "surrogateescape"
        )
        self.out(". (#5.1.2)\n")
        self.zerodie("D", 0)

    def dropped(self) -> None:
        self.out("ZConnected to ")
        self.outhost()
        self.out(" but connection died. ")
        if self.flagcritical:
            self.out("Possible duplicate! ")
        elif self.inside_greeting:
            self.out("Will try alternate MX. ")
            if self.flagtcpto:
                self.out(f"tcpto interval {self.max_tolerance} ")
                if self.tcpto and self.partner:
                    self.tcpto.record(self.partner.ip, True, self.max_tolerance)
        if self.conn is not None and self.conn.ssl_err:
            self.out(f"{self.conn.ssl_err} ")
        self.out("(#4.4.2)\n")
        self.zerodie("Z", -1)

    def overlong(self) -> None:
        self.quit(-1, -1, "ZConnected to ", " but the server sent an overlong reply")

    def tls_quit(self, *parts: str, with_text: bool = False) -> None:
        if self.conn is not None:
            try:
                self.conn.send(b"QUIT\r\n")
            except _Dropped:
                pass
        self.out("Z")
        for p in parts:
            self.out(p)
        self.out("; connected to " if self.conn and self.conn.tls else "; connecting to ")
        self.outhost()
        self.out(".\n")
        if with_text:
            self.outsmtptext()
        self.zerodie("Z", -1)

    # -- SMTP ----------------------------------------------------------------------

    def smtpcode(self) -> int:
        """Read one reply; 400 if it is not a well-formed reply (the original)."""
        assert self.conn is not None
        self.text = bytearray()
        err = False
        code = 0
        lines = 0
        while True:
            line = self.conn.readline()
            lines += 1
            if lines > MAX_REPLY_LINES:
                raise _Overlong()
            stored = line.replace(b"\r", b"")
            room = HUGESMTPTEXT - len(self.text)
            if room > 0:
                self.text += stored[:room]
            if lines == 1:
                digits = b""
                for ch in line[:3]:
                    if 48 <= ch <= 57:
                        digits += bytes([ch])
                    else:
                        break
                code = int(digits) if digits else 0
                if code < 200:
                    err = True
            sep = line[3:4]
            if sep not in (b" ", b"-"):
                err = True
            if sep != b"-":
                break
        self.code = 400 if err else code
        return self.code

    def ehlo(self, helohost: bytes) -> int:
        assert self.conn is not None
        self.ehlokw = {}
        self.auth_mechs = set()
        self.conn.send(b"EHLO " + helohost + b"\r\n")
        code = self.smtpcode()
        if code != 250:
            return code
        lines = bytes(self.text).split(b"\n")[1:]
        for raw in lines:
            if len(raw) < 5:
                continue
            body = raw[4:].decode("ascii", "replace").replace("\t", " ")
            words = body.split()
            if not words:
                continue
            kw, _, eqparam = words[0].partition("=")
            kw = kw.upper()
            params = ([eqparam] if eqparam else []) + words[1:]
            self.ehlokw[kw] = " ".join(params)
            if kw == "AUTH":
                self.auth_mechs.update(p.upper() for p in params)
        return 250

    # -- TLS -------------------------------------------------------------------------

    def certdir(self) -> Path:
        if self.env.get("CERTDIR"):
            return Path(self.env["CERTDIR"])
        return _paths.get().certdir

    def do_tls(self, fqdn: str | None) -> int:
        """0: go on without TLS; 1: TLS is up; raises _RetryPlain or ends."""
        assert self.conn is not None
        certdir = self.certdir()
        clientcert = certdir / (self.env.get("CLIENTCERT") or "clientcert.pem")
        have_client = clientcert.exists()
        if not have_client and not self.smtps:
            return 0
        servercert: Path | None = None
        if fqdn:
            candidate = certdir / "tlshosts" / f"{fqdn}.pem"
            if candidate.exists():
                servercert = candidate
            else:
                if (certdir / "notlshosts" / fqdn).exists():
                    return 0
                if self.host and (certdir / "notlshosts" / self.host).exists():
                    return 0
                if (certdir / "tlshosts" / "exhaustivelist").exists():
                    return 0
        need = servercert is not None
        if not self.smtps and "STARTTLS" not in self.ehlokw:
            if not need:
                return 0
            self.tls_quit("No TLS achieved while ", str(servercert), " exists")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        if need:
            try:
                ctx.load_verify_locations(cafile=str(servercert))
            except (ssl.SSLError, OSError) as exc:
                self.tls_quit("TLS unable to load ", str(servercert), ": ", _ssl_reason(exc))
            ctx.verify_mode = ssl.CERT_REQUIRED
        else:
            ctx.verify_mode = ssl.CERT_NONE
        if have_client:
            try:
                ctx.load_cert_chain(str(clientcert))
            except (ssl.SSLError, OSError):
                pass  # "let the other side complain if it needs a cert"
        ciphers = self.env.get("TLS_CIPHER_LIST")
        if not ciphers:
            try:
                items = _control.read_list("clientcipherlist", controldir=self.controldir)
            except _control.ControlError:
                self.temp_control()
            if items:
                ciphers = ":".join(items)
        if ciphers:
            try:
                ctx.set_ciphers(ciphers)
            except ssl.SSLError as exc:
                self.tls_quit("TLS error setting cipherlist: ", _ssl_reason(exc))
        if not self.smtps:
            self.conn.send(b"STARTTLS\r\n")
            if self.smtpcode() != 220:
                if not need:
                    return 0
                self.tls_quit(
                    "STARTTLS rejected while ", str(servercert), " exists", with_text=True
                )
            self.conn.buf.clear()  # nothing sent in clear may survive into TLS
        raw = self.conn.sock
        try:
            raw.settimeout(self.timeoutconn)
            sni = fqdn if fqdn and _dns.ip_literal(fqdn) is None else None
            tsock = ctx.wrap_socket(raw, server_hostname=sni, do_handshake_on_connect=False)
            tsock.do_handshake()
        except ssl.SSLCertVerificationError as exc:
            self.tls_quit(
                "TLS unable to verify server with ",
                str(servercert),
                ": ",
                exc.verify_message or _ssl_reason(exc),
            )
        except (ssl.SSLError, OSError) as exc:
            if not self.smtps and not need:
                raise _RetryPlain() from None
            self.tls_quit("TLS connect failed: ", _ssl_reason(exc))
        self.conn.sock = tsock
        self.conn.tls = True
        if self.smtps:
            code = self.smtpcode()
            if code != 220:
                self.quit(code, 1, "ZTLS Connected to ", " but greeting failed")
        if need and fqdn:
            self.check_peer_name(tsock, fqdn)
        return 1

    def check_peer_name(self, tsock: ssl.SSLSocket, fqdn: str) -> None:
        cert = tsock.getpeercert() or {}
        for kind, value in cert.get("subjectAltName", ()):
            if kind == "DNS" and match_partner(value, fqdn):
                return
        cn = ""
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    cn = value
                    break
            if cn:
                break
        if not cn:
            self.tls_quit(
                "TLS unable to verify server ", fqdn, ": certificate contains no valid commonName"
            )
        if not match_partner(cn, fqdn):
            self.tls_quit(
                "TLS unable to verify server ",
                fqdn,
                ": received certificate for ",
                safe(cn.encode()).decode(),
            )

    # -- AUTH --------------------------------------------------------------------------

    def auth_err(self, code: int, mech: str) -> None:
        s = f"(AUTH {mech})"
        table = {
            432: ("Z", f" but a password transition is needed {s} (#4.7.12)"),
            454: ("Z", f" but got temporary authentication failure {s} (#4.7.0)"),
            500: ("D", f" but authentication Exchange line is too long {s} (#5.5.6)"),
            530: ("D", f" but authentication required {s} (#5.7.0)"),
            534: ("D", f" but authentication mechanism is too weak {s} (#5.7.9)"),
            535: ("D", f" but authentication credentials invalid {s} (#5.7.8)"),
            538: (
                "D",
                f" but encryption required for requested authentication mechanism {s} (#5.7.11)",
            ),
        }
        status, text = table.get(code, ("Z", f" but authentication was rejected {s} (#4.7.0)"))
        self.quit(code, 1, f"{status}Connected to ", text)

    def smtp_auth(self, wanted: str) -> bool:
        """Authenticate; False when no usable mechanism (go on without)."""
        assert self.conn is not None
        secure = bool(self.env.get("SECURE_AUTH")) and not self.conn.tls
        disabled = {
            "LOGIN": secure or bool(self.env.get("DISABLE_AUTH_LOGIN")),
            "PLAIN": secure or bool(self.env.get("DISABLE_AUTH_PLAIN")),
            "CRAM-MD5": bool(self.env.get("DISABLE_CRAM_MD5")),
            "CRAM-SHA1": bool(self.env.get("DISABLE_CRAM_SHA1")),
            "CRAM-SHA224": bool(self.env.get("DISABLE_CRAM_SHA224")),
            "CRAM-SHA256": bool(self.env.get("DISABLE_CRAM_SHA256")),
            "CRAM-SHA384": bool(self.env.get("DISABLE_CRAM_SHA384")),
            "CRAM-SHA512": bool(self.env.get("DISABLE_CRAM_SHA512")),
        }
        order = [
            "CRAM-SHA512",
            "CRAM-SHA384",
            "CRAM-SHA256",
            "CRAM-SHA224",
            "CRAM-SHA1",
            "CRAM-MD5",
            "PLAIN",
            "LOGIN",
        ]
        mech = None
        if wanted:
            w = wanted.upper()
            if w in self.auth_mechs and w in disabled:
                mech = w
        else:
            for m in order:
                if m in self.auth_mechs and not disabled[m]:
                    mech = m
                    break
        if mech is None:
            sys.stderr.write("no supported AUTH method found, continuing without authentication.\n")
            return False
        if mech == "PLAIN":
            self.conn.send(b"AUTH PLAIN\r\n")
            code = self.smtpcode()
            if code != 334:
                self.quit(
                    code, 1, "ZConnected to ", " but authentication was rejected (AUTH PLAIN)"
                )
            token = b"\0" + self.user + b"\0" + self.password
            self.conn.send(base64.b64encode(token) + b"\r\n")
        elif mech == "LOGIN":
            self.conn.send(b"AUTH LOGIN\r\n")
            code = self.smtpcode()
            if code != 334:
                self.quit(
                    code, 1, "ZConnected to ", " but authentication was rejected (AUTH LOGIN)"
                )
            self.conn.send(base64.b64encode(self.user) + b"\r\n")
            code = self.smtpcode()
            if code != 334:
                self.quit(code, 1, "ZConnected to ", " but authentication was rejected (username)")
            self.conn.send(base64.b64encode(self.password) + b"\r\n")
        else:
            digest = {
                "CRAM-MD5": hashlib.md5,
                "CRAM-SHA1": hashlib.sha1,
                "CRAM-SHA224": hashlib.sha224,
                "CRAM-SHA256": hashlib.sha256,
                "CRAM-SHA384": hashlib.sha384,
                "CRAM-SHA512": hashlib.sha512,
            }[mech]
            self.conn.send(f"AUTH {mech}\r\n".encode())
            code = self.smtpcode()
            if code != 334:
                self.quit(
                    code, 1, "ZConnected to ", f" but authentication was rejected (AUTH {mech})"
                )
            first = bytes(self.text).split(b"\n", 1)[0]
            try:
                chal = base64.b64decode(first[4:].strip(), validate=True)
            except ValueError:
                self.quit(-1, -1, "ZConnected to ", " but unable to base64decode challenge")
            if not chal:
                self.quit(-1, 1, "ZConnected to ", " but got no challenge")
            mac = hmac.new(self.password, chal, digest).hexdigest().encode()
            self.conn.send(base64.b64encode(self.user + b" " + mac) + b"\r\n")
        code = self.smtpcode()
        if code != 235:
            self.auth_err(code, mech)
        return True

    # -- the dialogue ----------------------------------------------------------------------

    def do_smtp(self, fqdn: str | None) -> None:
        """Talk to the connected server; returns only to try the next MX."""
        self.open_session(fqdn)
        self.transaction()

    def open_session(self, fqdn: str | None) -> None:
        """Greeting, EHLO (or HELO), STARTTLS and AUTH: up to the first MAIL."""
        assert self.conn is not None
        helohost = self.helohost.encode("utf-8", "surrogateescape")
        self.inside_greeting = True
        code = 220 if self.smtps else self.smtpcode()
        self.inside_greeting = False
        if 500 <= code < 600:
            self.quit(code, 1, "DConnected to ", " but greeting failed")
        elif 400 <= code < 500:
            raise _NextMX()
        elif code != 220:
            self.quit(code, 1, "ZConnected to ", " but greeting failed")
        if self.smtps:
            self.do_tls(fqdn)
            code = self.ehlo(helohost)
        else:
            code = self.ehlo(helohost)
            if not self.notls and self.do_tls(fqdn) == 1:
                code = self.ehlo(helohost)
        esmtp = True
        if self.use_auth is None and code >= 500:
            esmtp = False
            self.ehlokw = {}
            self.conn.send(b"HELO " + helohost + b"\r\n")
            code = self.smtpcode()
        if self.env.get("TRY_NEXT_MX_HELO_FAIL") and 400 <= code < 500:
            raise _NextMX()
        if code != 250:
            self.quit(
                code,
                1,
                "DConnected to " if code >= 500 else "ZConnected to ",
                f" but my name -->{self.helohost}<-- was rejected :(",
            )
        if not esmtp:
            self.ehlokw = {}
        self.authed = False
        if self.use_auth is not None and "AUTH" in self.ehlokw and self.user and self.password:
            self.authed = self.smtp_auth(self.use_auth)

    def transaction(self) -> None:
        """MAIL, RCPT, DATA and the message, on a session ready for them."""
        assert self.conn is not None
        kw = self.ehlokw
        use_size = "SIZE" in kw
        pipelining = "PIPELINING" in kw
        smtputf8 = "SMTPUTF8" in kw
        eightbit = "8BITMIME" in kw

        sender = self.sender
        recips = list(self.recips)
        flagutf8 = not sender.isascii() or any(not r.isascii() for r in recips)
        header_utf8 = bool(self.env.get("SMTPUTF8")) and _has_utf8_received(self.msg)
        if (flagutf8 or header_utf8) and not smtputf8:
            converted = [self._ascii_addr(a) for a in [sender, *recips]]
            if header_utf8 or any(c is None for c in converted):
                self.quit(
                    553,
                    1,
                    "DConnected to ",
                    " but server does not support unicode in email addresses",
                )
            sender, *recips = converted  # type: ignore[assignment]
            flagutf8 = False
        self.smtp_sender = sender
        self.smtp_recips = recips

        authed = self.authed
        mail = b"MAIL FROM:<" + sender + b">"
        if use_size:
            mail += b" SIZE=" + self.size.encode("ascii", "replace")
        if authed:
            mail += b" AUTH=<" + xtext(self.user) + b">"
        if eightbit and self.has_8bit():
            mail += b" BODY=8BITMIME"
        if smtputf8 and (flagutf8 or header_utf8):
            mail += b" SMTPUTF8"
        mail += b"\r\n"
        rcpts = [b"RCPT TO:<" + r + b">\r\n" for r in recips]
        try:
            if pipelining:
                self.conn.send(mail + b"".join(rcpts))
            else:
                self.conn.send(mail)
            code = self.smtpcode()
        except (_Dropped, _Overlong):
            if self.reused:
                raise _Stale() from None
            raise
        if self.reused and code == 421:  # it is closing: nothing reported yet
            raise _Stale()
        self.reused = False  # from here on a kept connection is like a new one
        if code >= 500:
            self.quit(code, 1, "DConnected to ", " but sender was rejected")
        if code >= 400:
            self.quit(code, 1, "ZConnected to ", " but sender was rejected")
        flagbother = False
        for r, line in zip(recips, rcpts, strict=True):
            if not pipelining:
                self.conn.send(line)
            code = self.smtpcode()
            if code >= 400:
                self.out("h" if code >= 500 else "s")
                self.out(b"From: <" + safe(sender) + b"> RCPT: <" + safe(r) + b"> ")
                self.outhost()
                self.out(" does not like recipient.\n")
                self.outsmtptext()
                self.zero()
            else:
                self.out(b"rFrom: <" + safe(sender) + b"> RCPT: <" + safe(r) + b"> ")
                self.zero()
                flagbother = True
        if not flagbother:
            self.quit(code, 1, "DGiving up on ", "")
        self.conn.send(b"DATA\r\n")
        code = self.smtpcode()
        if code >= 500:
            self.quit(code, 1, "D", " failed on DATA command")
        if code >= 400:
            self.quit(code, 1, "Z", " failed on DATA command")
        self.blast()
        code = self.smtpcode()
        self.flagcritical = False
        if code >= 500:
            self.quit(code, 1, "D", " failed after I sent the message")
        if code >= 400:
            self.quit(code, 1, "Z", " failed after I sent the message")
        proto = (
            " accepted message - Protocol SMTPS"
            if self.conn.tls
            else " accepted message - Protocol SMTP"
        )
        self.quit(code, 0, "K", proto, keep=code == 250)

    def _ascii_addr(self, addr: bytes) -> bytes | None:
        """``addr`` with an A-label domain; None if the local part is not ASCII."""
        at = addr.rfind(b"@")
        local, domain = (addr[:at], addr[at + 1 :]) if at >= 0 else (addr, b"")
        if not local.isascii():
            return None
        if domain.isascii():
            return addr
        try:
            ace = _dns.to_ascii(domain.decode("utf-8"))
        except (_dns.DnsHard, UnicodeDecodeError):
            return None
        return local + b"@" + ace.encode("ascii")

    def has_8bit(self) -> bool:
        msg = self.msg
        if isinstance(msg, bytes):
            return not msg.isascii()
        return any(not msg[pos : pos + CHUNK].isascii() for pos in range(0, len(msg), CHUNK))

    def blast(self) -> None:
        assert self.conn is not None
        msg = self.msg
        n = len(msg)
        if n and msg[n - 1 : n] != b"\n":
            # the original finds this while sending and drops the connection
            self.conn.close()
            self.conn = None
            self.die_text("DSMTP cannot transfer messages with partial final lines. (#5.6.2)\n", 0)
        # One write per chunk, the qqeh with the first and the final dot
        # with the last: a small write after another waits, with Nagle's
        # algorithm, for the server's delayed ACK (~40 ms per message).
        head = self.qqeh.replace(b"\n", b"\r\n") if self.qqeh else b""
        pos = 0
        while True:
            end = min(pos + CHUNK, n)
            nl = msg.find(b"\n", end - 1) if end > pos else -1
            end = n if nl < 0 else nl + 1
            chunk = bytes(msg[pos:end])
            if chunk.startswith(b"."):
                chunk = b"." + chunk
            data = head + chunk.replace(b"\n.", b"\n..").replace(b"\n", b"\r\n")
            head = b""
            pos = end
            if pos >= n:
                self.flagcritical = True
                self.conn.send(data + b".\r\n")
                break
            self.conn.send(data)

    # -- main flow ---------------------------------------------------------------------------

    def read_message(self) -> None:
        fd = self.msgfd
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                offset = os.lseek(fd, 0, os.SEEK_CUR)
                if st.st_size - offset <= 0:
                    self.msg = b""
                    return
                mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
                self.msg = mm if offset == 0 else mm[offset:]
                return
            chunks = []
            while True:
                data = os.read(fd, CHUNK)
                if not data:
                    break
                chunks.append(data)
            self.msg = b"".join(chunks)
        except (OSError, ValueError):
            self.die_text("ZUnable to read message. (#4.3.0)\n")

    def read_controls(self) -> None:
        self.controldir = Path(self.env["CONTROLDIR"]) if self.env.get("CONTROLDIR") else None
        cd = self.controldir
        try:
            self.timeoutdata = _control.read_int("timeoutremote", 1200, controldir=cd)
            self.timeoutconn = _control.read_int("timeoutconnect", 60, controldir=cd)
            helo = _control.read_line("helohost", controldir=cd)
            if not helo:
                helo = _control.me(cd)
            self.helohost = helo
            outgoing = self.env.get("OUTGOINGIP") or ""
            if not outgoing:
                for name in (f"outgoingip.{self.host}", "outgoingip"):
                    items = _control.read_list(name, controldir=cd)
                    if items:
                        outgoing = items[int(time.time()) % len(items)]
                        break
            self.outgoingip = outgoing or "::"
            self.outip: str | None = None
            if outgoing and outgoing not in ("::", "0.0.0.0"):
                lit = _dns.ip_literal(outgoing)
                if lit is None:
                    where = cd or _paths.get().controldir
                    self.die_text(f"Zinvalid ipaddr in {where}/outgoingip (#4.3.0)\n")
                self.outip = lit
            self.domain_bindings(cd)
            helohosts = _routes.build_map(
                _control.read_list(self.env.get("HELOHOSTBYIP") or "helohostbyip", controldir=cd)
                or []
            )
            by_ip = helohosts.get(self.outgoingip.lower())
            if by_ip:
                self.helohost = by_ip
            notls = _control.read_list(self.env.get("NOTLSHOSTS") or "notlshosts", controldir=cd)
            if notls and self.host.lower() in {h.lower() for h in notls}:
                self.notls = True
            self.moreipme = _control.read_list("moreipme", controldir=cd) or []
            self.notipme = _control.read_list("notipme", controldir=cd) or []
        except _control.ControlError:
            self.temp_control()

    def domain_bindings(self, cd: Path | None) -> None:
        """control/domainbindings: ``sender-address|domain:local-ip``."""
        table = _routes.build_map(
            _control.read_list(self.env.get("DOMAINBINDINGS") or "domainbindings", controldir=cd)
            or []
        )
        if not table or not self.sender_raw:
            return
        sender = self.sender_raw.decode("utf-8", "surrogateescape").lower()
        ip = table.get(sender) or None
        domain = sender.rpartition("@")[2]
        if ip is None:
            for i in range(len(domain) + 1):
                if i == 0 or i == len(domain) or domain[i] == ".":
                    ip = table.get(domain[i:])
                    if ip is not None:
                        break
        if not ip:
            return
        lit = _dns.ip_literal(ip)
        if lit is None:
            where = cd or _paths.get().controldir
            self.die_text(f"Zinvalid ipaddr in {where}/outgoingip (#4.3.0)\n")
        self.outgoingip = ip
        self.outip = lit
        self.helohost = self.sender_raw.decode("utf-8", "surrogateescape").rpartition("@")[2]

    def get_route(self) -> _routes.Route | None:
        cd = self.controldir
        routes_env = self.env.get("SMTPROUTE") or self.env.get("X-SMTPROUTES")
        try:
            if routes_env:
                lines = [x for x in routes_env.replace("\0", "\n").split("\n") if x]
                table = _routes.build_map(lines)
            else:
                # parsed once per version of the file (a worker delivers many)
                table = (
                    _control.read_list_as(
                        self.env.get("SMTPROUTESFILE") or "smtproutes",
                        "smtproutes",
                        _routes.build_map,
                        controldir=cd,
                    )
                    or {}
                )
        except _control.ControlError:
            self.temp_control()
        extra = self.more_routes(cd) if not routes_env else None
        route = None
        if extra is not None and self.recips_raw:
            value = extra.get(self.recips_raw[0].decode("utf-8", "surrogateescape").lower())
            if value:
                route = _routes.parse_value(value)
        if route is None:
            route = _routes.lookup(table, self.host, not self.sender_raw, extra)
        return route

    def more_routes(self, cd: Path | None) -> Mapping[str, str] | None:
        """moresmtproutes.cdb as a lazy mapping, or None."""
        name = self.env.get("MORESMTPROUTESCDB") or "moresmtproutes.cdb"
        if not _control.exists(name, controldir=cd):
            return None
        try:
            from indimail.core import cdb

            reader = cdb.Reader(_control.control_path(name, cd))
        except Exception:
            self.temp_control()

        class _CdbMap(Mapping[str, str]):
            def __getitem__(self, key: str) -> str:
                v = reader.get(key.lower().encode("utf-8", "surrogateescape"))
                if v is None:
                    raise KeyError(key)
                return v.decode("utf-8", "surrogateescape").rstrip("\0")

            def __iter__(self):  # pragma: no cover - not needed
                return iter(())

            def __len__(self) -> int:  # pragma: no cover
                return 0

        return _CdbMap()

    def main(self) -> None:
        argv = self.argv
        if len(argv) < 6:
            self.die_text("DI (qmail-remote) was invoked improperly. (#5.3.5)\n", 0)
        self.host = argv[1]
        self.sender_raw = argv[2].encode("utf-8", "surrogateescape")
        self.sender = addrmangle(self.sender_raw)
        self.qqeh = argv[3].encode("utf-8", "surrogateescape")
        self.size = argv[4]
        self.recips_raw = [a.encode("utf-8", "surrogateescape") for a in argv[5:]]
        self.recips = [addrmangle(r) for r in self.recips_raw]
        self.read_controls()
        if self.env.get("SMTPS"):
            self.smtps = True
        self.use_auth = self.env.get("AUTH_SMTP")
        for var, attr in (("MIN_PENALTY", "min_penalty"), ("MAX_TOLERANCE", "max_tolerance")):
            if self.env.get(var):
                try:
                    setattr(self, attr, int(self.env[var]))
                except ValueError:
                    pass
        route = self.get_route()
        relay: str | None = None
        if route is not None:
            self.port = route.port
            if route.penalty is not None:
                self.min_penalty = route.penalty
                if route.penalty == 0:
                    self.flagtcpto = False
            if route.tolerance is not None:
                self.max_tolerance = route.tolerance
            if route.port == 465:
                self.smtps = True
            if self.use_auth is not None and not (route.user and route.password):
                self.use_auth = None
            if self.use_auth is not None and route.user and route.password:
                self.user = route.user.encode("utf-8", "surrogateescape")
                self.password = route.password.encode("utf-8", "surrogateescape")
                if route.envstr:
                    for k, v in _routes.parse_envstr(route.envstr).items():
                        if v is None:
                            self.env.pop(k, None)
                        else:
                            self.env[k] = v
            if route.relay:
                relay = route.relay
                self.host = relay
        if relay is None:
            self.use_auth = None
        self.tcpto = _tcpto.Table(_tcpto.default_path(self.env))
        self.read_message()
        try:
            literal = _dns.ip_literal(relay) if relay is not None else None
            if literal is not None:  # smtproutes names an address: nothing to look up
                ips = [_dns.MxIp(0, literal, literal)]
            elif relay is not None:
                ips = _dns.host_ips(relay, _dns.make_resolver(self.env))
            else:
                rnd = int(time.time()) + (os.getpid() << 16)
                ips = _dns.mx_ips(self.host, _dns.make_resolver(self.env), rnd)
        except _dns.DnsSoft:
            self.die_text("ZSorry, I couldn't find any host by that name. (#4.1.2)\n")
        except _dns.DnsHard:
            self.perm_dns(self.host)
        if not ips:
            self.die_text("DSorry, I couldn't find a mail exchanger or IP address. (#5.4.4)\n", 0)
        prefme = 100000
        if relay is not None:
            prefme = 300000
        else:
            me = _dns.ipme(self.moreipme, self.notipme)
            for ix in ips:
                if ix.ip in me and ix.pref < prefme:
                    prefme = ix.pref
        candidates = [ix for ix in ips if ix.pref < prefme]
        if not candidates:
            where = self.controldir or _paths.get().controldir
            self.die_text(
                "DSorry. Although I'm listed as a best-preference MX or A for that host,\n"
                f"it isn't in my {where}/locals file, so I don't treat it as local. (#5.4.6)\n",
                0,
            )
        self.connect_loop(candidates)

    def connect(self, ix: _dns.MxIp) -> socket.socket:
        fam = ix.family
        s = socket.socket(fam, socket.SOCK_STREAM)
        try:
            if self.outip and (":" in self.outip) == (fam == socket.AF_INET6):
                s.bind((self.outip, 0))
            s.settimeout(self.timeoutconn)
            s.connect((ix.ip, self.port))
        except BaseException:
            s.close()
            raise
        return s

    def reuse(self, ix: _dns.MxIp) -> None:
        """Deliver on the connection kept for ``ix``, which ends the run;
        returns when there is none, or it died before its first answer
        (nothing was reported then: a new connection takes over)."""
        self.key = self.kept = None
        if self.cache is None or self.use_auth is not None:
            return
        # what the session was set up with: route, address, name, TLS choices
        tls_env = map(self.env.get, ("CERTDIR", "CLIENTCERT", "TLS_CIPHER_LIST"))
        tls = (self.smtps, self.notls, *tls_env)
        self.key = (self.host, ix.ip, self.port, self.outip, self.helohost, tls)
        kept = self.cache.take(self.key)
        if kept is None:
            return
        self.partner = ix
        self.conn = kept.conn
        self.conn.timeout = self.timeoutdata
        self.ehlokw = kept.ehlokw
        self.kept = kept
        self.reused = True
        try:
            self.transaction()
        except _Stale:
            self.conn.close()
            self.conn = self.kept = None
            self.reused = False
        except _Dropped:
            self.dropped()
        except _Overlong:
            self.overlong()

    def connect_loop(self, ips: list[_dns.MxIp]) -> None:
        tried: list[str] = []
        notls_orig = self.notls
        i = 0
        while i < len(ips):
            ix = ips[i]
            # a connection kept for ix is used first: it answered just now,
            # whatever the timeout table says of the address
            self.reuse(ix)  # returns only when a new connection is needed
            if self.flagtcpto and self.tcpto and self.tcpto.is_timed_out(ix.ip, self.min_penalty):
                i += 1
                continue
            tried.append(ix.ip)
            connected = False
            failed_errno = 0
            try:
                sock = self.connect(ix)
            except TimeoutError:
                failed_errno = errno.ETIMEDOUT
            except OSError as exc:
                failed_errno = exc.errno or errno.ECONNREFUSED
            else:
                connected = True
                if self.flagtcpto and self.tcpto:
                    self.tcpto.record(ix.ip, False, self.max_tolerance)
                self.partner = ix
                self.conn = Conn(sock, self.timeoutdata)
                self.born = time.monotonic()
                try:
                    self.do_smtp(ix.fqdn)
                except _RetryPlain:
                    self.conn.close()
                    self.conn = None
                    self.notls = True
                    continue  # same address again, without TLS
                except _NextMX:
                    pass
                except _Dropped:
                    if not (self.inside_greeting and i + 1 < len(ips)):
                        self.dropped()
                    # no greeting: RFC 5321 says try the next MX (the spec's
                    # "next MX on no greeting"); the last one gets the
                    # original's "Will try alternate MX" deferral
                    self.inside_greeting = False
                except _Overlong:
                    self.overlong()
            if self.flagtcpto and self.tcpto:
                errors = connected or failed_errno in (
                    errno.ETIMEDOUT,
                    errno.ECONNREFUSED,
                    errno.EHOSTDOWN,
                    errno.ENETUNREACH,
                    errno.EHOSTUNREACH,
                )
                self.tcpto.record(ix.ip, errors, self.max_tolerance)
            if self.conn is not None:
                self.conn.close()
                self.conn = None
            self.notls = notls_orig
            i += 1
        self.out("ZSorry, I wasn't able to establish a SMTP connection for ")
        self.out(self.host)
        if tried:
            self.out(f" to {','.join(tried)} port {self.port} bind IP [{self.outgoingip}]")
        self.out(". (#4.4.1)\n")
        if tried:
            self.partner = _dns.MxIp(0, tried[-1], None)
        self.zerodie("Z", -1)


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if reason:
        return str(reason)
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def run(
    argv: list[str],
    msgfd: int,
    out: BinaryIO,
    environ: Mapping[str, str] | None = None,
    cache: ConnCache | None = None,
) -> int:
    """Deliver; write the records to ``out``; return the exit status.
    ``cache``: a delivery worker's kept connection (see :class:`ConnCache`)."""
    r = Remote(argv, msgfd, out, os.environ if environ is None else environ, cache)
    r.exitcode = 0
    try:
        r.main()
    except _Done:
        pass
    except Exception as exc:  # a bug must still give qmail-send a clean answer
        r.obuf.clear()
        r.out(f"Zqmail-remote internal error: {type(exc).__name__}: {exc}. (#4.3.0)\n")
        r.zero()
        if r.conn is not None:
            r.conn.close()
        return 0
    finally:
        if r.conn is not None:  # a reused delivery worker must not keep it
            try:
                r.conn.close()
            except Exception:
                pass
        msg = r.msg
        if isinstance(msg, mmap.mmap):
            try:
                msg.close()
            except Exception:
                pass
    return r.exitcode


def main(argv: list[str]) -> int:
    """Command entry: message on fd 0, records on fd 1."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    try:
        return run(argv, 0, out)
    finally:
        out.close()
