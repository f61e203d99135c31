"""Crash safety of delivery: SIGKILL qmail-send and delivery children at random.

1000 messages to a local Maildir; while they are delivered the test kills
qmail-send (the whole queue's process) or one running delivery child (a
delivery worker in a rootless instance) with
SIGKILL at random moments and restarts qmail-start.  Afterwards every
message is delivered at least once and the queue is empty.  Duplicates are
possible only in the window the original has too (delivery done, the queue
not yet marked): they are counted and printed, not hidden.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

N = 1000
KILL_PHASE = 40.0  # seconds of random kills
SETTLE = 120.0  # seconds to finish afterwards


def inject(instance, count: int) -> None:
    code = (
        "import sys\n"
        "from indimail.queue.submit import submit\n"
        "for n in range(int(sys.argv[1])):\n"
        "    body = b'Subject: crash %d\\n\\ntoken-%d\\n' % (n, n)\n"
        "    submit(body, b'sender@mx.example.test', [b'crashuser@mx.example.test'])\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(count)],
        env=instance.env(),
        capture_output=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr.decode()


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


def start(instance, queue: Path, log) -> subprocess.Popen:
    env = instance.env(QUEUEDIR=str(queue), CHANSKIP_LOCAL="1")
    return subprocess.Popen(
        [str(instance.bin / "qmail-start"), "./Maildir/"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=instance.top,
    )


def pending(instance) -> int:
    return len(instance.files("info")) + len(instance.files("todo"))


def test_sigkill_during_1000_deliveries(instance):
    home = instance.top / "home" / "crashuser"
    for sub in ("cur", "new", "tmp"):
        (home / "Maildir" / sub).mkdir(parents=True)
    assign = instance.top / "etc" / "users" / "assign"
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    assign.write_text(
        f"=crashuser:{me}:{os.getuid()}:{os.getgid()}:{home}:::\n" + assign.read_text()
    )
    assert instance.run("qmail-newu").returncode == 0
    inject(instance, N)

    rng = random.Random(4242)
    queues = [instance.queue(1), instance.queue(2)]
    log = open(instance.top / "send.log", "ab")  # noqa: SIM115
    procs = {q: start(instance, q, log) for q in queues}
    kills = {"qmail-send": 0, "delivery": 0}
    try:
        deadline = time.monotonic() + KILL_PHASE
        while time.monotonic() < deadline and pending(instance):
            time.sleep(rng.uniform(0.01, 0.12))
            q = rng.choice(queues)
            proc = procs[q]
            if rng.random() < 0.5:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills["qmail-send"] += 1
                procs[q] = start(instance, q, log)
            else:
                deliveries = [c for sp in children(proc.pid) for c in children(sp)]
                if deliveries:
                    try:
                        os.kill(rng.choice(deliveries), signal.SIGKILL)
                        kills["delivery"] += 1
                    except ProcessLookupError:
                        pass
        # let it finish; ALRM makes deferred deliveries retry at once
        deadline = time.monotonic() + SETTLE
        while pending(instance) and time.monotonic() < deadline:
            for proc in procs.values():
                proc.send_signal(signal.SIGALRM)
            time.sleep(0.5)
        assert pending(instance) == 0, "messages still queued"
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()

    seen: dict[int, int] = {}
    for f in (home / "Maildir" / "new").iterdir():
        m = re.search(rb"\ntoken-(\d+)\n", f.read_bytes())
        assert m, f
        n = int(m.group(1))
        seen[n] = seen.get(n, 0) + 1
    missing = sorted(set(range(N)) - set(seen))
    assert not missing, f"lost: {missing}"
    duplicates = sum(c - 1 for c in seen.values())
    assert kills["qmail-send"] >= 5, kills
    # the queue is clean: no message file is left behind
    assert instance.files("mess") == [] and instance.files("intd") == []
    print(f"\n{N} messages, kills {kills}, duplicates {duplicates}")
