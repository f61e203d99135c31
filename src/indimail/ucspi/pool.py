"""tcpserver's pool of pre-forked workers for an in-process program.

Forking a warm interpreter for every connection costs more than the
SMTP session it serves (~45% of qmail-smtpd's CPU went into the fork and
the copy-on-write faults after it).  So, as Postfix's smtpd processes do,
a worker forked from the listening process serves one connection after
another:

* Idle workers accept on the listening socket themselves (``Waiter``):
  a connection reaches its worker with one wake-up and no hand-over.  The
  listener forks a worker when none is idle (a worker that takes the last
  idle place says so, ``NEED``), reaps them, and accepts itself only when
  the pool is full, forking a child for that connection.
* ``-c``, ``-C`` and the status lines' counts come from a ``Table`` in
  shared memory: a slot per worker or child, idle or busy with its
  client's address.  A worker logs its sessions' ``end``/``sigchild``
  lines itself, as the listener does for a child.
* Only a command that declares ``UCSPI_POOL = True`` in its module is
  pooled (qmail-smtpd): it keeps no state across runs outside what is
  reset here.  Anything else is forked per connection, as before.
* Before the next connection the worker puts back what a session may
  have changed: environment, cwd, umask, signal dispositions, timers,
  stdio, ``sys.argv``, the process-wide paths object and the connection
  hand-offs.  A worker that cannot prove it is clean (an fd left open
  after collecting garbage, uid/gid changed, an internal error) exits
  after its session instead of serving again.
* A worker retires after ``TCPSERVER_POOL_MAXUSE`` connections (default
  100), after ``TCPSERVER_POOL_IDLE`` seconds without one (default 5),
  when ``TCPSERVER_POOL_MAXIDLE`` workers (default 20) already wait, when
  its resident memory grew by more than ``TCPSERVER_POOL_MAXMEM`` MB
  since it started (default 16; a hostile client's 1 MB lines grow the
  heap, which Python keeps), and whenever the listener goes away or
  closes its socketpair (EOF).  There are at most ``TCPSERVER_POOL_MAX``
  workers (default 24); beyond that, each connection gets a forked child
  of its own that ends with it (a fresh fork is smaller than a worker that
  served many).  ``TCPSERVER_POOL=0`` turns the pool off.
"""

from __future__ import annotations

import gc
import mmap
import os
import select
import selectors
import signal
import socket
import struct
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

DEFAULT_MAXUSE = 100
DEFAULT_IDLE = 5
DEFAULT_MAXIDLE = 20
DEFAULT_MAX = 24
DEFAULT_MAXMEM = 16  # MB
NEED = b"N"  # worker -> listener: I took the last idle place, fork another


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
    if text.isdecimal() and low <= int(text) <= high:
        return int(text)
    return default


# -- who serves whom ------------------------------------------------------------------

FREE, IDLE, BUSY = 0, 1, 2
SLOT = 17  # state byte + the client's 16-byte address
_HIGH = struct.Struct("=I")  # slots in use are below this index
NO_ADDRESS = bytes(16)


