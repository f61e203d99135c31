"""qmail-inject: complete a message's header and queue it.

``qmail-inject [-nNaAhHs] [-fsender] [recip ...]`` reads a message on
standard input, adds the header fields a message must carry (Date,
Message-ID, From, a ``Cc: recipient list not shown: ;`` when there is no
To/Cc), rewrites the addresses of the sender and recipient fields with
``defaulthost``/``defaultdomain``/``plusdomain`` exactly as the original
does, drops Bcc/Resent-Bcc/Return-Path/Content-Length, and queues the
result with :func:`indimail.queue.submit.submit` (``-n`` prints it instead,
preceded by ``Return-Path: <sender>``).

Addresses are handled with the original's RFC 822 tokenizer (token822):
a header field is cut into tokens, the address list is walked from right
to left, each address is rewritten while its tokens are reversed, and the
field is written back folded at 80 columns.  All of this works on bytes, so
8-bit header data passes through as the original passes it.

Exit codes: 0 done, 100 usage error, unparsable header or address, too many
recipients, message too large, no recipients, or a permanent queue error;
111 temporary trouble (reading input or controls, the queue).
"""

from __future__ import annotations

import os
import sys
import time

from indimail.core.errors import EXIT_PERM, EXIT_TEMP, Fatal, UsageError
from indimail.core.spool import Spool

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~10 ms)
if TYPE_CHECKING:
    from collections.abc import Callable, MutableMapping
    from typing import BinaryIO, Protocol

    class LineReader(Protocol):
        def readline(self, size: int = -1, /) -> bytes: ...

# Start-up matters (sendmail runs once per message): this module and what it
# imports on the way to the queue stay clear of re, typing, tempfile,
# dataclasses, subprocess and socket, each of which costs milliseconds.

PROG = "qmail-inject"
USAGE = "usage: qmail-inject [-nNaAhHs] [-fsender] [recip ...]"
LINELEN = 80  # token822 folds rewritten address fields at this width
CHUNK = 65536
SPOOL_IN_MEMORY = 1 << 20  # bigger messages are spooled to a temporary file
SHOW_LINE = 1000  # bytes of an offending header line quoted in an error

# ---------------------------------------------------------------------------
# token822: the original's RFC 822 tokenizer, address-list walker and folder.

ATOM, QUOTE, LITERAL, COMMENT, LEFT, RIGHT, AT, COMMA, SEMI, COLON, DOT = range(1, 12)

Token = tuple[int, bytes]

_SINGLE = {
    ord("."): DOT,
    ord(","): COMMA,
    ord("@"): AT,
    ord("<"): LEFT,
    ord(">"): RIGHT,
    ord(":"): COLON,
    ord(";"): SEMI,
}
_PUNCT = {DOT: b".", AT: b"@", LEFT: b"<", RIGHT: b">", SEMI: b";", COLON: b":"}
_WHITE = frozenset(b" \t\r\n")
_NOT_ATOM = frozenset(b' \t\r\n(["<>;:@,.')
_BACKSLASH = ord("\\")
_ATOM_STOP = _NOT_ATOM | {ord("\\")}  # an atom's plain run ends at these
_QUOTE_STOP = frozenset(b'"\\')
_LITERAL_STOP = frozenset(b"]\\")
_COMMENT_STOP = frozenset(b"()\\")
# Bytes an atom may hold as is; any other makes it a quoted string.
_ATOM_OK = bytes(c for c in range(0x20, 0x7F) if c not in b")]\\")
_UNPARSE_SPECIAL = b'"[]()\\\r\n'  # escaped with a backslash when written back
_WORDS = (ATOM, LITERAL, QUOTE, COMMENT)


def _run_end(s: bytes, i: int, n: int, stop: frozenset[int]) -> int:
    """Index of the first byte at or after ``i`` that is in ``stop`` (or ``n``)."""
    while i < n and s[i] not in stop:
        i += 1
    return i


def _escape(text: bytes, special: bytes) -> bytes:
    """A backslash before each byte of ``text`` that is in ``special``."""
    if len(text.translate(None, special)) == len(text):
        return text
    out = bytearray()
    for c in text:
        if c in special:
            out.append(0x5C)
        out.append(c)
    return bytes(out)


