"""rblsmtpd: block clients listed in a DNS blocklist, else run the SMTP server.

``rblsmtpd [-b|-B] [-c|-C] [-t secs] [-w delay|-W] -r base ... [-a base ...] prog``

* ``$RBLSMTPD`` set and empty: never block.  Set to text: block with it
  (``%IP%`` replaced by the client address); a leading ``-`` means a
  permanent 553 instead of 451.  Unset: ask DNS.
* ``-r base``: TXT record at ``<reversed ip>.base`` lists the client (its
  text is the message); ``-r base:text`` asks for an A record instead and
  uses ``text``.  ``-a base``: an A record at ``<reversed ip>.base`` lets the
  client through (anti-RBL).  Lists are asked in option order; the first
  answer decides.
* ``-b``: 553 for listed clients, ``-B`` (default) 451.  ``-c``: a DNS
  failure blocks (451), ``-C`` (default) lets the client through.
* ``-t secs`` (60): length of the blocked session; 0 = print the message
  and hang up.

At least one ``-r`` is required (ARCHITECTURE section 6: the original's
built-in default list is long dead).

A blocked client gets a fake SMTP session: ``220 <RBLGREETING>``, 250 for
HELO/RSET/NOOP/MAIL, the message for RCPT, DATA and anything else, 221 for
QUIT.  A client let through: the next program runs - in this process when it
is ours (:mod:`indimail.ucspi.inproc`), else by ``execvp``.
"""

from __future__ import annotations

import getopt
import os
import time

from indimail.core.errors import UsageError
from indimail.ucspi import addr, inproc

# tcpserver may run us in its pooled workers when the program we run is
# poolable too: ucspi_next() tells it which program that is.
UCSPI_POOL = True
UCSPI_WARM = ("dns.resolver", "dns.exception", "indimail.deliver.dns")
OPTSPEC = "bBcCt:r:a:w:W"

USAGE = (
    "usage: rblsmtpd -r base [ -b ] [ -B ] [ -c ] [ -C ] [ -t timeout ] [ -a base ] "
    "[ -W ] [ -w delay ] smtpd [ arg ... ]"
)
MAX_LINE = 4096
MAX_GREETDELAY = 300


class Rbl:
    def __init__(self) -> None:
        self.ip = os.environ.get("TCPREMOTEIP", "")
        proto = os.environ.get("PROTO", "")
        if proto == "TCP6" and self.ip.lower().startswith("::ffff:"):
            self.ip = self.ip[7:]
        self.reverse = addr.reverse_name(self.ip) or ""
        self.decision = 0  # 0 undecided, 1 accept, 2 reject (451), 3 bounce (553)
        self.text = ""
        self.bounce = False
        self.failclosed = False
        self.mustnotbounce = False
        self._resolver = None

    def substitute(self, template: str) -> str:
        return template.replace("%IP%", self.ip)

    def resolver(self):
        if self._resolver is None:
            from indimail.deliver import dns as rdns

            self._resolver = rdns.make_resolver()
        return self._resolver

    def query(self, name: str, rdtype: str) -> list | None:
        """Answers, [] for none, None for a temporary failure."""
        import dns.exception
        import dns.resolver

        try:
            res = self.resolver()
            return list(res.resolve(name, rdtype, search=False))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
            return []
        except (dns.exception.DNSException, OSError, ValueError, Exception):
            return None

    def rbl(self, base: str) -> None:
        if self.decision or not self.reverse:
            return
        base, colon, altreply = base.partition(":")
        name = self.reverse + base
        if colon:
            answers = self.query(name, "A")
            if answers is None:
                self.temp_failure()
                return
            text = self.substitute(altreply) if answers else ""
        else:
            answers = self.query(name, "TXT")
            if answers is None:
                self.temp_failure()
                return
            text = "".join(b"".join(rr.strings).decode("utf-8", "replace") for rr in answers)
        if text:
            self.text = text
            self.decision = 3 if self.bounce else 2

    def temp_failure(self) -> None:
        self.mustnotbounce = True
        if self.failclosed:
            self.text = "temporary RBL lookup error"
            self.decision = 2

    def antirbl(self, base: str) -> None:
        if self.decision or not self.reverse:
            return
        answers = self.query(self.reverse + base, "A")
        if answers is None:
            self.mustnotbounce = True
            if not self.failclosed:
                self.decision = 1
            return
        if answers:
            self.decision = 1


def log(rbl: Rbl, text: str) -> None:
    try:
        os.write(2, f"rblsmtpd:  pid {os.getpid()} from {rbl.ip}: {text}\n".encode())
    except OSError:
        pass


def _write(data: str) -> None:
    raw = data.encode("utf-8", "replace")
    while raw:
        n = os.write(1, raw)
        raw = raw[n:]


