"""qmail-qread / mailq: exact listing and counts over real queue states.

Queue states are built for real: messages are queued by ``qmail-queue``
(envelope on its fd 1) and, for the state after preprocessing, turned into
``info``/``local``/``remote`` files by hand as todo-proc would.  The cases
in ``qread_cases/`` (format in its README) give the exact expected output.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from indimail.queue.layout import Layout
from indimail.queue.qmail_qread import (
    Options,
    Output,
    QueueReader,
    QueueShm,
    display,
    read_shm,
    stats_line,
)

CASES = Path(__file__).parent / "qread_cases"
MESSAGE = b"Subject: qread test\n\nhello\n"
SPLIT = 151


# -- building queue states ---------------------------------------------------


def queue_dir(instance, queue: str) -> Path:
    return instance.queue(int(queue)) if queue.isdigit() else instance.queue_base / queue


def enqueue(instance, qdir: Path, sender: bytes, rcpts: list[bytes], message=MESSAGE) -> int:
    """Queue one message with qmail-queue into ``qdir``; return its inode."""
    before = set(os.listdir(qdir / "todo"))
    envelope = b"F" + sender + b"\0" + b"".join(b"T" + r + b"\0" for r in rcpts) + b"\0"
    env_file = instance.top / "envelope.in"
    env_file.write_bytes(envelope)
    with open(env_file, "rb") as fd1:
        res = instance.run(
            "qmail-queue", input=message, stdout=fd1, env=instance.env(QUEUEDIR=str(qdir))
        )
    assert res.returncode == 0, res.stderr
    (new,) = set(os.listdir(qdir / "todo")) - before
    return int(new)


def preprocess(
    qdir: Path,
    inode: int,
    sender: bytes,
    local: list[bytes] = (),
    remote: list[bytes] = (),
    bounce: bool = False,
) -> Path:
    """What todo-proc leaves: info (+ local/remote records), no todo/intd."""
    split = str(inode % SPLIT)
    info = qdir / "info" / split / str(inode)
    info.write_bytes(b"F" + sender + b"\0")
    for channel, records in (("local", local), ("remote", remote)):
        if records:
            (qdir / channel / split / str(inode)).write_bytes(b"".join(r + b"\0" for r in records))
    if bounce:
        (qdir / "bounce" / str(inode)).write_bytes(b"<a@example.test>:\nfailed\n\n")
    os.unlink(qdir / "todo" / str(inode))
    os.unlink(qdir / "intd" / str(inode))
    return info


def make_extra_queue(instance, name: str) -> Path:
    qdir = instance.queue_base / name
    res = instance.run("queue-fix", str(qdir))
    assert res.returncode == 0, res.stderr
    return qdir


def set_mtime(path: Path, when: int) -> None:
    os.utime(path, (when, when))


# -- the case files ------------------------------------------------------------


def unescape(value: str) -> bytes:
    raw = value.encode("utf-8")
    return re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]), raw)


@dataclass
class Case:
    msgs: list[dict] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    exit: int = 0
    stdout: list[str] = field(default_factory=list)


def parse_case(path: Path) -> Case:
    case = Case()
    lines = path.read_text("utf-8").split("\n")
    for n, line in enumerate(lines):
        if line == "stdout:":
            body = lines[n + 1 :]
            if body and body[-1] == "":
                body.pop()
            case.stdout = body
            break
        if not line.strip() or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word == "msg":
            tokens = shlex.split(rest)
            msg: dict = {"name": tokens[0], "to": [], "local": [], "remote": [], "bounce": False}
            for tok in tokens[1:]:
                key, sep, value = tok.partition("=")
                if not sep:
                    msg[key] = True
                elif key in ("to", "local", "remote"):
                    msg[key].append(unescape(value))
                elif key == "from":
                    msg[key] = unescape(value)
                else:
                    msg[key] = value
            case.msgs.append(msg)
        elif word == "extra":
            case.extra.append(rest.strip())
        elif word == "args":
            case.args = shlex.split(rest)
        elif word == "exit":
            case.exit = int(rest)
        else:
            raise ValueError(f"{path.name}: unknown directive {word!r}")
    return case


def build_state(instance, case: Case) -> dict[str, str]:
    """Create the queue state of ``case``; return placeholder values."""
    values = {"queue1": str(instance.queue(1)), "queue2": str(instance.queue(2))}
    for name in case.extra:
        values[name] = str(make_extra_queue(instance, name))
    for msg in case.msgs:
        qdir = queue_dir(instance, msg["queue"])
        rcpts = msg["to"] or [r[1:] for r in msg["local"] + msg["remote"]]
        inode = enqueue(instance, qdir, msg["from"], rcpts)
        if msg["state"] == "todo":
            set_mtime(qdir / "todo" / str(inode), int(msg["mtime"]))
        else:
            info = preprocess(qdir, inode, msg["from"], msg["local"], msg["remote"], msg["bounce"])
            set_mtime(info, int(msg["mtime"]))
        name = msg["name"]
        values[f"{name}.inode"] = str(inode)
        values[f"{name}.split"] = str(inode % SPLIT)
        values[f"{name}.size"] = str(
            (qdir / "mess" / str(inode % SPLIT) / str(inode)).stat().st_size
        )
    return values


def expected_output(case: Case, values: dict[str, str]) -> bytes:
    out = []
    for line in case.stdout:
        if line.endswith("$"):
            line = line[:-1]
        line = line.replace("\\t", "\t")
        line = re.sub(r"\{([\w.]+)\}", lambda m: values[m.group(1)], line)
        out.append(line + "\n")
    return "".join(out).encode("utf-8")


@pytest.mark.parametrize("name", sorted(p.name for p in CASES.glob("*.case")))
def test_case(instance, name):
    case = parse_case(CASES / name)
    values = build_state(instance, case)
    res = instance.run("qmail-qread", *case.args)
    assert res.stderr == b""
    assert res.returncode == case.exit
    assert (
        res.stdout.decode("utf-8", "replace").splitlines()
        == expected_output(case, values).decode("utf-8", "replace").splitlines()
    )
    assert res.stdout == expected_output(case, values)


# -- behaviour outside the case files ------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            found[str(p)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return found


def test_read_only(instance):
    qdir = instance.queue(1)
    inode = enqueue(instance, qdir, b"a@example.test", [b"b@example.org"])
    preprocess(qdir, inode, b"a@example.test", remote=[b"Tb@example.org"], bounce=True)
    enqueue(instance, instance.queue(2), b"c@example.test", [b"d@example.org"])
    before = snapshot(instance.queue_base)
    res = instance.run("qmail-qread", "-a", "-c")
    assert res.returncode == 0, res.stderr
    assert snapshot(instance.queue_base) == before


def test_mailq_is_qmail_qread(instance):
    qdir = instance.queue(1)
    inode = enqueue(instance, qdir, b"a@example.test", [b"b@example.org"])
    preprocess(qdir, inode, b"a@example.test", remote=[b"Tb@example.org"])
    a = instance.run("qmail-qread", "-c")
    b = instance.run("mailq", "-c")
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout
    assert b"\tremote\tb@example.org\n" in b.stdout


def test_missing_queue_is_fatal(instance):
    res = instance.run("qmail-qread", env=instance.env(QUEUE_COUNT="3"))
    assert res.returncode == 111
    assert res.stdout == b""
    missing = str(instance.queue(3)).encode()
    assert res.stderr.startswith(b"qmail-qread: fatal: ")
    assert missing in res.stderr
    assert b"Traceback" not in res.stderr


def test_missing_queue_base(instance, tmp_path):
    gone = tmp_path / "nowhere"
    res = instance.run("qmail-qread", "-c", env=instance.env(QUEUE_BASE=str(gone)))
    assert res.returncode == 111
    assert str(gone / "queue1").encode() in res.stderr


def test_defaultqueue_envdir_applies(instance):
    """control/defaultqueue is an envdir read before the queues are listed."""
    dq = instance.control / "defaultqueue"
    dq.mkdir()
    (dq / "QUEUE_COUNT").write_text("1\n")
    res = instance.run("qmail-qread")
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"processing queue {instance.queue(1)}\n\n".encode()


def test_home_defaultqueue_envdir_applies(instance):
    home = Path(instance.env()["HOME"])
    dq = home / ".defaultqueue"
    dq.mkdir(parents=True)
    (dq / "QUEUE_START").write_text("2\n")
    (dq / "QUEUE_COUNT").write_text("1\n")
    res = instance.run("qmail-qread")
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"processing queue {instance.queue(2)}\n\n".encode()


def test_malformed_files_warn_and_listing_goes_on(instance):
    q1, q2 = instance.queue(1), instance.queue(2)
    bad = enqueue(instance, q1, b"a@example.test", [b"x@example.org"])
    good = enqueue(instance, q2, b"b@example.test", [b"y@example.org"])
    broken = enqueue(instance, q2, b"c@example.test", [b"z@example.org"])
    preprocess(q1, bad, b"a@example.test", remote=[b"Tw@example.org", b"Xjunk"])
    remote_bad = q1 / "remote" / str(bad % SPLIT) / str(bad)
    remote_bad.write_bytes(remote_bad.read_bytes() + b"Tpartial")
    preprocess(q2, good, b"b@example.test", local=[b"Tu@mx.example.test"])
    info_broken = preprocess(q2, broken, b"c@example.test", local=[b"Tv@mx.example.test"])
    info_broken.write_bytes(b"garbage without a sender record")
    res = instance.run("qmail-qread")
    assert res.returncode == 0
    out = res.stdout.decode()
    assert "\tremote\tw@example.org\n" in out
    assert "junk" not in out and "partial" not in out
    assert "\tlocal\tu@mx.example.test\n" in out
    assert "v@mx.example.test" not in out
    err = res.stderr.decode()
    assert f"qmail-qread: warn: {remote_bad}: malformed remote file" in err
    assert f"qmail-qread: warn: {info_broken}: malformed info file" in err
    assert "Traceback" not in err


def test_mess_missing_with_info_present_warns(instance):
    qdir = instance.queue(1)
    inode = enqueue(instance, qdir, b"a@example.test", [b"b@example.org"])
    preprocess(qdir, inode, b"a@example.test", remote=[b"Tb@example.org"])
    os.unlink(qdir / "mess" / str(inode % SPLIT) / str(inode))
    res = instance.run("qmail-qread")
    assert res.returncode == 0
    assert f"qmail-qread: warn: trouble with #{inode}: ".encode() in res.stderr
    assert b"b@example.org" not in res.stdout


def test_usage(instance):
    res = instance.run("qmail-qread", "-x")
    assert res.returncode == 1
    assert res.stdout.startswith(b"qmail-qread [-calrsti]\n")
    assert b"Traceback" not in res.stderr


@pytest.mark.skipif(os.path.exists("/dev/shm/qscheduler"), reason="a qscheduler is running")
def test_i_without_dynamic_queue(instance):
    res = instance.run("qmail-qread", "-i")
    assert res.returncode == 100
    assert res.stderr == b"qmail-qread: fatal: dynamic queue not configured\n"


# -- in-process: vanishing files, big todo, the -i table ------------------------


def reader_for(root: Path, opts: Options, split=SPLIT, bigtodo=0):
    out, err = io.BytesIO(), io.BytesIO()
    reader = QueueReader(Layout(root=root, split=split, bigtodo=bigtodo), opts, Output(out, err))
    return reader, out, err


def test_vanished_message_is_skipped_silently(instance, monkeypatch):
    qdir = instance.queue(1)
    reader, out, err = reader_for(qdir, Options(local=True, remote=True, todo=True, count=True))
    # An entry seen by readdir whose files are gone by the time they are read.
    monkeypatch.setattr(
        reader, "_ids", lambda subdir: [("7", 7)] if subdir == "info" else [("", 9)]
    )
    counts = reader.run()
    assert out.getvalue() == b""
    assert err.getvalue() == b""
    assert (counts.local, counts.remote, counts.bounce, counts.todo) == (0, 0, 0, 0)


def test_big_todo_queue(tmp_path):
    root = tmp_path / "queue1"
    split = 3
    for sub in ("mess", "info", "local", "remote", "todo", "intd"):
        for i in range(split):
            (root / sub / str(i)).mkdir(parents=True)
    (root / "bounce").mkdir()
    inode = 7  # split part 1
    (root / "mess" / "1" / "7").write_bytes(b"x" * 42)
    todo = root / "todo" / "1" / "7"
    todo.write_bytes(b"u0\0p123\0Fa@example.test\0Tb@example.org\0Tc@example.org\0")
    set_mtime(todo, 1700000000)
    reader, out, err = reader_for(root, Options(todo=True), split=split, bigtodo=1)
    counts = reader.run()
    assert err.getvalue() == b""
    assert out.getvalue() == (
        b"14 Nov 2023 22:13:20 GMT  1/#7  42  <a@example.test> \n"
        b"\ttodo\tb@example.org\n"
        b"\ttodo\tc@example.org\n"
    )
    assert counts.todo == 2
    assert inode % split == 1


def test_stats_line_format():
    assert stats_line(1704153600, "12", 345, 678, b"a@b.test", False) == (
        b"2 Jan 2024 00:00:00 GMT  12/#345  678  <a@b.test> "
    )
    assert stats_line(1704153600, "0", 1, 2, b"", True) == (
        b"2 Jan 2024 00:00:00 GMT  0/#1  2  <>  bouncing"
    )
    assert stats_line(0, "0", 1, 2, b"\n\t\xff", False).endswith(b"<___> ")


def test_dynamic_queue_table():
    out, err = io.BytesIO(), io.BytesIO()
    queues = [
        QueueShm("queue1", 2, 3, 10, 20, 0),
        QueueShm("queue2", 0, 1, 10, 20, 1),
        QueueShm("queue3", 0, 0, 0, 20, 0),
    ]
    display(Output(out, err), queues, 3, 5, 90.0)
    assert out.getvalue().decode() == (
        "queue      local  Remote   +/- flag\n"
        "queue1     2/10     3/20   + enabled\n"
        "queue2     0/10     1/20   + disabled\n"
        "threshold = 90.00 , qcount = 3, qconf = 5, local = 2, remote = 4, qload_av =   6.67\n"
    )
    assert err.getvalue() == b"invalid concurrency = 0 [local] for queue queue3\n"


def test_read_shm_segments(tmp_path):
    (tmp_path / "qscheduler").write_bytes(struct.pack("=2i", 2, 5))
    (tmp_path / "queue1").write_bytes(struct.pack("=5i", 1, 2, 10, 20, 0))
    (tmp_path / "queue2").write_bytes(struct.pack("=5i", 0, 0, 10, 20, 1))
    qcount, qconf, queues = read_shm(tmp_path)
    assert (qcount, qconf) == (2, 5)
    assert queues == [
        QueueShm("queue1", 1, 2, 10, 20, 0),
        QueueShm("queue2", 0, 0, 10, 20, 1),
    ]
