"""tcpserver's pool of pre-forked workers for an in-process program.

Forking a warm interpreter for every connection costs more than the
SMTP session it serves (~45% of qmail-smtpd's CPU went into the fork and
the copy-on-write faults after it).  So, as Postfix's smtpd processes do,
a worker forked from the listening process serves one connection after
another:

* The listening process keeps all its duties (``-c``/``-C``, rules are
  still followed per connection, log lines): it accepts, then passes the
  connection's fd to an idle worker over a UNIX socketpair
  (``SCM_RIGHTS``) with the peer's address.  A worker serves one
  connection at a time and answers with the program's exit code; the
  listener logs ``end PID status N`` and ``sigchild`` lines as for a
  forked child, PID being the worker's.
* Only a command that declares ``UCSPI_POOL = True`` in its module is
  pooled (qmail-smtpd): it keeps no state across runs outside what is
  reset here.  Anything else is forked per connection, as before.
* Before the next connection the worker puts back what a session may
  have changed: environment, cwd, umask, signal dispositions, timers,
  stdio, ``sys.argv``, the process-wide paths object and the connection
  hand-offs.  A worker that cannot prove it is clean (an fd left open
  after collecting garbage, uid/gid changed, an internal error) answers
  and then exits instead of serving again.
* A worker retires after ``TCPSERVER_POOL_MAXUSE`` connections (default
  100), after ``TCPSERVER_POOL_IDLE`` seconds without one (default 5),
  when ``TCPSERVER_POOL_MAXIDLE`` workers (default 20) already wait or
  more than ``TCPSERVER_POOL_MAX`` workers (default 24) exist (beyond
  that, each connection gets a worker of its own that ends with it: a
  fresh fork is smaller than a worker that served many), when
  its resident memory grew by more than ``TCPSERVER_POOL_MAXMEM`` MB
  since it started (default 16; a hostile client's 1 MB lines grow the
  heap, which Python keeps), and whenever the listener goes away (EOF on its
  socketpair).  ``TCPSERVER_POOL=0`` turns the pool off.
"""

from __future__ import annotations

import gc
import os
import selectors
import signal
import socket
import struct
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

# ip16, remote port, connections from that IP, active sessions (this one too)
HEADER = struct.Struct("!16sHII")
STATUS = struct.Struct("!iB")  # exit code, 1 = the worker stays, 0 = it retires
DEFAULT_MAXUSE = 100
DEFAULT_IDLE = 5
DEFAULT_MAXIDLE = 20
DEFAULT_MAX = 24
DEFAULT_MAXMEM = 16  # MB


class Settings:
    __slots__ = ("enabled", "idle", "maxidle", "maxmem_kb", "maxuse", "maxworkers")

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.enabled = environ.get("TCPSERVER_POOL", "1").strip() not in ("0", "no", "")
        self.maxuse = _number(environ, "TCPSERVER_POOL_MAXUSE", DEFAULT_MAXUSE, 1, 1_000_000)
        self.idle = float(_number(environ, "TCPSERVER_POOL_IDLE", DEFAULT_IDLE, 0, 86400))
        self.maxidle = _number(environ, "TCPSERVER_POOL_MAXIDLE", DEFAULT_MAXIDLE, 0, 100_000)
        self.maxworkers = _number(environ, "TCPSERVER_POOL_MAX", DEFAULT_MAX, 0, 100_000)
        self.maxmem_kb = 1024 * _number(
            environ, "TCPSERVER_POOL_MAXMEM", DEFAULT_MAXMEM, 1, 1 << 20
        )


