"""qmail-smtpd: receive mail over SMTP/ESMTP (RFC 5321) and queue it.

``qmail-smtpd [-v] [hostname checkpw_prog ... false_prog]``

Runs under tcpserver: fds 0/1 are the network connection and the
environment (TCPREMOTEIP, RELAYCLIENT, ...) describes the peer.  The same
``main()`` works exec'd or called in-process in tcpserver's forked child;
tcpserver doing TLS itself (``-n``/``-s``) hands its TLS session over
through :mod:`indimail.ucspi.context` (this module declares
``UCSPI_TLS_AWARE``), and the session counts as TLS from the first byte.

Replies, log lines and the Received header follow the original
indimail-mta ``smtpd.c``; see ``docs/smtpd.md`` for what differs.
"""

from __future__ import annotations

import base64
import binascii
import os
import signal
import ssl
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from indimail import __version__
from indimail.core import control
from indimail.core import paths as _paths
from indimail.core.dates import date822fmt
from indimail.core.errors import Fatal
from indimail.core.spool import Spool
from indimail.smtpd import smtpd_io
from indimail.smtpd.recipients import Recipients, RecipientsTrouble
from indimail.smtpd.smtpd_checks import AddressList, ControlTrouble, RcptHosts, relayclient_for
from indimail.smtpd.smtpd_data import SPOOL_MEMORY, BareLF, DataSink

# tcpserver -n/-s may hand us its TLS session in-process (ucspi.context)
UCSPI_TLS_AWARE = True
# one tcpserver worker may run main() for many connections in turn
# (ucspi/pool.py): no state outside what the pool resets survives a session
UCSPI_POOL = True
# imported by tcpserver's listening process before the first accept
UCSPI_WARM = (
    "indimail.queue.submit",
    "indimail.queue.qmail_multi",
    "indimail.smtpd.smtpd_netstring",
    "indimail.auth.checkpassword",
    "fcntl",
)

SUBM_PORT = 587
ODMR_PORT = 366
MAXHOPS = 100
# maxcmdlen 0 means "no limit" in the original; network input is bounded here
DEFAULT_MAXCMDLEN = 4096
# hard cap on recipients per message when maxrecipients is 0 (unlimited)
HARD_MAXRCPT = 10000
MAX_ADDR = 900

R_TIMEOUT = "451 Sorry, I reached a timeout reading from client (#4.4.2)"
R_CONTROLS = "451 Sorry, I'm unable to read controls (#4.3.0)"
R_BADSEQ = "503 bad sequence of commands (#5.3.2)"
R_PARAMS = "501 invalid parameter syntax (#5.3.2)"
R_SYNTAX = "555 syntax error in address (#5.1.3)"
R_HELLO = "503 Polite people say hello first (#5.5.4)"
R_BARELF = "451 Sorry, I received Bare LF. (#4.6.0)"
R_DATABYTES = "552 sorry, that message size exceeds my databytes limit (#5.3.4)"
R_INTERNAL = "421 Sorry, there is a local system failure, closing connection (#4.3.0)"
R_RCPTCHECK = "451 unable to check recipients (#4.3.2)"
R_RCPT_ERRCOUNT = "421 too many invalid addresses, goodbye (#4.7.1)"
# PENALTY: seconds slept after an invalid recipient (the original's default)
DEFAULT_PENALTY = 5

AUTH_MECHS = (
    ("LOGIN", "DISABLE_AUTH_LOGIN"),
    ("PLAIN", "DISABLE_AUTH_PLAIN"),
    ("CRAM-MD5", "DISABLE_CRAM_MD5"),
    ("CRAM-SHA1", "DISABLE_CRAM_SHA1"),
    ("CRAM-SHA224", "DISABLE_CRAM_SHA224"),
    ("CRAM-SHA256", "DISABLE_CRAM_SHA256"),
    ("CRAM-SHA384", "DISABLE_CRAM_SHA384"),
    ("CRAM-SHA512", "DISABLE_CRAM_SHA512"),
    ("CRAM-RIPEMD", "DISABLE_CRAM_RIPEMD"),
)


class Exit(Exception):
    """End the session with this exit code (replies already written)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class AuthInputError(Exception):
    """Malformed or cancelled AUTH exchange (the 501 is already written)."""


_CTL_BYTES = bytes([*range(0x20), 0x7F])
_CONTROLS_TO_Q = {**{c: "?" for c in range(0x20)}, 0x7F: "?"}


def _printable(b: bytes) -> str:
    """Peer bytes echoed in a reply or log line: control characters become '?'."""
    return b.decode("utf-8", "replace").translate(_CONTROLS_TO_Q)


def _environ_copy() -> dict[str, str]:
    """dict(os.environ), without its per-item Mapping calls (~10x faster:
    this runs once per connection)."""
    data = getattr(os.environ, "_data", None)
    if type(data) is not dict:
        return dict(os.environ)
    enc = sys.getfilesystemencoding()
    return {
        k.decode(enc, "surrogateescape"): v.decode(enc, "surrogateescape") for k, v in data.items()
    }


class _EnvReads:
    """The environment as Session.controls() reads it, noting every name it
    asks for and what it found (None: unset), to tell later whether a
    session's environment would give the same settings."""

    __slots__ = ("env", "seen")

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.seen: dict[str, str | None] = {}

    def get(self, name: str) -> str | None:
        value = self.seen[name] = self.env.get(name)
        return value

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None


# Settings of earlier sessions (Session.controls): (environment reads,
# control file reads, the paths object, the attributes), newest first.
CONTROLS_MEMO_MAX = 8
_CONTROLS_MEMO: list[tuple[dict[str, str | None], dict, object, dict[str, object]]] = []


def parse_address(arg: bytes) -> bytes | None:
    """The original's addrparse(): the address in ``<...>`` (or after ':').

    Returns None on a syntax error (nothing usable, too long, or bytes that
    cannot travel in an envelope).
    """
    i = arg.find(b"<")
    if i >= 0:
        rest = arg[i + 1 :]
        term = ord(">")
    else:
        term = ord(" ")
        j = arg.find(b":")
        rest = arg[j + 1 :] if j >= 0 else b""
        if not rest:
            return None
        rest = rest.lstrip(b" ")
    if rest.startswith(b"@"):  # source route
        j = rest.find(b":")
        rest = rest[j + 1 :] if j >= 0 else b""
    if b"\\" not in rest and b'"' not in rest:  # nothing to unquote: up to the end mark
        j = rest.find(term)
        out = rest if j < 0 else rest[:j]
        if len(out) > MAX_ADDR or len(out.translate(None, _CTL_BYTES)) != len(out):
            return None
        return out
    out = bytearray()
    esc = quoted = False
    for ch in rest:
        if esc:
            out.append(ch)
            esc = False
            continue
        if not quoted and ch == term:
            break
        if ch == 0x5C:  # backslash
            esc = True
        elif ch == 0x22:  # double quote
            quoted = not quoted
        else:
            out.append(ch)
    if len(out) > MAX_ADDR:
        return None
    if any(c < 0x20 or c == 0x7F for c in out):
        return None
    return bytes(out)


