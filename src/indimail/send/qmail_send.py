"""qmail-send: schedule deliveries of one queue, retry, bounce, clean up.

Talks to its helpers over pipes with the original's protocols:

* qmail-lspawn / qmail-rspawn: on start each writes its maximum concurrency
  (2 bytes, little-endian); a job is ``<delnum lo><delnum hi>`` +
  ``<split>/<id>\\0<sender>\\0<qqeh>\\0<envheaders>\\0<recipient>\\0``; a
  result is ``<delnum lo><delnum hi><K|Z|D><text>\\0``.
* qmail-clean: ``foop/<id>\\0`` or ``todo/<id>\\0``, answered by one byte.

State lives on disk exactly as in the original: ``info/<id>`` (sender; its
mtime is the message's birth), ``local/<id>`` and ``remote/<id>``
(``T<addr>\\0`` records, overwritten in place with ``D`` when done; the
file's mtime holds the next retry time), ``bounce/<id>``.  A restart picks
everything up from there.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import math
import os
import selectors
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from indimail.core import control
from indimail.core import paths as _paths
from indimail.queue.layout import Layout
from indimail.send import bounce as _bounce
from indimail.send.rewrite import Rewriter
from indimail.send.todo import (
    CHAN_SUBS,
    TodoError,
    preprocess,
    queue_paths,
    read_small,
    sync_all,
    write_channel_files,
)

CHANNELS = (0, 1)  # 0 local, 1 remote
CHAN_NAME = ("local", "remote")
CHAN_FILE = CHAN_SUBS  # local/<id>, remote/<id>
CHANSKIP = (10, 20)
SLEEP_SYSFAIL = 123
SLEEP_TODO = 1500
INFO_CACHE_MAX = 20000  # info records kept in memory (the rest are read from disk)
# Preprocessed messages start delivery at once; their info/local/remote
# files are fsynced and todo/intd removed only this much later, or never
# when every delivery is over by then (see Sender.commit_due).  5 s is
# ext4's own journal interval: the unsynced unlinks that record finished
# deliveries (here and in the original) are at risk for that long anyway.
COMMIT_DELAY = 5.0
PENDING_MAX = 5000  # beyond this many uncommitted messages, commit at once
DYING_TEXT = b"I'm not going to try again; this message has been in the queue too long.\n"


_SAFE = bytes(
    0x2F if b == 0x0A else 0x5F if b < 0x21 or b > 0x7E or b == 0x25 else b for b in range(256)
)


def safe_log_text(data: bytes) -> str:
    """As the original: newline -> '/', bytes outside '!'..'~' (or '%') -> '_'."""
    return data.translate(_SAFE).decode("ascii")


def next_retry(birth: float, now: float, chanskip: int) -> float:
    """``birth + (floor(sqrt(now - birth)) + chanskip)^2``."""
    n = 0 if birth > now else math.isqrt(int(now - birth))
    n += chanskip
    return birth + n * n


@dataclass
class Job:
    """One message in one channel during one pass."""

    id: int
    channel: int
    sender: bytes
    qqeh: bytes
    envh: bytes
    retry: float
    dying: bool
    refs: int = 1
    numtodo: int = 0
    hit_eof: bool = False


@dataclass
class Delivery:
    job: Job
    pos: int
    recipient: bytes
    delid: int


@dataclass
class Pending:
    """A preprocessed message whose todo/intd are still on disk and whose
    info/local/remote exist only here (see Sender.commit_due)."""

    due: float  # when to write and sync its files
    info: bytes  # info/<id>'s records
    birth: float  # info/<id>'s mtime
    chans: list[bytearray | None]  # local/ and remote/ records; None: none left
    retry: list[float] = field(default_factory=lambda: [0.0, 0.0])  # channel files' mtimes
    written: bool = False  # a commit attempt may have left files behind


@dataclass
class Pass:
    job: Job
    records: list[tuple[int, bytes]] = field(default_factory=list)  # (pos, addr) of T records


@dataclass
class Config:
    """Controls of qmail-send, read at start and on HUP."""

    concurrency: list[int]
    hold: list[bool]
    lifetime: int
    bouncelifetime: int
    rewriter: Rewriter
    bounce: _bounce.BounceConfig
    chanskip: tuple[int, int]

    @classmethod
    def load(cls, controldir: Path, queuename: str, environ: os._Environ[str]) -> Config:
        def conc(base: str, short: str, default: int) -> int:
            v = control.read_int(base, default, controldir=controldir)
            return control.read_int(f"{short}.{queuename}", v, controldir=controldir)

        lifetime = control.read_int("queuelifetime", 604800, controldir=controldir)
        bl = min(control.read_int("bouncelifetime", 604800, controldir=controldir), lifetime)
        skip = (
            int(environ.get("CHANSKIP_LOCAL") or CHANSKIP[0]),
            int(environ.get("CHANSKIP_REMOTE") or CHANSKIP[1]),
        )
        return cls(
            concurrency=[
                conc("concurrencylocal", "concurrencyl", 10),
                conc("concurrencyremote", "concurrencyr", 20),
            ],
            hold=[
                control.read_int("holdlocal", 0, controldir=controldir) != 0,
                control.read_int("holdremote", 0, controldir=controldir) != 0,
            ],
            lifetime=lifetime,
            bouncelifetime=bl,
            rewriter=Rewriter.load(controldir),
            bounce=_bounce.BounceConfig.load(controldir),
            chanskip=skip,
        )


class SpawnerDied(Exception):
    pass


class Sender:
    """The scheduler of one queue."""

    def __init__(
        self,
        layout: Layout,
        spawn_fds: list[tuple[int, int]],
        clean_fds: tuple[int, int],
        log_fd: int,
        controldir: Path,
        qident: str | None = None,
        argv0: str = "qmail-send",
    ) -> None:
        self.layout = layout
        self.qpath = queue_paths(layout)
        # the original's syncdir: also fsync the directories of new files
        self.syncdir = bool(os.environ.get("USE_SYNCDIR"))
        # info/<id> as written by preprocessing: (records, mtime); saves
        # reading it back for every pass and at the end of the message
        self.infos: dict[int, tuple[bytes, float]] = {}
        self.logbuf: list[str] = []
        self.spawn_out = [w for w, _r in spawn_fds]  # commands to spawners
        self.spawn_in = [r for _w, r in spawn_fds]  # results from spawners
        self.clean_out, self.clean_in = clean_fds
        self.log_fd = log_fd
        self.controldir = controldir
        self.qident = qident
        self.argv0 = argv0
        self.queuedesc = layout.root.name
        self.cfg = Config.load(controldir, self.queuedesc, os.environ)
        self.pq: list[list[tuple[float, int]]] = [[], []]
        self.pqdone: list[tuple[float, int]] = []
        self.pqfail: list[tuple[float, int]] = []
        self.passes: list[Pass | None] = [None, None]
        self.dels: list[dict[int, Delivery]] = [{}, {}]
        self.free_slots: list[list[int]] = [[], []]
        self.spawn_max = [0, 0]
        self.buffers = [bytearray(), bytearray()]
        self.masterdelid = 1
        self.exiting = False
        self.todo_due = 0.0
        self.signals: list[int] = []
        # preprocessed messages whose todo/intd are still on disk: inode ->
        # time the info/local/remote files are to be made durable
        self.pending: dict[int, Pending] = {}
        self.pending_due = math.inf

    def new_name_dirs(self, inodes: list[int]) -> list[str]:
        """With USE_SYNCDIR, the info/local/remote directories that preprocessing
        of ``inodes`` created names in; none otherwise."""
        if not self.syncdir:
            return []
        subs = ("info", *CHAN_SUBS)
        return sorted({os.path.dirname(self.qpath(sub, i)) for i in inodes for sub in subs})

    # -- logging -------------------------------------------------------
    def log(self, text: str) -> None:
        """Queue a log line; :meth:`flush_log` writes them (the main loop
        does before it waits, so nothing stays behind while idle)."""
        self.logbuf.append(text)
        if len(self.logbuf) >= 64:
            self.flush_log()

    def flush_log(self) -> None:
        if not self.logbuf:
            return
        data = "".join(self.logbuf).encode("utf-8", "replace")
        self.logbuf.clear()
        while data:
            try:
                n = os.write(self.log_fd, data)
            except InterruptedError:
                continue
            except OSError:
                return
            data = data[n:]

    def _delname(self, delid: int) -> str:
        return f"{delid}.{self.qident}" if self.qident else str(delid)

    def status(self) -> None:
        used = [len(self.dels[c]) for c in CHANNELS]
        held = [" (held)" if self.cfg.hold[c] else "" for c in CHANNELS]
        tail = " exitasap" if self.exiting else ""
        self.log(
            f"status: local {used[0]}/{self.cfg.concurrency[0]}{held[0]} "
            f"remote {used[1]}/{self.cfg.concurrency[1]}{held[1]} {self.queuedesc}{tail}\n"
        )

    # -- start-up ------------------------------------------------------
    def start(self) -> None:
        for c in CHANNELS:
            hello = _read_exact(self.spawn_in[c], 2)
            if hello is None:
                raise SpawnerDied(f"{CHAN_NAME[c]} spawner died at start")
            self.spawn_max[c] = hello[0] | (hello[1] << 8)
            self._resize(c)
        self.sweep()
        for inode in self.layout.entries("info"):
            self.pqadd(inode)
        self.flush_log()

    def sweep(self) -> None:
        """Remove messages left half-written or half-removed by a crash.

        With ``lock/enqueue`` held exclusively no qmail-queue is writing, so
        a mess file with neither todo nor info is a leftover: of a killed
        writer (never acknowledged) or of a crash in messdone (delivered).
        """
        lockpath = self.layout.root / "lock" / "enqueue"
        try:
            fd = os.open(lockpath, os.O_RDONLY)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            lay = self.layout
            for inode in lay.entries("mess"):
                if any(os.path.exists(self.qpath(sub, inode)) for sub in ("todo", "info")):
                    continue
                self.log(f"warn: {self.argv0}: {self.queuedesc}: removing leftover mess/{inode}\n")
                self.clean(f"foop/{inode}")
        finally:
            os.close(fd)

    def _resize(self, c: int) -> None:
        limit = min(self.cfg.concurrency[c], self.spawn_max[c])
        self.cfg.concurrency[c] = limit
        in_use = set(self.dels[c])
        self.free_slots[c] = [i for i in range(limit - 1, -1, -1) if i not in in_use]

    def pqadd(self, inode: int) -> None:
        qpath = self.qpath
        if not os.path.exists(qpath("info", inode)):
            return
        if os.path.exists(qpath("todo", inode)):
            return  # crashed while preprocessing: the todo pass redoes it
        found = False
        for c in CHANNELS:
            try:
                st = os.stat(qpath(CHAN_FILE[c], inode))
            except FileNotFoundError:
                continue
            heapq.heappush(self.pq[c], (st.st_mtime, inode))
            found = True
        if not found:
            heapq.heappush(self.pqdone, (time.time(), inode))

    # -- todo ------------------------------------------------------------
    TODO_BATCH = 64

    def scan_todo(self) -> None:
        pending = self.pending
        entries = sorted(i for i in self.layout.entries("todo") if i not in pending)
        for start in range(0, len(entries), self.TODO_BATCH):
            if self.exiting:
                return
            self._todo_batch(entries[start : start + self.TODO_BATCH])
        self.todo_due = time.time() + SLEEP_TODO

    def _todo_batch(self, inodes: list[int]) -> None:
        """Preprocess a batch and schedule its messages.

        Normally nothing is written: todo/intd stay on disk, the message's
        info and local/remote records live in ``self.pending`` and
        deliveries start at once.  :meth:`commit_due` writes and fsyncs the
        files COMMIT_DELAY later, unless the message is finished by then
        (most local ones are): two files created, synced and removed less
        per message.  Until then todo/ holds the message, so a crash redoes
        the preprocessing and delivers again, as a crash before markdone
        does.  With too many pending, or while stopping, the batch is
        written, synced and cleaned at once, as the original does."""
        defer = not self.exiting and len(self.pending) + len(inodes) <= PENDING_MAX
        unsynced: list[int] = []
        done = []
        for inode in inodes:
            try:
                result = preprocess(
                    self.layout, inode, self.cfg.rewriter, unsynced, write=not defer
                )
            except TodoError as exc:
                self.log(f"warn: {self.argv0}: {self.queuedesc}: {exc}\n")
                continue
            if result is not None:
                done.append(result)
        if not defer:
            try:
                sync_all(unsynced, self.new_name_dirs(inodes))
            except TodoError as exc:
                # todo/ still holds them: the next scan redoes the work
                self.log(f"warn: {self.argv0}: {self.queuedesc}: {exc}\n")
                return
        for result in done:
            inode = result.inode
            self.log(f"new msg {inode} {self.queuedesc}\n")
            self.log(
                f"info msg {inode}: bytes {result.size} from "
                f"<{safe_log_text(result.sender)}> qp {result.qp.decode(errors='replace')} "
                f"uid {result.uid.decode(errors='replace')} {self.queuedesc}\n"
            )
        if defer:
            due = time.time() + COMMIT_DELAY
            for result in done:
                chans = [bytearray(data) if data else None for data in result.chans]
                self.pending[result.inode] = Pending(due, result.info, result.birth, chans)
            self.pending_due = min(self.pending_due, due)
            cleaned = [True] * len(done)
        else:
            # one round trip to qmail-clean for the whole batch: requests
            # are answered in order, one byte each
            cleaned = self.clean_many([f"todo/{result.inode}" for result in done])
        for result, ok in zip(done, cleaned, strict=True):
            if not ok:
                continue
            inode = result.inode
            if not defer and len(self.infos) < INFO_CACHE_MAX:
                self.infos[inode] = (result.info, result.birth)
            now = time.time()
            if result.local:
                heapq.heappush(self.pq[0], (now, inode))
            if result.remote:
                heapq.heappush(self.pq[1], (now, inode))
            if not result.local and not result.remote:
                heapq.heappush(self.pqdone, (now, inode))

    def commit_due(self, now: float, everything: bool = False) -> None:
        """Make pending messages durable: write info and whatever is left of
        local/remote (done recipients already marked D, retry times in the
        mtimes), fsync them, then have qmail-clean drop todo/intd.  On
        trouble they stay pending and are tried again later."""
        if not self.pending:
            self.pending_due = math.inf
            return
        if not everything and self.pending_due > now:
            return
        ready = [i for i, p in self.pending.items() if everything or p.due <= now]
        written: list[int] = []
        fds: list[int] = []
        for inode in ready:
            p = self.pending[inode]
            again, p.written = p.written, True
            try:
                fds += write_channel_files(
                    self.qpath, inode, p.info, p.birth, p.chans, p.retry, again
                )
                written.append(inode)
            except TodoError as exc:
                self.log(f"warn: {self.argv0}: {self.queuedesc}: {exc}\n")
                p.due = now + SLEEP_SYSFAIL
        try:
            sync_all(fds, self.new_name_dirs(written))
        except TodoError as exc:
            self.log(f"warn: {self.argv0}: {self.queuedesc}: {exc}\n")
            for inode in written:
                self.pending[inode].due = now + SLEEP_SYSFAIL
            written = []
        cleaned = self.clean_many([f"todo/{inode}" for inode in written])
        for inode, ok in zip(written, cleaned, strict=True):
            if ok:
                p = self.pending.pop(inode)  # from now on the files are the record
                if len(self.infos) < INFO_CACHE_MAX:
                    self.infos[inode] = (p.info, p.birth)
            else:
                self.pending[inode].due = now + SLEEP_SYSFAIL
        self.pending_due = min((p.due for p in self.pending.values()), default=math.inf)

    def clean(self, request: str) -> bool:
        return self.clean_many([request])[0]

    def clean_many(self, requests: list[str]) -> list[bool]:
        """Send qmail-clean every request, then read its one-byte answers."""
        if not requests:
            return []
        try:
            _write_all(self.clean_out, b"".join(r.encode() + b"\0" for r in requests))
            replies = _read_exact(self.clean_in, len(requests))
        except OSError:
            replies = None
        if replies is None:
            raise SpawnerDied("qmail-clean died")
        out = []
        for request, reply in zip(requests, replies, strict=True):
            if reply != 0x2B:  # '+'
                self.log(
                    f"warn: {self.argv0}: {self.queuedesc}: qmail-clean unable to clean up "
                    f"{request}\n"
                )
            out.append(reply == 0x2B)
        return out

    # -- passes and deliveries ------------------------------------------
    def read_info(self, inode: int) -> tuple[bytes, bytes, bytes, float] | None:
        p = self.pending.get(inode)
        cached = (p.info, p.birth) if p is not None else self.infos.get(inode)
        if cached is not None:
            data, birth = cached
        else:
            try:
                data, st = read_small(self.qpath("info", inode))
            except OSError:
                return None
            birth = st.st_mtime
        sender = qqeh = envh = b""
        for rec in data.split(b"\0"):
            if rec[:1] == b"F":
                sender = rec[1:]
            elif rec[:1] == b"e":
                qqeh = rec[1:]
            elif rec[:1] == b"h":
                envh = rec[1:]
        return sender, qqeh, envh, birth

    def start_pass(self, c: int, now: float) -> bool:
        if not self.pq[c] or self.pq[c][0][0] > now:
            return False
        _dt, inode = heapq.heappop(self.pq[c])
        chanpath = self.qpath(CHAN_FILE[c], inode)
        info = self.read_info(inode)
        p = self.pending.get(inode)
        if p is not None:
            chan = p.chans[c]
            if chan is None:
                return True  # already done (stale heap entry)
            data = bytes(chan)
        else:
            try:
                data, _st = read_small(chanpath)
            except FileNotFoundError:
                return True  # already done (stale heap entry)
            except OSError:
                info = None
        if info is None:
            self.log(
                f"warn: {self.argv0}: {self.queuedesc}: trouble opening {chanpath}; "
                f"will try again later\n"
            )
            heapq.heappush(self.pq[c], (now + SLEEP_SYSFAIL, inode))
            return True
        sender, qqeh, envh, birth = info
        lifetime = self.cfg.lifetime if sender else self.cfg.bouncelifetime
        job = Job(
            id=inode,
            channel=c,
            sender=sender,
            qqeh=qqeh,
            envh=envh,
            retry=next_retry(birth, now, self.cfg.chanskip[c]),
            dying=now > birth + lifetime,
        )
        records = []
        pos = 0
        for rec in data.split(b"\0")[:-1]:
            if rec[:1] == b"T":
                records.append((pos, rec[1:]))
            elif rec[:1] != b"D":
                self.log(
                    f"warn: {self.argv0}: {self.queuedesc}: unknown record type in {chanpath}!\n"
                )
                records = []
                break
            pos += len(rec) + 1
        job.numtodo = len(records)
        self.passes[c] = Pass(job=job, records=records)
        return True

    def feed(self, c: int, now: float) -> None:
        """Start deliveries while the channel has free slots."""
        while not self.exiting and not self.cfg.hold[c]:
            p = self.passes[c]
            if p is None:
                if not self.start_pass(c, now):
                    return
                continue
            if not p.records:
                p.job.hit_eof = True
                self.passes[c] = None
                self.job_close(p.job)
                continue
            if not self.free_slots[c]:
                return
            pos, rcpt = p.records.pop(0)
            slot = self.free_slots[c].pop()
            delid = self.masterdelid
            self.masterdelid += 1
            p.job.refs += 1
            self.dels[c][slot] = Delivery(job=p.job, pos=pos, recipient=rcpt, delid=delid)
            job = p.job
            messid = f"{job.id % self.layout.split}/{job.id}".encode()
            cmd = (
                bytes((slot & 0xFF, slot >> 8))
                + messid
                + b"\0"
                + job.sender
                + b"\0"
                + job.qqeh
                + b"\0"
                + job.envh
                + b"\0"
                + rcpt
                + b"\0"
            )
            _write_all(self.spawn_out[c], cmd)
            self.log(
                f"starting delivery {self._delname(delid)}: msg {job.id} to "
                f"{CHAN_NAME[c]} {safe_log_text(rcpt)} {self.queuedesc}\n"
            )
            self.status()

    def read_results(self, c: int) -> None:
        try:
            chunk = os.read(self.spawn_in[c], 65536)
        except BlockingIOError:
            return
        if not chunk:
            raise SpawnerDied(f"{CHAN_NAME[c]} spawner died")
        buf = self.buffers[c]
        buf += chunk
        while True:
            if len(buf) < 3:
                return
            end = buf.find(b"\0", 2)
            if end == -1:
                if len(buf) > 1 << 20:
                    del buf[:]
                return
            slot = buf[0] | (buf[1] << 8)
            report = bytes(buf[2:end])
            del buf[: end + 1]
            self.result(c, slot, report)

    def result(self, c: int, slot: int, report: bytes) -> None:
        d = self.dels[c].pop(slot, None)
        if d is None:
            self.log(
                f"warn: {self.argv0}: {self.queuedesc}: internal error: delivery report "
                f"out of range\n"
            )
            return
        self.free_slots[c].append(slot)
        job = d.job
        kind, text = report[:1], report[1:]
        if kind == b"Z" and job.dying:
            kind = b"D"
            text = text + DYING_TEXT
        name = self._delname(d.delid)
        if kind == b"K":
            self.log(f"delivery {name}: success: {safe_log_text(text)} {self.queuedesc}\n")
            job.numtodo -= 1
            self.markdone_unless_last(c, job, d.pos)
        elif kind == b"Z":
            self.log(f"delivery {name}: deferral: {safe_log_text(text)} {self.queuedesc}\n")
        elif kind == b"D":
            self.log(f"delivery {name}: failure: {safe_log_text(text)} {self.queuedesc}\n")
            self.addbounce(job.id, d.recipient, text)
            job.numtodo -= 1
            self.markdone_unless_last(c, job, d.pos)
        else:
            self.log(f"delivery {name}: report mangled, will defer: {self.queuedesc}\n")
        self.job_close(job)
        self.status()

    def markdone_unless_last(self, c: int, job: Job, pos: int) -> None:
        """Mark a recipient done, unless job_close is about to remove the
        whole channel file anyway: then the unlink is the record, and the
        write+fsync would be wasted (a crash in between redelivers, the same
        window as a crash before markdone)."""
        if job.numtodo == 0 and job.hit_eof and job.refs == 1:
            return
        self.markdone(c, job.id, pos)

    def markdone(self, c: int, inode: int, pos: int) -> None:
        p = self.pending.get(inode)
        if p is not None:
            chan = p.chans[c]
            if chan is not None:
                chan[pos] = 0x44  # 'D', written by commit_due
            return
        path = self.qpath(CHAN_FILE[c], inode)
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.pwrite(fd, b"D", pos)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self.log(
                f"warn: {self.argv0}: {self.queuedesc}: trouble marking {path}: "
                f"{exc.strerror}; message will be delivered twice!\n"
            )

    def addbounce(self, inode: int, recipient: bytes, report: bytes) -> None:
        path = self.layout.root / "bounce" / str(inode)
        for _ in range(30):
            try:
                _bounce.append_bounce(path, recipient, report)
                return
            except OSError:
                self.log(
                    f"alert: {self.argv0}: {self.queuedesc}: unable to append to bounce "
                    f"message; HELP! sleeping...\n"
                )
                self.flush_log()
                time.sleep(10)

    def job_close(self, job: Job) -> None:
        job.refs -= 1
        if job.refs > 0:
            return
        p = self.pending.get(job.id)
        if p is not None:
            if job.hit_eof and job.numtodo == 0:
                p.chans[job.channel] = None
                if p.chans[1 - job.channel] is None:
                    heapq.heappush(self.pqdone, (time.time(), job.id))
            else:
                # a deferral: the message stays a while, make it durable now
                p.retry[job.channel] = job.retry
                p.due = 0.0
                self.pending_due = 0.0
                heapq.heappush(self.pq[job.channel], (job.retry, job.id))
            return
        if job.hit_eof and job.numtodo == 0:
            path = self.qpath(CHAN_FILE[job.channel], job.id)
            try:
                os.unlink(path)
            except OSError:
                self.log(
                    f"warn: {self.argv0}: {self.queuedesc}: unable to unlink {path}; "
                    f"will try again later\n"
                )
                heapq.heappush(self.pq[job.channel], (time.time() + SLEEP_SYSFAIL, job.id))
                return
            other = 1 - job.channel
            if os.path.exists(self.qpath(CHAN_FILE[other], job.id)):
                return  # the other channel is still going
            heapq.heappush(self.pqdone, (time.time(), job.id))
            return
        path = self.qpath(CHAN_FILE[job.channel], job.id)
        try:
            os.utime(path, (job.retry, job.retry))
        except OSError:
            pass
        heapq.heappush(self.pq[job.channel], (job.retry, job.id))

    # -- done messages -----------------------------------------------------
    def messdone(self, inode: int) -> None:
        qpath = self.qpath
        p = self.pending.get(inode)
        if p is not None:
            if p.chans[0] is not None or p.chans[1] is not None:
                return
        else:
            for c in CHANNELS:
                if os.path.exists(qpath(CHAN_FILE[c], inode)):
                    return
            if os.path.exists(qpath("todo", inode)):
                return
        info = self.read_info(inode)
        if info is None:
            return
        if not self.inject_bounce(inode, info[0], info[3]):
            heapq.heappush(self.pqdone, (time.time() + SLEEP_SYSFAIL, inode))
            return
        self.log(f"end msg {inode} {self.argv0}: {self.queuedesc}\n")
        self.infos.pop(inode, None)
        try:
            if p is None:
                os.unlink(qpath("info", inode))
            elif p.written:  # what a failed commit left
                for sub in ("remote", "local", "info"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(qpath(sub, inode))
        except FileNotFoundError:
            pass
        except OSError:
            self.log(
                f"warn: {self.argv0}: {self.queuedesc}: unable to unlink info/{inode}; "
                f"will try again later\n"
            )
            heapq.heappush(self.pqdone, (time.time() + SLEEP_SYSFAIL, inode))
            return
        if p is not None:
            # done before its commit: todo/intd go with the message, whose
            # info/local/remote were never written (or removed above)
            del self.pending[inode]
            if not self.pending:
                self.pending_due = math.inf
            self.clean_many([f"todo/{inode}", f"foop/{inode}"])
        else:
            self.clean(f"foop/{inode}")

    def inject_bounce(self, inode: int, sender: bytes, birth: float) -> bool:
        from indimail.queue.submit import SubmitError, submit

        path = self.qpath("bounce", inode)
        try:
            text, _st = read_small(path)
        except FileNotFoundError:
            return True
        except OSError:
            self.log(f"warn: {self.argv0}: {self.queuedesc}: unable to stat {path}\n")
            return False
        mess = self.qpath("mess", inode)
        try:
            with open(mess, "rb") as fh:
                message = fh.read(self.cfg.bounce.bouncemaxbytes + 1)
                size = os.fstat(fh.fileno()).st_size
        except OSError:
            self.log(f"warn: {self.argv0}: {self.queuedesc}: unable to read {mess}\n")
            return False
        built = _bounce.build_bounce(
            self.cfg.bounce, sender, text, message, int(birth), inode, time.time(), self.argv0, size
        )
        if built is None:
            kind = "triple" if sender == _bounce.TRIPLE else "double"
            self.log(f"{kind} bounce: discarding bounce/{inode} {self.queuedesc}\n")
        else:
            env_sender, rcpt, data = built
            environ = dict(os.environ)
            if environ.get("BOUNCEQUEUE"):
                environ["QMAILQUEUE"] = environ["BOUNCEQUEUE"]
            environ.pop("QUEUEDIR", None)
            for var in ("SPAMFILTER", "FILTERARGS"):
                environ.pop(var, None)
            try:
                queued = submit(data, env_sender, [rcpt], environ=environ)
            except SubmitError as exc:
                self.log(
                    f"warn: {self.argv0}: {self.queuedesc}: trouble injecting bounce "
                    f"message, will try later: {exc.reason or exc.text}\n"
                )
                return False
            self.log(f"bounce msg {inode} qp {queued.qp} {self.queuedesc}\n")
        try:
            os.unlink(path)
        except OSError:
            self.log(f"warn: {self.argv0}: {self.queuedesc}: unable to unlink {path}\n")
            return False
        return True

    # -- signals -----------------------------------------------------------
    def reread(self) -> None:
        try:
            cfg = Config.load(self.controldir, self.queuedesc, os.environ)
        except Exception as exc:
            self.log(f"alert: {self.argv0}: {self.queuedesc}: unable to reread controls: {exc}\n")
            return
        self.cfg = cfg
        for c in CHANNELS:
            self._resize(c)

    def retry_now(self) -> None:
        for c in CHANNELS:
            self.pq[c] = [(0.0, i) for _t, i in self.pq[c]]
            heapq.heapify(self.pq[c])

    def finish(self) -> None:
        """Store each pending retry time in its channel file's mtime."""
        for c in CHANNELS:
            for dt, inode in self.pq[c]:
                try:
                    os.utime(self.qpath(CHAN_FILE[c], inode), (dt, dt))
                except OSError:
                    pass

    # -- main loop ------------------------------------------------------
    def run(self, trigger_fd: int) -> int:
        sel = selectors.DefaultSelector()
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        handled = (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM, signal.SIGINT)
        for sig in handled:
            signal.signal(sig, lambda s, _f: self.signals.append(s))
        sel.register(wake_r, selectors.EVENT_READ, "signal")
        sel.register(trigger_fd, selectors.EVENT_READ, "trigger")
        for c in CHANNELS:
            os.set_blocking(self.spawn_in[c], False)
            sel.register(self.spawn_in[c], selectors.EVENT_READ, c)
        self._handle_signals()  # any that arrived during start-up
        self.scan_todo()
        try:
            while True:
                now = time.time()
                while self.pqdone and self.pqdone[0][0] <= now and not self.exiting:
                    _t, inode = heapq.heappop(self.pqdone)
                    self.messdone(inode)
                for c in CHANNELS:
                    self.feed(c, now)
                self.commit_due(now)
                if self.exiting and not self.dels[0] and not self.dels[1]:
                    self.commit_due(now, everything=True)
                    break
                timeout = self._timeout(now)
                self.flush_log()
                for key, _ev in sel.select(timeout):
                    if key.data == "signal":
                        _drain(wake_r)
                    elif key.data == "trigger":
                        _drain(trigger_fd)
                        self.scan_todo()
                    else:
                        self.read_results(key.data)
                self._handle_signals()
                if time.time() >= self.todo_due:
                    self.scan_todo()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            self.finish()
            self.flush_log()
        return 0

    def _timeout(self, now: float) -> float:
        due = [self.todo_due]
        for c in CHANNELS:
            if self.pq[c] and self.free_slots[c] and not self.cfg.hold[c]:
                due.append(self.pq[c][0][0])
        if self.pqdone:
            due.append(self.pqdone[0][0])
        due.append(self.pending_due)
        return max(0.0, min(min(due) - now, 60.0))

    def _handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            if sig in (signal.SIGTERM, signal.SIGINT):
                self.exiting = True
                self.status()
            elif sig == signal.SIGHUP:
                self.reread()
            elif sig == signal.SIGALRM:
                self.retry_now()


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            import select

            select.select([], [fd], [])
            continue
        view = view[n:]