def addrparse(arg: str) -> str | None:
    """The address of a MAIL/RCPT argument (quotes and source route removed)."""
    lt = arg.find("<")
    if lt >= 0:
        arg, terminator = arg[lt + 1 :], ">"
    else:
        terminator = " "
        colon = arg.find(":")
        arg = arg[colon + 1 :] if colon >= 0 else ""
        if not arg:
            return None
        arg = arg.lstrip(" ")
    if arg.startswith("@"):
        colon = arg.find(":")
        arg = arg[colon + 1 :] if colon >= 0 else ""
    out = []
    esc = quoted = False
    for ch in arg:
        if esc:
            out.append(ch)
            esc = False
        elif not quoted and ch == terminator:
            break
        elif ch == "\\":
            esc = True
        elif ch == '"':
            quoted = not quoted
        else:
            out.append(ch)
    result = "".join(out)
    return result if len(result) <= 900 else None


def blocked_session(rbl: Rbl, timeout: int) -> int:
    code = "451 " if rbl.mustnotbounce or rbl.decision == 2 else "553 "
    message = code + rbl.text[:200]
    message = "".join(ch if 32 <= ord(ch) <= 126 else "?" for ch in message)
    log(rbl, message)
    greeting = os.environ.get("RBLGREETING") or "rblsmtpd.indimail"
    ehlo = os.environ.get("RBLEHLO")
    try:
        if not timeout:
            _write(message + "\r\n")
            return 0
        deadline = time.monotonic() + timeout
        _write(f"220 {greeting}\r\n")
        buf = b""
        import select

        while True:
            while b"\n" not in buf and len(buf) < MAX_LINE:
                left = deadline - time.monotonic()
                if left <= 0:
                    return 0
                r, _, _ = select.select([0], [], [], left)
                if not r:
                    return 0
                data = os.read(0, MAX_LINE)
                if not data:
                    log(rbl, "Session terminated: quitting")
                    return 0
                buf += data
            if b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
            else:
                line, buf = buf, b""
            text = line.rstrip(b"\r").decode("latin-1")
            verb, _, arg = text.partition(" ")
            verb = verb.lower()
            if verb == "quit":
                _write(f"221 {greeting}\r\n")
                return 0
            if verb in ("helo", "rset", "noop"):
                _write(f"250 {greeting}\r\n")
            elif verb == "ehlo":
                if ehlo:
                    _write(
                        f"250-{greeting}\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                        "250-STARTTLS\r\n250 HELP\r\n"
                    )
                else:
                    _write(f"250 {greeting}\r\n")
            elif verb == "vrfy":
                _write(f"252 {greeting}\r\n")
            elif verb == "mail":
                who = addrparse(arg)
                log(rbl, "MAIL with too long address" if who is None else f"Sender <{who}>")
                _write(f"250 {greeting}\r\n")
            elif verb == "rcpt":
                who = addrparse(arg)
                log(rbl, "RCPT with too long address" if who is None else f"Recipient <{who}>")
                _write(message + "\r\n")
            else:
                _write(message + "\r\n")
    except OSError:
        return 0


def ucspi_next(argv: list[str]) -> list[str] | None:
    """The program (with its arguments) this command line would run after
    letting a client through; None if the options are bad."""
    try:
        _opts, rest = getopt.getopt(argv[1:], OPTSPEC)
    except getopt.GetoptError:
        return None
    return rest or None


def main(argv: list[str]) -> int:
    rbl = Rbl()
    env = os.environ.get("RBLSMTPD")
    if env is not None:
        if not env:
            rbl.decision = 1
        elif env.startswith("-"):
            rbl.decision = 3
            rbl.text = rbl.substitute(env[1:])
        else:
            rbl.decision = 2
            rbl.text = rbl.substitute(env)
    try:
        opts, rest = getopt.getopt(argv[1:], OPTSPEC)
    except getopt.GetoptError as exc:
        raise UsageError(f"{exc.msg}\n{USAGE}") from None
    timeout = 60
    have_rbl = False
    greetdelay = 0
    for opt, val in opts:
        c = opt[1]
        if c in "bB":
            rbl.bounce = c == "b"
        elif c in "cC":
            rbl.failclosed = c == "c"
        elif c == "t":
            if not val.isdecimal():
                raise UsageError(f"-t needs a number of seconds\n{USAGE}")
            timeout = int(val)
        elif c == "r":
            have_rbl = True
            rbl.rbl(val)
        elif c == "a":
            rbl.antirbl(val)
        elif c in "wW":
            if c == "w":
                greetdelay = int(val) if val.isdecimal() else 0
            gd = os.environ.get("GREETDELAY")
            if gd is not None and gd.isdecimal():
                greetdelay = int(gd)
            greetdelay = min(greetdelay, MAX_GREETDELAY)
            log(rbl, f"greetdelay: {greetdelay}")
            if greetdelay:
                time.sleep(greetdelay)
    if not rest:
        raise UsageError(USAGE)
    if not have_rbl:
        raise UsageError(
            "no RBL given: use -r base (the original's built-in default list is long dead)\n"
            + USAGE
        )
    if rbl.decision >= 2:
        return blocked_session(rbl, timeout)
    return inproc.run_or_exec(rest, "rblsmtpd")