def _leading_int(v: str) -> int:
    """The original's scan_int: optional sign and leading digits, else 0."""
    v = v.strip()
    sign = -1 if v.startswith("-") else 1
    digits = ""
    for c in v.lstrip("+-"):
        if not c.isdecimal():
            break
        digits += c
    return sign * int(digits) if digits else 0


def _has_relay_chars(addr: bytes) -> bool:
    """The original's addrrelay(): '@', '%' or '!' in the local part."""
    j = addr.rfind(b"@")
    local = addr if j < 0 else addr[:j]
    return any(c in b"@%!" for c in local)


class Session:
    """One SMTP conversation."""

    def __init__(
        self,
        argv: list[str],
        environ: Mapping[str, str] | None = None,
        conn: smtpd_io.Conn | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        args = argv[1:]
        if args and args[0] == "-v":
            args = args[1:]
        self.hostname = args[0] if len(args) >= 2 else ""
        self.childargs = args[1:] if len(args) >= 2 else []
        self.env: dict[str, str] = _environ_copy() if environ is None else dict(environ)
        self.conn = conn
        self._log = log
        self.pid = os.getpid()
        self.tls = False
        # transaction state
        self.seenhelo = False
        self.seenmail = False
        self.helohost = b""
        self.fakehelo: bytes | None = None
        self.mailfrom = b""
        self.rcptto: list[bytes] = []
        self.flagsize = False
        self.msg_size = 0
        self.smtputf8 = False
        self.proto = ""
        self.authd = 0
        self.authmethod = ""
        self.remoteinfo: str | None = None
        self.setup_state = 0
        self.rcpt_errcount = 0
        self.max_rcpt_errcount = -1

    # ----------------------------------------------------------- output/log
    def out(self, *parts: str | bytes) -> None:
        for p in parts:
            self.output.write(p if isinstance(p, bytes) else p.encode("utf-8", "surrogateescape"))

    def reply(self, text: str) -> None:
        self.out(text, "\r\n")

    def log(self, msg: str, prefix: bool = True) -> None:
        line = f"qmail-smtpd: pid {self.pid} from {self.remoteip} {msg}" if prefix else msg
        line = line.replace("\n", "?").replace("\r", "?") + "\n"
        if self._log is not None:
            self._log(line)
            return
        try:
            os.write(2, line.encode("utf-8", "replace"))
        except OSError:
            pass

    def respond(self, code: str, tail: str = "") -> None:
        """code + greeting (multi-line smtpgreeting: code- lines) + tail."""
        lines = self.greeting_lines or [self.localhost]
        extra = ""
        if code.startswith("220") and "DISABLE_EXTRA_GREET" not in self.env:
            extra = f" (NO UCE) ESMTP IndiMail {__version__} {date822fmt()}"
        for n, line in enumerate(lines[:-1]):
            self.out(f"{code[:3]}-{line}{extra if n == 0 else ''}\r\n")
        last = lines[-1]
        self.out(f"{code[:3]} {last}{extra if len(lines) == 1 else ''}{tail}")

    # ---------------------------------------------------------------- setup
    # What controls() sets: from control files and the environment.
    CONTROL_ATTRS = (
        "controldir", "certdir", "greeting_lines", "liphost", "timeout", "maxhops",
        "maxcmdlen", "databytes", "maxrcpt", "tarpitcount", "tarpitdelay", "greetdelay",
        "moreipme", "rcpthosts", "bmf", "brt", "grt", "rmf", "dohelocheck", "badhelo",
        "checkrecipient", "chkrcpt", "recipients",
    )  # fmt: skip

    def controls(self) -> None:
        """The per-connection settings from control files and the environment.

        A pool worker reads the same ~20 files for every connection; the
        settings of an earlier session are reused while the environment
        variables they were read with are the same and
        ``control.unchanged`` finds every file they came from unchanged
        (one stat() per file present and one per directory of the absent
        ones), so an edit still counts from the next connection."""
        env = self.env
        p = _paths.get()
        for i, (seen, deps, paths_obj, values) in enumerate(_CONTROLS_MEMO):
            if (
                paths_obj is p
                and all(env.get(k) == v for k, v in seen.items())
                and control.unchanged(deps)
            ):
                self.__dict__.update(values)
                if i:
                    _CONTROLS_MEMO.insert(0, _CONTROLS_MEMO.pop(i))
                return
        e = _EnvReads(env)
        with control.reads() as deps:
            self._read_controls(e, p)
        if deps and not self.checkrecipient:  # recipients reads more than control files
            values = {name: self.__dict__[name] for name in self.CONTROL_ATTRS}
            _CONTROLS_MEMO.insert(0, (e.seen, deps, p, values))
            del _CONTROLS_MEMO[CONTROLS_MEMO_MAX:]

    def _read_controls(self, e: _EnvReads, p: _paths.Paths) -> None:
        v = e.get("CONTROLDIR")
        self.controldir: Path = Path(v) if v else p.controldir
        cd = self.controldir
        v = e.get("CERTDIR")
        self.certdir = Path(v) if v else p.certdir
        try:
            me = control.read_line("me", controldir=cd) or os.uname().nodename
            g = control.read_list("smtpgreeting", controldir=cd)
            self.greeting_lines = g if g else [me]
            self.liphost = control.read_line("localiphost", controldir=cd) or me
            self.timeout = control.read_int("timeoutsmtpd", 1200, controldir=cd)
            if self.timeout <= 0:
                self.timeout = 1
            self.maxhops = control.read_int("maxhops", MAXHOPS, controldir=cd)
            if self.maxhops <= 0:
                self.maxhops = MAXHOPS
            self.maxcmdlen = control.read_int("maxcmdlen", 0, controldir=cd)
            if self.maxcmdlen <= 0:
                self.maxcmdlen = DEFAULT_MAXCMDLEN
            self.databytes = self._env_or_int(e, "DATABYTES", "databytes", 0)
            self.maxrcpt = self._env_or_int(e, "MAXRECIPIENTS", "maxrecipients", 0)
            self.tarpitcount = self._env_or_int(e, "TARPITCOUNT", "tarpitcount", 0)
            self.tarpitdelay = self._env_or_int(e, "TARPITDELAY", "tarpitdelay", 5)
            self.greetdelay = self._env_or_int(e, "GREETDELAY", "greetdelay", 0)
            self.moreipme = control.read_list("moreipme", controldir=cd) or []
        except control.ControlError as exc:
            raise ControlTrouble(exc.message) from None
        self.rcpthosts = RcptHosts(cd)
        self.bmf = AddressList(
            e.get("BADMAILFROM") or "badmailfrom", cd, e.get("BADMAILPATTERNS") or "badmailpatterns"
        )
        self.brt = AddressList(
            e.get("BADRCPTTO") or "badrcptto", cd, e.get("BADRCPTPATTERNS") or "badrcptpatterns"
        )
        self.grt = AddressList(
            e.get("GOODRCPTTO") or "goodrcptto", cd, e.get("GOODRCPTPATTERNS") or "goodrcptpatterns"
        )
        self.rmf = AddressList("relaymailfrom", cd)
        self.dohelocheck = "BADHELOCHECK" in e or "BADHELO" in e
        self.badhelo = AddressList(e.get("BADHELO") or "badhelo", cd) if self.dohelocheck else None
        self.checkrecipient = "CHECKRECIPIENT" in e
        self.chkrcpt: AddressList | None = None
        self.recipients: Recipients | None = None
        if self.checkrecipient:
            self.chkrcpt = AddressList("chkrcptdomains", cd)
            sysconfdir = Path(e.get("SYSCONFDIR") or p.sysconfdir)
            try:
                self.recipients = Recipients(cd, sysconfdir, self.env)
            except RecipientsTrouble:
                raise ControlTrouble("recipients") from None

    def _env_or_int(self, e: _EnvReads, env: str, name: str, default: int) -> int:
        v = e.get(env)
        if v is not None:
            digits = v.strip().lstrip("-")
            num = ""
            for c in digits:
                if not c.isdecimal():
                    break
                num += c
            value = int(num) if num else 0
            return -value if v.strip().startswith("-") else value
        return control.read_int(name, default, controldir=self.controldir)

    def setup_env(self) -> None:
        e = self.env
        self.remoteip = e.get("TCP6REMOTEIP") or e.get("TCPREMOTEIP") or "unknown"
        self.localip = e.get("TCP6LOCALIP") or e.get("TCPLOCALIP") or "unknown"
        self.localhost = e.get("TCPLOCALHOST") or self.hostname or e.get("HOSTNAME") or ""
        if not self.localhost:
            self.localhost = os.uname().nodename or "unknown"
        self.remotehost = e.get("TCPREMOTEHOST") or "unknown"
        self.remoteinfo = e.get("TCPREMOTEINFO")
        self.relayclient: str | None = e.get("RELAYCLIENT")
        port = e.get("TCPLOCALPORT") or e.get("TCP6LOCALPORT")
        try:
            self.port = int(port) if port else -1
        except ValueError:
            self.port = -1
        self.hide_host = "HIDE_HOST" in e
        self.secure_auth = "SECURE_AUTH" in e
        self.tls_provider = e.get("TLS_PROVIDER")
        self.penalty = _leading_int(e["PENALTY"]) if "PENALTY" in e else DEFAULT_PENALTY

    def encrypted(self) -> bool:
        """TLS here, or done by tcpserver (TLS_PROVIDER: relayed session)."""
        return self.tls or self.tls_provider is not None

    # ------------------------------------------------------------- running
    def run(self) -> int:
        self.remoteip = self.env.get("TCPREMOTEIP") or "unknown"
        self.greeting_lines = []
        self.localhost = "unknown"
        self.timeout = 1200
        if self.conn is None:
            self.conn = smtpd_io.plain(self.timeout)
        if self.conn.tls_version:  # tcpserver already did the TLS handshake
            self.tls = True
        self.output = smtpd_io.Output(self.conn)
        self.input = smtpd_io.Input(self.conn, self.output.flush)
        try:
            try:
                self.setup_env()
                self.controls()
                if self.relayclient is None:
                    self.relayclient = relayclient_for(
                        self.remoteip, self.remotehost, self.controldir
                    )
                self.conn.timeout = self.timeout
                self.dohelo(self.remotehost.encode("utf-8", "surrogateescape"))
                if "SMTPS" in self.env and not self.tls:
                    self.do_tls(smtps=True)
                self.greet()
                self.loop()
            except ControlTrouble as exc:
                self.log(f"unable to read controls [{exc.name}]")
                self.reply(R_CONTROLS)
                raise Exit(1) from None
            except smtpd_io.ConnTimeout:
                self.log("timeout reached reading data from client")
                self.reply(R_TIMEOUT)
                raise Exit(1) from None
            except smtpd_io.LineTooLong:
                self.log("command too long")
                self.reply("553 sorry, the given command is too long! (#5.5.2)")
                raise Exit(1) from None
        except Exit as done:
            self._final_flush()
            return done.code
        except smtpd_io.ConnClosed as exc:
            self.log(f"read error: {exc.why}")
            return 1
        except Exception as exc:  # never a traceback to the peer
            if isinstance(exc, Fatal):  # a setting we cannot use: say which
                self.log(exc.message)
            else:
                self.log(f"internal error: {type(exc).__name__}: {exc}")
            try:
                self.output.buf.clear()
                self.reply(R_INTERNAL)
                self._final_flush()
            except Exception:
                pass
            return 1
        return 0

    def _final_flush(self) -> None:
        try:
            self.output.flush()
        except (smtpd_io.ConnClosed, smtpd_io.ConnTimeout):
            pass

    def greet(self) -> None:
        if self.greetdelay > 0:
            time.sleep(self.greetdelay)
        elif self.greetdelay < 0:
            self.early_talker(-self.greetdelay)
        e = self.env
        shutdown = e.get("SHUTDOWN")
        if shutdown is not None:
            if shutdown:
                if len(shutdown) >= 3 and shutdown[:3].isascii() and shutdown[:3].isdigit():
                    self.respond(shutdown[:4].ljust(4), shutdown[3:])
                else:
                    self.respond("421 ")
            else:
                self.respond("421 ", " SMTP service unavailable (#4.3.2)")
            self.setup_state = 1
        elif "OPENRELAY" in e:
            self.respond(
                "553 ",
                f" No mail accepted from an open relay ({self.remoteip}); "
                "check your server configs (#5.7.1)",
            )
            self.setup_state = 2
        elif "TCPPARANOID" in e:
            v = e["TCPPARANOID"]
            self.respond(
                "553 ",
                f" sorry, your IP address ({self.remoteip}) PTR (reverse DNS) record points "
                f"to wrong hostname{' ' + v if v else ''} (#5.7.1)",
            )
            self.setup_state = 3
        elif "REQPTR" in e and self.remotehost == "unknown":
            v = e["REQPTR"]
            if v:
                self.respond("553 ", f" {v}: from {self.remoteip}: (#5.7.1)")
            else:
                self.respond(
                    "553 ", f" Sorry, no PTR (reverse DNS) record for ({self.remoteip}) (#5.7.1)"
                )
            self.setup_state = 4
        else:
            self.respond("220 ")
        self.out("\r\n")
        self.output.flush()

    def early_talker(self, delay: int) -> None:
        try:
            self.conn.timeout = delay
            data = self.input.take()
        except smtpd_io.ConnTimeout:
            return
        finally:
            self.conn.timeout = self.timeout
        if data:
            self.log("SMTP Protocol violation - Early Talking")
            self.reply(
                "554 SMTP protocol violation. Polite people say hello after the server "
                "greets them (#5.7.1)"
            )
            raise Exit(1)

    def loop(self) -> None:
        table = self.submission_commands() if self.port == SUBM_PORT else self.smtp_commands()
        for _ in range(1 << 62):  # ends with QUIT, EOF, timeout or an error exit
            line = self.input.readline(self.maxcmdlen)
            if line.endswith(b"\r"):
                line = line[:-1]
            line = line.replace(b"\0", b"\n")  # as the original's commands()
            verb, _, arg = line.partition(b" ")
            arg = arg.lstrip(b" ")
            self.verb = verb
            fn = table.get(verb.lower())
            if fn is None:
                if verb[:1] in (b"x", b"X"):
                    self.reply(f"502 command {_printable(verb)} not implemented (#5.5.1)")
                else:
                    self.err_unimpl(arg)
                continue
            fn(arg)

    def smtp_commands(self) -> dict[bytes, Callable[[bytes], None]]:
        return {
            b"rcpt": self.smtp_rcpt,
            b"mail": self.smtp_mail,
            b"data": self.smtp_data,
            b"auth": self.smtp_auth,
            b"quit": self.smtp_quit,
            b"helo": self.smtp_helo,
            b"ehlo": self.smtp_ehlo,
            b"rset": self.smtp_rset,
            b"help": self.smtp_help,
            b"noop": self.smtp_noop,
            b"vrfy": self.smtp_vrfy,
            b"etrn": self.smtp_etrn,
            b"starttls": self.smtp_tls,
        }

    def submission_commands(self) -> dict[bytes, Callable[[bytes], None]]:
        table = self.smtp_commands()
        del table[b"etrn"]
        return table

    # ------------------------------------------------------------ replies
    def err_unimpl(self, arg: bytes) -> None:
        name = _printable(self.verb)
        if arg:
            self.reply(f"502 command {name} {_printable(arg)} not recognized (#5.5.2)")
        else:
            self.reply(f"502 command {name} not recognized (#5.5.2)")

    def setup_refused(self) -> bool:
        """The original's setup_state switch at the top of most commands."""
        s = self.setup_state
        if s == 0:
            return False
        if s == 1:
            self.reply(R_BADSEQ)
        elif s == 2:
            self.log("OPEN RELAY client")
            self.reply(
                f"553 No mail accepted from an open relay ({self.remoteip}); "
                "check your server configs (#5.7.1)"
            )
        elif s == 3:
            self.log("PTR (reverse DNS) record points to wrong hostname")
            v = self.env.get("TCPPARANOID", "")
            self.reply(
                f"553 sorry, your IP address ({self.remoteip}) PTR (reverse DNS) record points "
                f"to wrong hostname{' [' + v + ']' if v else ''} (#5.7.1)"
            )
        elif s == 4:
            self.log("unable to obtain PTR (reverse DNS) record")
            v = self.env.get("REQPTR", "")
            if v:
                self.reply(f"553 {v}: from {self.remoteip}: (#5.7.1)")
            else:
                self.reply(
                    f"553  Sorry, no PTR (reverse DNS) record for ({self.remoteip}) (#5.7.1)"
                )
        return True

    # ------------------------------------------------------------ HELO/EHLO
    def helo_refused(self, arg: bytes) -> bool:
        """ENFORCE_FQDN_HELO and badhelo, checked before the 250 is written.

        The original writes 250 (or the whole EHLO reply) first and the
        refusal after it, two replies to one command; here the refusal is
        the only reply.
        """
        if self.relayclient is None and "ENFORCE_FQDN_HELO" in self.env and b"." not in arg:
            self.log(f"non-FQDN HELO: {_printable(arg)}")
            self.reply("451 unable to accept non-FQDN HELO (#4.3.0)")
            raise Exit(1)
        if self.badhelo is not None and arg and self.badhelo.match(arg, self.env):
            self.log(f"Invalid HELO greeting: HELO <{_printable(arg)}> FQDN <{self.remotehost}>")
            self.reply("553 sorry, your HELO/EHLO greeting is in my badhelo list (#5.7.1)")
            self.seenhelo = False
            return True
        return False

    def dohelo(self, arg: bytes) -> None:
        self.helohost = arg
        rh = self.remotehost.encode("utf-8", "surrogateescape").lower()
        self.fakehelo = arg if arg.lower() != rh else None
        self.seenhelo = True

    def smtp_helo(self, arg: bytes) -> None:
        self.seenmail = False
        if self.setup_refused():
            return
        helo = arg or self.remotehost.encode("utf-8", "surrogateescape")
        if self.helo_refused(helo):
            return
        self.respond("250 ", "" if arg else f" [{self.remoteip}]")
        self.out("\r\n")
        self.dohelo(helo)

    def auth_offered(self) -> bool:
        return bool(self.hostname) and bool(self.childargs)

    def smtp_ehlo(self, arg: bytes) -> None:
        self.seenmail = False
        if self.setup_refused():
            return
        helo = arg or self.remotehost.encode("utf-8", "surrogateescape")
        if self.helo_refused(helo):
            return
        first = self.greeting_lines[0] if self.greeting_lines else self.localhost
        self.out(f"250-{first}", "" if arg else f" [{self.remoteip}]", "\r\n")
        e = self.env
        if self.auth_offered():
            mechs = []
            for name, disable in AUTH_MECHS:
                if name in ("LOGIN", "PLAIN") and self.secure_auth and not self.encrypted():
                    continue
                if disable in e:
                    continue
                mechs.append(name)
            if mechs:
                self.out("250-AUTH ", " ".join(mechs), "\r\n")
                if "OLD_CLIENT" in e:
                    self.out("250-AUTH=", " ".join(mechs), "\r\n")
        self.out("250-PIPELINING\r\n250-8BITMIME\r\n")
        if self.databytes > 0:
            self.out(f"250-SIZE {self.databytes}\r\n")
        if self.port != SUBM_PORT:
            self.out("250-ETRN\r\n")
        if not self.encrypted() and "STARTTLS" in e and self.servercert().exists():
            self.out("250-STARTTLS\r\n")
        if "SMTPUTF8" in e:
            self.out("250-SMTPUTF8\r\n")
        self.out("250 HELP\r\n")
        self.dohelo(helo)

    # ----------------------------------------------------------- misc cmds
    def smtp_rset(self, arg: bytes) -> None:
        if arg:
            self.reply(R_PARAMS)
            return
        self.seenmail = False
        self.rcptto = []
        self.mailfrom = b""
        self.reply("250 flushed")

    def smtp_noop(self, arg: bytes) -> None:
        if arg:
            self.reply(R_PARAMS)
            return
        if self.setup_refused():
            return
        self.reply("250 ok")

    def smtp_vrfy(self, arg: bytes) -> None:
        if "DISABLE_VRFY" in self.env:
            self.err_unimpl(b"unimplimented")  # the original's spelling
            return
        if self.setup_refused():
            return
        self.reply("252 Cannot VRFY user, but will accept message and attempt delivery (#2.7.0)")

    def smtp_help(self, arg: bytes) -> None:
        if "DISABLE_HELP" in self.env:
            self.reply("502 disabled by the lord in her infinite wisdom (#5.5.1)")
            return
        self.out(
            f"214-This is IndiMail SMTP Version {__version__}\r\n"
            "214-https://github.com/indimail/indimail-mta\r\n"
            "214-This server supports the following commands:\r\n"
            "214 HELO EHLO RSET NOOP MAIL RCPT DATA "
        )
        if self.auth_offered():
            self.out("AUTH ")
        vrfy = "" if "DISABLE_VRFY" in self.env else "VRFY "
        if self.port == SUBM_PORT:
            self.out(f"{vrfy}HELP QUIT\r\n")
        else:
            self.out(f"{vrfy}ETRN HELP QUIT\r\n")

    def smtp_quit(self, arg: bytes) -> None:
        self.respond("221 ", " closing connection")
        self.out("\r\n")
        raise Exit(0)

    def smtp_etrn(self, arg: bytes) -> None:
        if not arg:
            self.reply(R_SYNTAX)
            return
        if not self.seenhelo:
            self.reply(R_HELLO)
            return
        if self.seenmail:
            self.reply("503 no ETRN during mail transaction (#5.5.0)")
            return
        host = arg[1:] if not arg[:1].isalnum() else arg
        ok = all(c < 0x80 and (chr(c).isalnum() or chr(c) in "-._[]:") for c in host)
        if not host or not ok or len(host) > 255:
            self.reply(R_PARAMS)
            return
        name = _printable(host)
        hosts = control.read_list("etrnhosts", controldir=self.controldir) or []
        if name.lower() not in {h.lower() for h in hosts}:
            self.reply(f"553 etrn service rejected for {name}. (#5.7.1)")
            return
        self.log(f"ETRN {name}")
        self.reply("451 Unable to queue messages (#4.3.0)")

    # ---------------------------------------------------------------- MAIL
    def _addr_allowed(self, addr: bytes) -> bool:
        return self.rcpthosts.allowed(addr)

    def smtp_mail(self, arg: bytes) -> None:
        if self.setup_refused():
            return
        if not self.seenhelo:
            self.reply(R_HELLO)
            return
        addr = parse_address(arg)
        if addr is None:
            self.reply(R_SYNTAX)
            return
        addr = self.rewrite_liphost(addr)
        self.flagsize = False
        self.smtputf8 = False
        self.msg_size = 0
        self.mailfrom_params(arg)
        proto = "UTF8ESMTP" if self.smtputf8 else "ESMTP"
        if self.tls or self.tls_provider is not None:
            proto += "S"
        if self.authd:
            proto += "A"
        if self.tls and self.conn.tls_version:
            proto += f" ({self.conn.tls_version} {self.conn.tls_cipher} bits={self.conn.tls_bits})"
        self.proto = proto
        if ("REQUIREAUTH" in self.env or "AUTHREQUIRED" in self.env) and not self.authd:
            self.reply("530 authentication required (#5.7.1)")
            return
        if self.bmf.match(addr, self.env):
            self.log(f"Invalid SENDER address: BAD MAIL from <{_printable(addr)}>")
            self.reply("553 sorry, your envelope sender has been denied (#5.7.1)")
            return
        bounce = self.env.get("BOUNCEMAIL")
        if bounce is not None:
            self.log(f"Blackholed SENDER address: MAIL from <{_printable(addr)}> Reason {bounce}")
            self.reply(f"553 {bounce} (#5.7.1)")
            raise Exit(1)
        self.rcptto = []
        self.mailfrom = addr
        v = self.env.get("MAX_RCPT_ERRCOUNT")
        self.max_rcpt_errcount = -1 if v is None else _leading_int(v)
        self.rcpt_errcount = 0
        if self.relayclient is None and self.rmf.present and self.rmf.match(addr, self.env):
            self.relayclient = ""
        if "CUGMAIL" in self.env and not self._addr_allowed(addr):
            self.log(f"Invalid CUG SENDER address: MAIL from <{_printable(addr)}>")
            self.reply("553 sorry, this MTA is a closed user group system (#5.7.1)")
            return
        if "FORCE_TLS" in self.env and not self.encrypted():
            self.reply("530 must issue STARTTLS first (#5.7.0)")
            return
        self.allow_barelf = "ALLOW_BARELF" in self.env
        self.seenmail = True
        self.reply("250 ok")

    def mailfrom_params(self, arg: bytes) -> None:
        i = arg.find(b">")
        if not (4 < i < len(arg)):
            return
        for tok in arg[1:].split(b" "):
            up = tok.upper()
            if up.startswith(b"SMTPUTF8") and "SMTPUTF8" in self.env:
                self.smtputf8 = True
            elif up.startswith(b"SIZE="):
                digits = b""
                for c in tok[5:]:
                    if not (0x30 <= c <= 0x39):
                        break
                    digits += bytes([c])
                size = int(digits[:20]) if digits else 0
                self.msg_size = size
                if self.databytes > 0 and size > self.databytes:
                    self.flagsize = True
                    return
            elif up.startswith(b"AUTH=") and not self.authd:
                value = tok[5:]
                if value.startswith(b"<>"):
                    user = "unknown"
                else:
                    user = _printable(value.replace(b"+3D", b"=").replace(b"+2B", b"+"))
                if self.remoteinfo is None:
                    self.remoteinfo = user
                    self.env["TCPREMOTEINFO"] = user
                    self.env["AUTHINFO"] = user

    def _ipme(self, ip: str) -> bool:
        mine = {"127.0.0.1", self.localip, *self.moreipme}
        return ip in mine

    def rewrite_liphost(self, addr: bytes) -> bytes:
        """``box@[our.ip]`` becomes ``box@<localiphost>``."""
        j = addr.rfind(b"@")
        if j < 0 or not addr[j + 1 :].startswith(b"[") or not addr.endswith(b"]"):
            return addr
        literal = addr[j + 2 : -1]
        parts = literal.split(b".")  # bytes: isdigit() is ASCII digits only
        if len(parts) != 4 or not all(p.isdigit() and int(p) < 256 for p in parts):
            return addr
        if not self._ipme(literal.decode("ascii")):
            return addr
        return addr[: j + 1] + self.liphost.encode("utf-8", "surrogateescape")

    # ---------------------------------------------------------------- RCPT
    def smtp_rcpt(self, arg: bytes) -> None:
        if self.setup_refused():
            return
        if not self.seenmail:
            self.reply("503 MAIL first (#5.5.1)")
            return
        mf = _printable(self.mailfrom)
        if 0 <= self.max_rcpt_errcount <= self.rcpt_errcount:
            self.log(f"Too many Invalid RECIPIENTS ({self.rcpt_errcount}): MAIL from <{mf}>")
            self.reply(R_RCPT_ERRCOUNT)
            raise Exit(1)
        addr = parse_address(arg)
        if addr is None:
            self.reply(R_SYNTAX)
            return
        addr = self.rewrite_liphost(addr)
        if "CUGMAIL" in self.env and not self._addr_allowed(addr):
            self.log(f"Invalid CUG RECIPIENT address: RCPT TO <{_printable(addr)}>")
            self.reply("553 sorry, this MTA is a closed user group system (#5.7.1)")
            return
        if _has_relay_chars(addr):
            self.reply("550 we don't relay (#5.7.1)")
            return
        good = self.grt.present and self.grt.match(addr, self.env)
        if not good and self.brt.match(addr, self.env):
            self.log(f"Invalid RECIPIENT address: MAIL from <{mf}> RCPT {_printable(addr)}")
            self.reply("553 sorry, your envelope recipient has been denied (#5.7.1)")
            return
        allowed = False if "AUTH_ALL" in self.env else self._addr_allowed(addr)
        if self.relayclient is None and not allowed:
            self.err_nogateway(addr)
            return
        if allowed and self.checkrecipient and not good and not self.recipient_exists(addr):
            return
        if self.relayclient is not None:
            addr = addr + self.relayclient.encode("utf-8", "surrogateescape")
        limit = self.maxrcpt if self.maxrcpt > 0 else HARD_MAXRCPT
        if len(self.rcptto) + 1 > limit:
            self.log(f"Too many RECIPIENTS: MAIL from <{mf}> Last RCPT <{_printable(arg)}>")
            self.reply("557 sorry, too many recipients (#5.7.1)")
            return
        if self.tarpitcount and len(self.rcptto) + 1 >= self.tarpitcount:
            time.sleep(max(0, self.tarpitdelay))
        if not self.mailfrom and len(self.rcptto) + 1 > 1:
            self.reply(
                "553 sorry, bounce messages should have a single envelope recipient (#5.7.1)"
            )
            return
        self.rcptto.append(addr)
        self.reply("250 ok")

    def recipient_exists(self, addr: bytes) -> bool:
        """CHECKRECIPIENT for a local (rcpthosts) address; False = refused.

        Every CHECKRECIPIENT value uses the recipients extension (control
        ``recipients``): the original does so for 1 and 2 too when no
        virtual-domain user store is loaded, and we have none yet.
        """
        assert self.recipients is not None and self.chkrcpt is not None
        if self.chkrcpt.present and not self.chkrcpt.match(addr, self.env):
            return True  # chkrcptdomains exists and does not list it
        try:
            found = self.recipients.lookup(addr)
        except RecipientsTrouble as exc:
            self.log(f"recipients database error: {exc}")
            self.reply(R_RCPTCHECK)
            raise Exit(1) from None
        if found:
            return True
        self.rcpt_errcount += 1
        if self.penalty > 0:
            time.sleep(self.penalty)
        mf, rcpt = _printable(self.mailfrom), _printable(addr)
        state = "is absent on this domain (#5.1.1)"
        self.log(f"Invalid RECIPIENT address: MAIL from <{mf}> RCPT <{rcpt}> state <{state}>")
        self.reply(f"550 sorry, {mf} mailbox <{rcpt}> {state}")
        return False

    def err_nogateway(self, addr: bytes) -> None:
        msg = f"Invalid RELAY client: MAIL from <{_printable(self.mailfrom)}"
        if addr:
            msg += f"> RCPT <{_printable(addr)}"
        msg += ">"
        if self.authd:
            msg += f", Auth <{self.remoteinfo}>"
        self.log(msg)
        text = (
            "553 sorry, that domain isn't allowed to be relayed thru this MTA "
            "without authentication"
        )
        if self.authd:
            text += f", auth <{self.remoteinfo}>"
        if self.tls and self.relayclient is None:
            text += "; no valid cert for gateway "
        self.reply(text + " #5.7.1")

    # ---------------------------------------------------------------- DATA
    def received(self) -> bytes:
        from indimail.smtpd.smtpd_netstring import received_line

        proto = self.proto or "ESMTP"
        if self.tls_provider is not None and not self.tls:
            proto += f"\n  (tls provider {self.tls_provider})"
        return received_line(
            "smtpd",
            proto,
            self.pid,
            self.localhost,
            self.remoteip,
            self.remotehost if self.remotehost != "unknown" else None,
            self.remoteinfo,
            self.fakehelo.decode("latin-1") if self.fakehelo is not None else None,
            self.hide_host,
        )

    def tls_label(self) -> str:
        if self.tls:
            return self.conn.tls_version or "No"
        if self.tls_provider is not None:
            return self.tls_provider.split(",", 1)[0] if "," in self.tls_provider else ""
        return "No"

    def auth_part(self, rcpt: bytes) -> str:
        s = ""
        user = self.remoteinfo if self.authd else None
        if user:
            s += f"{user}: AUTH {self.authmethod}"
        if self._addr_allowed(rcpt):
            if user:
                s += ": "
            s += "local-rcpt"
        elif not user:
            s += "auth-ip/pop"
        return s

    def smtp_data(self, arg: bytes) -> None:
        if arg:
            self.reply(R_PARAMS)
            return
        if not self.seenmail:
            self.reply("503 MAIL first (#5.5.1)")
            return
        if not self.rcptto:
            self.reply("503 RCPT first (#5.5.1)")
            return
        self.seenmail = False
        mf = _printable(self.mailfrom)
        if self.flagsize:
            self.err_size(mf)
            return
        with Spool(SPOOL_MEMORY) as spool:
            spool.write(self.received())
            sink = DataSink(spool, self.databytes, self.allow_barelf)
            self.reply("354 go ahead")
            rest = None
            for _ in range(1 << 62):  # each round consumes input; ends at '.'
                try:
                    rest = sink.feed(self.input.take())
                except BareLF:
                    self.log("Bare LF received")
                    self.reply(R_BARELF)
                    raise Exit(1) from None
                if rest is not None:
                    break
            self.input.push_back(rest or b"")
            self.msg_size = sink.size
            if sink.hops >= self.maxhops:
                self.reply("554 too many hops, this message is looping (#5.4.6)")
                return
            if sink.too_big:
                self.err_size(mf)
                return
            self.queue(spool.message(), mf)

    def err_size(self, mf: str) -> None:
        self.reply(R_DATABYTES)
        for r in self.rcptto:
            self.log(
                f"data size exceeded: MAIL from <{mf}> RCPT <{_printable(r)}> Size: {self.msg_size}"
            )

    def queue(self, message, mf: str) -> None:
        from indimail.queue.submit import SubmitError, submit

        try:
            queued = submit(message, self.mailfrom, list(self.rcptto), environ=self.env, wake=False)
        except SubmitError as exc:
            text = exc.text or "Zqq temporary problem (#4.3.0)"
            last = text.rstrip("\n").split("\n")[-1]
            permanent = last.startswith("D")
            body = last[1:] if last[:1] in ("D", "Z") else last
            self.reply(("554 " if permanent else "451 ") + _printable(body.encode()))
            kind = "permanent" if permanent else "temporary"
            for r in self.rcptto:
                self.log(
                    f"{body} ({kind}): HELO <{_printable(self.helohost)}> MAIL from <{mf}> "
                    f"RCPT <{_printable(r)}> AUTH <{self.auth_part(r)}> Size: {self.msg_size} "
                    f"TLS={self.tls_label()} qp {exc.code}"
                )
            return
        # the message is durable in the queue: only now acknowledge it, and
        # wake qmail-send only once the client has the answer (the wake-up
        # of another process need not delay it)
        try:
            self.reply(f"250 ok {int(time.time())} qp {queued.qp}")
            for r in self.rcptto:
                self.log(
                    f" HELO <{_printable(self.helohost)}> MAIL from <{mf}> RCPT <{_printable(r)}> "
                    f"AUTH <{self.auth_part(r)}> Size: {self.msg_size} TLS={self.tls_label()}"
                )
            self.output.flush()
        finally:
            queued.wake()

    # ---------------------------------------------------------------- AUTH
    def smtp_auth(self, arg: bytes) -> None:
        from indimail.auth import checkpassword as cp

        if self.setup_refused():
            return
        if not self.auth_offered():
            self.reply("503 auth not available (#5.3.3)")
            return
        if self.authd:
            self.reply("503 you're already authenticated (#5.5.0)")
            return
        if self.seenmail:
            self.reply("503 no auth during mail transaction (#5.5.0)")
            return
        mech, _, rest = arg.partition(b" ")
        rest = rest.lstrip(b" ")
        mech_s = mech.decode("latin-1").upper()
        methods = {
            "LOGIN": cp.AUTH_LOGIN,
            "PLAIN": cp.AUTH_PLAIN,
            "CRAM-MD5": cp.AUTH_CRAM_MD5,
            "CRAM-SHA1": cp.AUTH_CRAM_SHA1,
            "CRAM-SHA224": cp.AUTH_CRAM_SHA224,
            "CRAM-SHA256": cp.AUTH_CRAM_SHA256,
            "CRAM-SHA384": cp.AUTH_CRAM_SHA384,
            "CRAM-SHA512": cp.AUTH_CRAM_SHA512,
            "CRAM-RIPEMD": cp.AUTH_CRAM_RIPEMD,
        }
        method = methods.get(mech_s)
        self.auth_user = b""
        if method is None:
            self.reply("504 auth type unimplemented (#5.5.1)")
            self.log_authfail(None, -3, "Unknown ")
            return
        name = cp.METHOD_NAMES[method]
        if method in (cp.AUTH_LOGIN, cp.AUTH_PLAIN) and self.secure_auth and not self.encrypted():
            self.reply("538 Encryption required for requested authentication mechanism (#5.7.11)")
            self.log(f" AUTH {name} status=[2] TLS={self.tls_label()} auth failure")
            return
        try:
            if method == cp.AUTH_LOGIN:
                user, secret, resp = self.auth_login(rest)
            elif method == cp.AUTH_PLAIN:
                user, secret, resp = self.auth_plain(rest)
            else:
                user, secret, resp = self.auth_cram()
        except AuthInputError:
            return
        self.auth_user = user
        try:
            code, text = cp.run(self.childargs, user, secret, resp, method, self.env)
        except cp.CheckpasswordError as exc:
            self.log(f"{exc}")
            self.reply("451 Sorry, my child won't start and I can't auth (#4.3.0)")
            return
        if code in (0, 3):
            if code == 0:
                self.relayclient = ""
            self.authd = method
            self.authmethod = name
            self.remoteinfo = user.decode("utf-8", "surrogateescape")
            self.env["TCPREMOTEINFO"] = self.remoteinfo
            self.env["AUTHINFO"] = self.remoteinfo
            self.reply("235 ok, go ahead (#2.0.0)")
            return
        self.log_authfail(user, code if code != 111 else -1, name)
        for line in text.split(b"\n")[:20]:
            if len(line) > 4 and line[:3].isdigit() and line[3:4] == b"-":
                self.out(_printable(line.rstrip(b"\r")), "\r\n")
        if code in (1, 2):
            penalty = self._int_env("PENALTY")
            if penalty > 0:
                time.sleep(penalty)
            self.reply("535 authorization failure (#5.7.8)")
        elif code == 111:
            self.reply("454 temporary authentication failure (#4.3.0)")
        else:
            self.reply("451 Sorry, there is a problem with my child and I can't auth (#4.3.0)")

    def _int_env(self, name: str) -> int:
        try:
            return int(self.env.get(name, "0"))
        except ValueError:
            return 0

    def log_authfail(self, user: bytes | None, status: int, method: str) -> None:
        u = _printable(user) if user else ""
        sign = "-" if status < 0 else ""
        self.log(
            f" AUTH USER [{u}] status=[{sign}{abs(status)}] AUTH {method} "
            f"TLS={self.tls_label()} auth failure".replace("AUTH Unknown  TLS", "AUTH Unknown TLS")
        )

    def authgetl(self) -> bytes:
        line = self.input.readline(self.maxcmdlen)
        if line.endswith(b"\r"):
            line = line[:-1]
        if line == b"*":
            self.reply("501 auth exchange cancelled (#5.0.0)")
            raise AuthInputError()
        return line

    def b64(self, data: bytes) -> bytes:
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            self.reply("501 malformed auth input (#5.5.4)")
            raise AuthInputError() from None

    def auth_login(self, rest: bytes) -> tuple[bytes, bytes, bytes]:
        if rest:
            user = self.b64(rest)
        else:
            self.reply("334 VXNlcm5hbWU6")
            user = self.b64(self.authgetl())
        self.reply("334 UGFzc3dvcmQ6")
        password = self.b64(self.authgetl())
        if not user or not password:
            self.reply("501 malformed auth input (#5.5.4)")
            raise AuthInputError()
        return user, password, b""

    def auth_plain(self, rest: bytes) -> tuple[bytes, bytes, bytes]:
        if rest:
            blob = self.b64(rest)
        else:
            self.reply("334 ")
            blob = self.b64(self.authgetl())
        parts = blob.split(b"\0")
        user = parts[1] if len(parts) > 1 else b""
        password = parts[2] if len(parts) > 2 else b""
        if not user or not password:
            self.reply("501 malformed auth input (#5.5.4)")
            raise AuthInputError()
        return user, password, b""

    def auth_cram(self) -> tuple[bytes, bytes, bytes]:
        # the original's <pid.time@host> repeats within a second when one
        # process serves several sessions (tcpserver's worker pool): a
        # random part keeps every challenge single-use
        nonce = os.urandom(6).hex()
        challenge = f"<{os.getpid()}.{nonce}.{int(time.time())}@{self.hostname}>".encode()
        self.reply("334 " + base64.b64encode(challenge).decode())
        blob = self.b64(self.authgetl())
        user, _, resp = blob.partition(b" ")
        resp = resp.lstrip(b" ")
        if not user or not resp:
            self.reply("501 malformed auth input (#5.5.4)")
            raise AuthInputError()
        return user, challenge, resp

    # ----------------------------------------------------------------- TLS
    def servercert(self) -> Path:
        return self.certdir / (self.env.get("SERVERCERT") or "servercert.pem")

    def tls_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.servercert()))
        ciphers = self.env.get("TLS_CIPHER_LIST") or control.read_line(
            "servercipherlist", controldir=self.controldir
        )
        if ciphers:
            ctx.set_ciphers(ciphers)
        return ctx

    def do_tls(self, smtps: bool = False) -> None:
        try:
            ctx = self.tls_context()
        except (OSError, ssl.SSLError, control.ControlError) as exc:
            self.log(f"unable to initialize ssl: {exc}")
            self.reply("454 unable to initialize ssl (#4.3.0)")
            if smtps:
                raise Exit(1) from None
            return
        if self.conn.socket_fd() is None:
            self.log("unable to initialize ssl: connection is not a socket")
            self.reply("454 unable to initialize ssl (#4.3.0)")
            if smtps:
                raise Exit(1)
            return
        if not smtps:
            self.reply("220 ready for tls")
            self.output.flush()
        self.input.discard()  # plaintext pipelined after STARTTLS is not trusted
        try:
            conn = smtpd_io.start_tls(self.conn, ctx)
        except (OSError, ssl.SSLError) as exc:
            self.log(f"failed to accept TLS connection: {exc}")
            raise Exit(1) from None
        self.conn = conn
        self.output.conn = conn
        self.input.conn = conn
        self.tls = True
        self.log(f"ssl-version={conn.tls_version}")

    def smtp_tls(self, arg: bytes) -> None:
        if self.encrypted():
            self.err_unimpl(b"unimplimented")
            return
        if arg:
            self.reply("501 Syntax error (no parameters allowed) (#5.5.4)")
            return
        self.do_tls()
        if self.tls:
            self.seenmail = False
            self.rcptto = []
            self.dohelo(self.remotehost.encode("utf-8", "surrogateescape"))


