"""multilog end to end: 100,000 lines across rotations, then tai64nlocal."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

INDIMAIL = Path(sys.executable).parent / "indimail"


@contextlib.contextmanager
def multilog(tmp_path: Path, *script: str):
    """Our multilog running ``script`` in ``tmp_path``, its stdin a pipe;
    killed at the end if the test did not make it exit."""
    proc = subprocess.Popen(
        [str(INDIMAIL), "multilog", *script],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin"},
    )
    try:
        assert proc.stdin is not None
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


TOTAL = 100_000
CHUNK = 100  # lines per write: fewer rotations than the 4 old files kept


def test_100k_lines_complete_and_in_order(tmp_path: Path):
    main = tmp_path / "main"
    collected: dict[str, bytes] = {}
    deadline = time.monotonic() + 240
    with multilog(tmp_path, "t", "s4096", "n5", "./main") as proc:
        for start in range(0, TOTAL, CHUNK):
            chunk = b"".join(b"line %06d of the test\n" % i for i in range(start, start + CHUNK))
            proc.stdin.write(chunk)
            proc.stdin.flush()
            last = b"line %06d of the test\n" % (start + CHUNK - 1)
            while True:
                assert time.monotonic() < deadline, "multilog too slow"
                if _tail_has(main, last):
                    break
                time.sleep(0.001)
            _collect(main, collected)
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else b""
    _collect(main, collected)
    assert len(collected) > 1000  # many rotations happened
    for name in collected:
        assert re.fullmatch(r"@[0-9a-f]{24}\.s", name)
    data = b"".join(collected[n] for n in sorted(collected)) + (main / "current").read_bytes()
    lines = data.split(b"\n")
    assert lines[-1] == b""
    lines = lines[:-1]
    assert len(lines) == TOTAL
    previous = b""
    for i, line in enumerate(lines):
        label, text = line.split(b" ", 1)
        assert text == b"line %06d of the test" % i
        assert re.fullmatch(rb"@[0-9a-f]{24}", label)
        assert label >= previous
        previous = label
    for name in os.listdir(main):
        if name.startswith("@"):
            assert (main / name).stat().st_size <= 4096
    assert len([n for n in os.listdir(main) if n.startswith("@")]) <= 4
    assert oct((main / "current").stat().st_mode & 0o777) == "0o744"

    # tai64nlocal turns the labels into local time, the rest unchanged
    sample = b"\n".join(lines[:50]) + b"\n"
    res = subprocess.run(
        [str(INDIMAIL), "tai64nlocal"], input=sample, capture_output=True, timeout=30
    )
    assert res.returncode == 0
    out = res.stdout.decode().splitlines()
    assert len(out) == 50
    for i, (raw, conv) in enumerate(zip(lines[:50], out, strict=True)):
        m = re.fullmatch(
            r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{9}) line (\d{6}) of the test", conv
        )
        assert m and int(m.group(3)) == i
        label = raw.split(b" ", 1)[0]
        secs = int(label[1:17], 16) - (1 << 62) - 10
        nanos = int(label[17:25], 16)
        assert m.group(1) == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(secs))
        assert int(m.group(2)) == nanos


def _tail_has(main: Path, last: bytes) -> bool:
    try:
        cur = (main / "current").read_bytes()
    except OSError:
        return False
    if cur.endswith(last):
        return True
    if cur:
        return False
    try:
        olds = sorted(n for n in os.listdir(main) if n.startswith("@"))
        return bool(olds) and (main / olds[-1]).read_bytes().endswith(last)
    except OSError:
        return False


def _collect(main: Path, collected: dict[str, bytes]) -> None:
    for name in os.listdir(main):
        if name.startswith("@") and name not in collected:
            try:
                collected[name] = (main / name).read_bytes()
            except FileNotFoundError:
                raise AssertionError(f"{name} deleted before it was read") from None


def test_tai64n_prefixes_each_line():
    res = subprocess.run(
        [str(INDIMAIL), "tai64n"], input=b"one\ntwo\npartial", capture_output=True, timeout=30
    )
    assert res.returncode == 0
    lines = res.stdout.split(b"\n")
    assert len(lines) == 3
    for line, text in zip(lines, (b"one", b"two", b"partial"), strict=True):
        assert re.fullmatch(rb"@[0-9a-f]{24} " + text, line)


def test_rotate_every_n_seconds(tmp_path: Path):
    main = tmp_path / "main"
    with multilog(tmp_path, "r1", "./main") as proc:
        proc.stdin.write(b"first\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 10
        olds: list[str] = []
        while not olds and time.monotonic() < deadline:
            time.sleep(0.1)
            olds = [p for p in os.listdir(main) if p.startswith("@")] if main.exists() else []
        assert olds, "no rotation within 10 s with r1"
        assert (main / olds[0]).read_bytes() == b"first\n"
        time.sleep(1.5)  # an empty current is not rotated
        assert [p for p in os.listdir(main) if p.startswith("@")] == olds
        proc.stdin.write(b"second\n")
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
        assert (main / "current").read_bytes() == b"second\n"


def _ctx_switches(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches")


def test_busy_writer_line_by_line_costs_few_wakeups(tmp_path: Path):
    # qmail-send and tcpserver -v write one line at a time; multilog reads a
    # busy input at most every COALESCE (10 ms), so 300 lines written 1 ms
    # apart wake it a few dozen times, not 300, and every line still lands
    with multilog(tmp_path, "t", "./main") as proc:
        time.sleep(0.5)  # started and waiting
        before = _ctx_switches(proc.pid)
        t0 = time.monotonic()
        for i in range(300):
            proc.stdin.write(b"line %03d\n" % i)
            proc.stdin.flush()
            time.sleep(0.001)
        elapsed = time.monotonic() - t0
        current = tmp_path / "main" / "current"
        deadline = time.monotonic() + 10
        while b"line 299\n" not in current.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        wakeups = _ctx_switches(proc.pid) - before
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    lines = [line.split(b" ", 1)[1] for line in current.read_bytes().splitlines()]
    assert lines == [b"line %03d" % i for i in range(300)]
    # one read per 10 ms at most (plus the final wait): far below one per line
    assert wakeups <= elapsed / 0.01 * 1.5 + 30, (wakeups, elapsed)
    assert wakeups < 200, (wakeups, elapsed)
