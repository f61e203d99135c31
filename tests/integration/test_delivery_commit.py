"""qmail-send's deferred commit of preprocessing (COMMIT_DELAY).

A new message starts delivery at once while ``todo/<id>`` and ``intd/<id>``
are still on disk; its info/local files are fsynced and todo/intd removed
COMMIT_DELAY (5 s) later, or never when the deliveries are over by then.  These
tests pin the on-disk states an admin (and a restart) sees: a quick
delivery leaves nothing behind, a slow one is committed while it runs, and
a kill -9 inside the window delivers the message again rather than losing
or stranding it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_delivery import Delivery, add_user, queue_empty

from support import make_instance


@pytest.fixture
def delivery(instance):
    d = Delivery(instance)
    yield d
    d.stop()


def slow_program(instance, name: str) -> tuple[Path, Path]:
    """A user whose .qmail runs a program that logs each start and then
    waits (bounded) for a release file."""
    home = add_user(instance, name)
    runs = home / "runs"
    release = home / "release"
    script = home / "deliver.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"echo start >> {runs}\n"
        "n=0\n"
        f'while [ ! -e {release} ] && [ "$n" -lt 300 ]; do sleep 0.1; n=$((n+1)); done\n'
        "exit 0\n"
    )
    script.chmod(0o755)
    (home / ".qmail").write_text(f"|{script}\n")
    return runs, release


def starts(runs: Path) -> int:
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def inject(instance, rcpt: str) -> None:
    res = instance.run("sendmail", rcpt, input=b"Subject: commit\n\nbody\n")
    assert res.returncode == 0, res.stderr


def test_quick_delivery_leaves_nothing_and_logs_one_end(instance, delivery):
    for _n in range(5):
        inject(instance, "postmaster@mx.example.test")
    delivery.wait_for(
        lambda: sum(1 for line in delivery.lines() if line.startswith("end msg")) == 5
    )
    assert queue_empty(instance)
    for sub in ("todo", "intd", "info", "local", "remote", "mess"):
        assert instance.files(sub) == [], sub
    alias = instance.top / "var" / "alias" / "Maildir" / "new"
    assert len(list(alias.iterdir())) == 5
    # and the queue sleeps afterwards: no commit left due, no busy loop
    # (the wait is bounded: about 2 s; a spinning qmail-send burns ~all of it)
    used = cpu_seconds(delivery.proc.pid)
    time.sleep(2.0)
    assert cpu_seconds(delivery.proc.pid) - used < 0.5


def cpu_seconds(top: int) -> float:
    """user+system CPU of ``top`` and every process below it."""
    hz = os.sysconf("SC_CLK_TCK")
    total, todo = 0, [top]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as fh:
                    todo += [int(k) for k in fh.read().split()]
        except OSError:
            continue
    return total / hz


def test_slow_delivery_is_committed_while_it_runs(instance, delivery):
    runs, release = slow_program(instance, "slow")
    inject(instance, "slow@mx.example.test")
    delivery.wait_for(lambda: starts(runs) == 1)
    # the program is still running: after the commit delay todo/intd are
    # gone and info/local carry the message, as the original leaves them
    delivery.wait_for(lambda: instance.files("todo") == [], timeout=10)
    assert instance.files("intd") == []
    assert len(instance.files("info")) == 1 and len(instance.files("local")) == 1
    release.touch()
    delivery.wait_for(lambda: queue_empty(instance) and instance.files("mess") == [])
    assert starts(runs) == 1
    assert instance.files("info") == [] and instance.files("local") == []


def queued(queue: Path, *subs: str) -> list[Path]:
    return [p for sub in subs for p in (queue / sub).rglob("*") if p.is_file()]


def test_kill_inside_the_commit_window_delivers_again(tmp_path):
    instance = make_instance(tmp_path / "one", queues=1)
    runs, release = slow_program(instance, "slow")
    queue = instance.queue(1)
    log = open(instance.top / "send.log", "ab")  # noqa: SIM115

    def run_send() -> subprocess.Popen:
        return subprocess.Popen(
            [str(instance.bin / "qmail-start"), "./Maildir/"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=instance.env(QUEUEDIR=str(queue)),
            cwd=instance.top,
        )

    proc = run_send()
    try:
        inject(instance, "slow@mx.example.test")
        deadline = time.monotonic() + 20
        while starts(runs) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert starts(runs) == 1
        # inside the window: todo still names the message
        assert len(queued(queue, "todo")) == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        release.touch()  # the orphaned program finishes now
        proc = run_send()
        everything = ("todo", "intd", "info", "local", "mess")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (starts(runs) < 2 or queued(queue, *everything)):
            time.sleep(0.1)
        # delivered again from todo (at least once, never lost), and the
        # queue is clean afterwards
        assert starts(runs) == 2
        assert queued(queue, *everything) == []
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_commit_writes_what_is_left(instance, delivery):
    # two recipients of one message: the quick one is done before the
    # commit, so local/<id> is written with its record already marked D
    runs, release = slow_program(instance, "slow")
    res = instance.run(
        "sendmail",
        "postmaster@mx.example.test",
        "slow@mx.example.test",
        input=b"Subject: two\n\nbody\n",
    )
    assert res.returncode == 0, res.stderr
    delivery.wait_for(lambda: starts(runs) == 1)
    t_seen = time.time()
    delivery.wait_for(lambda: instance.files("todo") == [], timeout=15)
    (local,) = instance.files("local")
    records = local.read_bytes().split(b"\0")[:-1]
    assert sorted(records) == [b"Dpostmaster@mx.example.test", b"Tslow@mx.example.test"]
    # info keeps the message's birth as its mtime (retries count from it)
    (info,) = instance.files("info")
    assert t_seen - 5 < info.stat().st_mtime <= t_seen
    release.touch()
    delivery.wait_for(lambda: queue_empty(instance) and instance.files("mess") == [])
    assert starts(runs) == 1


def test_failed_commit_leaves_nothing_once_the_message_is_done(instance, delivery):
    # the commit cannot write local/ (a file where the directory should be):
    # info/ is written, the commit fails and is retried later; the message
    # finishes meanwhile, and everything it had on disk goes with it
    runs, release = slow_program(instance, "slow")
    inject(instance, "slow@mx.example.test")
    delivery.wait_for(lambda: starts(runs) == 1)
    queue = next(q for q in (instance.queue(1), instance.queue(2)) if any((q / "todo").rglob("*")))
    (queue / "local").rename(queue / "local.saved")
    (queue / "local").write_text("not a directory\n")
    try:
        delivery.wait_for(lambda: any(": trouble writing " in x for x in delivery.lines()), 15)
        assert len(instance.files("info")) == 1  # written before local/ failed
        assert len(instance.files("todo")) == 1  # so todo still holds it
    finally:
        (queue / "local").unlink()
        (queue / "local.saved").rename(queue / "local")
    release.touch()
    delivery.wait_for(lambda: queue_empty(instance) and instance.files("mess") == [])
    for sub in ("todo", "intd", "info", "local", "remote"):
        assert instance.files(sub) == [], sub
    assert starts(runs) == 1
