"""Durability: SIGKILL qmail-queue at many points; nothing acknowledged is lost.

Each run queues a distinct message (its number in sender and body) and is
killed after a random delay while the test feeds the message slowly, so the
kills land before, during and after the writes.  Afterwards:

* every run whose qmail-queue exited 0 has its message complete in the queue;
* every ``todo/`` entry is complete: full envelope, complete ``mess`` file;
* queue-fix removes every leftover (pid files, uncommitted mess/intd) and
  nothing committed.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time

RUNS = 220
DEADLINE = 150.0  # seconds; the loop stops by itself


def body(n: int) -> bytes:
    return b"Subject: run %d\n\n" % n + b"line of run %d\n" % n * 4000  # ~60 KB


def envelope(n: int) -> bytes:
    return b"Frun%d@example.test\0Tdest%d@example.org\0\0" % (n, n)


def feed(proc: subprocess.Popen, n: int) -> None:
    data = body(n)
    step = len(data) // 4 + 1
    try:
        for i in range(0, len(data), step):
            proc.stdin.write(data[i : i + step])
            proc.stdin.flush()
            time.sleep(0.01)
        proc.stdin.close()
        time.sleep(0.01)
        proc.envelope_w.write(envelope(n))
        proc.envelope_w.close()
    except (BrokenPipeError, ValueError, OSError):
        pass


def snapshot(instance) -> set[str]:
    return {str(p) for sub in ("pid", "mess", "intd", "todo") for p in instance.files(sub)}


def stage(new: set[str]) -> str:
    """Classify what one killed run left behind (its new files only)."""
    kinds = {path.split("/queue1/")[1].split("/")[0] for path in new}
    if "todo" in kinds:
        return "committed"
    if "intd" in kinds:
        return "mess+intd"
    if "mess" in kinds:
        return "mess"
    if "pid" in kinds:
        return "pid"
    return "none"


def check_queue(instance, ok_runs: set[int]) -> None:
    received_prefix = b"Received: indimail-mta queue "
    todo_runs = set()
    for todo in instance.files("todo"):
        records = todo.read_bytes().split(b"\0")
        assert records[0].startswith(b"u") and records[1].startswith(b"p"), todo
        sender = records[2]
        assert sender.startswith(b"Frun") and sender.endswith(b"@example.test"), todo
        n = int(sender[4:].split(b"@")[0])
        assert records[3] == b"Tdest%d@example.org" % n, todo
        assert records[4:] == [b""], todo  # nothing after the last recipient
        qdir = todo.parent.parent
        mess = qdir / "mess" / str(int(todo.name) % 151) / todo.name
        data = mess.read_bytes()
        assert data.startswith(received_prefix)
        assert data.split(b"\n", 2)[2] == body(n), f"message of run {n} incomplete"
        todo_runs.add(n)
    missing = ok_runs - todo_runs
    assert not missing, f"acknowledged but lost: {sorted(missing)}"


def test_kill_qmail_queue_anywhere(instance):
    rng = random.Random(20261127)
    env = instance.env(QUEUEDIR=str(instance.queue(1)))
    ok_runs: set[int] = set()
    stages: dict[str, int] = {}
    start = time.monotonic()
    runs = 0
    for n in range(RUNS):
        if time.monotonic() - start > DEADLINE:
            break
        before = snapshot(instance)
        env_r, env_w = _pipe()
        proc = subprocess.Popen(
            [str(instance.bin / "qmail-queue")],
            stdin=subprocess.PIPE,
            stdout=env_r,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        env_r.close()
        proc.envelope_w = env_w
        feeder = threading.Thread(target=feed, args=(proc, n))
        feeder.start()
        try:
            proc.wait(timeout=rng.uniform(0.0, 0.12))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        feeder.join()
        if proc.returncode == 0:
            ok_runs.add(n)
            stages["exited 0"] = stages.get("exited 0", 0) + 1
        else:
            s = stage(snapshot(instance) - before)
            stages[s] = stages.get(s, 0) + 1
        runs += 1
        # Leftovers of earlier runs stay: the queue check must cope with them.
    assert runs >= 200, f"only {runs} runs within {DEADLINE}s"
    # The kills really landed at different points of the work.
    assert stages.get("exited 0", 0) >= 10, stages
    assert stages.get("none", 0) + stages.get("pid", 0) >= 10, stages
    assert stages.get("mess", 0) + stages.get("mess+intd", 0) >= 3, stages
    check_queue(instance, ok_runs)

    committed_before = sorted(p.name for p in instance.files("todo"))
    res = instance.run("queue-fix", "-v", str(instance.queue(1)))
    assert res.returncode == 0, res.stderr
    assert instance.files("pid") == []
    todo = {p.name for p in instance.files("todo")}
    assert sorted(todo) == committed_before  # nothing committed was removed
    assert {p.name for p in instance.files("mess")} == todo
    assert {p.name for p in instance.files("intd")} == todo
    check_queue(instance, ok_runs)
    print(f"\n{runs} runs: {stages}")


def _pipe():
    import os

    r, w = os.pipe()
    return os.fdopen(r, "rb", buffering=0), os.fdopen(w, "wb", buffering=0)
