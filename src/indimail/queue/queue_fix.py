"""queue-fix: create a queue, or repair one, to the original's layout.

Checks every directory, split part and special file (``lock/sendmutex``,
``lock/tcpto``, ``lock/trigger``) for existence, owner, group and mode and
fixes what is wrong; renames ``mess`` files whose name is not their inode
(with their info/local/remote/intd/todo/bounce companions); removes stray
files that have no ``mess`` file; and removes what a killed qmail-queue left
(``pid/`` files, a ``mess`` file with only an ``intd`` or nothing beside it).

Leftovers are only removed while queue-fix holds ``lock/enqueue``
exclusively: every qmail-queue holds it shared while it writes, so what is
found then belongs to a writer that died.  ``-N`` reports without changing.
"""

from __future__ import annotations

import fcntl
import getopt
import grp
import os
import pwd
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from indimail.core import envdir
from indimail.core import paths as _paths
from indimail.core.errors import Fatal, UsageError
from indimail.queue.layout import (
    QUEUE_DIRS,
    QUEUE_ROOT_MODE,
    SENDMUTEX_MODE,
    TCPTO_MODE,
    TCPTO_SIZE,
    TRIGGER_MODE,
    Layout,
    spread_subdirs,
)

ENQUEUE_LOCK = "enqueue"
FILE_MODES = {
    "pid": 0o644,
    "mess": 0o644,
    "intd": 0o644,
    "todo": 0o644,
    "info": 0o600,
    "local": 0o600,
    "remote": 0o600,
    "bounce": 0o600,
}

USAGE = """usage: queue-fix [-irmNvt] [-s split] [-b 0|1] [-S size] queue_dir
                 -s split - queue split number (default {split})
                 -b 0|1   - 0 for no big todo, 1 for big todo (default {bigtodo})
                 -S size  - tcpto buffer size (default 2048)
                 -i       - interactive mode
                 -r       - create ratelimit directory
                 -m       - qmta mode
                 -t       - create trash directory for qmail-rm
                 -v       - verbose mode
                 -N       - test mode: report, change nothing"""


@dataclass
class Ids:
    """Numeric owners of the queue parts, looked up by role name."""

    qmailq: int
    qmails: int
    qmailr: int
    qmail_gid: int

    @classmethod
    def lookup(cls, p: _paths.Paths, qmta: bool = False) -> Ids:
        def uid(role: str) -> int:
            name = p.user(role)
            try:
                return pwd.getpwnam(name).pw_uid
            except KeyError:
                raise Fatal(111, f"unable to get uid of user {name} (role {role})") from None

        group = p.group("qmail")
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise Fatal(111, f"unable to get gid of group {group}") from None
        q = uid("qmailq")
        return cls(
            qmailq=q,
            qmails=q if qmta else uid("qmails"),
            qmailr=q if qmta else uid("qmailr"),
            qmail_gid=gid,
        )

    def owner(self, role: str) -> int:
        return {"qmailq": self.qmailq, "qmails": self.qmails, "qmailr": self.qmailr}[role]


