"""qmail-qread (also ``mailq``): list the messages waiting in the queues.

``qmail-qread [-a|-l|-r|-t] [-c] [-s] [-i]``, with the output of the
original indimail-mta, byte for byte:

* every queue ``QUEUE_BASE/queue<n>`` (n = QUEUE_START..+QUEUE_COUNT-1), then
  the extra queues ``nqueue``, ``slowq``, ``qmta`` when present, is announced
  by ``processing queue <dir>`` and followed by an empty line;
* per message, on its first recipient, the line
  ``<d Mon yyyy hh:mm:ss> GMT  <split>/#<inode>  <bytes>  <sender> [ bouncing]``
  (date = mtime of ``info/`` or ``todo/``, bytes = size of ``mess/``, bytes
  outside printable ASCII shown as ``_``), then one line per recipient record
  ``\\tlocal\\t<rcpt>``, ``\\tremote\\t<rcpt>`` or ``\\ttodo\\t<rcpt>``,
  prefixed by ``  done`` for a record already marked ``D``;
* ``-c`` adds per-queue counts and ``Total`` counts (recipient records, as
  the original counts them); ``-s`` suppresses the listing; ``-t`` (or
  ``-c``) also lists messages still in ``todo/``; ``-i`` shows the dynamic
  queue shared-memory loads.

Read-only: files that vanish while a live queue is read are skipped;
malformed files are reported on stderr, naming them, and the listing goes
on.  A configured queue that does not exist is fatal (exit 111).
"""

from __future__ import annotations

import getopt
import os
import stat
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from indimail.core import envdir
from indimail.core import paths as _paths
from indimail.core.dates import date822fmt
from indimail.core.errors import Fatal
from indimail.queue.layout import Layout

PROG = "qmail-qread"
FATAL = f"{PROG}: fatal: "
WARN = f"{PROG}: warn: "
EXTRA_QUEUES = ("nqueue", "slowq", "qmta")
SHM_DIR = Path("/dev/shm")
QUEUE_LOAD = 90.0

USAGE = (
    "qmail-qread [-calrsti]\n"
    "\t-a - Display local, remote and todo Queues\n"
    "\t-c - Display Counts\n"
    "\t-l - Display local  Queue\n"
    "\t-r - Display remote Queue\n"
    "\t-t - Display todo   Queue\n"
    "\t-s - Silent: with -c display only the counts\n"
    "\t-i - Display queue counts, concurrencies queue load\n"
)

# Bytes outside ' '..'~' become '_' on the date/sender line, as the original.
_SAFE = bytes(b if 32 <= b <= 126 else ord("_") for b in range(256))


@dataclass
class Options:
    local: bool = False
    remote: bool = False
    todo: bool = False
    count: bool = False
    silent: bool = False
    shm: int = 0  # 0 no, 1 -i, 2 -a with a dynamic queue present


@dataclass
class Counts:
    local: int = 0
    remote: int = 0
    bounce: int = 0
    todo: int = 0

    def add(self, other: Counts) -> None:
        self.local += other.local
        self.remote += other.remote
        self.bounce += other.bounce
        self.todo += other.todo


class Output:
    """stdout as bytes; warnings on stderr after flushing stdout, so that
    a terminal shows them where they happened."""

    def __init__(self, out: BinaryIO, err: BinaryIO) -> None:
        self.out = out
        self.err = err

    def write(self, data: bytes) -> None:
        self.out.write(data)

    def warn(self, text: str) -> None:
        self.out.flush()
        self.err.write((WARN + text + "\n").encode("utf-8", "surrogateescape"))
        self.err.flush()


def stats_line(
    mtime: float, prefix: str, inode: int, size: int, sender: bytes, bouncing: bool
) -> bytes:
    """The per-message line, without its newline."""
    date = date822fmt(mtime)[: -len(" -0000")]
    text = f"{date} GMT  {prefix}/#{inode}  {size}  <".encode() + sender + b"> "
    if bouncing:
        text += b" bouncing"
    return text.translate(_SAFE)


