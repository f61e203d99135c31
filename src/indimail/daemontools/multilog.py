"""multilog: read a log from stdin, select lines, write rotated log dirs.

``multilog script...`` with the original's actions, applied left to right
to each line (patterns see its first 1000 bytes):

``t`` (first only) prefix ``@<tai64n> ``; ``+pat`` / ``-pat`` select /
deselect; ``e`` copy to stderr (200 bytes); ``=file`` overwrite file with
the line padded to 1001 bytes; ``sN`` size of ``current`` (4096..16777215,
unlimited by default); ``nN`` old files kept (>= 2, 10); ``!proc``
processor; ``rN`` rotate every N seconds; ``./dir`` or ``/dir`` a log dir.

A log dir holds ``current`` (0644 while written, 0744 when complete),
``lock``, ``state``, ``newstate``, ``processed``, ``previous`` and old
files ``@<tai64n>.s`` (rotated) / ``.u`` (left unfinished by a crash).
Every disk error is retried after a pause, never skipped: a line read is a
line written.  ``NOFSYNC`` turns off the fsync before rotation.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import select
import signal
import sys
import time

from indimail.core import tai64n
from indimail.core.errors import Fatal, UsageError

PAUSE = 5.0  # seconds to wait after a disk error before retrying
MAXLINE = 1000
COALESCE = 0.01  # seconds between two reads of a busy input (see _run)
READSIZE = 65536  # bytes asked of one read
OUTSIZE = 1 << 18  # a log dir's output buffer: one read's lines and their stamps
IDLE = 1.0  # seconds of quiet input after which the buffers' pages go back
UNLIMITED = -1


def match(pattern: bytes, buf: bytes) -> bool:
    """The original's pattern match: ``*`` matches any string without the
    next pattern character; a final ``*`` matches anything."""
    p = 0
    i = 0
    n = len(buf)
    plen = len(pattern)
    while True:
        if p == plen:
            return i == n
        ch = pattern[p]
        p += 1
        if ch == 0x2A:  # '*'
            if p == plen:
                return True
            nxt = pattern[p]
            while True:
                if i == n:
                    return False
                if buf[i] == nxt:
                    break
                i += 1
            continue
        if i == n or buf[i] != ch:
            return False
        i += 1


def _warn(text: str) -> None:
    try:
        os.write(2, f"multilog: warning: {text}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def _retry(what: str, func, *args, **kwargs):
    """Call ``func`` until it succeeds, pausing after each OSError."""
    while True:
        try:
            return func(*args, **kwargs)
        except OSError as exc:
            _warn(f"{what}: {exc.strerror or exc}, pausing")
            time.sleep(PAUSE)


class LogDir:
    """One ``./dir`` of the script: cyclic log with rotation."""

    def __init__(self, path: str, size: int, num: int, processor: str | None, fsync: bool):
        self.path = path
        self.size = size
        self.num = num
        self.processor = processor
        self.fsync = fsync
        # Lines waiting for flush: buf[:end].  A mapping kept for good, not
        # a bytearray grown line by line and emptied at every flush: that,
        # with a new 64 KiB bytes object per read, left the heap about 1 MB
        # bigger and fragmented after a burst (in a logger forked by svscan,
        # also private copies of svscan's heap pages).  A page of a mapping
        # is resident only once written, and release() gives them back.
        self.buf = _mapping(OUTSIZE)
        self.view = memoryview(self.buf)
        self.end = 0
        self.fdcurrent = -1
        self.bytes = 0
        self.fddir = -1
        self.fdlock = -1

    # -- start-up: the original's restart() --------------------------------
    def open(self) -> None:
        try:
            os.mkdir(self.path, 0o755)
        except FileExistsError:
            pass
        except OSError as exc:
            raise Fatal(111, f"unable to create directory {self.path}: {exc.strerror}") from None
        try:
            self.fddir = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self.fdlock = os.open(
                "lock",
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                0o644,
                dir_fd=self.fddir,
            )
            fcntl.flock(self.fdlock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise Fatal(111, f"unable to lock directory {self.path}: {exc.strerror}") from None
        d = self.fddir
        try:
            st = os.stat("current", dir_fd=d)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise Fatal(111, f"unable to stat {self.path}/current: {exc.strerror}") from None
        if st is not None and st.st_mode & 0o100:
            # complete current: go on appending to it
            self.fdcurrent = os.open("current", os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC, dir_fd=d)
            os.fchmod(self.fdcurrent, 0o644)
            self.bytes = st.st_size
            return
        for name in ("state", "newstate"):
            try:
                os.unlink(name, dir_fd=d)
            except FileNotFoundError:
                pass
        try:
            processed = bool(os.stat("processed", dir_fd=d).st_mode & 0o100)
        except FileNotFoundError:
            processed = False
        if processed:
            _unlink_quiet("previous", d)
            self.finish("processed", "s")
        else:
            _unlink_quiet("processed", d)
            self.finish("previous", "u")
        self.finish("current", "u")
        fd = os.open("state", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644, dir_fd=d)
        os.close(fd)
        self.fdcurrent = os.open(
            "current", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644, dir_fd=d
        )
        os.fchmod(self.fdcurrent, 0o644)
        self.bytes = 0

    # -- rotation -----------------------------------------------------------
    def finish(self, name: str, code: str) -> None:
        """Keep ``name`` as an ``@<tai64n>.code`` file, then trim old ones."""
        d = self.fddir
        while True:
            try:
                st = os.stat(name, dir_fd=d)
                break
            except FileNotFoundError:
                return
            except OSError as exc:
                _warn(f"unable to stat {self.path}/{name}: {exc.strerror}, pausing")
                time.sleep(PAUSE)
        if st.st_nlink == 1:
            while True:
                target = tai64n.now_label().decode("ascii") + "." + code
                try:
                    os.link(name, target, src_dir_fd=d, dst_dir_fd=d)
                    break
                except OSError as exc:
                    _warn(f"unable to link to {self.path}/{target}: {exc.strerror}, pausing")
                    time.sleep(PAUSE)
        while True:
            try:
                os.unlink(name, dir_fd=d)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                _warn(f"unable to remove {self.path}/{name}: {exc.strerror}, pausing")
                time.sleep(PAUSE)
        while not self.filesfit():
            pass

    def filesfit(self) -> bool:
        """True when fewer than ``num`` old files remain; else delete the
        oldest one and return False."""
        try:
            names = os.listdir(self.fddir)
        except OSError as exc:
            _warn(f"unable to read {self.path}: {exc.strerror}, pausing")
            time.sleep(PAUSE)
            return False
        old = [n for n in names if n.startswith("@") and len(n) >= 25]
        if len(old) < self.num:
            return True
        oldest = min(n[:25] for n in old)
        for n in old:
            if n.startswith(oldest):
                _unlink_quiet(n, self.fddir)
                break
        return False

    def fullcurrent(self) -> None:
        d = self.fddir
        if self.fsync:
            _retry(f"unable to write {self.path}/current to disk", os.fsync, self.fdcurrent)
        os.close(self.fdcurrent)
        _retry(
            f"unable to rename current to previous in directory {self.path}",
            os.rename,
            "current",
            "previous",
            src_dir_fd=d,
            dst_dir_fd=d,
        )
        self.fdcurrent = _retry(
            f"unable to create {self.path}/current",
            os.open,
            "current",
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
            0o644,
            dir_fd=d,
        )
        self.bytes = 0
        _retry(f"unable to set mode of {self.path}/current", os.fchmod, self.fdcurrent, 0o644)
        _retry(f"unable to set mode of {self.path}/previous", os.chmod, "previous", 0o744, dir_fd=d)
        if not self.processor:
            self.finish("previous", "s")
            return
        while True:
            code = self._run_processor()
            if code == 0:
                break
            _warn(f"processor failed in {self.path}, pausing")
            time.sleep(PAUSE)
        for name, sync, mode in (("processed", True, 0o744), ("newstate", True, None)):
            fd = _retry(
                f"unable to create {self.path}/{name}",
                os.open,
                name,
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                0o644,
                dir_fd=d,
            )
            if self.fsync and sync:
                _retry(f"unable to write {self.path}/{name} to disk", os.fsync, fd)
            if mode is not None:
                _retry(f"unable to set mode of {self.path}/{name}", os.fchmod, fd, mode)
            os.close(fd)
        _retry(f"unable to remove {self.path}/previous", os.unlink, "previous", dir_fd=d)
        _retry(
            f"unable to rename newstate to state in directory {self.path}",
            os.rename,
            "newstate",
            "state",
            src_dir_fd=d,
            dst_dir_fd=d,
        )
        self.finish("processed", "s")

    def _run_processor(self) -> int:
        while True:
            try:
                pid = os.fork()
                break
            except OSError as exc:
                _warn(f"unable to fork for processor in {self.path}: {exc.strerror}, pausing")
                time.sleep(PAUSE)
        if pid == 0:
            try:
                for sig in (signal.SIGTERM, signal.SIGALRM, signal.SIGHUP, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                signal.signal(signal.SIGPIPE, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                os.fchdir(self.fddir)
                fds = [
                    os.open("previous", os.O_RDONLY),
                    os.open("processed", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
                    os.open("state", os.O_RDONLY),
                    os.open("newstate", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
                ]
                for fd, target in zip(fds, (0, 1, 4, 5), strict=True):
                    os.dup2(fd, target)
                os.execv("/bin/sh", ["sh", "-c", self.processor or ""])
            except BaseException:
                pass
            os._exit(111)
        while True:
            try:
                _pid, wstat = os.waitpid(pid, 0)
                break
            except ChildProcessError:
                return 111
        if os.WIFSIGNALED(wstat):
            _warn(f"processor crashed in {self.path}, pausing")
            return 111
        return os.WEXITSTATUS(wstat)

    # -- writing ------------------------------------------------------------
    def flush(self) -> None:
        """Write the buffer out the way the original's c_write cuts it."""
        buf = self.buf
        pos = 0
        end = self.end
        while pos < end:
            if self.size > 0 and self.bytes >= self.size:
                self.fullcurrent()
            n = end - pos
            if self.size > 0:
                n = min(n, self.size - self.bytes)
                if self.bytes + n >= self.size - 2000:
                    nl = buf.rfind(b"\n", pos, pos + n)
                    if nl >= 0:
                        n = nl + 1 - pos
            while True:
                try:
                    w = os.write(self.fdcurrent, self.view[pos : pos + n])
                    if w > 0:
                        break
                except OSError as exc:
                    _warn(f"unable to write to {self.path}/current: {exc.strerror}, pausing")
                    time.sleep(PAUSE)
            self.bytes += w
            pos += w
            if self.size > 0 and self.bytes >= self.size - 2000 and buf[pos - 1] == 10:
                self.fullcurrent()
        self.end = 0
        if len(buf) > OUTSIZE:
            self._resize(OUTSIZE)  # the room a very long line took goes back

    def add(self, line: bytes) -> None:
        """Append ``line`` and a newline to the output buffer."""
        start = self.end
        end = start + len(line)
        buf = self.buf
        if end >= len(buf):
            self._resize(2 * end)
            buf = self.buf
        buf[start:end] = line
        buf[end] = 10
        self.end = end + 1

    def _resize(self, size: int) -> None:
        """Move the pending output to a new mapping of ``size`` bytes."""
        buf = _mapping(size)
        view = memoryview(buf)
        view[: self.end] = self.view[: self.end]
        self.view.release()
        self.buf.close()
        self.buf = buf
        self.view = view

    def release(self) -> None:
        """Give the output buffer's pages back (flushed, input quiet)."""
        self.buf.madvise(mmap.MADV_DONTNEED)

    def quit(self) -> None:
        self.flush_all()
        if self.fsync:
            _retry(f"unable to write {self.path}/current to disk", os.fsync, self.fdcurrent)
        _retry(f"unable to set mode of {self.path}/current", os.fchmod, self.fdcurrent, 0o744)

    def flush_all(self) -> None:
        self.flush()


