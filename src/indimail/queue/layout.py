"""The on-disk queue of the original: names, split directories, modes.

One queue is one directory (``QUEUE_BASE/queue<n>``).  A message is named by
the inode of its ``mess/`` file; split directories are ``inode % split``.
``todo/`` and ``intd/`` are split only with BIGTODO=1 (we default to 0, as
installed systems run).
"""

from __future__ import annotations

import os
import sys

from indimail.core.paths import norm_path
from indimail.core.record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from pathlib import Path

# (name, split?, dir mode, owner role, group role); split None = BIGTODO decides.
QUEUE_DIRS: tuple[tuple[str, bool | None, int, str], ...] = (
    ("pid", False, 0o700, "qmailq"),
    ("mess", True, 0o750, "qmailq"),
    ("intd", None, 0o700, "qmailq"),
    ("todo", None, 0o750, "qmailq"),
    ("info", True, 0o700, "qmails"),
    ("local", True, 0o700, "qmails"),
    ("remote", True, 0o700, "qmails"),
    ("bounce", False, 0o700, "qmails"),
    ("lock", False, 0o750, "qmailq"),
)
QUEUE_ROOT_MODE = 0o750
SENDMUTEX_MODE = 0o600
TCPTO_MODE = 0o644
TCPTO_SIZE = 2048
TRIGGER_MODE = 0o622


class Layout(Record):
    """Geometry of one queue directory (immutable, compared by value).

    The directory is kept as a string (``root_s``): queueing a message needs
    no Path, and pathlib costs a command ~10 ms at start (core/paths).
    ``root`` gives the Path, made at first use."""

    _fields = ("root_s", "split", "bigtodo")
    __slots__ = (*_fields, "_root")
    root_s: str
    split: int
    bigtodo: int

    def __init__(self, root: str | Path, split: int = 151, bigtodo: int = 0) -> None:
        self._set("root_s", norm_path(os.fspath(root)))
        self._set("split", split)
        self._set("bigtodo", bigtodo)
        self._set("_root", None)

    @property
    def root(self) -> Path:
        if self._root is None:
            from pathlib import Path

            self._set("_root", Path(self.root_s))
        return self._root  # type: ignore[return-value]

    def is_split(self, subdir: str) -> bool:
        for name, split, _mode, _owner in QUEUE_DIRS:
            if name == subdir:
                return bool(self.bigtodo) if split is None else split
        return False

    def rel(self, subdir: str, inode: int) -> str:
        """``subdir/<inode%split>/<inode>`` or ``subdir/<inode>``."""
        if self.is_split(subdir):
            return f"{subdir}/{inode % self.split}/{inode}"
        return f"{subdir}/{inode}"

    def path(self, subdir: str, inode: int) -> Path:
        return self.root / self.rel(subdir, inode)

    def subdirs(self, subdir: str) -> list[Path]:
        """The directories holding files of ``subdir`` (all split parts)."""
        base = self.root / subdir
        if self.is_split(subdir):
            return [base / str(i) for i in range(self.split)]
        return [base]

    def entries(self, subdir: str) -> list[int]:
        """Inode numbers present in ``subdir`` (non-numeric names skipped)."""
        found = []
        base = f"{self.root_s}/{subdir}"
        parts = [f"{base}/{i}" for i in range(self.split)] if self.is_split(subdir) else [base]
        for d in parts:
            try:
                names = os.listdir(d)
            except FileNotFoundError:
                continue
            for name in names:
                if name.isdecimal():
                    found.append(int(name))
        return found

    @property
    def trigger(self) -> Path:
        return self.root / "lock" / "trigger"


def layout_for(
    root: Path,
    environ: dict[str, str] | os._Environ[str] | None = None,
    split: int | None = None,
    bigtodo: int | None = None,
) -> Layout:
    """Layout for ``root`` honouring CONFSPLIT/BIGTODO from the paths object."""
    from indimail.core import paths

    p = paths.get()
    return Layout(
        root=root,
        split=split if split is not None else p.conf_split,
        bigtodo=bigtodo if bigtodo is not None else p.bigtodo,
    )


def fsync_dir(path: str) -> None:
    """Make the names in directory ``path`` durable (fsync it); OSError
    propagates for the caller to word."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# FS_IOC_GETFLAGS / FS_IOC_SETFLAGS are _IOR/_IOW('f', 1/2, long); the
# kernel reads and writes an int through them.  The numbers below follow
# the generic ioctl encoding; alpha, mips, powerpc, parisc and sparc encode
# the direction differently and are left alone.
_GENERIC_IOCTL = ("x86_64", "i386", "i486", "i586", "i686", "aarch64", "arm", "riscv", "s390")
_LONG = 8 if sys.maxsize > 2**32 else 4
FS_IOC_GETFLAGS = (2 << 30) | (_LONG << 16) | (ord("f") << 8) | 1
FS_IOC_SETFLAGS = (1 << 30) | (_LONG << 16) | (ord("f") << 8) | 2
FS_TOPDIR_FL = 0x00020000


def spread_subdirs(path: str | Path) -> bool:
    """Ask the file system to spread ``path``'s future subdirectories apart
    (ext2/3/4's "top of directory hierarchy" attribute, ``chattr +T``).

    A queue's split directories hold unrelated files; kept next to each
    other, every message's pid/mess, intd, info and local inodes come from
    one inode group, and without a journal ext4 skips every inode freed in
    that group in the last 5 to 305 seconds on each allocation (a scan that
    took a fifth of the CPU under load; docs/performance.md).  Spread, each
    directory's files come from their own group.  A hint only: where the
    file system has no such attribute this returns False and nothing
    changes."""
    if not sys.platform.startswith("linux") or not os.uname().machine.startswith(_GENERIC_IOCTL):
        return False
    import fcntl  # queue creation only: not on qmail-queue's path
    import struct

    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        (flags,) = struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0\0\0\0"))
        if not flags & FS_TOPDIR_FL:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags | FS_TOPDIR_FL))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
