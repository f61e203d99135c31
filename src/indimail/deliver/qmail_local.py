"""qmail-local: deliver or forward one message for one local address.

``qmail-local [-nN] user homedir local dash ext domain sender
defaultdelivery qqeh``; the message is on fd 0, which must be seekable.
The instructions come from ``homedir/.qmail<dash><ext>`` (with the
``-default`` fallbacks) or, when there is none or it is empty, from
``defaultdelivery``.  See docs/local-delivery.md and dot-qmail(5).

The report goes to stdout as qmail-lspawn expects it: ``did F+W+P`` and
``qp N`` on success, otherwise the error text (the original writes errors
to fd 2, which qmail-lspawn points at the same pipe).  Exit 0 delivered,
100 permanent failure, 111 temporary failure.

The core is :func:`deliver`, which a spawner can call in a forked child
without exec; :func:`main` is the command wrapper.  :func:`deliver` never
changes the process's working directory or ``os.environ``: paths are
resolved against the home directory and programs get their own
environment.
"""

from __future__ import annotations

import errno
import getopt
import io
import os
import stat
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from indimail.core.errors import UsageError
from indimail.deliver import mailfile

USAGE = "usage: qmail-local [ -nN ] user homedir local dash ext domain sender defaultdelivery qqeh"
OVERQUOTA = "Recipient's mailbox is full, message returned to sender. (#5.2.2)"
PATRN = 0o002  # conf-patrn: mode bits refused on ~ and ~/.qmail
HARD_EXITS = frozenset({64, 65, 70, 76, 77, 78, 100, 112})
MAX_DOTQMAIL = 8 << 20  # refuse absurd .qmail files rather than eat memory
MAX_PROGRAM_OUTPUT = 64 << 10  # when capturing a program's output (no fd)
CHUNK = 1 << 16
# errnos that mean "this .qmail file does not exist" (anything else defers)
_MISSING = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP})
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class LocalArgs:
    """The nine arguments of qmail-local, plus ``-n`` (doit=False)."""

    user: str
    homedir: str
    local: str
    dash: str
    ext: str
    domain: str
    sender: str
    defaultdelivery: str
    qqeh: str = ""
    doit: bool = True


class _Stop(Exception):
    """End the delivery with ``code``; ``text`` (if any) is the report."""

    def __init__(self, code: int, text: str = "") -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def parse_args(argv: list[str]) -> LocalArgs:
    """``argv`` without the program name; raises UsageError (exit 100)."""
    try:
        opts, args = getopt.getopt(argv, "nN")
    except getopt.GetoptError:
        raise UsageError(USAGE) from None
    doit = True
    for opt, _ in opts:
        doit = opt == "-N"
    if len(args) != 9 or not args[1].startswith("/"):
        raise UsageError(USAGE)
    return LocalArgs(*args, doit=doit)


# ---------------------------------------------------------------- helpers


def qtime(t: float) -> str:
    """``Www Mmm DD HH:MM:SS YYYY`` in UTC, as libqmail's qtime()."""
    tm = time.gmtime(t)
    return (
        f"{_DAYS[tm.tm_wday]} {_MONTHS[tm.tm_mon - 1]} {tm.tm_mday:02d} "
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} {tm.tm_year}"
    )


_QUOTE_OK = frozenset(
    "!#$%&'*+-/0123456789=?ABCDEFGHIJKLMNOPQRSTUVWXYZ^_`abcdefghijklmnopqrstuvwxyz{|}~."
)


def _quote_need(box: str) -> bool:
    if not box or box[0] == "." or box[-1] == "." or ".." in box:
        return True
    return any(ch not in _QUOTE_OK for ch in box)


def quote2(addr: str) -> str:
    """RFC 821 quoting of the box part (before the last ``@``), as quote2()."""
    if not addr:
        return addr
    at = addr.rfind("@")
    box, rest = (addr, "") if at < 0 else (addr[:at], addr[at:])
    if _quote_need(box):
        escaped = "".join("\\" + ch if ch in '\r\n"\\' else ch for ch in box)
        box = f'"{escaped}"'
    return box + rest