@dataclass
class Fixer:
    """One run of queue-fix over one queue directory."""

    layout: Layout
    ids: Ids
    doit: bool = True
    verbose: bool = False
    interactive: bool = False
    trash: bool = False
    ratelimit: bool = False
    tcpto_size: int = TCPTO_SIZE
    out: Callable[[str], None] = field(default=lambda s: sys.stdout.write(s))
    errors: int = 0
    _asked: set[str] = field(default_factory=set)

    # -- helpers -------------------------------------------------------
    def _say(self, text: str) -> None:
        if self.verbose:
            self.out(text)

    def _confirm(self, topic: str, question: str) -> bool:
        if not self.interactive or topic in self._asked:
            return True
        self.out(question + " (Y/N) - ")
        sys.stdout.flush()
        answer = sys.stdin.readline().strip().lower()
        if answer.startswith("y"):
            self._asked.add(topic)
            return True
        return False

    def _fix_attrs(self, path: Path, st: os.stat_result, uid: int, gid: int, mode: int) -> None:
        if st.st_uid != uid or st.st_gid != gid:
            self.errors += 1
            self._say(f"Changing ownership   of [{path}] to uid {uid} gid {gid}\n")
            if self.doit:
                os.lchown(path, uid, gid)
        if stat.S_IMODE(st.st_mode) != mode:
            self.errors += 1
            self._say(f"Changing permissions of [{path}] to mode [{mode:o}]\n")
            if self.doit:
                os.chmod(path, mode)

    def check_dir(self, path: Path, uid: int, gid: int, mode: int) -> bool:
        """Make sure ``path`` is a directory with these attributes."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self.errors += 1
            if not self._confirm(
                "mkdir", "It looks like some directories don't exist, should I create them?"
            ):
                return False
            self._say(f"Creating directory [{path}]\n")
            if self.doit:
                os.mkdir(path, mode)
                os.chmod(path, mode)
                os.chown(path, uid, gid)
            return True
        if not stat.S_ISDIR(st.st_mode):
            raise Fatal(111, f"{path}: not a directory. Can't autofix. Remove {path} and try again")
        self._fix_attrs(path, st, uid, gid, mode)
        return True

    def check_file(
        self, path: Path, uid: int, gid: int, mode: int, kind: str, size: int = 0
    ) -> None:
        """Make sure special file ``path`` exists (``z`` zero-filled, ``p`` fifo)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self.errors += 1
            self._say(f"Creating {'fifo' if kind == 'p' else 'file'} [{path}]\n")
            if not self.doit:
                return
            if kind == "p":
                os.mkfifo(path, mode)
            else:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
                try:
                    if size:
                        os.write(fd, b"\0" * size)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            os.chmod(path, mode)
            os.chown(path, uid, gid)
            return
        want_fifo = kind == "p"
        if stat.S_ISFIFO(st.st_mode) != want_fifo or (
            not want_fifo and not stat.S_ISREG(st.st_mode)
        ):
            raise Fatal(111, f"{path}: wrong file type. Can't autofix. Remove {path} and try again")
        self._fix_attrs(path, st, uid, gid, mode)

    def check_files_in(self, directory: Path, uid: int, gid: int, mode: int) -> None:
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return
        for name in names:
            path = directory / name
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                self._fix_attrs(path, st, uid, gid, mode)

    # -- the passes ----------------------------------------------------
    def check_dirs(self) -> None:
        lay, ids = self.layout, self.ids
        gid = ids.qmail_gid
        if not self.check_dir(lay.root, ids.qmailq, gid, QUEUE_ROOT_MODE):
            raise Fatal(111, f"{lay.root}: queue directory missing")
        # the queue's directories and split parts apart on disk (a hint, not
        # part of the layout: set quietly, and only where changes are made)
        if self.doit:
            spread_subdirs(lay.root)
        for name, _split, mode, role in QUEUE_DIRS:
            uid = ids.owner(role)
            self.check_dir(lay.root / name, uid, gid, mode)
            if name in ("pid", "lock"):
                continue
            if self.doit and lay.is_split(name):
                spread_subdirs(lay.root / name)
            for sub in lay.subdirs(name):
                if sub != lay.root / name:
                    self.check_dir(sub, uid, gid, mode)
                self.check_files_in(sub, uid, gid, FILE_MODES[name])
        if self.trash:
            self.check_dir(lay.root / "trash", ids.qmailq, gid, 0o700)
        if self.ratelimit:
            self.check_dir(lay.root / "ratelimit", ids.qmails, gid, 0o750)
            self.check_files_in(lay.root / "ratelimit", ids.qmails, gid, 0o640)
        lock = lay.root / "lock"
        self.check_file(lock / "sendmutex", ids.qmails, gid, SENDMUTEX_MODE, "z")
        self.check_file(lock / "tcpto", ids.qmailr, gid, TCPTO_MODE, "z", self.tcpto_size)
        self.check_file(lock / "trigger", ids.qmails, gid, TRIGGER_MODE, "p")
        self.check_file(lock / ENQUEUE_LOCK, ids.qmailq, gid, 0o644, "z")

    def fix_names(self) -> None:
        """Rename mess files (and companions) whose name is not their inode."""
        lay = self.layout
        for part, directory in enumerate(lay.subdirs("mess")):
            try:
                names = sorted(os.listdir(directory))
            except FileNotFoundError:
                continue
            for name in names:
                if name.startswith(".") or name.endswith(".tmp"):
                    continue
                try:
                    st = os.stat(directory / name)
                except FileNotFoundError:
                    continue
                if name == str(st.st_ino) and part == st.st_ino % lay.split:
                    continue
                if not self._confirm(
                    "rename", "It looks like some files need to be renamed, should I rename them?"
                ):
                    return
                self.errors += 1
                new_part = str(st.st_ino % lay.split)
                for sub in ("mess", "info", "local", "remote", "intd", "todo", "bounce"):
                    # companions sit in the same split part, or unsplit
                    if lay.is_split(sub):
                        src = lay.root / sub / str(part) / name
                        dst = lay.root / sub / new_part / str(st.st_ino)
                    else:
                        src = lay.root / sub / name
                        dst = lay.root / sub / str(st.st_ino)
                    self._rename(src, dst)

    def _rename(self, src: Path, dst: Path) -> None:
        if not os.path.lexists(src):
            return
        if os.path.lexists(dst):
            dst = dst.with_name(dst.name + ".tmp")
            if os.path.lexists(dst):
                raise Fatal(
                    111,
                    ".tmp files exist in the queue: queue-fix may have "
                    "terminated abnormally in a previous run; remove them by hand",
                )
        self._say(f"Renaming [{src}] to [{dst}]\n")
        if self.doit:
            os.rename(src, dst)

    def _unlink(self, path: Path, why: str) -> None:
        self.errors += 1
        self._say(f"Unlinking [{path}] ({why})\n")
        if self.doit:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def find_strays(self) -> None:
        """Remove info/local/remote/todo/intd/bounce files with no mess file."""
        lay = self.layout
        for sub in ("info", "local", "remote", "todo", "intd", "bounce"):
            for inode in lay.entries(sub):
                if not os.path.lexists(lay.path("mess", inode)):
                    if not self._confirm(
                        "strays",
                        f"There are some stray files in {lay.root / sub}. Should I remove them?",
                    ):
                        return
                    self._unlink(lay.path(sub, inode), "no mess file")

    def clear_leftovers(self) -> None:
        """Remove what killed qmail-queue runs left: pid files, uncommitted mess/intd.

        Called only with the enqueue lock held exclusively.
        """
        lay = self.layout
        try:
            pids = os.listdir(lay.root / "pid")
        except FileNotFoundError:
            pids = []
        for name in pids:
            self._unlink(lay.root / "pid" / name, "left by a dead qmail-queue")
        for inode in lay.entries("mess"):
            committed = any(os.path.lexists(lay.path(sub, inode)) for sub in ("todo", "info"))
            if committed:
                continue
            intd = lay.path("intd", inode)
            if os.path.lexists(intd):
                self._unlink(intd, "uncommitted envelope")
            self._unlink(lay.path("mess", inode), "uncommitted message")

    def run(self) -> int:
        self.check_dirs()
        lockfd = self._lock()
        try:
            self.fix_names()
            if lockfd is not None:
                self.clear_leftovers()
            self.find_strays()
        finally:
            if lockfd is not None:
                os.close(lockfd)
        return self.errors

    def _lock(self) -> int | None:
        path = self.layout.root / "lock" / ENQUEUE_LOCK
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None  # -N on a queue without the lock file
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd


def main(argv: list[str]) -> int:
    """queue-fix [-irmNvt] [-s split] [-b 0|1] [-S size] queue_dir"""
    p0 = _paths.get()
    if envdir.apply_defaultqueue(p0.controldir):
        p0 = _paths.load()
    split, bigtodo = p0.conf_split, p0.bigtodo
    usage = USAGE.format(split=split, bigtodo=bigtodo)
    try:
        opts, args = getopt.getopt(argv[1:], "b:imNvtS:s:r")
    except getopt.GetoptError as exc:
        raise UsageError(f"{exc.msg}\n{usage}") from None
    kw: dict[str, object] = {}
    qmta = False
    for opt, val in opts:
        if opt in ("-b", "-s", "-S") and not val.isdecimal():
            raise UsageError(f"option {opt} needs a number, got {val!r}\n{usage}")
        if opt == "-b":
            bigtodo = int(val)
        elif opt == "-s":
            split = int(val)
        elif opt == "-S":
            kw["tcpto_size"] = int(val)
        elif opt == "-i":
            kw["interactive"] = True
        elif opt == "-N":
            kw["doit"] = False
        elif opt == "-v":
            kw["verbose"] = True
        elif opt == "-m":
            qmta = True
        elif opt == "-t":
            kw["trash"] = True
        elif opt == "-r":
            kw["ratelimit"] = True
    if len(args) != 1:
        raise UsageError(usage)
    if split < 1 or split > _paths.DIRSPLIT:
        raise UsageError(f"split must be 1..{_paths.DIRSPLIT}, got {split}")
    root = Path(args[0].rstrip("/") or "/")
    ids = Ids.lookup(p0, qmta)
    if os.getuid() != 0 and os.getuid() not in (ids.qmailq, ids.qmails, ids.qmailr):
        raise Fatal(111, "not running as root or as the queue owner")
    if not root.parent.is_dir():
        raise Fatal(111, f"{root.parent}: no such directory")
    fixer = Fixer(Layout(root, split=split, bigtodo=bigtodo), ids, **kw)  # type: ignore[arg-type]
    try:
        errors = fixer.run()
    except PermissionError as exc:
        raise Fatal(
            111, f"{exc.filename}: permission denied; failed checking queue structure"
        ) from None
    except OSError as exc:
        raise Fatal(
            111, f"{exc.filename}: {exc.strerror}; failed checking queue structure"
        ) from None
    if fixer.verbose:
        sys.stdout.write(f"queue-fix finished with {errors} errors...\n")
    return 0 if fixer.doit else min(errors, 100)


def create_queue(
    root: Path, p: _paths.Paths, split: int | None = None, bigtodo: int | None = None
) -> None:
    """Create (or repair) the queue at ``root`` quietly; used by instance setup."""
    lay = Layout(
        root, split=split or p.conf_split, bigtodo=p.bigtodo if bigtodo is None else bigtodo
    )
    Fixer(lay, Ids.lookup(p)).run()
