"""qmail-lspawn and qmail-rspawn: run one delivery per job, report results.

Both speak the original's protocol with qmail-send (see qmail_send).  The
hot-path rule: a delivery is a ``fork()`` of this warm process that calls
qmail-local / qmail-remote's code directly - no exec, no interpreter start.
The child gets the message on fd 0 and writes its report on fd 1, exactly
the interface of the commands, so their code runs unchanged.
"""

from __future__ import annotations

import _signal
import gc
import os
import pickle
import select
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from indimail.core import paths as _paths
from indimail.core.errors import Fatal, exit_child
from indimail.core.proctitle import set_proc_name
from indimail.queue.layout import Layout

SPAWN = 500  # conf-spawn: the most deliveries at once
MAX_OUTPUT = 10000  # bytes of report kept per delivery
MAX_COMMAND = 1 << 20
# Delivery workers (see Spawner.start_in_worker): a worker serves this many
# deliveries, then is retired, as is one idle this long.
WORKER_JOBS = 1000
WORKER_IDLE = 5.0
# workers kept beyond their delivery; with more deliveries at once, the
# extra workers end with theirs (memory: ~2-3 MB Pss each)
WORKER_MAX = 20  # the default concurrencyremote; concurrencylocal is 10
WORKER_MAX_JOB = 1 << 16  # bigger requests go to a forked child


@dataclass
class Request:
    slot: int
    messid: bytes
    sender: bytes
    qqeh: bytes
    envh: bytes
    recipient: bytes
    prepared: object = None  # what the child function's ``prepare`` found in the parent


@dataclass
class Running:
    request: Request
    pid: int
    fd: int
    output: bytearray = field(default_factory=bytearray)
    eof: bool = False
    wstatus: int | None = None
    key: int = 0  # in Spawner.running: the child's pid, or a worker job's own number


ChildFn = Callable[[Request, int], int]  # (request, size of message) -> exit code
# A ChildFn may carry ``prepare(request) -> object``: run in the spawner before
# the fork, its result reaches the child as ``request.prepared`` (work done
# once in the warm parent instead of in every child).  It may also carry
# ``reusable(request) -> bool``: True when the delivery leaves no trace in
# the process that runs it, so a long-lived worker may run it instead of a
# fresh fork; with ``worker_key(request)`` (None: the spawner's own account)
# and ``become(key) -> bool``, workers of one account each (see Spawner).
# ``affinity(request)``: a worker whose last delivery had the same value is
# preferred (it may keep something for it, as qmail-remote's connection);
# ``enter_worker()`` is called once in a new worker, and ``idle_due() ->
# float | None`` (time.monotonic()) with ``idle()`` let a waiting worker
# let go of what it kept when the time comes, and when it ends.
ReportFn = Callable[[int, bytes], bytes]  # (wait status, output) -> K/Z/D text


def parse_requests(buf: bytearray) -> list[Request]:
    """Take every complete request (2 bytes + 5 NUL-terminated fields) off ``buf``."""
    out = []
    while len(buf) > 2:
        pos = 2
        fields = []
        for _ in range(5):
            end = buf.find(b"\0", pos)
            if end == -1:
                return out
            fields.append(bytes(buf[pos:end]))
            pos = end + 1
        slot = buf[0] | (buf[1] << 8)
        messid, sender, qqeh, envh, recipient = fields
        out.append(Request(slot, messid, expand_verp(sender, recipient), qqeh, envh, recipient))
        del buf[:pos]
    return out


def expand_verp(sender: bytes, recipient: bytes) -> bytes:
    """``pre-@host-@[]`` -> ``pre-<rbox>=<rhost>@host`` for this recipient."""
    if not sender.endswith(b"-@[]"):
        return sender
    core = sender[:-4]  # pre-@host
    at = core.rfind(b"@")
    if at == -1:
        return sender
    rbox, _, rhost = recipient.rpartition(b"@")
    return core[:at] + rbox + b"=" + rhost + core[at:]