def _read_exact(fd: int, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        try:
            chunk = os.read(fd, n - len(buf))
        except BlockingIOError:
            import select

            select.select([fd], [], [])
            continue
        if not chunk:
            return None
        buf += chunk
    return buf


def open_trigger(layout: Layout) -> int:
    """Open ``lock/trigger`` for reading without ever seeing EOF."""
    return os.open(layout.trigger, os.O_RDWR | os.O_NONBLOCK)


def lock_sendmutex(layout: Layout) -> int:
    fd = os.open(layout.root / "lock" / "sendmutex", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        from indimail.core.errors import Fatal

        raise Fatal(
            111, f"another copy of qmail-send is already running on {layout.root}"
        ) from None
    return fd


def main(argv: list[str]) -> int:
    """qmail-send is started by qmail-start with its pipes on fds 1-6."""
    from indimail.core.errors import Fatal

    if os.environ.get("QMAIL_SEND_FDS") is None:
        raise Fatal(111, "qmail-send must be started by qmail-start")
    p = _paths.get()
    queuedir = Path(os.environ.get("QUEUEDIR") or p.queue_dirs()[0])
    layout = Layout(queuedir, split=p.conf_split, bigtodo=p.bigtodo)
    fds = [int(x) for x in os.environ["QMAIL_SEND_FDS"].split(",")]
    sender = Sender(
        layout,
        [(fds[1], fds[2]), (fds[3], fds[4])],
        (fds[5], fds[6]),
        fds[0],
        p.controldir,
        os.environ.get("QIDENT"),
    )
    sender.start()
    return sender.run(open_trigger(layout))
