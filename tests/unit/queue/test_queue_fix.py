"""queue-fix: create, repair, rename to inode, strays, leftovers, -N."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import struct

import pytest

from indimail.core import paths
from indimail.queue import queue_fix
from indimail.queue.layout import FS_IOC_GETFLAGS, FS_TOPDIR_FL, QUEUE_DIRS, Layout, spread_subdirs


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_creates_full_tree(instance, tmp_path):
    q = tmp_path / "newqueue"
    res = instance.run("queue-fix", "-s", "23", str(q))
    assert res.returncode == 0, res.stderr
    assert mode(q) == 0o750
    for name, split, dmode, _owner in QUEUE_DIRS:
        assert mode(q / name) == dmode, name
        if split:
            assert sorted(int(p.name) for p in (q / name).iterdir()) == list(range(23))
    assert not any((q / "todo").iterdir())  # BIGTODO=0: todo unsplit
    assert (q / "lock" / "tcpto").stat().st_size == 2048
    assert (q / "lock" / "tcpto").read_bytes() == b"\0" * 2048
    assert stat.S_ISFIFO(os.lstat(q / "lock" / "trigger").st_mode)
    assert mode(q / "lock" / "trigger") == 0o622
    assert mode(q / "lock" / "sendmutex") == 0o600


def topdir(path) -> bool:
    """Whether ``path`` carries the file system's top-of-hierarchy flag
    (False where the file system has no such flags, tmpfs say)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        (flags,) = struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0\0\0\0"))
    except OSError:
        return False
    finally:
        os.close(fd)
    return bool(flags & FS_TOPDIR_FL)


def test_queue_and_split_parents_spread_their_subdirectories(instance, tmp_path):
    """Where the file system has the attribute (ext2/3/4: chattr +T), the
    queue directory and each split parent carry it, so that their
    subdirectories, and the inodes of the files made in them, come from
    different inode groups.  Where it has none, the queue is made all the
    same and nothing carries it."""
    probe = tmp_path / "probe"
    probe.mkdir()
    capable = spread_subdirs(probe)
    assert topdir(probe) == capable
    for bigtodo in ("0", "1"):
        q = tmp_path / f"q{bigtodo}"
        res = instance.run("queue-fix", "-b", bigtodo, "-s", "5", str(q))
        assert res.returncode == 0, res.stderr
        flagged = {name for name in os.listdir(q) if topdir(q / name)}
        if topdir(q):
            flagged.add(".")
        split_parents = {"mess", "info", "local", "remote"} | (
            {"intd", "todo"} if bigtodo == "1" else set()
        )
        assert flagged == ({"."} | split_parents if capable else set()), bigtodo
        for parent in split_parents:  # the parts themselves hold files only
            assert not any(topdir(part) for part in (q / parent).iterdir())


@pytest.mark.parametrize("why", ["ioctl refused", "other ioctl encoding"])
def test_queue_made_where_file_system_has_no_such_attribute(instance, tmp_path, monkeypatch, why):
    def no_ioctl(*_args):
        raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")

    if why == "ioctl refused":  # tmpfs, xfs, btrfs...
        monkeypatch.setattr(fcntl, "ioctl", no_ioctl)
    else:  # mips, powerpc, sparc: our request numbers would be wrong there
        real = os.uname()
        fake = os.uname_result((*real[:4], "mips64"))
        monkeypatch.setattr(os, "uname", lambda: fake)
    assert spread_subdirs(tmp_path) is False
    p = paths.load({**os.environ, "INDIMAIL_PATHS": str(instance.conf)})
    q = tmp_path / "plain"
    fixer = queue_fix.Fixer(Layout(q, split=3, bigtodo=0), queue_fix.Ids.lookup(p))
    fixer.run()  # returns how many things it made or mended
    for name, split, dmode, _owner in QUEUE_DIRS:
        assert mode(q / name) == dmode, name
        if split:
            assert sorted(int(p.name) for p in (q / name).iterdir()) == [0, 1, 2]
    assert stat.S_ISFIFO(os.lstat(q / "lock" / "trigger").st_mode)
    monkeypatch.undo()
    assert not topdir(tmp_path)
    assert not topdir(q) and not any(topdir(q / name) for name in os.listdir(q))