def env_from_headers(envh: bytes) -> dict[str, str]:
    """envheaders lines ``Name: value`` -> NAME=value (``-`` -> ``_``)."""
    env = {}
    for line in envh.split(b"\n"):
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            continue
        key = name.strip().decode("ascii", "replace").upper().replace("-", "_")
        if key.replace("_", "").isalnum():
            env[key] = value.strip().decode("utf-8", "surrogateescape")
    return env


_WAKE = "wake"  # poller data of the signal wake-up pipe
_CMD = "cmd"  # and of qmail-send's commands
_STD = ((0, "stdin", "rb"), (1, "stdout", "w"), (2, "stderr", "w"))
_CHILD_DEFAULT_SIGNALS = (int(signal.SIGCHLD), int(signal.SIGTERM), int(signal.SIGPIPE))


def _std_streams_bound() -> bool:
    """Do sys.stdin/stdout/stderr wrap fds 0, 1 and 2?"""
    for fd, name, _mode in _STD:
        stream = getattr(sys, name)
        try:
            if stream is None or stream.fileno() != fd:
                return False
        except (AttributeError, OSError, ValueError):
            return False
    return True


def _std_streams() -> None:
    """In a delivery child: sys.stdin/stdout/stderr on fds 0, 1, 2.

    The spawner's own streams already wrap those descriptor numbers and
    hold nothing buffered (it only uses os.read/os.write), so when
    :func:`_std_streams_bound` said so in the spawner they are kept:
    opening new ones costs a few tenths of a millisecond per delivery.
    """
    for fd, name, mode in _STD:
        setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115


@dataclass
class _Worker:
    """A forked process that runs deliveries one after another.

    The spawner hands it a job over a socket pair: the request (pickled)
    with the message's descriptor and the write end of the report pipe
    attached (SCM_RIGHTS).  The worker puts them on fds 0, 1 and 2 as a
    forked child has them, runs the delivery, puts /dev/null back on
    0-2 (so the report pipe sees EOF exactly when a child's exit would
    give it) and answers with the exit code (4 bytes).
    """

    pid: int
    sock: socket.socket
    run: Running | None = None
    jobs: int = 0
    idle_since: float = 0.0
    gone: bool = False
    key: object = None  # the account it switched to (None: the spawner's own)
    affinity: object = None  # what its last delivery went to (see ChildFn)


class _Poller:
    """The little of ``selectors`` the spawner needs, on epoll (or poll)
    directly: every Python call between two forks dirties pages that the
    next fork has to copy, so the per-delivery path is kept short."""

    def __init__(self) -> None:
        self._data: dict[int, object] = {}
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._poll = None if self._epoll is not None else select.poll()
        # what epoll refuses (a regular file, /dev/null: a spawner started by
        # hand, not by qmail-send); like select(), count it always ready
        self._ready: set[int] = set()

    def register(self, fd: int, data: object) -> None:
        if self._epoll is not None:
            try:
                self._epoll.register(fd, select.EPOLLIN)
            except PermissionError:
                self._ready.add(fd)
        else:
            self._poll.register(fd, select.POLLIN)
        self._data[fd] = data

    def unregister(self, fd: int) -> None:
        del self._data[fd]
        if fd in self._ready:
            self._ready.discard(fd)
            return
        (self._epoll if self._epoll is not None else self._poll).unregister(fd)

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()

    def select(self, timeout: float) -> list[object]:
        """The data of every descriptor ready to read (or at EOF)."""
        if self._epoll is not None:
            events = self._epoll.poll(0 if self._ready else timeout)
        else:
            events = self._poll.poll(timeout * 1000)
        data = self._data
        found = [data[fd] for fd, _ev in events if fd in data]
        if self._ready:
            found += [data[fd] for fd in self._ready]
        return found