def _enclosed(s: bytes, i: int, stop: frozenset[int], close: int, nest: int | None):
    """Text of a quoted string, domain literal or comment starting at ``i``.

    Returns ``(text, next index)`` or ``(None, i)`` if it is not closed.  As
    the original, nested parentheses of a comment are not part of its text.
    """
    buf = bytearray()
    n = len(s)
    level = 1
    while True:
        end = _run_end(s, i, n, stop)
        if end > i:
            buf += s[i:end]
            i = end
        if i >= n:
            return None, i
        c = s[i]
        i += 1
        if c == _BACKSLASH:
            if i >= n:
                return None, i
            buf.append(s[i])
            i += 1
        elif c == close:
            level -= 1
            if not level:
                return bytes(buf), i
        elif c == nest:
            level += 1


def tokenize(s: bytes) -> list[Token] | None:
    """token822_parse: the tokens of ``s``, or None if it is unparsable."""
    toks: list[Token] = []
    i = 0
    n = len(s)
    while i < n:
        c = s[i]
        kind = _SINGLE.get(c)
        if kind is not None:
            toks.append((kind, b""))
            i += 1
        elif c in _WHITE:
            i += 1
        elif c in b")]":
            return None
        elif c in b'("[':
            if c == ord("("):
                text, i = _enclosed(s, i + 1, _COMMENT_STOP, ord(")"), ord("("))
                kind = COMMENT
            elif c == ord('"'):
                text, i = _enclosed(s, i + 1, _QUOTE_STOP, ord('"'), None)
                kind = QUOTE
            else:
                text, i = _enclosed(s, i + 1, _LITERAL_STOP, ord("]"), None)
                kind = LITERAL
            if text is None:
                return None
            toks.append((kind, text))
        else:
            buf = bytearray()
            while i < n:
                c = s[i]
                if c == _BACKSLASH:
                    i += 1
                    if i >= n:
                        break
                    buf.append(s[i])
                    i += 1
                elif c in _NOT_ATOM:
                    break
                else:
                    end = _run_end(s, i + 1, n, _ATOM_STOP)
                    buf += s[i:end]
                    i = end
            text = bytes(buf)
            kind = QUOTE if text.translate(None, _ATOM_OK) else ATOM
            toks.append((kind, text))
    return toks


def _needspace(t1: int, t2: int) -> bool:
    if not t1:
        return False
    if t1 in (COLON, COMMA) or t2 == LEFT:
        return True
    return t1 in _WORDS and t2 in _WORDS


def unparse(toks: list[Token], linelen: int = LINELEN) -> bytes:
    """token822_unparse: write tokens back, folding after commas, ending in LF."""
    buf = bytearray()
    lineb = 0  # start of the current output line
    linee = -1  # position of the last tentative "\n " after a comma
    last = 0

    def fold() -> None:
        # A tentative break after each comma; the previous one is taken
        # back when the line it started still fits in linelen.
        nonlocal lineb, linee
        s = len(buf)
        if linee >= 0 and (not linelen or s - lineb <= linelen):
            del buf[linee : linee + 2]
            buf.extend(b"\n ")
            linee = len(buf) - 2
        else:
            if linee >= 0:
                lineb = linee + 1
            linee = s
            buf.extend(b"\n ")

    for kind, text in toks:
        if _needspace(last, kind):
            buf.append(0x20)
        last = kind
        if kind == COMMA:
            buf.append(ord(","))
            fold()
        elif kind in _PUNCT:
            buf += _PUNCT[kind]
        else:
            escaped = _escape(text, _UNPARSE_SPECIAL)
            if kind == QUOTE:
                buf += b'"' + escaped + b'"'
            elif kind == LITERAL:
                buf += b"[" + escaped + b"]"
            elif kind == COMMENT:
                buf += b"(" + escaped + b")"
            else:
                buf += escaped
    fold()
    del buf[-1]
    return bytes(buf)


def unquote(toks: list[Token]) -> bytes:
    """token822_unquote: the plain text of tokens (comments dropped)."""
    out = bytearray()
    for kind, text in toks:
        if kind == COMMA:
            out += b","
        elif kind in _PUNCT:
            out += _PUNCT[kind]
        elif kind == LITERAL:
            out += b"[" + text + b"]"
        elif kind in (ATOM, QUOTE):
            out += text
    return bytes(out)