def parse_options(argv: list[str]) -> Options | None:
    """Options of the original; None after printing the usage."""
    try:
        opts, _args = getopt.getopt(argv[1:], "calrsti")
    except getopt.GetoptError:
        return None
    o = Options()
    shm_present = _shm_present()
    for opt, _val in opts:
        if opt == "-s":
            o.silent = True
        elif opt == "-c":
            o.count = True
        elif opt == "-a":
            o.todo = o.local = o.remote = True
            if shm_present and not o.shm:
                o.shm = 2
        elif opt == "-l":
            o.local = True
        elif opt == "-r":
            o.remote = True
        elif opt == "-t":
            o.todo = True
        elif opt == "-i":
            if not shm_present:
                raise Fatal(100, "dynamic queue not configured")
            o.shm = 1
    if not (o.todo or o.local or o.remote or o.shm):
        o.local = o.remote = True
    return o


def _shm_present() -> bool:
    try:
        os.stat(SHM_DIR / "qscheduler")
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise Fatal(111, f"{SHM_DIR / 'qscheduler'}: {exc.strerror}") from None
    return True


def _records(data: bytes) -> tuple[list[bytes], bool]:
    """NUL-terminated records of ``data`` and whether a partial one trails."""
    parts = data.split(b"\0")
    trailing = parts.pop()
    return parts, trailing != b""


class QueueReader:
    """Lists one queue directory."""

    def __init__(self, layout: Layout, opts: Options, output: Output) -> None:
        self.layout = layout
        self.opts = opts
        self.output = output
        self.counts = Counts()

    # -- helpers -------------------------------------------------------------

    def _ids(self, subdir: str) -> list[tuple[str, int]]:
        """(split prefix, inode) of every numeric entry of ``subdir``."""
        found: list[tuple[str, int]] = []
        for d in self.layout.subdirs(subdir):
            try:
                names = os.listdir(d)
            except OSError as exc:
                raise Fatal(111, f"unable to opendir {d}: {exc.strerror}") from None
            ids = sorted(int(n) for n in names if n.isdecimal())
            found += [(d.name if d.name != subdir else "", i) for i in ids]
        return found

    def _read(self, path: Path) -> tuple[bytes, float] | None:
        """Bytes and mtime of ``path``; None if it vanished (or is unreadable:
        then a warning was given)."""
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode):
                    self.output.warn(f"{path}: not a regular file")
                    return None
                return fh.read(), st.st_mtime
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.output.warn(f"unable to read {path}: {exc.strerror}")
            return None

    def _mess_size(self, inode: int, companion: Path) -> int | None:
        """Size of mess/I; None (with a warning unless the message is gone
        altogether) when it cannot be had."""
        mess = self.layout.path("mess", inode)
        try:
            return os.stat(mess).st_size
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and not os.path.lexists(companion):
                return None  # delivered and removed while we were looking
            self.output.warn(f"trouble with #{inode}: {mess}: {exc.strerror}")
            return None

    def _put(self, header: list[bytes | None], line: bytes) -> None:
        if header[0] is not None:
            if not self.opts.silent:
                self.output.write(header[0] + b"\n")
            header[0] = None
        if not self.opts.silent:
            self.output.write(line)

    # -- the two passes ------------------------------------------------------

    def run(self) -> Counts:
        self._list_preprocessed()
        if self.opts.todo or self.opts.count:
            self._list_todo()
        return self.counts

    def _list_preprocessed(self) -> None:
        channels = []
        if self.opts.local:
            channels.append("local")
        if self.opts.remote:
            channels.append("remote")
        for prefix, inode in self._ids("info"):
            info = self.layout.path("info", inode)
            size = self._mess_size(inode, info)
            if size is None:
                continue
            bouncing = os.path.lexists(self.layout.path("bounce", inode))
            if bouncing:
                self.counts.bounce += 1
            got = self._read(info)
            if got is None:
                continue
            data, mtime = got
            records, _partial = _records(data)
            if not records or not records[0].startswith(b"F"):
                self.output.warn(f"{info}: malformed info file: no sender record")
                continue
            header: list[bytes | None] = [
                stats_line(mtime, prefix, inode, size, records[0][1:], bouncing)
            ]
            for channel in channels:
                self._list_channel(channel, inode, header)

    def _list_channel(self, channel: str, inode: int, header: list[bytes | None]) -> None:
        path = self.layout.path(channel, inode)
        got = self._read(path)
        if got is None:
            return
        records, partial = _records(got[0])
        bad = 0
        label = f"\t{channel}\t".encode()
        for rec in records:
            letter = rec[:1]
            if letter not in (b"T", b"D"):
                bad += 1
                continue
            if channel == "local":
                self.counts.local += 1
            else:
                self.counts.remote += 1
            done = b"  done" if letter == b"D" else b""
            self._put(header, done + label + rec[1:] + b"\n")
        if bad or partial:
            what = []
            if bad:
                what.append(f"{bad} record(s) not starting with T or D")
            if partial:
                what.append("unterminated last record")
            self.output.warn(f"{path}: malformed {channel} file: {', '.join(what)}")

    def _list_todo(self) -> None:
        for _prefix, inode in self._ids("todo"):
            todo = self.layout.path("todo", inode)
            size = self._mess_size(inode, todo)
            if size is None:
                continue
            got = self._read(todo)
            if got is None:
                continue
            data, mtime = got
            records, partial = _records(data)
            sender = next((r for r in records if r.startswith(b"F")), None)
            if sender is None:
                self.output.warn(f"{todo}: malformed todo file: no sender record")
                continue
            # As with BIGTODO the original shows the split of the message.
            prefix = str(inode % self.layout.split)
            header: list[bytes | None] = [stats_line(mtime, prefix, inode, size, sender[1:], False)]
            bad = 0
            for rec in records:
                letter = rec[:1]
                if letter in (b"T", b"D"):
                    self.counts.todo += 1
                    done = b"  done" if letter == b"D" else b""
                    self._put(header, done + b"\ttodo\t" + rec[1:] + b"\n")
                elif letter not in (b"u", b"p", b"F", b"e", b"h"):
                    bad += 1
            if bad or partial:
                what = []
                if bad:
                    what.append(f"{bad} unknown record(s)")
                if partial:
                    what.append("unterminated last record")
                self.output.warn(f"{todo}: malformed todo file: {', '.join(what)}")