class Spawner:
    """The common loop of both spawners."""

    def __init__(
        self,
        layout: Layout,
        child: ChildFn,
        report: ReportFn,
        check_owner: int | None,
        infd: int = 0,
        outfd: int = 1,
        worker_name: str = "",
    ) -> None:
        self.layout = layout
        self.worker_name = worker_name  # what ps shows for delivery workers
        self.child = child
        self.report = report
        self.check_owner = check_owner
        self.infd = infd
        self.outfd = outfd
        self.running: dict[int, Running] = {}  # by pid (of the child or worker)
        self.workers: dict[int, _Worker] = {}  # by pid
        self.idle: list[_Worker] = []  # workers waiting for a job, oldest first
        self.jobseq = 0
        self.wake_fds: tuple[int, ...] = ()
        self.std_bound = _std_streams_bound()
        self.parent = os.getppid()
        self.sel = _Poller()

    def error(self, slot: int, text: bytes) -> None:
        self.write(bytes((slot & 0xFF, slot >> 8)) + text + b"\0")

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.outfd, view)
            except InterruptedError:
                continue
            except BrokenPipeError:
                raise  # qmail-send is gone: the dispatcher ends quietly
            except OSError as exc:  # not qmail-send's pipe (closed by hand)
                raise Fatal(111, f"unable to write to qmail-send: {exc.strerror}") from None
            view = view[n:]

    def start(self, req: Request) -> None:
        if os.getppid() != self.parent:
            return  # qmail-send is gone: nobody would record the result
        if req.slot >= SPAWN:
            self.error(req.slot, b"ZInternal error: delnum too big. (#4.3.5)\n")
            return
        if b"@" not in req.recipient:
            self.error(req.slot, b"DSorry, address must include host name. (#5.1.3)\n")
            return
        part, sep, number = req.messid.partition(b"/")
        if not sep or not part.isdigit() or not number.isdigit():
            self.error(req.slot, b"DInternal error: messid has nonnumerics. (#5.3.5)\n")
            return
        # a string: pathlib's joins were a fifth of the spawner's CPU
        path = f"{self.layout.root_s}/mess/{part.decode()}/{number.decode()}"
        try:
            messfd = os.open(path, os.O_RDONLY)
        except OSError:
            self.error(req.slot, b"Zqmail-spawn unable to open message. (#4.3.0)\n")
            return
        st = os.fstat(messfd)
        if not stat.S_ISREG(st.st_mode):
            os.close(messfd)
            self.error(req.slot, b"ZSorry, message has wrong type. (#4.3.5)\n")
            return
        if self.check_owner is not None and st.st_uid != self.check_owner:
            os.close(messfd)
            self.error(req.slot, b"ZSorry, message has wrong owner. (#4.3.5)\n")
            return
        prepare = getattr(self.child, "prepare", None)
        if prepare is not None:
            req.prepared = prepare(req)
        reusable = getattr(self.child, "reusable", None)
        if reusable is not None and reusable(req):
            key_of = getattr(self.child, "worker_key", None)
            key = key_of(req) if key_of is not None else None
            affinity_of = getattr(self.child, "affinity", None)
            affinity = affinity_of(req) if affinity_of is not None else None
            if self.start_in_worker(req, messfd, st.st_size, key, affinity):
                return
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the delivery
            code = 111
            try:
                # Short-lived: a collection would only touch (and so copy)
                # the pages of the warm heap it shares with this process.
                gc.disable()
                os.close(r)
                os.dup2(messfd, 0)
                os.dup2(w, 1)
                os.dup2(w, 2)  # as the original: error texts are part of the report
                if messfd > 2:
                    os.close(messfd)
                if w > 2:
                    os.close(w)
                # _signal: signal.signal's enum conversions cost every child
                # ~0.1 ms of page faults, for the same system calls
                for signum in _CHILD_DEFAULT_SIGNALS:
                    _signal.signal(signum, _signal.SIG_DFL)
                if not self.std_bound:
                    _std_streams()
                code = self.run_child(req, st.st_size)
            finally:
                exit_child(code)
        os.close(w)
        os.close(messfd)
        os.set_blocking(r, False)
        run = Running(req, pid, r, key=pid)
        self.running[pid] = run
        self.sel.register(r, run)

    def run_child(self, req: Request, size: int) -> int:
        """The delivery itself (forked child or worker): its exit code, and
        an error text in the report instead of a traceback."""
        try:
            return self.child(req, size)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 111
        except BaseException as exc:
            try:
                os.write(1, f"internal error in delivery: {type(exc).__name__}: {exc}\n".encode())
            except OSError:
                pass
            return 111

    # -- delivery workers ----------------------------------------------------

    def start_in_worker(
        self, req: Request, messfd: int, size: int, key: object = None, affinity: object = None
    ) -> bool:
        """Hand the delivery to an idle worker of account ``key`` (forking
        one if none is idle); False if that cannot be done (the caller forks
        a child)."""
        job = pickle.dumps((req, size), protocol=pickle.HIGHEST_PROTOCOL)
        if len(job) > WORKER_MAX_JOB:
            return False
        if not any(w.key == key for w in self.idle):
            # a worker may have answered since the loop last looked (the
            # events of one select() are handled in turn): reading those
            # answers first keeps the pool at the concurrency instead of
            # forking a worker per delivery that arrives meanwhile
            for what in self.sel.select(0):
                if type(what) is _Worker:
                    self.worker_event(what)
        worker = self.take_idle(key, affinity) or self.new_worker(messfd, key)
        if worker is None:
            return False
        worker.affinity = affinity
        r, w = os.pipe()
        try:
            socket.send_fds(worker.sock, [job], [messfd, w])
        except OSError:
            os.close(r)
            os.close(w)
            self.retire(worker)
            return False
        os.close(w)  # the worker has its own copies now
        os.close(messfd)
        os.set_blocking(r, False)
        self.jobseq += 1
        run = Running(req, worker.pid, r, key=-self.jobseq)
        worker.run = run
        worker.jobs += 1
        self.running[run.key] = run
        self.sel.register(r, run)
        return True

    def take_idle(self, key: object, affinity: object = None) -> _Worker | None:
        """The warmest idle worker of account ``key``, one whose last
        delivery had ``affinity`` first.  None if there is none; then, at
        the cap, the oldest idle worker of another account goes, so that
        the new one is not retired after a single job."""
        best = -1
        for i in range(len(self.idle) - 1, -1, -1):
            worker = self.idle[i]
            if worker.key == key:
                if affinity is None or worker.affinity == affinity:
                    return self.idle.pop(i)
                if best < 0:
                    best = i
        if best >= 0:
            return self.idle.pop(best)
        if self.idle and len(self.workers) >= WORKER_MAX:
            self.retire(self.idle[0])
        return None

    def new_worker(self, messfd: int, key: object = None) -> _Worker | None:
        """Fork a worker (``messfd``: the job's message, not for it to
        keep) that first becomes account ``key`` when that is not None."""
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            ours.setblocking(False)
        except OSError:
            return None
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            return None
        if pid == 0:
            code = 111
            try:
                ours.close()
                os.close(messfd)
                self.worker_loop(theirs, key)
                code = 0
            finally:
                exit_child(code)
        theirs.close()
        worker = _Worker(pid, ours, key=key)
        self.workers[pid] = worker
        self.sel.register(ours.fileno(), worker)
        return worker

    def worker_loop(self, sock: socket.socket, key: object = None) -> None:
        """The life of a worker (runs in the forked process)."""
        gc.disable()  # as a delivery child: the shared heap stays shared
        signal.set_wakeup_fd(-1)
        if self.worker_name:
            set_proc_name(self.worker_name)
        for signum in _CHILD_DEFAULT_SIGNALS:
            _signal.signal(signum, _signal.SIG_DFL)
        # what the spawner holds open must not be kept open here too (a
        # copy of another worker's socket would hide its retirement)
        for other in self.workers.values():
            other.sock.close()
        for run in self.running.values():
            if not run.eof:
                os.close(run.fd)
        self.sel.close()
        for fd in (*self.wake_fds, self.infd, self.outfd):
            if fd > 2:
                os.close(fd)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1):
            os.dup2(null, fd)
        if not self.std_bound:
            _std_streams()
        if key is not None:
            # a worker of one account: it becomes that account once, with
            # nothing of the spawner's left open, and is only ever handed
            # that account's deliveries.  The kernel makes a process whose
            # ids changed non-dumpable: the account cannot attach to it.
            become = getattr(self.child, "become", None)
            if become is None or not become(key):
                exit_child(111)  # the job already sent is deferred, as a failed fork
        enter = getattr(self.child, "enter_worker", None)
        if enter is not None:
            enter()
        idle_due = getattr(self.child, "idle_due", None)
        jobs = 0
        while True:  # until the spawner closes its end (never on our own:
            # an exit could overtake the answer still in the socket)
            due = idle_due() if idle_due is not None else None
            if due is not None:
                wait = due - time.monotonic()
                if wait <= 0 or not select.select([sock], [], [], wait)[0]:
                    self.child.idle()  # type: ignore[attr-defined]
                    continue
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, WORKER_MAX_JOB + 1, 2)
            except InterruptedError:
                continue
            if not data:
                for fd in fds:
                    os.close(fd)
                if idle_due is not None:
                    self.child.idle()  # type: ignore[attr-defined]
                return  # the spawner is done with us
            jobs += 1
            if len(fds) != 2:
                for fd in fds:
                    os.close(fd)
                sock.send((111).to_bytes(4, "little"))
                continue
            messfd, w = fds
            os.dup2(messfd, 0)
            os.dup2(w, 1)
            os.dup2(w, 2)
            os.close(messfd)
            os.close(w)
            req, size = pickle.loads(data)
            code = self.run_child(req, size)
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            # as a child's exit: the message and the report pipe are let go
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            sock.send((code & 0xFF).to_bytes(4, "little"))
            if jobs % 64 == 0:
                gc.collect()  # cycles a delivery may have left

    def worker_event(self, worker: _Worker) -> None:
        """A worker answered (a delivery's exit code) or went away."""
        try:
            data = worker.sock.recv(16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        run = worker.run
        if len(data) == 4:
            worker.run = None
            if run is not None:
                run.wstatus = int.from_bytes(data, "little") << 8  # as an exit status
                self.finish_if_done(run)
            if worker.jobs >= WORKER_JOBS or len(self.workers) > WORKER_MAX:
                self.retire(worker)  # it exits now
            else:
                worker.idle_since = time.monotonic()
                self.idle.append(worker)
            return
        # EOF (or nonsense): the worker is gone; its exit status, from
        # reap(), becomes the result of the delivery it was running
        self.retire(worker)

    def retire(self, worker: _Worker) -> None:
        """Close our end: an idle worker exits; the process is reaped later."""
        if worker.gone:
            return
        worker.gone = True
        if worker in self.idle:
            self.idle.remove(worker)
        self.sel.unregister(worker.sock.fileno())
        worker.sock.close()

    def retire_idle(self, now: float) -> None:
        while self.idle and now - self.idle[0].idle_since >= WORKER_IDLE:
            self.retire(self.idle[0])

    def collect(self, run: Running) -> None:
        try:
            chunk = os.read(run.fd, 65536)
        except BlockingIOError:
            return
        if chunk:
            room = MAX_OUTPUT - len(run.output)
            if room > 0:
                run.output += chunk[:room]
            return
        run.eof = True
        self.sel.unregister(run.fd)
        os.close(run.fd)
        self.finish_if_done(run)

    def reap(self) -> None:
        while self.running or self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is not None:
                if not worker.gone:
                    self.worker_event(worker)  # an answer it sent before it died
                self.retire(worker)
                run = worker.run
                worker.run = None
                if run is None or run.wstatus is not None:
                    continue
            else:
                run = self.running.get(pid)
                if run is None:
                    continue
            run.wstatus = status
            self.finish_if_done(run)

    def finish_if_done(self, run: Running) -> None:
        if not run.eof or run.wstatus is None:
            return
        del self.running[run.key]
        text = self.report(run.wstatus, bytes(run.output))
        self.error(run.request.slot, text.replace(b"\0", b"_"))

    def serve(self) -> int:
        """Announce concurrency, then run jobs until qmail-send closes fd 0."""
        limit = SPAWN
        self.write(bytes((limit & 0xFF, limit >> 8)))
        # The warm heap (modules, config) never becomes garbage: keep the
        # collector away from it, so its pages stay shared with the
        # delivery children instead of being copied after every fork.
        gc.collect()
        gc.freeze()
        wake_r, wake_w = os.pipe()
        self.wake_fds = (wake_r, wake_w)
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # qmail-send decides when we stop
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        self.sel.register(wake_r, _WAKE)
        os.set_blocking(self.infd, False)
        self.sel.register(self.infd, _CMD)
        buf = bytearray()
        open_input = True
        while open_input or self.running:
            timeout = 5.0
            if self.idle:  # wake up in time to retire the oldest idle worker
                timeout = min(timeout, self.idle[0].idle_since + WORKER_IDLE - time.monotonic())
                timeout = max(timeout, 0.01)
            for what in self.sel.select(timeout):
                if what is _WAKE:
                    try:
                        while os.read(wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                elif what is _CMD:
                    try:
                        chunk = os.read(self.infd, 65536)
                    except BlockingIOError:
                        continue
                    except OSError as exc:  # the original's _exit(111)
                        raise Fatal(111, f"unable to read commands: {exc.strerror}") from None
                    if not chunk:
                        open_input = False
                        self.sel.unregister(self.infd)
                        continue
                    buf += chunk
                    for req in parse_requests(buf):
                        self.start(req)
                    if len(buf) > MAX_COMMAND:
                        buf.clear()
                elif type(what) is _Worker:
                    self.worker_event(what)
                else:
                    self.collect(what)  # type: ignore[arg-type]
            self.reap()
            if self.idle:
                self.retire_idle(time.monotonic())
        self.stop_workers()
        return 0

    def stop_workers(self) -> None:
        """Let every worker go and wait for them (they are idle by now)."""
        for worker in list(self.workers.values()):
            self.retire(worker)
        while self.workers:
            try:
                pid, _status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            self.workers.pop(pid, None)


# -- qmail-lspawn ------------------------------------------------------------

LSPAWN_ERRORS = {
    112: b"ZInternal qmail-lspawn bug.\n",
    113: b"ZNot allowed to perform deliveries as root.\n",
    115: b"ZNFS failure in qmail-local.\n",
    116: b"ZUnable to find alias user!\n",
    117: b"ZTrouble reading users/cdb in qmail-lspawn.\n",
    118: b"ZTemporary failure in qmail-lspawn.\n",
    119: b"ZOut of memory in qmail-lspawn.\n",
    120: b"ZUnable to run qmail-local.\n",
    121: b"ZUnable to run qmail-getpw.\n",
    126: b"DUnable to run qmail-local.\n",
    127: b"ZUnable to set proper uid, gid.\n",
}


def lspawn_report(wstatus: int, output: bytes) -> bytes:
    """qmail-local's exit status + output -> K/Z/D text, as qmail-lspawn."""
    if os.WIFSIGNALED(wstatus):
        return b"Zqmail-local crashed.\n"
    code = os.WEXITSTATUS(wstatus)
    if code in LSPAWN_ERRORS:
        return LSPAWN_ERRORS[code]
    if code in (111, 71, 74, 75):
        kind = b"Z"
    elif code == 0:
        kind = b"K"
    else:
        kind = b"D"
    return kind + output.split(b"\0", 1)[0]


class _LocalChild:
    """qmail-lspawn's delivery: ``prepare`` in the spawner, call in the child."""

    def __init__(self, p: _paths.Paths, defaultdelivery: str) -> None:
        from indimail.deliver import qmail_local, users

        self.p = p
        self.defaultdelivery = defaultdelivery
        self.qmail_local = qmail_local
        self.users = users
        # users/cdb answers kept in the spawner, checked against the file
        self.cdb = users.CdbCache(p.assigndir / "cdb")
        self.account: tuple[int, int] | None = None  # a worker's, once it became one
        # the environment, decoded once (nothing changes os.environ here)
        self.environ = dict(os.environ)

    def prepare(self, req: Request) -> object:
        local = req.recipient.decode("utf-8", "surrogateescape").rpartition("@")[0]
        if not local:
            return None
        try:
            return self.cdb.lookup(local)
        except Exception:  # the child looks up itself and reports
            return self.cdb.UNKNOWN

    def reusable(self, req: Request) -> bool:
        """Without a change of user a delivery may run in a worker; as
        root, in a worker of the recipient's account (see worker_key)."""
        return self.p.rootless or os.getuid() != 0 or self.worker_key(req) is not None

    def worker_key(self, req: Request) -> tuple[int, int] | None:
        """As root: (uid, gid) of the account users/cdb names for the
        recipient, the workers that deliver for it.  Anything else (the
        password database, an unknown user, root itself) is looked up and
        switched to in a forked child, as before."""
        if self.p.rootless or os.getuid() != 0:
            return None
        entry = req.prepared
        if isinstance(entry, self.users.UserEntry) and entry.uid != 0:
            return (entry.uid, entry.gid)
        return None

    def become(self, key: tuple[int, int]) -> bool:
        """Switch this worker to account ``key`` for good (as root)."""
        if not _switch_account(*key):
            return False
        self.account = key
        return True

    def __call__(self, req: Request, _size: int) -> int:
        users, qmail_local, p = self.users, self.qmail_local, self.p
        recipient = req.recipient.decode("utf-8", "surrogateescape")
        local, _, domain = recipient.rpartition("@")
        if not local:
            return 0  # an empty local part is thrown away, as the original
        try:
            entry = req.prepared
            if entry is self.cdb.UNKNOWN or not isinstance(entry, users.UserEntry | None):
                entry = users.find_user(local, p)
            elif entry is None:  # no users/cdb entry: the password database
                entry = users.lookup_passwd(local, p.user("alias"))
        except users.UserLookupError as exc:
            return exc.code
        except OSError:
            return 117
        if entry is None:
            return 116
        if self.account is not None and (entry.uid, entry.gid) != self.account:
            return 127  # never another account's delivery in this worker
        if p.rootless:
            pass  # one account does everything, whichever it is
        elif os.getuid() == 0:
            if entry.uid == 0:
                return 113
            if not _switch_account(entry.uid, entry.gid):
                return 127
        elif entry.uid != os.getuid():
            return 127
        environ = dict(self.environ)
        environ.update(env_from_headers(req.envh))
        environ["MESSID"] = req.messid.decode()
        args = qmail_local.LocalArgs(
            user=entry.user,
            homedir=entry.home,
            local=local,
            dash=entry.dash,
            ext=entry.ext,
            domain=domain,
            sender=req.sender.decode("utf-8", "surrogateescape"),
            defaultdelivery=self.defaultdelivery,
            qqeh=req.qqeh.decode("utf-8", "surrogateescape"),
        )
        with open(1, "wb", buffering=0, closefd=False) as out:
            return qmail_local.deliver(args, 0, out, environ=environ, controldir=p.controldir)


def _switch_account(uid: int, gid: int) -> bool:
    """Become ``uid``/``gid`` with no supplementary groups, for good
    (a forked delivery, or an account's worker); False if refused."""
    try:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    except OSError:
        return False
    return True


def lspawn_child(p: _paths.Paths, defaultdelivery: str) -> ChildFn:
    """The work of one local delivery, run in the forked child."""
    return _LocalChild(p, defaultdelivery)


# -- qmail-rspawn ------------------------------------------------------------


def rspawn_report(wstatus: int, output: bytes) -> bytes:
    """Combine qmail-remote's recipient and message reports, as qmail-rspawn."""
    if os.WIFSIGNALED(wstatus):
        return b"Zqmail-remote crashed.\n"
    code = os.WEXITSTATUS(wstatus)
    if code == 111:
        return b"ZUnable to run qmail-remote.\n"
    if code != 0:
        return b"DUnable to run qmail-remote.\n"
    if not output:
        return b"Zqmail-remote produced no output.\n"
    parts = output.split(b"\0")
    result = -1
    for part in parts:
        if part[:1] in (b"K", b"Z", b"D"):
            result = {b"K": 1, b"Z": 0, b"D": -1}[part[:1]]
            break
    combined = result
    first = parts[0]
    if first[:1] == b"s":
        combined = 0
    elif first[:1] == b"h":
        combined = -1
    kind = {1: b"K", 0: b"Z", -1: b"D"}[combined]
    text = first[1:]
    # the message report right after a recipient report adds to the text
    if result <= combined and len(parts) > 1 and parts[1][:1] in (b"K", b"Z", b"D"):
        text += parts[1][1:]
    return kind + text


def rspawn_child(layout: Layout) -> ChildFn:
    """The work of one remote delivery, run in the forked child."""
    from indimail.deliver import qmail_remote

    def run(req: Request, size: int) -> int:
        recipient = req.recipient.decode("utf-8", "surrogateescape")
        host = recipient.rpartition("@")[2]
        environ = dict(os.environ)
        environ.update(env_from_headers(req.envh))
        environ["MESSID"] = req.messid.decode()
        environ["QUEUEDIR"] = str(layout.root)  # qmail-remote's lock/tcpto
        args = [
            "qmail-remote",
            host,
            req.sender.decode("utf-8", "surrogateescape"),
            req.qqeh.decode("utf-8", "surrogateescape"),
            str(size),
            recipient,
        ]
        with open(1, "wb", buffering=0, closefd=False) as out:
            return qmail_remote.run(args, 0, out, environ, cache)

    # qmail-rspawn never switches accounts and qmail-remote's run() keeps no
    # state but the connection it may leave in ``cache`` (closes its message
    # map itself): every remote delivery may run in a reused delivery worker.
    # The cache is enabled only in a worker, which closes the connection
    # when it waits too long or ends; a one-off child keeps nothing.
    cache = qmail_remote.ConnCache()
    run.reusable = lambda _req: True  # type: ignore[attr-defined]
    run.affinity = lambda req: req.recipient.rpartition(b"@")[2].lower()  # type: ignore[attr-defined]
    run.enter_worker = cache.enable  # type: ignore[attr-defined]
    run.idle_due = cache.due  # type: ignore[attr-defined]
    run.idle = cache.expire  # type: ignore[attr-defined]
    return run


def queue_layout(p: _paths.Paths) -> Layout:
    queuedir = Path(os.environ.get("QUEUEDIR") or p.queue_dirs()[0])
    return Layout(queuedir, split=p.conf_split, bigtodo=p.bigtodo)


def _queue_owner(p: _paths.Paths) -> int | None:
    import pwd

    try:
        return pwd.getpwnam(p.user("qmailq")).pw_uid
    except KeyError:
        return None


def lspawn_main(argv: list[str]) -> int:
    """qmail-lspawn defaultdelivery"""
    p = _paths.get()
    default = argv[1] if len(argv) > 1 else "./Maildir/"
    child = lspawn_child(p, default)
    sp = Spawner(queue_layout(p), child, lspawn_report, _queue_owner(p), worker_name="qmail-local")
    return sp.serve()


def rspawn_main(argv: list[str]) -> int:
    """qmail-rspawn"""
    p = _paths.get()
    layout = queue_layout(p)
    child = rspawn_child(layout)
    sp = Spawner(layout, child, rspawn_report, _queue_owner(p), worker_name="qmail-remote")
    return sp.serve()