def addrlist(toks: list[Token], callback: Callable[[list[Token]], None]) -> list[Token] | None:
    """token822_addrlist over a header field (its first two tokens are the
    name and the colon): call ``callback`` on each address, its tokens in
    reverse order, and return the field's tokens with the rewritten
    addresses; None if the list is malformed."""
    out: list[Token] = []
    addr: list[Token] = []
    comma: Token = (COMMA, b"")

    def got() -> None:
        callback(addr)
        out.extend(addr)
        addr.clear()

    ingroup = False
    wordok = True
    begin = 2
    t = len(toks) - 1
    while t >= begin:
        kind = toks[t][0]
        if kind == SEMI:
            if addr:
                got()
                out.append(comma)
            if ingroup:
                return None
            ingroup = True
            wordok = True
        elif kind == COLON:
            if addr:
                got()
            if not ingroup:
                return None
            ingroup = False
            while t >= begin and toks[t][0] != COMMA:
                out.append(toks[t])
                t -= 1
            if t >= begin:
                out.append(toks[t])
                t -= 1
            wordok = True
            continue
        elif kind == RIGHT:
            if addr:
                got()
                out.append(comma)
            out.append(toks[t])
            t -= 1
            while t >= begin and toks[t][0] != LEFT:
                addr.append(toks[t])
                t -= 1
            got()  # even when empty: <>
            if t < begin:
                return None
            out.append(toks[t])
            t -= 1
            while t >= begin and toks[t][0] in (COMMENT, ATOM, QUOTE, AT, DOT):
                out.append(toks[t])
                t -= 1
            wordok = False
            continue
        elif kind in (ATOM, QUOTE, LITERAL):
            if not wordok and addr:
                got()
                out.append(comma)
            wordok = False
            addr.append(toks[t])
            t -= 1
            continue
        elif kind == COMMENT:
            pass  # lexically a space
        elif kind == COMMA:
            if addr:
                got()
            wordok = True
        else:  # AT, DOT, LEFT
            wordok = True
            addr.append(toks[t])
            t -= 1
            continue
        out.append(toks[t])
        t -= 1
    if addr:
        got()
    out.extend(reversed(toks[: t + 1]))
    out.reverse()
    return out


# ---------------------------------------------------------------------------
# quote.c: RFC 821 quoting of a local part, as little as possible.

_QUOTE_OK = frozenset(c for c in range(33, 127) if chr(c) not in '"(),:;<>@[\\]')
_QUOTE_SPECIAL = b'\r\n"\\'


def quote_need(s: bytes) -> bool:
    if not s:
        return True
    if any(c not in _QUOTE_OK for c in s):
        return True
    return s.startswith(b".") or s.endswith(b".") or b".." in s


def quote(s: bytes) -> bytes:
    if quote_need(s):
        return b'"' + _escape(s, _QUOTE_SPECIAL) + b'"'
    return s


def quote2(s: bytes) -> bytes:
    """Quote the local part of ``s`` (up to its last ``@``) if needed."""
    if not s:
        return s
    j = s.rfind(b"@")
    if j < 0:
        return quote(s)
    return quote(s[:j]) + s[j:]


# ---------------------------------------------------------------------------
# hfield.c: header field names.

(
    H_SENDER,
    H_FROM,
    H_REPLYTO,
    H_TO,
    H_CC,
    H_BCC,
    H_DATE,
    H_MESSAGEID,
    H_SUBJECT,
    H_R_SENDER,
    H_R_FROM,
    H_R_REPLYTO,
    H_R_TO,
    H_R_CC,
    H_R_BCC,
    H_R_DATE,
    H_R_MESSAGEID,
    H_RETURNRECEIPTTO,
    H_ERRORSTO,
    H_APPARENTLYTO,
    H_RECEIVED,
    H_RETURNPATH,
    H_DELIVEREDTO,
    H_CONTENTLENGTH,
    H_CONTENTTYPE,
    H_CONTENTTRANSFERENCODING,
    H_NOTICEREQUESTEDUPONDELIVERYTO,
    H_MAILFOLLOWUPTO,
) = range(1, 29)

_HNAMES = {
    name: number
    for number, name in enumerate(
        (
            b"sender", b"from", b"reply-to", b"to", b"cc", b"bcc", b"date", b"message-id",
            b"subject", b"resent-sender", b"resent-from", b"resent-reply-to", b"resent-to",
            b"resent-cc", b"resent-bcc", b"resent-date", b"resent-message-id",
            b"return-receipt-to", b"errors-to", b"apparently-to", b"received", b"return-path",
            b"delivered-to", b"content-length", b"content-type", b"content-transfer-encoding",
            b"notice-requested-upon-delivery-to", b"mail-followup-to",
        ),
        1,
    )
}  # fmt: skip
_RESENT = (H_R_SENDER, H_R_FROM, H_R_REPLYTO, H_R_TO, H_R_CC, H_R_BCC, H_R_DATE, H_R_MESSAGEID)
_NOT_KEPT = (H_BCC, H_R_BCC, H_RETURNPATH, H_CONTENTLENGTH)


