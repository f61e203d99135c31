"""Load: Postfix's smtp-source, 20 sessions at once, 2000 messages of 1800
bytes, against our tcpserver + in-process qmail-smtpd.  qmail-send does not
run, so every accepted message stays in todo/ where it is counted."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from smtp_service import SmtpService

from support import Instance, need_program

COUNT = 2000
SIZE = 1800
TIME_LIMIT = 180


def test_smtp_source_2000(instance: Instance, tmp_path: Path) -> None:
    prog = need_program("smtp-source", "postfix")
    with SmtpService(instance, tmp_path) as svc:
        start = time.monotonic()
        res = subprocess.run(
            [
                *(prog, "-4", "-s", "20", "-m", str(COUNT), "-l", str(SIZE)),
                *("-f", "a@example.test", "-t", "user@mx.example.test"),
                *("-M", "client.test", f"127.0.0.1:{svc.port}"),
            ],
            capture_output=True,
            timeout=TIME_LIMIT,
        )
        elapsed = time.monotonic() - start
        log = svc.logtext()
    rate = COUNT / elapsed
    print(
        f"\nsmtp-source: {COUNT} messages of {SIZE} bytes, c=20: {elapsed:.1f} s, {rate:.0f} msg/s"
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr == b"", res.stderr
    assert "Traceback" not in log and "internal error" not in log

    todo = instance.files("todo")
    mess = instance.files("mess")
    assert len(todo) == COUNT
    assert len(mess) == COUNT
    sizes = {}
    for p in mess:
        sizes[p.name] = p.stat().st_size
    for t in todo:
        env = t.read_bytes()
        assert env.endswith(b"\0\0") or env.endswith(b"\0"), env
        assert b"Fa@example.test\0" in env, env
        assert b"\0Tuser@mx.example.test\0" in env, env
        # the message: smtp-source's 1800 bytes + its headers + our Received lines
        assert sizes[t.name] >= SIZE + 200, (t, sizes[t.name])
    assert elapsed < TIME_LIMIT