def _mapping(size: int) -> mmap.mmap:
    """A private anonymous mapping of ``size`` bytes, to use as a buffer."""
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)


def _unlink_quiet(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


class Multilog:
    """The whole script: parse once, then process stdin."""

    def __init__(self, script: list[str], environ=None) -> None:
        env = os.environ if environ is None else environ
        self.script = script
        self.fsync = not env.get("NOFSYNC")
        self.timestamp = bool(script) and script[0][:1] == "t"
        self.dirs: list[LogDir] = []
        self.actions: list[tuple[str, object]] = []  # (kind, arg)
        self.rotate_every = 0
        size, num, processor = UNLIMITED, 10, None
        for arg in script:
            if not arg:
                continue
            c = arg[0]
            if c == "s":
                size = _num(arg[1:])
                if 0 < size < 4096:
                    size = 4096
                if size > 16777215:
                    size = 16777215
                if size == 0:
                    size = UNLIMITED
            elif c == "n":
                num = max(2, _num(arg[1:]))
            elif c == "r":
                self.rotate_every = max(1, _num(arg[1:]))
            elif c == "!":
                processor = arg[1:]
            elif c in "./":
                d = LogDir(arg, size, num, processor, self.fsync)
                self.dirs.append(d)
                self.actions.append(("dir", d))
            elif c == "+":
                self.actions.append(("+", arg[1:].encode("utf-8", "surrogateescape")))
            elif c == "-":
                self.actions.append(("-", arg[1:].encode("utf-8", "surrogateescape")))
            elif c == "e":
                self.actions.append(("e", None))
            elif c == "=":
                self.actions.append(("=", arg[1:]))
        # only log dirs (``t ./main``, the usual script): no line to cut or match
        self.dirs_only = all(kind == "dir" for kind, _arg in self.actions)
        self.flagexit = False
        self.flagrotate = False
        self.flaglog = True
        self.status_fds: dict[str, int] = {}

    def open(self) -> None:
        for kind, arg in self.actions:
            if kind == "=":
                name = str(arg)
                try:
                    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
                except OSError as exc:
                    raise Fatal(111, f"unable to create {name}: {exc.strerror}") from None
                self.status_fds[name] = fd
        for d in self.dirs:
            d.open()

    # signals: handled through a wakeup pipe between reads
    def _install_signals(self) -> int:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._saved = (
            signal.set_wakeup_fd(w, warn_on_full_buffer=False),
            {
                s: signal.getsignal(s)
                for s in (signal.SIGTERM, signal.SIGALRM, signal.SIGHUP, signal.SIGINT)
            },
            (r, w),
        )

        def handler(signum, _frame):
            if signum == signal.SIGTERM:
                self.flagexit = True
            elif signum == signal.SIGALRM:
                self.flagrotate = True
            elif signum == signal.SIGHUP:
                self.flaglog = True
            elif signum == signal.SIGINT:
                self.flaglog = False

        for sig in (signal.SIGTERM, signal.SIGALRM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, handler)
        if self.rotate_every:
            rot = self.rotate_every
            signal.setitimer(signal.ITIMER_REAL, rot - (time.time() % rot), rot)
        return r

    def process_line(self, full: bytes) -> None:
        """``full`` = the line without its newline; actions but the log dirs
        see its first (at most 1000) bytes."""
        if self.dirs_only:
            if self.flaglog:
                for d in self.dirs:
                    d.add(full)
            return
        line = full[:MAXLINE]
        selected = self.flaglog
        for kind, arg in self.actions:
            if kind == "+":
                if not selected and match(arg, line):  # type: ignore[arg-type]
                    selected = True
            elif kind == "-":
                if selected and match(arg, line):  # type: ignore[arg-type]
                    selected = False
            elif kind == "e":
                if selected:
                    text = line[:200] + b"...\n" if len(line) > 200 else line + b"\n"
                    _write_all(2, text)
            elif kind == "=":
                if selected:
                    fd = self.status_fds[str(arg)]
                    padded = line + b"\n" * (1001 - len(line))
                    while True:
                        try:
                            if os.pwrite(fd, padded, 0) == 1001:
                                break
                        except OSError as exc:
                            _warn(f"unable to write {arg}: {exc.strerror}, pausing")
                        time.sleep(PAUSE)
            elif kind == "dir" and selected:
                arg.add(full)  # type: ignore[attr-defined]

    def run(self, infd: int = 0) -> int:
        wake = self._install_signals()
        try:
            return self._run(infd, wake)
        finally:
            old_fd, handlers, pipe = self._saved
            if self.rotate_every:
                signal.setitimer(signal.ITIMER_REAL, 0)
            signal.set_wakeup_fd(old_fd)
            for sig, handler in handlers.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            for fd in pipe:
                os.close(fd)

    def _run(self, infd: int, wake: int) -> int:
        poller = select.poll()
        poller.register(infd, select.POLLIN)
        poller.register(wake, select.POLLIN)
        pending = b""  # partial line (raw bytes, no timestamp)
        stamp = b""  # timestamp of the first byte of the pending line
        midline = False
        last_read = 0.0
        inbuf = _mapping(READSIZE)  # every read goes here (see LogDir.__init__)
        view = memoryview(inbuf)
        resident = False  # buffers written to since their pages went back
        while True:
            for d in self.dirs:
                self._flush(d)
            if self.flagrotate:
                self.flagrotate = False
                for d in self.dirs:
                    if d.bytes > 0:
                        d.fullcurrent()
            if self.flagexit and not midline:
                break
            try:
                ready = {fd for fd, _ev in poller.poll(IDLE * 1000 if resident else None)}
            except InterruptedError:  # pragma: no cover
                ready = set()
            if not ready and resident:
                # Quiet for IDLE seconds: an idle logger keeps no buffer pages.
                inbuf.madvise(mmap.MADV_DONTNEED)
                for d in self.dirs:
                    d.release()
                resident = False
            if wake in ready:
                try:
                    while os.read(wake, 256):
                        pass
                except BlockingIOError:
                    pass
            if self.flagexit and not midline:
                break
            if infd not in ready:
                continue  # woken by a signal (ALRM, rN): nothing to read yet
            # A busy writer (qmail-send, tcpserver -v) sends a line at a
            # time: read at most every COALESCE seconds, so that one wake-up
            # takes many lines.  A line after a quiet spell is read at once.
            since = time.monotonic() - last_read
            if since < COALESCE and not self.flagexit:
                time.sleep(COALESCE - since)
            last_read = time.monotonic()
            try:
                got = os.readv(infd, [view[:1] if self.flagexit else view])
            except BlockingIOError:
                continue
            except InterruptedError:  # pragma: no cover
                continue
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    continue
                raise Fatal(111, f"unable to read input: {exc.strerror}") from None
            resident = True
            if not got:
                if pending or midline:
                    self._emit(stamp, pending)
                break
            if not pending and not midline and self.timestamp:
                stamp = tai64n.now_label() + b" "
            start = 0
            while True:
                nl = inbuf.find(b"\n", start, got)
                if nl < 0:
                    pending += inbuf[start:got]
                    midline = True
                    break
                pending += inbuf[start:nl]
                self._emit(stamp, pending)
                pending = b""
                midline = False
                start = nl + 1
                if start >= got:
                    break
                if self.timestamp:
                    stamp = tai64n.now_label() + b" "
        for d in self.dirs:
            self._flush(d)
            d.quit()
        return 0

    def _emit(self, stamp: bytes, raw: bytes) -> None:
        self.process_line(stamp + raw if self.timestamp else raw)

    @staticmethod
    def _flush(d: LogDir) -> None:
        d.flush()


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            n = os.write(fd, data)
        except OSError:
            return
        data = data[n:]


def _num(text: str) -> int:
    digits = ""
    for ch in text:
        if not ch.isdecimal():
            break
        digits += ch
    return int(digits) if digits else 0


def run_script(script: list[str], infd: int = 0) -> int:
    """Open the dirs and process ``infd`` to EOF (used by forked loggers)."""
    ml = Multilog(script)
    os.umask(0o022)
    ml.open()
    return ml.run(infd)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        raise UsageError("usage: multilog script")
    try:
        return run_script(argv[1:])
    except Fatal:
        raise
    finally:
        sys.stdout.flush()