def _field_name(h: bytes) -> bytes | None:
    colon = h.find(b":")
    if colon < 0:
        return None
    return h[:colon].rstrip(b" \t")


def hfield_known(h: bytes) -> int:
    """Number of a known field name (case-insensitive), 0 for others."""
    name = _field_name(h)
    return _HNAMES.get(name.lower(), 0) if name else 0


def hfield_valid(h: bytes) -> bool:
    """A colon, and a non-empty name of printable non-blank ASCII before it."""
    name = _field_name(h)
    return bool(name) and all(32 < c < 127 for c in name)  # type: ignore[union-attr]


# ---------------------------------------------------------------------------
# Options: subgetopt(3) of the original (no permutation; ``--`` ends).


class GetoptError(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class SubGetopt:
    """Walk ``argv[1:]`` as the original's getopt does."""

    def __init__(self, argv: list[str], opts: str) -> None:
        self.argv = argv
        self.opts = opts
        self.ind = 1
        self.pos = 0

    def __iter__(self):
        return self

    def __next__(self) -> tuple[str, str | None]:
        argv = self.argv
        if self.ind >= len(argv):
            raise StopIteration
        if self.pos and self.pos >= len(argv[self.ind]):
            self.ind += 1
            self.pos = 0
            if self.ind >= len(argv):
                raise StopIteration
        if not self.pos:
            arg = argv[self.ind]
            if not arg.startswith("-") or arg == "-":
                raise StopIteration
            if arg.startswith("--"):
                self.ind += 1
                raise StopIteration
            self.pos = 1
        arg = argv[self.ind]
        c = arg[self.pos]
        self.pos += 1
        at = self.opts.find(c)
        if c == ":" or at < 0:
            raise GetoptError(f"illegal option -- {c}")
        if self.opts[at + 1 : at + 2] != ":":
            return c, None
        value = arg[self.pos :]
        self.ind += 1
        self.pos = 0
        if not value:
            if self.ind >= len(argv):
                raise GetoptError(f"option requires an argument -- {c}")
            value = argv[self.ind]
            self.ind += 1
        return c, value

    def skip_rest(self) -> None:
        """Ignore what is left of the current argument (sendmail -E, -J)."""
        if self.pos:
            self.pos = len(self.argv[self.ind])

    @property
    def rest(self) -> list[str]:
        return self.argv[self.ind :]


# ---------------------------------------------------------------------------
# The message: header fields, then the body.


def _show(line: bytes) -> str:
    text = line.rstrip(b"\n")
    shown = text[:SHOW_LINE].decode("utf-8", "backslashreplace")
    if len(text) > SHOW_LINE:
        shown += f"... ({len(text)} bytes)"
    return shown


def _die_parse(line: bytes) -> Fatal:
    return Fatal(EXIT_PERM, "unable to parse this line:\n" + _show(line))


def _scan_uint(text: str) -> int:
    """The leading decimal digits of ``text`` as a number (0 if none)."""
    end = 0
    while end < len(text) and text[end].isdecimal():
        end += 1
    return int(text[:end]) if end else 0


def _scan_int(text: str) -> int:
    """An optionally signed leading number of ``text`` (0 if none)."""
    sign = 1 if text[:1] in ("-", "+") else 0
    digits = _scan_uint(text[sign:])
    return -digits if text[:1] == "-" else digits


class _Sink:
    """Where the message goes; counts bytes against databytes when queueing."""

    def __init__(self, out: BinaryIO, limit: int) -> None:
        self.out = out
        self.limit = limit
        self.size = 0
        self.over = False

    def put(self, data: bytes) -> None:
        if self.over:
            return
        if self.limit:
            self.size += len(data)
            if self.size > self.limit:
                self.over = True
                return
        try:
            self.out.write(data)
        except OSError as exc:
            raise Fatal(EXIT_TEMP, f"unable to write message: {exc.strerror}") from None


class _Spool(Spool):
    """The message on its way to the queue, with qmail-inject's messages for
    temporary-file trouble."""

    def _new_file(self) -> BinaryIO:
        try:
            return super()._new_file()
        except OSError as exc:
            raise Fatal(EXIT_TEMP, f"unable to create temporary file: {exc.strerror}") from None

    def message(self) -> bytes | BinaryIO:
        try:
            return super().message()
        except OSError as exc:
            raise Fatal(EXIT_TEMP, f"unable to read temporary file: {exc.strerror}") from None


class _Inject:
    def __init__(self, environ: MutableMapping[str, str]) -> None:
        self.environ = environ
        self.starttime = int(time.time())
        self.flagqueue = True
        self.namecomment = False
        self.deletesender = False
        self.deletefrom = False
        self.deletemessid = False
        self.hackrecip = False
        self.hackmess = False
        self.sender: bytes | None = None
        self.reciplist: list[bytes] = []
        self.hrlist: list[bytes] = []
        self.hrrlist: list[bytes] = []
        self.tocclist: list[bytes] = []
        self.seen: set[int] = set()
        self.saved: list[bytes] = []
        self.flagrh = False
        self.flagresent = False
        self.rcptcount = 0
        self.maxrcpt = 0
        self.databytes = 0
        self.mft: set[bytes] | None = None

    def env(self, name: str) -> bytes | None:
        value = self.environ.get(name)
        return None if value is None else os.fsencode(value)

    # -- setup -------------------------------------------------------------

    def identity(self) -> None:
        """From/sender parts from the environment (before defaultqueue)."""
        env = self.env
        self.mailhost = env("QMAILHOST")
        if self.mailhost is None:
            self.mailhost = env("MAILHOST")
        self.mailrhost = env("QMAILSHOST")
        if self.mailrhost is None:
            self.mailrhost = self.mailhost
        user = None
        for name in ("QMAILUSER", "MAILUSER", "USER", "LOGNAME"):
            user = env(name)
            if user is not None:
                break
        self.mailuser = b"anonymous" if user is None else user
        self.mailusertype = QUOTE if quote_need(self.mailuser) else ATOM
        ruser = env("QMAILSUSER")
        self.mailruser = self.mailuser if ruser is None else ruser

    def controls(self) -> None:
        from indimail.core import control, envdir, paths

        # paths.load_places, not paths.places: the process-wide cache must
        # not be filled before the defaultqueue envdirs have set QUEUE_BASE
        # & co, or submit() would queue with the paths of before.
        p = paths.load_places(self.environ)
        cd = p.controldir
        mftfile = self.environ.get("QMAILMFTFILE")
        if mftfile is not None:
            items = control.read_list(mftfile, controldir=cd)
            if items is not None:
                self.mft = {i.encode("utf-8", "surrogateescape").lower() for i in items}
        if not self.environ.get("FASTQUEUE") and envdir.apply_defaultqueue(cd, self.environ):
            p = paths.load_places(self.environ)
            cd = p.controldir

        def setting(var: str, name: str) -> bytes:
            value = self.environ.get(var)
            if value is None:
                value = control.read_line(name, name, controldir=cd, flagme=True)
            return os.fsencode(value or "")

        def parsed(text: bytes) -> list[Token]:
            toks = tokenize(text)
            if toks is None:
                raise _die_parse(text)
            toks.reverse()
            return toks

        self.defaultdomain_rev = parsed(b"." + setting("QMAILDEFAULTDOMAIN", "defaultdomain"))
        self.defaulthost_rev = parsed(b"@" + setting("QMAILDEFAULTHOST", "defaulthost"))
        self.plusdomain_rev = parsed(b"." + setting("QMAILPLUSDOMAIN", "plusdomain"))
        self.idhost = setting("QMAILIDHOST", "idhost")
        raw = self.environ.get("DATABYTES")
        self.databytes = (
            _scan_uint(raw) if raw is not None else control.read_int("databytes", 0, controldir=cd)
        )
        raw = self.environ.get("MAXRECIPIENTS")
        if raw is not None:
            self.maxrcpt = _scan_int(raw)
        else:
            self.maxrcpt = max(control.read_int("maxrecipients", 0, controldir=cd), 0)
        if self.databytes > 0:
            try:
                st = os.fstat(0)
            except OSError as exc:
                raise Fatal(EXIT_TEMP, f"unable to stat standard input: {exc.strerror}") from None
            if st.st_size > self.databytes:
                raise Fatal(EXIT_PERM, "message size exceeds my databytes limit")

    # -- address rewriting (addresses arrive with their tokens reversed) ---

    def rwgeneric(self, addr: list[Token]) -> None:
        if not addr:
            return  # <>
        if len(addr) >= 2 and addr[1][0] == AT and addr[0][0] == LITERAL and not addr[0][1]:
            return  # foo@[]
        if addr[-1][0] == AT:  # source route: drop up to its colon
            while addr:
                if addr.pop()[0] == COLON:
                    break
            if not addr:
                return
        if addr[0][0] == DOT:
            del addr[0]
            if not addr:
                return
        if addr[0][0] == AT:
            del addr[0]
            if not addr:
                return
        if not any(kind == AT for kind, _ in addr):
            addr[0:0] = self.defaulthost_rev
        kind, text = addr[0]
        if kind == ATOM and text.endswith(b"+"):
            addr[0] = (ATOM, text[:-1])
            addr[0:0] = self.plusdomain_rev
        for kind, _ in addr:
            if kind == DOT:
                return
            if kind == AT:
                break
        for kind, _ in addr:
            if kind == LITERAL:
                return
            if kind == AT:
                break
        addr[0:0] = self.defaultdomain_rev

    @staticmethod
    def plain(addr: list[Token]) -> bytes:
        return unquote(addr[::-1])

    def rwreturn(self, addr: list[Token]) -> None:
        self.rwgeneric(addr)
        if self.sender is None:
            sender = self.plain(addr)
            if self.hackrecip:
                sender += b"-@[]"
            self.sender = sender

    def rwsender(self, addr: list[Token]) -> None:
        self.rwgeneric(addr)

    def rwhrr(self, addr: list[Token]) -> None:
        self.rwgeneric(addr)
        self.hrrlist.append(self.plain(addr))

    def rwhr(self, addr: list[Token]) -> None:
        self.rwgeneric(addr)
        self.hrlist.append(self.plain(addr))

    def rwtocc(self, addr: list[Token]) -> None:
        self.rwgeneric(addr)
        plain = self.plain(addr)
        self.hrlist.append(plain)
        self.tocclist.append(plain)

    def rewrite(self, line: bytes, callback: Callable[[list[Token]], None]) -> bytes:
        toks = tokenize(line)
        if toks is None:
            raise _die_parse(line)
        out = addrlist(toks, callback)
        if out is None:
            raise _die_parse(line)
        return unparse(out)

    def set_sender(self, arg: bytes) -> None:
        """-f: the envelope sender, rewritten like any address."""
        text = quote2(arg)
        toks = tokenize(text)
        if toks is None:
            raise _die_parse(text)
        toks.reverse()
        self.rwgeneric(toks)
        self.sender = self.plain(toks)

    def recipient(self, arg: bytes) -> None:
        toks = tokenize(quote2(arg))
        if toks is None:
            raise Fatal(EXIT_PERM, f"unable to parse address: {_show(arg)}")
        self.rcptcount += 1
        if self.maxrcpt > 0 and self.rcptcount > self.maxrcpt:
            raise Fatal(EXIT_PERM, "max number of recipients exceeded")
        toks.reverse()
        self.rwgeneric(toks)
        self.reciplist.append(self.plain(toks))

    # -- header ------------------------------------------------------------

    def header_field(self, h: bytes) -> None:
        htype = hfield_known(h)
        if (
            (self.deletefrom and htype == H_FROM)
            or (self.deletemessid and htype == H_MESSAGEID)
            or (self.deletesender and htype == H_RETURNPATH)
        ):
            return
        if htype:
            self.seen.add(htype)
        elif not hfield_valid(h):
            raise Fatal(EXIT_PERM, "invalid header field: " + _show(h))
        rw = None
        if htype in (H_TO, H_CC):
            rw = self.rwtocc if self.flagrh else None
        elif htype in (H_BCC, H_APPARENTLYTO):
            rw = self.rwhr if self.flagrh else None
        elif htype in (H_R_TO, H_R_CC, H_R_BCC):
            rw = self.rwhrr if self.flagrh else None
        elif htype == H_RETURNPATH:
            rw = self.rwreturn
        elif htype in (
            H_SENDER,
            H_FROM,
            H_REPLYTO,
            H_RETURNRECEIPTTO,
            H_ERRORSTO,
            H_R_SENDER,
            H_R_FROM,
            H_R_REPLYTO,
        ):
            rw = self.rwsender
        if rw is not None:
            h = self.rewrite(h, rw)
        if htype in _NOT_KEPT:
            return
        self.saved.append(h)

    def default_from(self) -> bytes:
        fullname = None
        for name in ("QMAILNAME", "MAILNAME", "NAME"):
            fullname = self.env(name)
            if fullname is not None:
                break
        toks: list[Token] = [(ATOM, b"From"), (COLON, b"")]
        if fullname is not None and not self.namecomment:
            toks += [(QUOTE, fullname), (LEFT, b"")]
        toks.append((self.mailusertype, self.mailuser))
        if self.mailhost is not None:
            toks += [(AT, b""), (ATOM, self.mailhost)]
        if fullname is not None:
            toks.append((COMMENT, fullname) if self.namecomment else (RIGHT, b""))
        return self.rewrite(unparse(toks), self.rwsender)

    def default_return_path(self) -> None:
        user = self.mailruser
        if self.hackmess:
            user += b"-%d.%d" % (self.starttime, os.getpid())
        if self.hackrecip:
            user += b"-"
        toks: list[Token] = [(ATOM, b"Return-Path"), (COLON, b""), (QUOTE, user)]
        if self.mailrhost is not None:
            toks += [(AT, b""), (ATOM, self.mailrhost)]
        self.rewrite(unparse(toks), self.rwreturn)

    def date_field(self) -> bytes:
        from indimail.core.dates import rfc5322_date

        return b"Date: " + rfc5322_date(self.starttime).encode() + b"\n"

    def msgid_field(self) -> bytes:
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(self.starttime)).encode()
        return b"Message-ID: <%s.%d.indimail@%s>\n" % (stamp, os.getpid(), self.idhost)

    def mft_field(self) -> bytes:
        if self.mft is None or H_MAILFOLLOWUPTO in self.seen:
            return b""
        if not any(a.lower() in self.mft for a in self.tocclist):
            return b""
        addrs = [quote2(a) for a in reversed(self.tocclist)]
        return b"Mail-Followup-To: " + b",\n  ".join(addrs) + b"\n"

    def finish_header(self, sink: _Sink) -> None:
        self.flagresent = any(h in self.seen for h in _RESENT)
        if self.sender is None:
            self.default_return_path()
        out = bytearray()
        if not self.flagqueue:
            out += b"Return-Path: <" + quote2(self.sender or b"") + b">\n"
        seen = self.seen
        if self.flagresent:
            if H_R_DATE not in seen:
                out += b"Resent-" + self.date_field()
            if H_R_MESSAGEID not in seen:
                out += b"Resent-" + self.msgid_field()
            if H_R_FROM not in seen:
                out += b"Resent-" + self.default_from()
            if H_R_TO not in seen and H_R_CC not in seen:
                out += b"Resent-Cc: recipient list not shown: ;\n"
        else:
            if H_DATE not in seen:
                out += self.date_field()
            if H_MESSAGEID not in seen:
                out += self.msgid_field()
            if H_FROM not in seen:
                out += self.default_from()
            if H_TO not in seen and H_CC not in seen:
                out += b"Cc: recipient list not shown: ;\n"
            out += self.mft_field()
        sink.put(bytes(out))
        for h in self.saved:
            sink.put(h)

    def message(self, reader: LineReader, sink: _Sink) -> None:
        """headerbody(): header fields up to a blank or non-header line."""

        def getline(size: int = -1) -> bytes:
            try:
                return reader.readline(size)
            except OSError as exc:
                raise Fatal(EXIT_TEMP, f"read error: {exc.strerror}") from None

        field: bytearray | None = None
        while True:
            line = getline()
            if not line:
                if field is not None:
                    self.header_field(bytes(field))
                self.finish_header(sink)
                return  # no body
            if not line.endswith(b"\n"):
                line += b"\n"
            if field is not None:
                if line[0] in b" \t":
                    field += line
                    continue
                self.header_field(bytes(field))
            if line == b"\n":
                self.finish_header(sink)
                sink.put(line)
                break
            if line.startswith(b"From "):
                field = bytearray(b"MBOX-Line: " + line)
            elif hfield_valid(line):
                field = bytearray(line)
            else:
                self.finish_header(sink)
                sink.put(b"\n")
                sink.put(line)
                break
        last = b"\n"
        while chunk := getline(CHUNK):
            sink.put(chunk)
            last = chunk
        if not last.endswith(b"\n"):
            sink.put(b"\n")

    # -- main ----------------------------------------------------------------

    def run(self, argv: list[str], stdin: LineReader | None, dot_ends: bool) -> int:
        for letter in self.environ.get("QMAILINJECT", ""):
            if letter == "c":
                self.namecomment = True
            elif letter == "s":
                self.deletesender = True
            elif letter == "f":
                self.deletefrom = True
            elif letter == "i":
                self.deletemessid = True
            elif letter == "r":
                self.hackrecip = True
            elif letter == "m":
                self.hackmess = True
            elif letter == "n":
                self.flagqueue = False
        self.identity()
        self.controls()
        strategy = "default"
        opts = SubGetopt(argv, "asAhHnNf:")
        try:
            for opt, value in opts:
                if opt == "a":
                    strategy = "args"
                elif opt == "s":
                    self.deletesender = True
                elif opt == "A":
                    strategy = "default"
                elif opt == "h":
                    strategy = "header"
                elif opt == "H":
                    strategy = "both"
                elif opt == "n":
                    self.flagqueue = False
                elif opt == "N":
                    self.flagqueue = True
                elif opt == "f":
                    self.set_sender(os.fsencode(value or ""))
        except GetoptError as exc:
            raise UsageError(f"{exc.text}\n{PROG}: {USAGE}") from None
        args = opts.rest
        if strategy == "default":
            strategy = "args" if args else "header"
        if strategy != "header":
            for arg in args:
                self.recipient(os.fsencode(arg))
        self.flagrh = strategy != "args"

        if stdin is None:
            try:
                stdin = open(0, "rb", buffering=CHUNK, closefd=False)  # noqa: SIM115
            except OSError as exc:
                raise Fatal(EXIT_TEMP, f"read error: {exc.strerror}") from None
        if dot_ends:
            stdin = DotTerminated(stdin)

        if not self.flagqueue:
            try:
                out = open(1, "wb", buffering=CHUNK, closefd=False)  # noqa: SIM115
            except OSError as exc:
                raise Fatal(EXIT_TEMP, f"unable to write output: {exc.strerror}") from None
            self.message(stdin, _Sink(out, 0))
            try:
                out.flush()
            except BrokenPipeError:
                pass
            except OSError as exc:
                raise Fatal(EXIT_TEMP, f"unable to write output: {exc.strerror}") from None
            return 0

        spool = _Spool(SPOOL_IN_MEMORY)
        try:
            sink = _Sink(spool, self.databytes)  # type: ignore[arg-type]
            self.message(stdin, sink)
            if sink.over:
                raise Fatal(EXIT_PERM, "message size exceeds my databytes limit")
            recipients = list(self.reciplist)
            if self.flagrh:
                recipients += self.hrrlist if self.flagresent else self.hrlist
            if not recipients:
                raise Fatal(
                    EXIT_PERM,
                    "no recipients: none given as arguments"
                    + ("" if strategy == "args" else " and none found in the header"),
                )
            return self.queue(spool.message(), recipients)
        finally:
            spool.close()

    def queue(self, message: bytes | BinaryIO, recipients: list[bytes]) -> int:
        from indimail.queue import codes
        from indimail.queue.submit import SubmitError, is_ours, submit

        # TODO(envrules/domainqueue/SRS issue): from.envrules, domainqueue and
        # SRS rewriting of the original run here, before the queue is opened.
        try:
            submit(message, self.sender or b"", recipients, environ=self.environ)
        except SubmitError as exc:
            reason = exc.reason.strip()
            if reason and exc.code != codes.CUSTOM_ERR:
                program = self.environ.get("QMAILQUEUE", "")
                if is_ours(program):
                    reason = "\n".join(f"qmail-queue: {r}" for r in reason.splitlines())
                elif exc.code == codes.EXEC_QMAILQUEUE:
                    reason = f"{PROG}: {reason}"
                _write_err(reason + "\n")
            _write_err(f"{PROG}: fatal: {exc.text[1:]}\n")
            return EXIT_PERM if exc.permanent else EXIT_TEMP
        return 0


