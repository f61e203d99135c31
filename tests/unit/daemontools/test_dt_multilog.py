"""multilog in-process: patterns, selection, rotation, disk errors."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest

from indimail.daemontools import multilog
from indimail.daemontools.multilog import Multilog, match


def test_match():
    assert match(b"*", b"anything")
    assert match(b"abc", b"abc")
    assert not match(b"abc", b"abcd")
    assert match(b"a*c", b"abbbc")
    assert not match(b"a*c", b"abbbcd")
    assert match(b"* fatal: *", b"qmail: fatal: x")
    assert not match(b"*x", b"")


def _run(tmp_path: Path, script: list[str], data: bytes, monkeypatch=None) -> Multilog:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "input").write_bytes(data)
    r = os.open(tmp_path / "input", os.O_RDONLY)
    ml = Multilog(script, {"NOFSYNC": "1"})
    ml.open()
    try:
        ml.run(r)
    finally:
        os.close(r)
    return ml


def test_selection_and_status_file(tmp_path: Path, monkeypatch):
    data = b"keep one\ndrop this\nkeep two\nstatus line\n"
    _run(
        tmp_path,
        ["-drop*", "./all", "-*", "+status*", "=st", "+keep*", "./keep"],
        data,
        monkeypatch,
    )
    assert (tmp_path / "all" / "current").read_bytes() == b"keep one\nkeep two\nstatus line\n"
    assert (tmp_path / "keep" / "current").read_bytes() == b"keep one\nkeep two\nstatus line\n"
    st = (tmp_path / "st").read_bytes()
    assert len(st) == 1001 and st.startswith(b"status line\n\n")
    assert oct((tmp_path / "all" / "current").stat().st_mode & 0o777) == "0o744"


def test_rotation_keeps_every_line(tmp_path: Path, monkeypatch):
    lines = [b"line %06d padding padding padding" % i for i in range(3000)]
    _run(tmp_path, ["t", "s4096", "n100", "./main"], b"\n".join(lines) + b"\n", monkeypatch)
    main = tmp_path / "main"
    olds = sorted(p for p in os.listdir(main) if p.startswith("@"))
    assert olds and all(p.endswith(".s") for p in olds)
    got = b"".join((main / p).read_bytes() for p in olds) + (main / "current").read_bytes()
    out = [ln.split(b" ", 1)[1] for ln in got.splitlines()]
    assert out == lines
    for p in olds:
        assert (main / p).stat().st_size <= 4096


def test_num_limits_old_files(tmp_path: Path, monkeypatch):
    data = b"".join(b"x" * 100 + b"\n" for _ in range(2000))
    _run(tmp_path, ["s4096", "n3", "./main"], data, monkeypatch)
    olds = [p for p in os.listdir(tmp_path / "main") if p.startswith("@")]
    assert len(olds) == 2  # fewer than n old files remain, as the original


def test_long_lines_and_last_partial_line(tmp_path: Path, monkeypatch):
    long = b"y" * 3000
    _run(tmp_path, ["-yyy*", "+*", "./main"], long + b"\npartial", monkeypatch)
    # patterns see the first 1000 bytes; the whole line is written
    assert (tmp_path / "main" / "current").read_bytes() == long + b"\npartial\n"


def test_lines_across_reads_and_quiet_spells(tmp_path: Path, monkeypatch):
    # every read lands in the same buffer: a line may span many reads, one
    # longer than the log dir's buffer grows it for one flush only, and the
    # buffers' pages given back in a quiet spell (even mid-line) lose nothing
    monkeypatch.setattr(multilog, "IDLE", 0.02)
    monkeypatch.setattr(multilog, "OUTSIZE", 4096)
    released = []
    real_release = multilog.LogDir.release

    def release(d):
        released.append(d.end)
        real_release(d)

    monkeypatch.setattr(multilog.LogDir, "release", release)
    long = b"z" * 10000
    chunks = [b"first li", b"ne\nsec", b"ond\n", long[:3000], long[3000:], b"\nlast", b" partial"]
    monkeypatch.chdir(tmp_path)
    r, w = os.pipe()

    def feed() -> None:
        for chunk in chunks:
            os.write(w, chunk)
            time.sleep(0.06)
        os.close(w)

    ml = Multilog(["t", "./main"], {"NOFSYNC": "1"})
    ml.open()
    writer = threading.Thread(target=feed)
    writer.start()
    try:
        ml.run(r)
    finally:
        writer.join()
        os.close(r)
    got = (tmp_path / "main" / "current").read_bytes().splitlines()
    assert [ln.split(b" ", 1)[1] for ln in got] == [b"first line", b"second", long, b"last partial"]
    assert len(released) >= 5 and not any(released)  # quiet spells, nothing unwritten
    assert len(ml.dirs[0].buf) == 4096


def test_disk_full_waits_and_retries(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(multilog, "PAUSE", 0.01)
    real_write = os.write
    failures = {"n": 3}

    def flaky(fd, data):
        if fd > 2 and failures["n"] > 0 and len(data) > 0 and b"hello" in bytes(data):
            failures["n"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.chdir(tmp_path)
    r, w = os.pipe()
    os.write(w, b"hello\nworld\n")
    os.close(w)
    ml = Multilog(["./main"], {"NOFSYNC": "1"})
    ml.open()
    monkeypatch.setattr(multilog.os, "write", flaky)
    try:
        ml.run(r)
    finally:
        monkeypatch.undo()
        os.close(r)
    assert failures["n"] == 0
    assert (tmp_path / "main" / "current").read_bytes() == b"hello\nworld\n"


def test_restart_marks_unfinished_current(tmp_path: Path, monkeypatch):
    main = tmp_path / "main"
    main.mkdir()
    (main / "current").write_bytes(b"left by a crash\n")
    os.chmod(main / "current", 0o644)  # not complete
    _run(tmp_path, ["./main"], b"new\n", monkeypatch)
    olds = [p for p in os.listdir(main) if p.startswith("@")]
    assert len(olds) == 1 and olds[0].endswith(".u")
    assert (main / olds[0]).read_bytes() == b"left by a crash\n"
    assert (main / "current").read_bytes() == b"new\n"


def test_lock_busy(tmp_path: Path, monkeypatch):
    import fcntl

    from indimail.core.errors import Fatal

    main = tmp_path / "main"
    main.mkdir()
    fd = os.open(main / "lock", os.O_WRONLY | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(Fatal) as exc:
            _run(tmp_path, ["./main"], b"x\n", monkeypatch)
        assert exc.value.code == 111
    finally:
        os.close(fd)


def test_processor_filters_old_files_and_keeps_state(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(multilog, "PAUSE", 0.01)
    # the processor fails once (rerun), then upper-cases the old file and
    # appends one line to the state it is handed on fd 4 (written to fd 5)
    proc = (
        "if [ ! -f ../failed ]; then : > ../failed; exit 1; fi; "
        "cat <&4 >&5; echo rotated >&5; tr a-z A-Z"
    )
    lines = [b"line %05d lower case text" % i for i in range(400)]
    _run(tmp_path, ["s4096", "n100", "!" + proc, "./main"], b"\n".join(lines) + b"\n", monkeypatch)
    main = tmp_path / "main"
    olds = sorted(p for p in os.listdir(main) if p.startswith("@"))
    assert len(olds) >= 2 and all(p.endswith(".s") for p in olds)
    got = b"".join((main / p).read_bytes() for p in olds) + (main / "current").read_bytes()
    n_old = sum(len((main / p).read_bytes().splitlines()) for p in olds)
    assert got.splitlines()[:n_old] == [ln.upper() for ln in lines[:n_old]]
    assert got.splitlines()[n_old:] == lines[n_old:]  # current is not processed yet
    assert (main / "state").read_bytes() == b"rotated\n" * len(olds)
    assert (tmp_path / "failed").exists()
    for name in ("previous", "processed", "newstate"):
        assert not (main / name).exists()
    for p in olds:
        assert oct((main / p).stat().st_mode & 0o777) == "0o744"
