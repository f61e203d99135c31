"""qmail-queue: envelope bytes on disk, Received line, exit codes, cleanup."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from support import TriggerReader, fsync_spy

CASES = Path(__file__).parent / "qq_cases"
MESSAGE = b"Subject: test\n\nhello\n"


def queue_with_fd1(instance, envelope: bytes, message: bytes = MESSAGE, env=None, tmp=None):
    """Run qmail-queue with ``envelope`` on fd 1, as injectors do."""
    env_file = (tmp or instance.top) / "envelope.in"
    env_file.write_bytes(envelope)
    with open(env_file, "rb") as fd1:
        return instance.run("qmail-queue", input=message, stdout=fd1, env=env)


def queue1_layout(instance):
    """The instance's first queue (split 151, BIGTODO 0), for enqueue()."""
    from indimail.queue.layout import Layout

    return Layout(root=instance.queue(1), split=151, bigtodo=False)


def leftovers(instance) -> list[Path]:
    return [p for sub in ("pid", "mess", "intd", "todo") for p in instance.files(sub)]


def parse_records(data: bytes) -> list[bytes]:
    assert data.endswith(b"\0")
    return data[:-1].split(b"\0")


@pytest.mark.parametrize("case", sorted(p.stem for p in CASES.glob("*.envelope")))
def test_envelope_cases(instance, case):
    envelope = (CASES / f"{case}.envelope").read_bytes()
    expect = dict(
        line.split("=", 1) for line in (CASES / f"{case}.expect").read_text("utf-8").splitlines()
    )
    res = queue_with_fd1(instance, envelope)
    assert res.returncode == int(expect["exit"]), res.stderr
    if res.returncode != 0:
        # Nothing may be left behind by a refused message.
        assert leftovers(instance) == []
        assert res.stderr.startswith(b"qmail-queue: ")
        assert b"Traceback" not in res.stderr
        return
    todo = instance.files("todo")
    intd = instance.files("intd")
    mess = instance.files("mess")
    assert len(todo) == len(intd) == len(mess) == 1
    inode = int(mess[0].name)
    assert mess[0].stat().st_ino == inode
    assert mess[0].parent.name == str(inode % 151)
    assert todo[0].name == intd[0].name == str(inode)
    assert todo[0].stat().st_ino == intd[0].stat().st_ino  # todo is a link of intd
    records = parse_records(todo[0].read_bytes())
    assert records[0] == b"u%d" % os.getuid()
    assert re.fullmatch(rb"p\d+", records[1])
    want = [r.encode("utf-8") for r in expect["records"].split("|")]
    assert records[2:] == want


def test_message_bytes_and_received_line(instance):
    res = queue_with_fd1(
        instance,
        b"Fa@example.test\0Tb@example.org\0\0",
        env=instance.env(HOSTNAME="qhost.example.test"),
    )
    assert res.returncode == 0, res.stderr
    (mess,) = instance.files("mess")
    data = mess.read_bytes()
    (todo,) = instance.files("todo")
    pid = parse_records(todo.read_bytes())[1][1:].decode()
    first, second, rest = data.split(b"\n", 2)
    assert first == f"Received: indimail-mta queue {pid} by host qhost.example.test".encode()
    assert re.fullmatch(
        rb" \(invoked by uid %d\); \d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d -0000" % os.getuid(),
        second,
    ), second
    assert rest == MESSAGE


def test_received_from_network_and_hide_host(instance):
    env = instance.env(TCPREMOTEIP="192.0.2.7", HOSTNAME="h.example.test")
    assert queue_with_fd1(instance, b"Fa@x.test\0Tb@y.test\0\0", env=env).returncode == 0
    (mess,) = instance.files("mess")
    assert b"(invoked from network 192.0.2.7, by uid" in mess.read_bytes()
    for f in leftovers(instance):
        f.unlink()
    env = instance.env(TCPREMOTEIP="192.0.2.7", HIDE_HOST="1")
    assert queue_with_fd1(instance, b"Fa@x.test\0Tb@y.test\0\0", env=env).returncode == 0
    (mess,) = instance.files("mess")
    head = mess.read_bytes().split(b";")[0]
    assert head.startswith(b"Received: indimail-mta queue ")
    assert b"192.0.2.7" not in head and b"by host" not in head
    assert b"(invoked from network, by uid" in head