def _enc(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _dec(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _lines(fd: int, keep: int) -> Iterator[tuple[bytes | None, bool]]:
    """Lines of ``fd`` from its offset: (line or None if longer than
    ``keep``, ended by a newline).  Memory stays bounded by ``keep``."""
    buf = b""
    skipping = False
    while True:
        chunk = os.read(fd, CHUNK)
        if not chunk:
            if skipping:
                yield None, False
            elif buf:
                yield buf, False
            return
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                if not skipping:
                    buf += chunk[start:]
                    if len(buf) > keep:
                        skipping, buf = True, b""
                break
            if skipping:
                skipping = False
                yield None, True
            else:
                line = buf + chunk[start : nl + 1]
                buf = b""
                yield (line if len(line) <= keep else None), True
            start = nl + 1


def _fileno(stream: BinaryIO) -> int | None:
    try:
        stream.flush()
        return stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


class _Chain:
    """A read()-able concatenation of header bytes and the message fd."""

    def __init__(self, head: bytes, fd: int) -> None:
        self._head = head
        self._fd = fd

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n is None or n < 0 or n >= len(self._head):
                data, self._head = self._head, b""
            else:
                data, self._head = self._head[:n], self._head[n:]
            return data
        return os.read(self._fd, CHUNK if n is None or n < 0 else n)


# ---------------------------------------------------------------- delivery


class _Delivery:
    def __init__(
        self,
        args: LocalArgs,
        msgfd: int,
        out: BinaryIO,
        err: BinaryIO,
        environ: Mapping[str, str],
        controldir: Path | None,
    ) -> None:
        self.a = args
        self.msgfd = msgfd
        self.out = out
        self.err = err
        self.env = dict(environ)
        self.controldir = controldir
        self.home = args.homedir
        self.qqeh = args.qqeh
        self.count_file = self.count_forward = self.count_program = 0
        self.forward_qp = 0
        self.flag99 = False
        self.datasync = False

    # -- small pieces

    def _path(self, name: str) -> str:
        return os.path.join(self.home, name)

    def _rewind(self) -> None:
        try:
            os.lseek(self.msgfd, 0, os.SEEK_SET)
        except OSError:
            raise _Stop(111, "Unable to rewind message. (#4.3.0)") from None

    def _say(self, kind: str, what: str) -> None:
        self.out.write(_enc(f"{kind} {what}\n"))
        self.out.flush()

    def _warn(self, text: str) -> None:
        self.err.write(_enc(text + "\n"))
        self.err.flush()

    # -- steps of the original main()

    def sanitize_env(self) -> None:
        keep = ["USE_FSYNC", "USE_FDATASYNC", "USE_SYNCDIR", "MESSID"]
        extra = self.env.get("SANITIZE_ENV")
        if extra is None:
            return
        keep += [name for name in extra.split(":") if name]
        self.env = {k: self.env[k] for k in keep if k in self.env}

    def check_home(self) -> None:
        home = self.home
        try:
            st = os.stat(home)
            if not stat.S_ISDIR(st.st_mode):
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            if not os.access(home, os.X_OK):
                raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        except OSError as exc:
            raise _Stop(111, f"Unable to switch to {home}: {exc.strerror}. (#4.3.0)") from None
        if st.st_mode & PATRN:
            raise _Stop(111, "Uh-oh: home directory is writable. (#4.7.0)")
        if st.st_mode & stat.S_ISVTX:
            if self.a.doit:
                raise _Stop(
                    111, "Home directory is sticky: user is editing his .qmail file. (#4.2.1)"
                )
            self._warn("Warning: home directory is sticky.")
        if self.env.get("LOCALDOMAINS") or os.path.lexists(self._path(".localdomains")):
            self.check_localdomains()

    def check_localdomains(self) -> None:
        from indimail.core import control

        try:
            domains = control.read_list("localdomains", controldir=self.controldir)
        except control.ControlError:
            raise _Stop(111, "Unable to read control file [localdomains]. (#4.3.0)") from None
        if domains is None:
            return
        sender = self.a.sender
        at = sender.rfind("@")
        if at < 0 or at == len(sender) - 1:
            return
        if sender[at + 1 :].lower() not in {d.lower() for d in domains}:
            raise _Stop(
                100, "This email address doesn't accept mails from remote domains. (#5.2.1)"
            )

    def loop_check(self, dtline: bytes) -> None:
        from indimail.core import control

        try:
            maxdt = control.read_int("maxdeliveredto", 0, controldir=self.controldir)
        except control.ControlError:
            raise _Stop(111, "Unable to read control file maxdeliveredto. (#4.3.0)") from None
        self._rewind()
        found = 0
        try:
            for line, complete in _lines(self.msgfd, len(dtline)):
                if not complete:
                    break
                if line is not None and len(line) <= 1:
                    break
                if line == dtline:
                    found += 1
                if maxdt > -1 and found > maxdt:
                    raise _Stop(
                        100,
                        "This message is looping: it already has my Delivered-To line. (#5.4.6)",
                    )
        except OSError as exc:
            raise _Stop(111, f"Unable to read message: {exc.strerror}. (#4.3.0)") from None

    def open_qmail(self, name: str) -> tuple[int, bool] | None:
        """(fd, executable) of ``home/name`` if it is a regular file."""
        path = self._path(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            if exc.errno in _MISSING:
                return None
            raise _Stop(111, f"Unable to open {name}: {exc.strerror}. (#4.3.0)") from None
        try:
            st = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            raise _Stop(111, f"Unable to open {name}: {exc.strerror}. (#4.3.0)") from None
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        if st.st_mode & PATRN:
            os.close(fd)
            raise _Stop(111, "Uh-oh: .qmail file is writable. (#4.7.0)")
        return fd, bool(st.st_mode & 0o100)

    def qmail_exists(self, name: str) -> bool:
        try:
            os.stat(self._path(name))
        except OSError as exc:
            if mailfile.is_temp(exc.errno):
                raise _Stop(111, f"Unable to open {name}: {exc.strerror}. (#4.3.0)") from None
            return False
        return True

    def search(self, safeext: bytes, ext: bytes) -> tuple[int, bool, str] | None:
        """Find the .qmail file: exact name, then the -default fallbacks."""
        dash = self.a.dash
        name = ".qmail" + dash + _dec(safeext)
        found = self.open_qmail(name)
        if found is not None:
            if safeext.endswith(b"default"):
                i = len(safeext) - 7
                if i <= len(ext):
                    self.env["DEFAULT"] = _dec(ext[i:])
            return found[0], found[1], name
        for i in range(len(safeext), -1, -1):
            if i and safeext[i - 1 : i] != b"-":
                continue
            name = ".qmail" + dash + _dec(safeext[:i]) + "default"
            found = self.open_qmail(name)
            if found is not None:
                if i <= len(ext):
                    self.env["DEFAULT"] = _dec(ext[i:])
                return found[0], found[1], name
        return None

    def read_qmail(self, fd: int, name: str) -> bytes:
        chunks = []
        total = 0
        try:
            while True:
                chunk = os.read(fd, CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if total > MAX_DOTQMAIL:
                    raise _Stop(111, f"Uh-oh: {name} is larger than {MAX_DOTQMAIL} bytes. (#4.7.0)")
                chunks.append(chunk)
        except OSError as exc:
            raise _Stop(111, f"Unable to read {name}: {exc.strerror}. (#4.3.0)") from None
        finally:
            os.close(fd)
        return b"".join(chunks)

    # -- the deliveries

    def maildir(self, line: str) -> None:
        self._rewind()
        head = self.rpline + self.dtline + _enc(self.qqeh)
        try:
            mailfile.write_maildir(self._path(line), head, self.msgfd, datasync=self.datasync)
        except mailfile.MaildirError as exc:
            if exc.code == mailfile.MD_CHDIR:
                raise _Stop(111, "Unable to chdir to maildir. (#4.2.1)") from None
            if exc.code == mailfile.MD_READ:
                raise _Stop(111, "Unable to read message. (#4.3.0)") from None
            if exc.code == mailfile.MD_QUOTA:
                raise _Stop(100, OVERQUOTA) from None
            raise _Stop(111, "Temporary error on maildir delivery. (#4.3.0)") from None

    def mbox(self, line: str) -> None:
        self._rewind()
        head = self.ufline + self.rpline + self.dtline + _enc(self.qqeh)
        try:
            mailfile.write_mbox(self._path(line), head, self.msgfd, datasync=self.datasync)
        except mailfile.MboxError as exc:
            if exc.kind == "quota":
                raise _Stop(100, OVERQUOTA) from None
            if exc.kind == "open":
                raise _Stop(111, f"Unable to open {line}: {exc.reason}. (#4.2.1)") from None
            if exc.kind == "write":
                raise _Stop(111, f"Unable to write {line}: {exc.reason}. (#4.3.0)") from None
            raise _Stop(111, f"{exc.reason}. (#4.3.0)") from None

    def program(self, cmd: str) -> None:
        # imported here, not at the top: subprocess brings threading, whose
        # at-fork hook would cost every forked delivery ~0.4 ms of CPU
        import subprocess

        self._rewind()
        env = dict(self.env)
        env["QQEH"] = self.qqeh
        ofd, efd = _fileno(self.out), _fileno(self.err)
        rfd = wfd = -1
        if ofd is None or efd is None:
            rfd, wfd = os.pipe()
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", cmd],
                stdin=self.msgfd,
                stdout=wfd if ofd is None else ofd,
                stderr=wfd if efd is None else efd,
                cwd=self.home,
                env=env,
                close_fds=True,
                umask=0o077,
            )
        except OSError as exc:
            raise _Stop(111, f"Unable to run /bin/sh: {exc.strerror}. (#4.3.0)") from None
        finally:
            if wfd != -1:
                os.close(wfd)
        if rfd != -1:
            sink = self.out if ofd is None else self.err
            kept = 0
            with os.fdopen(rfd, "rb", buffering=0) as pipe:
                while chunk := pipe.read(CHUNK):
                    if kept < MAX_PROGRAM_OUTPUT:
                        sink.write(chunk[: MAX_PROGRAM_OUTPUT - kept])
                        kept += len(chunk)
        code = proc.wait()
        if code < 0:
            raise _Stop(111, f"Aack, child [{cmd}] crashed. (#4.3.0)")
        if code in HARD_EXITS:
            raise _Stop(100)
        if code == 99:
            self.flag99 = True
        elif code != 0:
            raise _Stop(111)

    def forward(self, recips: list[str]) -> None:
        from indimail.queue.submit import SubmitError, submit

        self._rewind()
        head = bytearray(self.dtline)
        for r in recips:
            head += _enc(f"X-Forwarded-To: {r}\n")
        head += _enc(f"X-Forwarded-For: {self.newsender}\n")
        head += _enc(self.qqeh)
        env = dict(self.env)
        env["QQEH"] = self.qqeh
        try:
            queued = submit(
                _Chain(bytes(head), self.msgfd),  # type: ignore[arg-type]
                _enc(self.newsender),
                [_enc(r) for r in recips],
                environ=env,
            )
        except SubmitError as exc:
            text = exc.text[1:] if exc.text[:1] in ("D", "Z") else exc.text
            code = 100 if exc.text.startswith("D") else 111
            raise _Stop(code, f"Unable to forward message: {text}.") from None
        except OSError as exc:
            raise _Stop(111, f"Unable to forward message: {exc.strerror}. (#4.3.0)") from None
        self.forward_qp = queued.qp

    # -- main line

    def run(self) -> int:
        a = self.a
        self.sanitize_env()
        self.check_home()
        env = self.env
        env["HOST"] = a.domain
        env["HOME"] = a.homedir
        env["USER"] = a.user
        env["LOCAL"] = a.local
        env.pop("SPAMFILTER", None)
        recipient = f"{a.local}@{a.domain}"
        env["RECIPIENT"] = recipient
        dt = "Delivered-To: " + recipient.replace("\n", "_") + "\n"
        self.dtline = _enc(dt)
        env["DTLINE"] = dt
        if a.doit:
            self.loop_check(self.dtline)
        env["SENDER"] = a.sender
        rp = ("Return-Path: <" + quote2(a.sender)).replace("\n", "_") + ">\n"
        self.rpline = _enc(rp)
        env["RPLINE"] = rp
        if a.sender:
            uf = "From " + "".join("-" if ch in " \t\n" else ch for ch in a.sender)
        else:
            uf = "From MAILER-DAEMON"
        uf += " " + qtime(time.time()) + "\n"
        self.ufline = _enc(uf)
        env["UFLINE"] = uf
        rest = a.ext
        for name in ("EXT", "EXT2", "EXT3", "EXT4"):
            env[name] = rest
            dash_at = rest.find("-")
            rest = "" if dash_at < 0 else rest[dash_at + 1 :]
        host = a.domain
        cut = len(host)
        for name in ("HOST2", "HOST3", "HOST4"):
            dot = host.rfind(".", 0, cut)
            cut = cut if dot < 0 else dot
            env[name] = host[:cut]
        ext_b = _enc(a.ext)
        safeext = ext_b.lower().replace(b".", b":")
        found = self.search(safeext, ext_b)
        if found is None and a.dash:
            raise _Stop(100, "Sorry, no mailbox here by that name. (#5.1.1)")
        newsender = a.sender
        if a.sender and a.sender != "#@[]":
            base = ".qmail" + a.dash + _dec(safeext)
            if self.qmail_exists(base + "-owner"):
                if self.qmail_exists(base + "-owner-default"):
                    newsender = f"{a.local}-owner-@{a.domain}-@[]"
                else:
                    newsender = f"{a.local}-owner@{a.domain}"
        self.newsender = newsender
        env["NEWSENDER"] = newsender
        forward_only = False
        cmds = b""
        source = "defaultdelivery"
        if found is not None:
            fd, forward_only, source = found
            cmds = self.read_qmail(fd, source)
        if not cmds:
            cmds = _enc(a.defaultdelivery)
            forward_only = False
            source = "defaultdelivery"
        self.datasync = bool(env.get("USE_FDATASYNC"))
        return self.run_lines(cmds, forward_only, source)

    def run_lines(self, cmds: bytes, forward_only: bool, source: str) -> int:
        a = self.a
        lines = [raw.split(b"\0", 1)[0].rstrip(b" \t") for raw in cmds.split(b"\n")]
        if cmds.endswith(b"\n"):
            lines.pop()
        recips: list[str] = []
        idx = 0
        while idx < len(lines):
            line = lines[idx]
            idx += 1
            text = _dec(line)
            first = text[:1]
            if first == "":
                if idx == 1:
                    raise _Stop(111, "Uh-oh: first line of .qmail file is blank. (#4.2.1)")
            elif first == "%":
                self.apply_envdir(text[1:].lstrip(" \t"), source)
            elif first in ("#", ":"):
                pass
            elif first in (".", "/"):
                self.count_file += 1
                if forward_only:
                    raise _Stop(111, "Uh-oh: .qmail has file delivery but has x bit set. (#4.7.0)")
                kind = "maildir" if text.endswith("/") else "mbox"
                if not a.doit:
                    self._say(kind, text)
                elif kind == "maildir":
                    self.maildir(text)
                else:
                    self.mbox(text)
            elif first == "|":
                self.count_program += 1
                if forward_only:
                    raise _Stop(111, "Uh-oh: .qmail has prog delivery but has x bit set. (#4.7.0)")
                if a.doit:
                    self.program(text[1:])
                else:
                    self._say("program", text[1:])
            elif first == "?":
                idx = self.branch(text[1:], lines, idx, forward_only)
            elif first == "+":
                if text[1:] == "list":
                    forward_only = True
            else:
                self.count_forward += 1
                addr = text[1:] if first == "&" else text
                if not addr:
                    raise _Stop(
                        111, f"Uh-oh: {source} has a forward line without an address. (#4.7.0)"
                    )
                if a.doit:
                    recips.append(addr)
                else:
                    self._say("forward", addr)
            if self.flag99:
                break
        if recips and a.doit:
            self.forward(recips)
        report = f"did {self.count_file}+{self.count_forward}+{self.count_program}\n"
        if self.forward_qp:
            report += f"qp {self.forward_qp}\n"
        self.out.write(_enc(report))
        self.out.flush()
        return 0

    def branch(self, rest: str, lines: list[bytes], idx: int, forward_only: bool) -> int:
        """``?label [command]``: run it; on 99 (or no command) skip to ``:label``."""
        cut = len(rest)
        for pos, ch in enumerate(rest):
            if ch in " \t":
                cut = pos
                break
        label = rest[:cut]
        cmd = rest[cut:].lstrip(" \t")
        if cmd:
            self.count_program += 1
            if forward_only:
                raise _Stop(111, "Uh-oh: .qmail has prog delivery but has x bit set. (#4.7.0)")
            if self.a.doit:
                self.program(cmd)
            else:
                self._say("program", cmd)
        if cmd and not self.flag99:
            return idx
        self.flag99 = False
        want = _enc(label)
        for j in range(idx, len(lines)):
            line = lines[j]
            if line[:1] == b":":
                end = len(line)
                for pos in range(1, len(line)):
                    if line[pos] in b" \t":
                        end = pos
                        break
                if line[1:end] == want:
                    return j + 1
        return len(lines)

    def apply_envdir(self, directory: str, source: str) -> None:
        from indimail.core.envdir import read_envdir
        from indimail.core.errors import Fatal

        try:
            values = read_envdir(Path(self._path(directory)))
        except Fatal as exc:
            raise _Stop(111, f"Uh-oh: {source}: envdir {exc.message}. (#4.3.0)") from None
        for name, value in values.items():
            if value is None:
                self.env.pop(name, None)
            else:
                self.env[name] = value


def deliver(
    args: LocalArgs,
    msgfd: int,
    out: BinaryIO,
    err: BinaryIO | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    controldir: Path | None = None,
) -> int:
    """Deliver the message on ``msgfd`` (seekable) as qmail-local does.

    The report (``did ...``, ``qp ...``, plan lines with ``-n``) goes to
    ``out``; error texts go to ``err`` (default: ``out``, as under
    qmail-lspawn).  Programs from ``.qmail`` inherit the file descriptors
    of ``out``/``err`` as their stdout/stderr.  ``environ`` (default
    ``os.environ``) is copied, never changed.  Returns 0, 100 or 111.
    """
    if err is None:
        err = out
    if environ is None:
        environ = os.environ
    job = _Delivery(args, msgfd, out, err, environ, controldir)
    try:
        return job.run()
    except _Stop as stop:
        code, text = stop.code, stop.text
    except Exception as exc:  # never a traceback into a report
        code = 111
        text = f"Internal error in qmail-local: {type(exc).__name__}: {exc}. (#4.3.0)"
    try:
        out.flush()
        if text:
            err.write(_enc(text + "\n"))
        err.flush()
    except (OSError, ValueError):
        pass
    return code


def main(argv: list[str]) -> int:
    """qmail-local [-nN] user homedir local dash ext domain sender defaultdelivery qqeh"""
    args = parse_args(argv[1:])
    os.umask(0o077)
    return deliver(args, 0, sys.stdout.buffer, sys.stderr.buffer)