def test_bigtodo_splits_todo_and_intd(instance, tmp_path):
    q = tmp_path / "big"
    assert instance.run("queue-fix", "-b", "1", "-s", "7", str(q)).returncode == 0
    assert sorted(p.name for p in (q / "todo").iterdir()) == [str(i) for i in range(7)]
    assert sorted(p.name for p in (q / "intd").iterdir()) == [str(i) for i in range(7)]


def test_repairs_modes_and_missing_parts(instance):
    q = instance.queue(1)
    os.chmod(q / "mess", 0o777)
    shutil.rmtree(q / "info" / "17")
    (q / "lock" / "trigger").unlink()
    res = instance.run("queue-fix", "-v", str(q))
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode()
    assert f"Changing permissions of [{q / 'mess'}] to mode [750]" in out
    assert f"Creating directory [{q / 'info' / '17'}]" in out
    assert "queue-fix finished with 3 errors..." in out
    assert mode(q / "mess") == 0o750
    assert (q / "info" / "17").is_dir()
    assert stat.S_ISFIFO(os.lstat(q / "lock" / "trigger").st_mode)


def test_test_mode_reports_only(instance):
    q = instance.queue(1)
    os.chmod(q / "mess", 0o777)
    res = instance.run("queue-fix", "-N", str(q))
    assert res.returncode == 1  # one problem found, nothing changed
    assert mode(q / "mess") == 0o777


def test_renames_mess_to_inode_with_companions(instance):
    q = instance.queue(1)
    wrong = q / "mess" / "3" / "12345"
    wrong.write_bytes(b"message")
    (q / "info" / "3" / "12345").write_bytes(b"Fa@x.test\0")
    (q / "remote" / "3" / "12345").write_bytes(b"Tb@y.test\0")
    ino = wrong.stat().st_ino
    res = instance.run("queue-fix", str(q))
    assert res.returncode == 0, res.stderr
    part = str(ino % 151)
    assert (q / "mess" / part / str(ino)).read_bytes() == b"message"
    assert (q / "info" / part / str(ino)).read_bytes() == b"Fa@x.test\0"
    assert (q / "remote" / part / str(ino)).read_bytes() == b"Tb@y.test\0"
    assert not wrong.exists()


def test_strays_without_mess_are_removed(instance):
    q = instance.queue(2)
    stray = q / "info" / "5" / "156"
    stray.write_bytes(b"Fa@x.test\0")
    (q / "todo" / "999").write_bytes(b"u0\0p1\0Fa@x.test\0")
    (q / "bounce" / "998").write_bytes(b"x")
    assert instance.run("queue-fix", str(q)).returncode == 0
    assert not stray.exists()
    assert not (q / "todo" / "999").exists()
    assert not (q / "bounce" / "998").exists()


def test_leftovers_cleared_committed_kept(instance):
    q = instance.queue(1)
    env_file = instance.top / "env.in"
    env_file.write_bytes(b"Fa@x.test\0Tb@y.test\0\0")
    with open(env_file, "rb") as fd1:
        res = instance.run(
            "qmail-queue",
            input=b"Subject: x\n\nkeep\n",
            stdout=fd1,
            env=instance.env(QUEUEDIR=str(q)),
        )
    assert res.returncode == 0
    (kept,) = instance.files("mess")
    # What a writer killed at various points leaves:
    (q / "pid" / "4242.1700000000.1").write_bytes(b"")
    half = q / "mess" / "0" / "0"
    half.write_bytes(b"partial")
    ino = half.stat().st_ino
    half.rename(q / "mess" / str(ino % 151) / str(ino))
    (q / "intd" / str(ino)).write_bytes(b"u0\0p1\0")
    res = instance.run("queue-fix", str(q))
    assert res.returncode == 0, res.stderr
    assert instance.files("pid") == []
    assert instance.files("mess") == [kept]
    assert [p.name for p in instance.files("intd")] == [kept.name]
    assert [p.name for p in instance.files("todo")] == [kept.name]


def test_usage_errors(instance):
    res = instance.run("queue-fix")
    assert res.returncode == 100
    assert b"usage: queue-fix" in res.stderr
    res = instance.run("queue-fix", "-s", "x", "/tmp/q")
    assert res.returncode == 100
    res = instance.run("queue-fix", "-Z", "/tmp/q")
    assert res.returncode == 100
    assert b"Traceback" not in res.stderr


def test_parent_missing(instance):
    res = instance.run("queue-fix", "/nonexistent/dir/queue1")
    assert res.returncode == 111
    assert b"/nonexistent/dir" in res.stderr