class Table:
    """One slot per worker or forked child, in memory shared by the
    listener and every process it forks: its state (idle worker, busy)
    and, when busy, its client's address.

    A worker accepts by itself, so the listener never sees the
    connection; the worker counts the client's other connections (``-C``,
    ``MAXPERIP``) and the sessions for the status lines here, without a
    round trip.  Only the listener hands out and takes back slots (after
    the holder was reaped); a worker writes only its own."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.mm = mmap.mmap(-1, _HIGH.size + slots * SLOT)  # anonymous, MAP_SHARED
        self.used: set[int] = set()  # the listener's own record of slots handed out

    def claim(self, state: int, ip16: bytes = NO_ADDRESS) -> int | None:
        """The listener: the lowest free slot, set to ``state``; None if all are taken."""
        for slot in range(self.slots):
            if slot not in self.used:
                break
        else:
            return None
        self.used.add(slot)
        self.set(slot, state, ip16)
        if slot >= self.high():
            _HIGH.pack_into(self.mm, 0, slot + 1)
        return slot

    def release(self, slot: int) -> None:
        """The listener, after the slot's holder was reaped."""
        self.set(slot, FREE)
        self.used.discard(slot)
        high = self.high()
        while high and high - 1 not in self.used:
            high -= 1
        _HIGH.pack_into(self.mm, 0, high)

    def set(self, slot: int, state: int, ip16: bytes = NO_ADDRESS) -> None:
        off = _HIGH.size + slot * SLOT
        self.mm[off : off + SLOT] = bytes((state,)) + ip16

    def high(self) -> int:
        return _HIGH.unpack_from(self.mm, 0)[0]

    def is_busy(self, slot: int) -> bool:
        return self.mm[_HIGH.size + slot * SLOT] == BUSY

    def _snapshot(self) -> bytes:
        return self.mm[_HIGH.size : _HIGH.size + min(self.high(), self.slots) * SLOT]

    def count(self, state: int) -> int:
        return self._snapshot()[0::SLOT].count(state)

    def clients(self, ip16: bytes, besides: int = -1) -> int:
        """Busy slots serving ``ip16``, not counting slot ``besides``."""
        data = self._snapshot()
        key = bytes((BUSY,)) + ip16
        n = 0
        pos = data.find(key)
        while pos != -1:
            if pos % SLOT == 0 and pos // SLOT != besides:
                n += 1
            pos = data.find(key, pos + 1)
        return n

    def busy(self) -> list[tuple[int, bytes]]:
        """(slot, address) of every busy slot."""
        data = self._snapshot()
        return [
            (i, data[i * SLOT + 1 : (i + 1) * SLOT])
            for i in range(len(data) // SLOT)
            if data[i * SLOT] == BUSY
        ]


class Worker:
    __slots__ = ("chan", "pid", "slot")

    def __init__(self, pid: int, chan: socket.socket, slot: int) -> None:
        self.pid = pid
        self.chan = chan
        self.slot = slot


class Pool:
    """The listener's side: fork workers when none is idle, reap them.

    Workers accept on the listening socket themselves (``Waiter``), serve,
    log and retire on their own; the listener hears from one only when it
    took the last idle place (``NEED``: fork another before the next
    client comes) and sees it end by SIGCHLD.  Its socketpair is how a
    worker learns that the listener went away (EOF)."""

    def __init__(self, settings: Settings, sel: selectors.BaseSelector, table: Table) -> None:
        self.sel = sel
        self.table = table
        self.maxworkers = settings.maxworkers
        self.workers: dict[int, Worker] = {}  # pid -> worker

    def idle(self) -> int:
        return self.table.count(IDLE)

    def spawn(self, child_main: Callable[[socket.socket, int], None]) -> Worker | None:
        """Fork a worker running ``child_main(channel, slot)``; None if it
        can't (no slot, no fork)."""
        slot = self.table.claim(IDLE)
        if slot is None:
            return None
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = os.fork()
        except OSError:
            mine.close()
            theirs.close()
            self.table.release(slot)
            return None
        if pid == 0:
            mine.close()
            for w in self.workers.values():  # so EOF reaches each worker
                w.chan.close()
            self.workers.clear()
            self.sel.close()
            child_main(theirs, slot)
            os._exit(0)  # pragma: no cover - child_main never returns
        theirs.close()
        mine.setblocking(False)  # an event already handled must not block us
        w = Worker(pid, mine, slot)
        self.workers[pid] = w
        self.sel.register(mine, selectors.EVENT_READ, w)
        return w

    def heard(self, w: Worker) -> bool:
        """Read what ``w`` sent: True if it asked for another worker."""
        try:
            data = w.chan.recv(64)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        if not data:  # it is exiting: reap() takes back its slot
            self.close(w)
            return False
        return NEED in data

    def close(self, w: Worker) -> None:
        """Close our end: the worker sees EOF and ends after its session."""
        try:
            self.sel.unregister(w.chan)
        except (KeyError, ValueError):
            pass
        try:
            w.chan.close()
        except OSError:
            pass

    def forget(self, pid: int) -> bool:
        """A reaped pid: True (and its slot freed) if it was a worker."""
        w = self.workers.pop(pid, None)
        if w is None:
            return False
        self.close(w)
        self.table.release(w.slot)
        return True

    def trim(self, keep: int) -> None:
        """Fewer workers (``-c`` lowered): close the channel of all but ``keep``."""
        for w in list(self.workers.values())[keep:]:
            self.close(w)


class Waiter:
    """A worker's wait for its next client or for EOF from the listener.

    Every idle worker waits on the one listening socket; with Linux's
    ``EPOLLEXCLUSIVE`` a new connection wakes one of them, elsewhere all
    do, and those that lose the race to ``accept()`` wait again."""

    def __init__(self, lsock: socket.socket, chan: socket.socket) -> None:
        self.lfd = lsock.fileno()
        self.cfd = chan.fileno()
        exclusive = getattr(select, "EPOLLEXCLUSIVE", 0)
        if exclusive and hasattr(select, "epoll"):
            self.ep: select.epoll | None = select.epoll()
            self.ep.register(self.cfd, select.EPOLLIN)
            self.ep.register(self.lfd, select.EPOLLIN | exclusive)
            self.sel = None
        else:
            self.ep = None
            self.sel = selectors.DefaultSelector()
            self.sel.register(self.cfd, selectors.EVENT_READ)
            self.sel.register(self.lfd, selectors.EVENT_READ)

    def wait(self, timeout: float) -> tuple[bool, bool]:
        """(a client is waiting, the listener spoke or went away); both
        False after ``timeout`` seconds (> 0) with nothing.  A signal does
        not end the wait early (PEP 475 retries the call)."""
        if self.ep is not None:
            fds = [fd for fd, _ in self.ep.poll(timeout)]
        else:
            assert self.sel is not None
            fds = [key.fd for key, _ in self.sel.select(timeout)]
        return self.lfd in fds, self.cfd in fds


def need(chan: socket.socket) -> None:
    """Ask the listener for another worker (it sees our slot busy)."""
    try:
        chan.send(NEED, socket.MSG_DONTWAIT)
    except OSError:
        pass  # a full or closed channel: the listener knows, or is gone


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