class DotTerminated:
    """Standard input of sendmail without -i: a line of a single dot ends it."""

    def __init__(self, raw: LineReader) -> None:
        self.raw = raw
        self.at_line_start = True
        self.done = False

    def readline(self, size: int = -1, /) -> bytes:
        if self.done:
            return b""
        line = self.raw.readline(size)
        if self.at_line_start and line in (b".\n", b".\r\n", b"."):
            self.done = True
            return b""
        self.at_line_start = line.endswith(b"\n")
        return line


def _write_err(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def run(
    argv: list[str],
    *,
    environ: MutableMapping[str, str] | None = None,
    stdin: LineReader | None = None,
    dot_ends: bool = False,
) -> int:
    """qmail-inject with ``argv``; never raises.

    ``environ`` (default ``os.environ``) is read and, by the defaultqueue
    envdirs, changed; ``stdin`` defaults to fd 0; with ``dot_ends`` a line
    holding only a dot ends the message (sendmail without ``-i``).
    """
    if environ is None:
        environ = os.environ
    try:
        return _Inject(environ).run(argv, stdin, dot_ends)
    except UsageError as exc:
        _write_err(f"{PROG}: {exc.message}\n")
        return exc.code
    except Fatal as exc:
        _write_err(f"{PROG}: fatal: {exc.message}\n")
        return exc.code
    except MemoryError:
        _write_err(f"{PROG}: fatal: out of memory\n")
        return EXIT_TEMP


def main(argv: list[str]) -> int:
    """Command ``qmail-inject``."""
    return run([PROG, *argv[1:]])