def print_details() -> int:
    """-v: what this qmail-smtpd knows about."""
    sys.stdout.write(
        f"qmail-smtpd (indimail-mta {__version__}, Python)\n"
        "AUTH: LOGIN PLAIN CRAM-MD5 CRAM-SHA1 CRAM-SHA224 CRAM-SHA256 CRAM-SHA384 "
        "CRAM-SHA512 CRAM-RIPEMD\nTLS: STARTTLS, SMTPS\n"
        "controls: smtpgreeting me localiphost timeoutsmtpd maxhops maxcmdlen rcpthosts "
        "morercpthosts.cdb relayclients relaydomains relaymailfrom badmailfrom badmailpatterns "
        "badrcptto badrcptpatterns goodrcptto goodrcptpatterns badhelo databytes maxrecipients "
        "tarpitcount tarpitdelay greetdelay moreipme etrnhosts servercipherlist recipients "
        "chkrcptdomains\n"
        "env: RELAYCLIENT DATABYTES MAXRECIPIENTS TARPITCOUNT TARPITDELAY GREETDELAY SMTPS "
        "STARTTLS FORCE_TLS SECURE_AUTH CERTDIR SERVERCERT TLS_CIPHER_LIST REQUIREAUTH "
        "AUTH_ALL BADHELOCHECK BADHELO BADMAILFROM BADMAILPATTERNS BADRCPTTO BADRCPTPATTERNS "
        "GOODRCPTTO GOODRCPTPATTERNS QREGEX HIDE_HOST SMTPUTF8 ALLOW_BARELF DISABLE_VRFY "
        "DISABLE_HELP DISABLE_EXTRA_GREET SHUTDOWN OPENRELAY TCPPARANOID REQPTR BOUNCEMAIL "
        "CUGMAIL ENFORCE_FQDN_HELO OLD_CLIENT PENALTY TLS_PROVIDER QMAILQUEUE CHECKRECIPIENT "
        "MAX_RCPT_ERRCOUNT\n"
    )
    return 0


try:
    from _signal import signal as _set_signal
except ImportError:  # pragma: no cover - not CPython
    _set_signal = signal.signal


def main(argv: list[str]) -> int:
    if len(argv) > 1 and argv[1] == "-v":
        return print_details()
    session = Session(argv)

    def on_term(signum, frame):
        session.log("going down on SIGTERM")
        try:
            session.output.buf.clear()
            session.respond("421 ", " Service not available, closing tranmission channel (#4.3.2)")
            session.out("\r\n")
            session.output.flush()
        except Exception:
            pass
        os._exit(1)

    # _signal.signal: signal.signal's enum conversions cost more than the
    # call itself (a ValueError per call when the old handler is a function)
    old = _set_signal(signal.SIGTERM, on_term)
    try:
        return session.run()
    finally:
        _set_signal(signal.SIGTERM, old)