def test_qqeh_record(instance):
    env = instance.env(QQEH="X-Spam: no")
    assert queue_with_fd1(instance, b"Fa@x.test\0Tb@y.test\0\0", env=env).returncode == 0
    (todo,) = instance.files("todo")
    assert todo.read_bytes().endswith(b"\0Tb@y.test\0eX-Spam: no\n\0")


def test_file_modes(instance):
    assert queue_with_fd1(instance, b"Fa@x.test\0Tb@y.test\0\0").returncode == 0
    for sub in ("mess", "todo", "intd"):
        (f,) = instance.files(sub)
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, sub


def test_queuedir_selects_queue(instance):
    env = instance.env(QUEUEDIR=str(instance.queue(2)))
    for _ in range(3):
        assert queue_with_fd1(instance, b"Fa@x.test\0Tb@y.test\0\0", env=env).returncode == 0
    assert len(list((instance.queue(2) / "todo").iterdir())) == 3
    assert list((instance.queue(1) / "todo").iterdir()) == []


def test_messages_spread_over_queues(instance):
    for _ in range(16):
        assert queue_with_fd1(instance, b"Fa@x.test\0Tb@y.test\0\0").returncode == 0
    counts = [len(list((instance.queue(n) / "todo").iterdir())) for n in (1, 2)]
    assert sum(counts) == 16
    assert all(c > 0 for c in counts), counts  # 2**-15 chance of a false failure


def test_missing_queue_is_temporary_with_reason(instance):
    env = instance.env(QUEUEDIR=str(instance.top / "nonexistent"))
    res = queue_with_fd1(instance, b"Fa@x.test\0Tb@y.test\0\0", env=env)
    assert res.returncode == 61
    assert b"nonexistent" in res.stderr