def _number(environ: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """A decimal setting within [low, high]; anything else means the default."""
    text = environ.get(name, "").strip()
    if text.isdigit() and low <= int(text) <= high:
        return int(text)
    return default


class Worker:
    __slots__ = ("busy", "chan", "idle_since", "pid", "uses")

    def __init__(self, pid: int, chan: socket.socket) -> None:
        self.pid = pid
        self.chan = chan
        self.uses = 0
        self.idle_since = time.monotonic()
        self.busy = False


class Pool:
    """The listener's side: idle and busy workers, dispatch, retirement."""

    def __init__(self, settings: Settings, sel: selectors.BaseSelector) -> None:
        self.sel = sel
        self.maxuse = settings.maxuse
        self.maxidle = settings.maxidle
        self.maxworkers = settings.maxworkers
        self.idle_timeout = settings.idle
        self.workers: dict[int, Worker] = {}  # pid -> worker
        self.idle: list[Worker] = []  # most recently used last: reuse the warmest

    def spawn(
        self, child_main: Callable[[socket.socket], None], drop: socket.socket
    ) -> Worker | None:
        """Fork a worker running ``child_main(channel)``; None if fork fails.
        ``drop`` (the connection being handed out) is closed in the worker:
        it arrives again through the channel, and a copy kept from the fork
        would hold the client's connection open after the session."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = os.fork()
        except OSError:
            mine.close()
            theirs.close()
            return None
        if pid == 0:
            mine.close()
            drop.close()
            for w in self.workers.values():  # so EOF reaches each worker
                w.chan.close()
            self.workers.clear()
            self.idle.clear()
            self.sel.close()
            child_main(theirs)
            os._exit(0)  # pragma: no cover - child_main never returns
        theirs.close()
        mine.setblocking(False)  # an event already handled must not block us
        w = Worker(pid, mine)
        self.workers[pid] = w
        self.sel.register(mine, selectors.EVENT_READ, w)
        return w

    def dispatch(self, w: Worker, conn: socket.socket, header: bytes) -> bool:
        """Hand ``conn`` to ``w``; False (worker retired) if it can't take it."""
        try:
            socket.send_fds(w.chan, [header], [conn.fileno()])
        except OSError:
            self.retire(w)
            return False
        w.busy = True
        w.uses += 1
        return True

    def take_idle(self) -> Worker | None:
        while self.idle:
            w = self.idle.pop()
            if w.pid in self.workers:
                return w
        return None

    def finished(self, w: Worker) -> tuple[int, bool] | None:
        """Read a worker's answer: (exit code, worker went idle), or None when
        it closed its end (it exited; reap() collects it)."""
        try:
            data = w.chan.recv(STATUS.size)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""
        if len(data) != STATUS.size:  # it exited (reap() reports a session it cut)
            self.retire(w)
            return None
        code, stays = STATUS.unpack(data)
        w.busy = False
        if (
            stays
            and w.uses < self.maxuse
            and len(self.idle) < self.maxidle
            and len(self.workers) <= self.maxworkers
        ):
            w.idle_since = time.monotonic()
            self.idle.append(w)
            return code, True
        self.retire(w)
        return code, False

    def retire(self, w: Worker) -> None:
        """Close our end: the worker sees EOF and exits (reaped as usual)."""
        self.workers.pop(w.pid, None)
        if w in self.idle:
            self.idle.remove(w)
        try:
            self.sel.unregister(w.chan)
        except (KeyError, ValueError):
            pass
        try:
            w.chan.close()
        except OSError:
            pass

    def forget(self, pid: int) -> bool:
        """A reaped pid: True (and dropped) if it was one of ours."""
        w = self.workers.get(pid)
        if w is None:
            return False
        self.retire(w)
        return True

    def expire(self, now: float) -> None:
        while self.idle and now - self.idle[0].idle_since >= self.idle_timeout:
            self.retire(self.idle[0])

    def next_expiry(self, now: float) -> float | None:
        if not self.idle:
            return None
        return max(0.05, self.idle[0].idle_since + self.idle_timeout - now)


# -- the worker's side ------------------------------------------------------------

# _signal's own functions: signal.getsignal/signal turn every handler into
# an enum member (a failed lookup and an exception for each function), which
# costs more than the calls themselves, sixty-odd times per session
try:
    from _signal import getsignal as _getsignal
    from _signal import signal as _setsignal
except ImportError:  # pragma: no cover - not CPython
    _getsignal, _setsignal = signal.getsignal, signal.signal


def _open_fds() -> set[int] | None:
    for d in ("/proc/self/fd", "/dev/fd"):
        try:
            return {int(n) for n in os.listdir(d)}
        except (OSError, ValueError):
            continue
    return None


def environ_data() -> dict[bytes, bytes]:
    """The bytes mapping behind ``os.environ`` (POSIX CPython keeps one):
    read and mended directly, without decoding every name and value."""
    return os.environ._data  # type: ignore[attr-defined]


_PAGE_KB = max(os.sysconf("SC_PAGE_SIZE") // 1024, 1) if hasattr(os, "sysconf") else 4


def resident_kb() -> int | None:
    """Resident memory of this process in KiB (``/proc/self/statm``), else None.

    Growth of the resident set since the worker started is what a session
    left allocated: copy-on-write faults replace pages but add none."""
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return int(os.read(fd, 256).split()[1]) * _PAGE_KB
    except (OSError, IndexError, ValueError):
        return None
    finally:
        os.close(fd)


class Baseline:
    """What a session may change, as it was before the first one."""

    def __init__(self, maxmem_kb: int = DEFAULT_MAXMEM * 1024) -> None:
        self.maxmem_kb = maxmem_kb
        # os.environ's own bytes mapping: compared and mended without
        # decoding every name and value after each session
        self.environ: dict[bytes, bytes] = dict(environ_data())
        self.cwd = os.getcwd()
        self.umask = os.umask(0o022)
        os.umask(self.umask)
        self.uid, self.gid = os.getuid(), os.getgid()
        self.euid, self.egid = os.geteuid(), os.getegid()
        self.signals: dict[int, object] = {}
        for sig in signal.valid_signals():
            try:
                handler = _getsignal(sig)
            except (OSError, ValueError):
                continue
            if handler is not None:
                self.signals[sig] = handler
        self._handlers = list(self.signals.values())  # in the order of its keys
        self.argv = list(sys.argv)
        self.streams = (sys.stdin, sys.stdout, sys.stderr)
        from indimail.core import paths

        self.paths = paths._PATHS
        self.places = paths._PLACES
        self.fds = _open_fds()
        self.resident = resident_kb()
        self.frozen = False

    def _restore_environ(self) -> None:
        data = environ_data()
        if data == self.environ:
            return
        base = self.environ
        for name in [n for n in data if n not in base]:
            os.unsetenv(name)
            del data[name]
        for name, value in base.items() - data.items():  # changed or removed
            os.putenv(name, value)
            data[name] = value

    def restore(self) -> bool:
        """Put everything back; False if the worker must not serve again."""
        clean = True
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        sys.stdin, sys.stdout, sys.stderr = self.streams
        sys.argv[:] = self.argv
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        signal.alarm(0)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        except (OSError, AttributeError):
            pass
        # one pass in C over the sixty-odd signals; the loop only when one
        # of them was changed (~90 -> ~10 µs per session)
        try:
            same = list(map(_getsignal, self.signals)) == self._handlers
        except (OSError, ValueError, TypeError):
            same = False
        if not same:
            for sig, handler in self.signals.items():
                try:
                    if _getsignal(sig) is not handler:
                        _setsignal(sig, handler)
                except (OSError, ValueError, TypeError):
                    clean = False
        self._restore_environ()
        try:
            if os.getcwd() != self.cwd:
                os.chdir(self.cwd)
        except OSError:
            clean = False
        os.umask(self.umask)
        from indimail.core import paths
        from indimail.ucspi import context

        paths._PATHS = self.paths  # type: ignore[assignment]
        paths._PLACES = self.places  # type: ignore[assignment]
        context.set_current(None)
        smtpd_io = sys.modules.get("indimail.smtpd.smtpd_io")
        if smtpd_io is not None:
            smtpd_io.register_connection(None)
        while True:  # children a session left behind
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid == 0:
                clean = False  # one still runs: not ours to wait for
                break
        threading = sys.modules.get("threading")
        if threading is not None and threading.active_count() > 1:
            clean = False  # a session's thread would run on into the next one
        gc.collect()  # sockets and files of the session close themselves
        if not self.frozen:
            # what is left after the first session lives as long as the
            # worker (caches, modules a session imported): set it aside,
            # so that the collection after every later session only scans
            # what that session made (~50 -> ~10 µs)
            gc.freeze()
            self.frozen = True
        if self.fds is not None:
            now = _open_fds()
            if now is None or now - self.fds:
                clean = False
        ids = (os.getuid(), os.getgid(), os.geteuid(), os.getegid())
        if ids != (self.uid, self.gid, self.euid, self.egid):
            clean = False
        mem = resident_kb()
        if mem is not None and self.resident is not None and mem - self.resident > self.maxmem_kb:
            clean = False  # a fresh fork is smaller than what this one kept
        return clean


def receive(chan: socket.socket) -> tuple[bytes, socket.socket] | None:
    """The next connection from the listener, or None at EOF / on nonsense."""
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(chan, HEADER.size, 4)
            break
        except InterruptedError:
            continue
        except OSError:
            return None
    if len(fds) != 1 or not msg:
        for fd in fds:
            os.close(fd)
        return None
    while len(msg) < HEADER.size:  # the rest of a split header (never with fds)
        try:
            more = chan.recv(HEADER.size - len(msg))
        except InterruptedError:
            continue
        except OSError:
            more = b""
        if not more:
            os.close(fds[0])
            return None
        msg += more
    return msg, socket.socket(fileno=fds[0])


def answer(chan: socket.socket, code: int, stays: bool) -> None:
    try:
        chan.sendall(STATUS.pack(max(-(2**31), min(code, 2**31 - 1)), 1 if stays else 0))
    except OSError:
        os._exit(0)
