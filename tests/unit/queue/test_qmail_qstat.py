"""qmail-qstat: classic qmail's two lines, summed over all queues."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

MESSAGE = b"Subject: qstat test\n\nhello\n"
SPLIT = 151


def enqueue(instance, qdir: Path) -> int:
    before = set(os.listdir(qdir / "todo"))
    env_file = instance.top / "envelope.in"
    env_file.write_bytes(b"Fa@example.test\0Tb@example.org\0\0")
    with open(env_file, "rb") as fd1:
        res = instance.run(
            "qmail-queue", input=MESSAGE, stdout=fd1, env=instance.env(QUEUEDIR=str(qdir))
        )
    assert res.returncode == 0, res.stderr
    (new,) = set(os.listdir(qdir / "todo")) - before
    return int(new)


def preprocess(qdir: Path, inode: int) -> None:
    """todo-proc's work: info + remote written, todo and intd gone."""
    split = str(inode % SPLIT)
    (qdir / "info" / split / str(inode)).write_bytes(b"Fa@example.test\0")
    (qdir / "remote" / split / str(inode)).write_bytes(b"Tb@example.org\0")
    os.unlink(qdir / "todo" / str(inode))
    os.unlink(qdir / "intd" / str(inode))


def expect(n: int, m: int) -> bytes:
    return f"messages in queue: {n}\nmessages in queue but not yet preprocessed: {m}\n".encode()


# (messages queued in queue1, in queue2, how many of them preprocessed) -> N, M
@pytest.mark.parametrize(
    ("q1", "q2", "done", "n", "m"),
    [
        (0, 0, 0, 0, 0),
        (1, 0, 0, 1, 1),
        (1, 1, 0, 2, 2),
        (2, 1, 1, 3, 2),
        (1, 2, 3, 3, 0),
    ],
)
def test_counts(instance, q1, q2, done, n, m):
    made = [(instance.queue(1), enqueue(instance, instance.queue(1))) for _ in range(q1)]
    made += [(instance.queue(2), enqueue(instance, instance.queue(2))) for _ in range(q2)]
    for qdir, inode in made[:done]:
        preprocess(qdir, inode)
    res = instance.run("qmail-qstat")
    assert res.returncode == 0, res.stderr
    assert res.stderr == b""
    assert res.stdout == expect(n, m)


def test_extra_queue_counted(instance):
    slowq = instance.queue_base / "slowq"
    assert instance.run("queue-fix", str(slowq)).returncode == 0
    enqueue(instance, slowq)
    enqueue(instance, instance.queue(2))
    res = instance.run("qmail-qstat")
    assert res.returncode == 0, res.stderr
    assert res.stdout == expect(2, 2)


def test_agrees_with_qmail_qread_todo_count(instance):
    enqueue(instance, instance.queue(1))
    inode = enqueue(instance, instance.queue(2))
    preprocess(instance.queue(2), inode)
    stat = instance.run("qmail-qstat")
    assert stat.stdout == expect(2, 1)
    qread = instance.run("qmail-qread", "-t", "-c", "-s")
    assert b"Total Messages in todo   queue: 1\n" in qread.stdout


def test_missing_queue_is_fatal(instance):
    res = instance.run("qmail-qstat", env=instance.env(QUEUE_COUNT="3"))
    assert res.returncode == 111
    assert res.stdout == b""
    assert res.stderr.startswith(b"qmail-qstat: fatal: ")
    assert str(instance.queue(3)).encode() in res.stderr
    assert b"Traceback" not in res.stderr


def test_defaultqueue_envdir(instance):
    enqueue(instance, instance.queue(2))
    dq = instance.control / "defaultqueue"
    dq.mkdir()
    (dq / "QUEUE_COUNT").write_text("1\n")
    res = instance.run("qmail-qstat")
    assert res.returncode == 0, res.stderr
    assert res.stdout == expect(0, 0)