def test_unreadable_message_is_read_error(instance, tmp_path):
    env_file = tmp_path / "env"
    env_file.write_bytes(b"Fa@x.test\0Tb@y.test\0\0")
    # fd 0 is open for writing only: read() fails with EBADF.
    fd0 = os.open(tmp_path / "wo", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with open(env_file, "rb") as fd1:
            res = instance.run("qmail-queue", stdin=fd0, stdout=fd1)
    finally:
        os.close(fd0)
    assert res.returncode == 54
    assert b"trouble reading message" in res.stderr
    assert leftovers(instance) == []


def _break_pid_dir(instance) -> None:
    if os.getuid() == 0:
        # root ignores modes: make pid/ a file instead
        pid = instance.queue(1) / "pid"
        pid.rmdir()
        pid.write_bytes(b"")
    else:
        os.chmod(instance.queue(1) / "pid", 0o500)


def test_unnamed_files_need_no_pid_dir(instance):
    """Where O_TMPFILE and /proc exist (Linux), the message and envelope
    files are made unnamed and linked to their names: pid/ is not used,
    so a broken one does not stop queueing, and nothing is left there."""
    if not hasattr(os, "O_TMPFILE"):
        pytest.skip("no O_TMPFILE on this system: the pid file way is the only one")
    _break_pid_dir(instance)
    env = instance.env(QUEUEDIR=str(instance.queue(1)))
    res = queue_with_fd1(instance, b"Fa@x.test\0Tb@y.test\0\0", env=env)
    assert res.returncode == 0, res.stderr
    (todo,) = instance.files("todo")
    (mess,) = instance.files("mess")
    assert mess.name == todo.name == str(mess.stat().st_ino)
    assert mess.stat().st_nlink == 1 and todo.stat().st_nlink == 2  # todo = intd's 2nd name
    assert mess.read_bytes().endswith(MESSAGE)
    assert todo.read_bytes().endswith(b"Fa@x.test\0Tb@y.test\0")
    assert stat.S_IMODE(mess.stat().st_mode) == stat.S_IMODE(todo.stat().st_mode) == 0o644


def test_pid_dir_not_writable_without_unnamed_files(instance, monkeypatch):
    """The pid file way (other systems, or O_TMPFILE refused): a pid/ that
    cannot take a file is qmail-queue's code 70, and nothing is left."""
    from indimail.queue import qmail_queue
    from indimail.queue.qmail_queue import Envelope, QueueError, enqueue

    monkeypatch.setattr(qmail_queue, "_unnamed", lambda *_a: -1)
    _break_pid_dir(instance)
    with pytest.raises(QueueError) as err:
        enqueue(queue1_layout(instance), MESSAGE, Envelope(b"a@x.test", (b"b@y.test",)))
    assert err.value.code == 70 and "pid file" in err.value.reason
    assert [p for sub in ("mess", "intd", "todo") for p in instance.files(sub)] == []


@pytest.mark.parametrize("errno_", [2, 18, 1])  # ENOENT (no /proc), EXDEV, EPERM
def test_unnamed_link_refused_falls_back_to_the_pid_file(instance, monkeypatch, errno_):
    """If naming the unnamed file fails (no /proc in a chroot, ...), the
    message goes the pid file way: queued, complete, no fd and no pid
    file left behind."""
    from indimail.queue import qmail_queue
    from indimail.queue.qmail_queue import Envelope, enqueue

    def refuse(fd: int, path: str) -> None:
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(qmail_queue, "_link_unnamed", refuse)
    fds = set(os.listdir("/proc/self/fd"))
    inode = enqueue(queue1_layout(instance), MESSAGE, Envelope(b"a@x.test", (b"b@y.test",)))
    assert set(os.listdir("/proc/self/fd")) == fds
    q = instance.queue(1)
    assert (q / "mess" / str(inode % 151) / str(inode)).read_bytes().endswith(MESSAGE)
    assert (q / "todo" / str(inode)).read_bytes().endswith(b"Fa@x.test\0Tb@y.test\0")
    assert instance.files("pid") == []


def test_unnamed_mess_name_taken_is_code_67(instance, monkeypatch):
    """A leftover file already holding the new inode's mess name (a damaged
    queue) is qmail-queue's code 67, as for the pid file's link, and the
    leftover is not removed."""
    if not hasattr(os, "O_TMPFILE"):
        pytest.skip("no O_TMPFILE on this system")
    from indimail.queue import qmail_queue
    from indimail.queue.qmail_queue import Envelope, QueueError, enqueue

    taken = []

    def occupied(fd: int, path: str) -> None:
        Path(path).write_bytes(b"leftover")
        taken.append(path)
        raise FileExistsError(17, "File exists")

    monkeypatch.setattr(qmail_queue, "_link_unnamed", occupied)
    with pytest.raises(QueueError) as err:
        enqueue(queue1_layout(instance), MESSAGE, Envelope(b"a@x.test", (b"b@y.test",)))
    assert err.value.code == 67
    assert Path(taken[0]).read_bytes() == b"leftover"
    assert instance.files("intd") == [] and instance.files("todo") == []


def test_bad_control_queue_count(instance):
    env = instance.env(QUEUE_COUNT="many")
    res = queue_with_fd1(instance, b"Fa@x.test\0Tb@y.test\0\0", env=env)
    assert res.returncode == 55
    assert b"QUEUE_COUNT='many' is not a number" in res.stderr
    assert b"Traceback" not in res.stderr


def test_large_message_streams(instance):
    body = b"Subject: big\n\n" + (b"x" * 999 + b"\n") * 20000  # 20 MB
    res = queue_with_fd1(instance, b"Fa@x.test\0Tb@y.test\0\0", message=body)
    assert res.returncode == 0
    (mess,) = instance.files("mess")
    assert mess.read_bytes().endswith(body)


def test_oversize_line_kept_intact(instance):
    body = b"Subject: x\n\n" + b"y" * (1 << 20) + b"\n"
    res = queue_with_fd1(instance, b"Fa@x.test\0Tb@y.test\0\0", message=body)
    assert res.returncode == 0
    (mess,) = instance.files("mess")
    assert mess.read_bytes().endswith(body)


def test_unreadable_queue_base_control(instance):
    (instance.control / "queue_base").unlink()
    (instance.control / "queue_base").mkdir()
    env = instance.env()
    conf = instance.conf.read_text().replace("QUEUE_BASE=", "#QUEUE_BASE=")
    instance.conf.write_text(conf)
    res = queue_with_fd1(instance, b"Fa@x.test\0Tb@y.test\0\0", env=env)
    assert res.returncode == 55
    assert str(instance.control / "queue_base").encode() in res.stderr


@pytest.mark.parametrize("syncdir", ["", "1"])
def test_syncs_files_and_with_use_syncdir_their_directories(instance, monkeypatch, syncdir):
    from indimail.queue.qmail_queue import Envelope, enqueue

    q = instance.queue(1)
    layout = queue1_layout(instance)
    seen = fsync_spy(monkeypatch)
    env = {"USE_SYNCDIR": syncdir} if syncdir else {}
    inode = enqueue(layout, MESSAGE, Envelope(b"a@x.test", (b"b@y.test",)), environ=env)
    ino = {
        name: os.stat(q / name).st_ino
        for name in (f"mess/{inode % 151}", "intd", "todo", f"intd/{inode}")
    }
    want = [inode, ino[f"intd/{inode}"]]  # the message, its envelope
    if syncdir:
        want += [ino[f"mess/{inode % 151}"], ino["intd"]]  # the new names' directories
    want += [ino["todo"]]  # after the commit link, always
    assert seen == want
    assert (q / "todo" / str(inode)).read_bytes().endswith(b"Fa@x.test\0Tb@y.test\0")


def test_use_syncdir_failure_is_code_69_and_leaves_nothing(instance, monkeypatch):
    from indimail.queue.qmail_queue import Envelope, QueueError, enqueue

    layout = queue1_layout(instance)
    fsync_spy(monkeypatch, fail_dirs=True)
    envelope = Envelope(b"a@x.test", (b"b@y.test",))
    with pytest.raises(QueueError) as err:
        enqueue(layout, MESSAGE, envelope, environ={"USE_SYNCDIR": "1"})
    assert err.value.code == 69
    assert "syncing dir" in err.value.reason
    assert leftovers(instance) == []  # before the commit point: no todo, no mess


def test_enqueue_pokes_the_trigger_after_the_commit(instance):
    from indimail.queue.qmail_queue import Envelope, enqueue

    with TriggerReader(instance.queue(1)) as trigger:
        enqueue(queue1_layout(instance), MESSAGE, Envelope(b"a@x.test", (b"b@y.test",)))
        assert trigger.pokes() == b"\0"


def test_submit_without_wake_leaves_the_poke_to_the_caller(instance, monkeypatch):
    """qmail-smtpd answers 250 first and wakes qmail-send after: the message
    is committed and durable before either, and the wake-up is not lost."""
    from indimail.core import paths
    from indimail.queue import submit

    monkeypatch.setenv("INDIMAIL_PATHS", str(instance.conf))
    paths.reload()
    q = instance.queue(1)
    try:
        with TriggerReader(q) as trigger:
            env = {"QUEUEDIR": str(q)}
            queued = submit.submit(MESSAGE, b"a@x.test", [b"b@y.test"], environ=env, wake=False)
            assert trigger.pokes() == b""  # not yet ...
            todo = q / "todo" / str(queued.inode)
            assert todo.read_bytes().endswith(b"Fa@x.test\0Tb@y.test\0")  # ... but committed
            assert queued.trigger == f"{q}/lock/trigger"
            queued.wake()
            assert trigger.pokes() == b"\0"
            # the default wakes the queue itself, and leaves nothing to wake
            again = submit.submit(MESSAGE, b"a@x.test", [b"b@y.test"], environ=env)
            assert trigger.pokes() == b"\0"
            assert again.trigger is None
            again.wake()
            assert trigger.pokes() == b""
    finally:
        monkeypatch.delenv("INDIMAIL_PATHS")
        paths.reload()
