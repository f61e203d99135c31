"""A small single-threaded event loop for the supervisors.

One loop serves one ``supervise`` or a whole ``svscan`` tree: readable
descriptors (control fifos), timers, signals (delivered through a wakeup
pipe, handled between iterations, never inside a handler), children (reaped
with ``waitpid``) and processes that are not our children (watched with a
pidfd, used when a restarted svscan adopts services that kept running).
"""

from __future__ import annotations

import heapq
import itertools
import os
import select
import signal
import time
from collections.abc import Callable

ChildCallback = Callable[[int, int | None], None]  # (pid, wait status or None)


class Loop:
    def __init__(self) -> None:
        self._poll = select.poll()
        self._readers: dict[int, Callable[[], None]] = {}
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._cancelled: set[int] = set()
        self._seq = itertools.count()
        self._children: dict[int, ChildCallback] = {}
        self._pidfds: dict[int, tuple[int, ChildCallback]] = {}  # fd -> (pid, cb)
        self._signals: dict[int, Callable[[], None]] = {}
        self._pending: list[int] = []
        self.orphan_callback: ChildCallback | None = None
        self.stopped = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll.register(self._wake_r, select.POLLIN)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self.on_signal(signal.SIGCHLD, self.reap)

    # --- descriptors ---------------------------------------------------
    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self._readers[fd] = callback
        self._poll.register(fd, select.POLLIN)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._poll.unregister(fd)

    # --- timers --------------------------------------------------------
    def call_later(self, delay: float, callback: Callable[[], None]) -> int:
        seq = next(self._seq)
        heapq.heappush(self._timers, (_now() + max(0.0, delay), seq, callback))
        return seq

    def cancel(self, handle: int | None) -> None:
        if handle is not None:
            self._cancelled.add(handle)

    # --- signals -------------------------------------------------------
    def _record(self, signum: int, _frame: object) -> None:
        self._pending.append(signum)

    def on_signal(self, signum: int, callback: Callable[[], None]) -> None:
        self._signals[signum] = callback
        signal.signal(signum, self._record)

    # --- processes -----------------------------------------------------
    def watch_child(self, pid: int, callback: ChildCallback) -> None:
        """``callback(pid, wstat)`` once our child ``pid`` has ended."""
        self._children[pid] = callback

    def forget_child(self, pid: int) -> None:
        self._children.pop(pid, None)

    def watch_pid(self, pid: int, callback: ChildCallback) -> bool:
        """``callback(pid, None)`` once a process that is not our child ends."""
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return False
        os.set_inheritable(fd, False)
        self._pidfds[fd] = (pid, callback)
        self._poll.register(fd, select.POLLIN)
        return True

    def unwatch_pid(self, pid: int) -> None:
        for fd, (p, _cb) in list(self._pidfds.items()):
            if p == pid:
                self._poll.unregister(fd)
                del self._pidfds[fd]
                os.close(fd)

    def reap(self) -> None:
        while True:
            try:
                pid, wstat = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            if pid == 0:
                return
            callback = self._children.pop(pid, None)
            if callback is not None:
                callback(pid, wstat)
            elif self.orphan_callback is not None:
                self.orphan_callback(pid, wstat)

    # --- running -------------------------------------------------------
    def close_in_child(self) -> None:
        """In a forked child: stop routing signals into this loop."""
        signal.set_wakeup_fd(-1)
        for signum in self._signals:
            signal.signal(signum, signal.SIG_DFL)

    def run_once(self, max_wait: float | None = None) -> None:
        timeout = None
        while self._timers and self._timers[0][1] in self._cancelled:
            self._cancelled.discard(heapq.heappop(self._timers)[1])
        if self._timers:
            timeout = max(0.0, self._timers[0][0] - _now())
        if max_wait is not None:
            timeout = max_wait if timeout is None else min(timeout, max_wait)
        if self._pending:
            timeout = 0
        try:
            events = self._poll.poll(None if timeout is None else int(timeout * 1000) + 1)
        except InterruptedError:  # pragma: no cover
            events = []
        for fd, _ev in events:
            if fd == self._wake_r:
                try:
                    while os.read(self._wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
        self._dispatch_signals()
        for fd, _ev in events:
            if fd == self._wake_r:
                continue
            if fd in self._pidfds:
                pid, callback = self._pidfds.pop(fd)
                self._poll.unregister(fd)
                os.close(fd)
                callback(pid, None)
                continue
            callback = self._readers.get(fd)
            if callback is not None:
                callback()
        self._dispatch_signals()
        now = _now()
        while self._timers and self._timers[0][0] <= now:
            _when, seq, callback = heapq.heappop(self._timers)
            if seq in self._cancelled:
                self._cancelled.discard(seq)
                continue
            callback()

    def _dispatch_signals(self) -> None:
        while self._pending:
            signum = self._pending.pop(0)
            callback = self._signals.get(signum)
            if callback is not None:
                callback()

    def run(self) -> None:
        while not self.stopped:
            self.run_once()


def _now() -> float:
    return time.monotonic()