def put_counts(output: Output, opts: Options, counts: Counts, pre: str = "") -> None:
    """The count lines of the original (``pre`` = ``Total `` at the end)."""
    lines = []
    if opts.local:
        lines.append(f"{pre}Messages in local  queue: {counts.local}\n")
    if opts.remote:
        lines.append(f"{pre}Messages in remote queue: {counts.remote}\n")
    lines.append(f"{pre}Messages in bounce queue: {counts.bounce}\n")
    if opts.todo:
        lines.append(f"{pre}Messages in todo   queue: {counts.todo}\n")
    output.write("".join(lines).encode())


def queue_list(p: _paths.Paths) -> list[Path]:
    """The numbered queues (all must exist), then the extra ones present."""
    try:
        base = p.queue_base
    except Fatal as exc:
        raise Fatal(111, exc.message) from None
    queues = p.queue_dirs()
    for q in queues:
        try:
            st = os.stat(q)
        except OSError as exc:
            raise Fatal(111, f"unable to chdir to queue directory {q}: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise Fatal(111, f"unable to chdir to queue directory {q}: not a directory")
    for name in EXTRA_QUEUES:
        extra = base / name
        try:
            os.stat(extra)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise Fatal(111, f"unable to access {extra}: {exc.strerror}") from None
        queues.append(extra)
    return queues


# -- dynamic queue loads (-i) ----------------------------------------------


@dataclass
class QueueShm:
    name: str
    lcur: int
    rcur: int
    lmax: int
    rmax: int
    flag: int


def read_shm(shm_dir: Path = SHM_DIR) -> tuple[int, int, list[QueueShm]]:
    """qcount, qconf and per-queue loads from the POSIX shm segments."""
    top = shm_dir / "qscheduler"
    try:
        data = top.read_bytes()
    except FileNotFoundError:
        raise Fatal(111, "dynamic queue disabled / qscheduler not running") from None
    except OSError as exc:
        raise Fatal(111, f"shm_open: /qscheduler: {exc.strerror}") from None
    if len(data) < 8:
        raise Fatal(111, "unable to read POSIX shared memory segment /qscheduler")
    qcount, qconf = struct.unpack("=2i", data[:8])
    queues = []
    for j in range(max(qcount, 0)):
        name = f"queue{j + 1}"
        try:
            seg = (shm_dir / name).read_bytes()
        except OSError as exc:
            raise Fatal(
                111, f"failed to open POSIX shared memory segment /{name}: {exc.strerror}"
            ) from None
        if len(seg) < 20:
            raise Fatal(111, f"failed to read POSIX shared memory segment /{name}: short")
        q = struct.unpack("=5i", seg[:20])
        queues.append(QueueShm(name, q[0], q[1], q[2], q[3], q[4]))
    return qcount, qconf, queues


def display(output: Output, queues: list[QueueShm], qcount: int, qconf: int, threshold: float):
    """The -i table of the original."""
    lines = []
    lcur = rcur = 0
    load_l = load_r = 0.0
    sums = [q.lcur + q.rcur for q in queues]
    least = min(sums) if sums else -1
    for i, q in enumerate(queues):
        if i == 0:
            lines.append("queue      local  Remote   +/- flag\n")
        if not q.lmax or not q.rmax:
            which = ("[local] " if not q.lmax else "") + ("[remote] " if not q.rmax else "")
            output.out.flush()
            output.err.write(f"invalid concurrency = 0 {which}for queue {q.name}\n".encode())
            continue
        lcur += q.lcur
        rcur += q.rcur
        load_l += q.lcur / q.lmax
        load_r += q.rcur / q.rmax
        mark = "-" if q.lcur + q.rcur == least else "+"
        state = "disabled" if q.flag else "enabled"
        lines.append(
            f"{q.name:<8s} {q.lcur:3d}/{q.lmax:<4d} {q.rcur:3d}/{q.rmax:<4d} {mark} {state}\n"
        )
    qload = 50 * (load_l + load_r) / qcount if qcount else 0.0
    lines.append(
        f"threshold = {threshold:<6.2f}, qcount = {qcount}, qconf = {qconf}, "
        f"local = {lcur}, remote = {rcur}, qload_av = {qload:6.2f}\n"
    )
    output.write("".join(lines).encode())


def _show_shm(output: Output) -> None:
    if not os.environ.get("DYNAMIC_QUEUE"):
        return
    raw = os.environ.get("QUEUE_LOAD", "")
    try:
        threshold = float(raw) if raw else QUEUE_LOAD
    except ValueError:
        threshold = QUEUE_LOAD
    qcount, qconf, queues = read_shm()
    display(output, queues, qcount, qconf, threshold)


# -- command ---------------------------------------------------------------


def run(argv: list[str], output: Output) -> int:
    opts = parse_options(argv)
    if opts is None:
        output.write(USAGE.encode())
        return 1
    p = _paths.get()
    if envdir.apply_defaultqueue(p.controldir):
        p = _paths.load()
    if opts.local or opts.remote or opts.todo or opts.count:
        queues = queue_list(p)
        total = Counts()
        for qdir in queues:
            output.write(f"processing queue {qdir}\n".encode("utf-8", "surrogateescape"))
            layout = Layout(root=qdir, split=p.conf_split, bigtodo=p.bigtodo)
            counts = QueueReader(layout, opts, output).run()
            total.add(counts)
            if opts.count:
                put_counts(output, opts, counts)
            output.write(b"\n")
            output.out.flush()
        if opts.count:
            put_counts(output, opts, total, "Total ")
    if opts.shm:
        _show_shm(output)
    return 0


def main(argv: list[str]) -> int:
    """qmail-qread / mailq."""
    out = sys.stdout.buffer
    output = Output(out, sys.stderr.buffer)
    try:
        code = run(argv, output)
    except Fatal as exc:
        try:
            out.flush()
        except OSError:
            pass
        sys.stderr.buffer.write((FATAL + exc.message + "\n").encode("utf-8", "surrogateescape"))
        sys.stderr.buffer.flush()
        return exc.code
    out.flush()
    return code
