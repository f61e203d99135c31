"""qmail-local: Maildir and mbox bytes, programs, forwards, refusals."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import sys
import threading
import time
from pathlib import Path

import pytest

from indimail.deliver import mailfile, qmail_local

INDIMAIL = str(Path(sys.executable).parent / "indimail")
MSG = b"Subject: hi\nFrom: sue@example.net\n\nbody line\n"


# ------------------------------------------------------------------ Maildir


def test_maildir_name_and_bytes(home) -> None:
    home.qmail(".qmail", "./Maildir/\n")
    code, report = home.deliver(MSG)
    assert (code, report) == (0, "did 1+0+0\n")
    [f] = home.new()
    host = mailfile.maildir_hostname()
    m = re.fullmatch(r"(\d+)\.I([0-9a-f]+)V([0-9a-f]+)M(\d+)P(\d+)\.(.+),S=(\d+)", f.name)
    assert m, f.name
    st = f.stat()
    assert int(m[2], 16) == st.st_ino
    assert int(m[3], 16) == st.st_dev
    assert int(m[5]) == os.getpid()
    assert m[6] == host
    assert int(m[7]) == st.st_size
    assert abs(int(m[1]) - time.time()) < 60
    assert 0 <= int(m[4]) < 1_000_000
    assert st.st_mode & 0o777 == 0o600
    assert f.read_bytes() == (
        b"Return-Path: <sue@example.net>\nDelivered-To: joe@example.org\n" + MSG
    )
    assert list((home.path / "Maildir" / "tmp").iterdir()) == []


def test_maildir_hostname_escaping() -> None:
    assert mailfile.maildir_hostname("a/b:c.d") == "a\\057b\\072c.d"


def test_maildir_tmp_collision_retries_then_fails(home, monkeypatch) -> None:
    fixed = 1_700_000_000.25
    monkeypatch.setattr(mailfile.time, "time", lambda: fixed)
    host = mailfile.maildir_hostname()
    taken = home.path / "Maildir" / "tmp" / f"1700000000.M250000P{os.getpid()}.{host}"
    taken.write_bytes(b"")
    with pytest.raises(mailfile.MaildirError) as info:
        fd = os.open(home.message(MSG), os.O_RDONLY)
        try:
            mailfile.write_maildir(home.path / "Maildir", b"", fd)
        finally:
            os.close(fd)
    assert info.value.code == mailfile.MD_TEMP
    assert taken.exists()  # the other writer's tmp file is left alone


def test_maildir_quota_bounces(home, monkeypatch) -> None:
    home.qmail(".qmail", "./Maildir/\n")

    def full(*a, **k):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(mailfile, "_write_all", full)
    code, report = home.deliver(MSG)
    assert code == 100
    assert report == qmail_local.OVERQUOTA + "\n"
    assert list((home.path / "Maildir" / "tmp").iterdir()) == []


# ------------------------------------------------------------------ mbox


def test_mbox_appends_with_from_line_and_blank(home) -> None:
    home.qmail(".qmail", "./Mailbox\n")
    (home.path / "Mailbox").write_bytes(b"old\n\n")
    assert home.deliver(b"Subject: a\n\nFrom x\nno newline")[0] == 0
    data = (home.path / "Mailbox").read_bytes()
    assert data.startswith(b"old\n\nFrom sue@example.net ")
    first = data.split(b"\n")[2]
    assert re.fullmatch(rb"From sue@example.net \w{3} \w{3} \d\d \d\d:\d\d:\d\d \d{4}", first)
    assert data.endswith(
        b"Return-Path: <sue@example.net>\nDelivered-To: joe@example.org\n"
        b"Subject: a\n\n>From x\nno newline\n\n"
    )


def test_mbox_waits_for_lock(home) -> None:
    home.qmail(".qmail", "./Mailbox\n")
    box = home.path / "Mailbox"
    box.write_bytes(b"")
    holder = os.open(box, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    threading.Timer(0.3, lambda: os.close(holder)).start()
    start = time.monotonic()
    assert home.deliver(MSG)[0] == 0
    assert time.monotonic() - start >= 0.25
    assert b"body line" in box.read_bytes()


def test_mbox_lock_timeout(home) -> None:
    box = home.path / "Mailbox"
    box.write_bytes(b"x")
    holder = os.open(box, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    fd = os.open(home.message(MSG), os.O_RDONLY)
    try:
        with pytest.raises(mailfile.MboxError) as info:
            mailfile.write_mbox(box, b"", fd, lock_timeout=0.2)
    finally:
        os.close(fd)
        os.close(holder)
    assert info.value.kind == "lock"
    assert box.read_bytes() == b"x"


def test_mbox_truncated_back_on_write_error(home, monkeypatch) -> None:
    home.qmail(".qmail", "./Mailbox\n")
    box = home.path / "Mailbox"
    box.write_bytes(b"previous message\n\n")
    real = mailfile._write_all
    calls = []

    def failing(fd, data):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(mailfile, "_write_all", failing)
    code, report = home.deliver(MSG)
    assert code == 111
    assert report == "Unable to write ./Mailbox: No space left on device. (#4.3.0)\n"
    assert box.read_bytes() == b"previous message\n\n"


def test_from_quoting_large_lines(home) -> None:
    big = b">" * 200_000 + b"From " + b"x" * 300_000 + b"\n"
    out = []
    fd = os.open(home.message(b"From a\n" + big + b"From"), os.O_RDONLY)
    try:
        mailfile.from_quoted(fd, out.append)
    finally:
        os.close(fd)
    assert b"".join(out) == b">From a\n>" + big + b"From\n\n"


# ------------------------------------------------------------------ refusals


def test_sticky_home_defers(home) -> None:
    home.qmail(".qmail", "./Maildir/\n")
    home.path.chmod(0o1755)
    code, report = home.deliver(MSG)
    assert code == 111
    assert report == "Home directory is sticky: user is editing his .qmail file. (#4.2.1)\n"
    assert home.new() == []
    code, report = home.deliver(MSG, doit=False)
    assert code == 0
    assert report.splitlines() == [
        "Warning: home directory is sticky.",
        "maildir ./Maildir/",
        "did 1+0+0",
    ]


def test_writable_home_refused(home) -> None:
    home.path.chmod(0o757)
    code, report = home.deliver(MSG)
    assert (code, report) == (111, "Uh-oh: home directory is writable. (#4.7.0)\n")


def test_missing_home(home) -> None:
    code, report = home.deliver(MSG, homedir=str(home.path / "nope"))
    assert code == 111
    assert report.startswith(f"Unable to switch to {home.path / 'nope'}: No such file")


def test_unreadable_qmail_defers(home, monkeypatch) -> None:
    target = home.qmail(".qmail-list", "./Maildir/\n")
    real_open = os.open

    def guarded(path, *a, **k):
        if os.fspath(path) == str(target):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(qmail_local.os, "open", guarded)
    code, report = home.deliver(MSG, dash="-", ext="list", local="joe-list")
    assert code == 111
    assert report == "Unable to open .qmail-list: Permission denied. (#4.3.0)\n"


def test_qmail_symlink_loop_counts_as_missing(home) -> None:
    # As the original: only temporary errors, EPERM and EACCES defer; a
    # dangling or looping .qmail is no .qmail at all.
    (home.path / ".qmail-list").symlink_to(".qmail-list")
    code, report = home.deliver(MSG, dash="-", ext="list", local="joe-list")
    assert (code, report) == (100, "Sorry, no mailbox here by that name. (#5.1.1)\n")


def test_qmail_directory_is_not_a_qmail(home) -> None:
    (home.path / ".qmail-dir").mkdir()
    code, report = home.deliver(MSG, dash="-", ext="dir", local="joe-dir")
    assert (code, report) == (100, "Sorry, no mailbox here by that name. (#5.1.1)\n")


# ------------------------------------------------------------------ loops


def test_maxdeliveredto(home) -> None:
    home.qmail(".qmail", "./Maildir/\n")
    dt = b"Delivered-To: joe@example.org\n"
    two = dt + dt + MSG
    assert home.deliver(two)[0] == 100
    (home.controldir / "maxdeliveredto").write_text("2\n")
    assert home.deliver(two)[0] == 0
    assert home.deliver(dt * 3 + MSG)[0] == 100
    (home.controldir / "maxdeliveredto").write_text("-1\n")
    assert home.deliver(dt * 30 + MSG)[0] == 0


def test_megabyte_header_line(home) -> None:
    home.qmail(".qmail", "./Maildir/\n")
    msg = b"X-Big: " + b"a" * (1 << 20) + b"\nDelivered-To: joe@example.org\n\nbody\n"
    code, report = home.deliver(msg)
    assert code == 100 and "looping" in report
    msg = b"X-Big: " + b"a" * (1 << 20) + b"\n\nbody\n"
    assert home.deliver(msg)[0] == 0
    [f] = home.new()
    assert f.read_bytes().endswith(msg)


def test_forward_to_self_loops(home, tmp_path) -> None:
    saved = tmp_path / "fwd"
    script = _queue_script(tmp_path, saved)
    home.env["QMAILQUEUE"] = str(script)
    home.qmail(".qmail", "&joe@example.org\n")
    assert home.deliver(MSG)[0] == 0
    again = (saved.with_suffix(".msg")).read_bytes()
    code, report = home.deliver(again)
    assert code == 100
    assert "already has my Delivered-To line" in report


# ------------------------------------------------------------------ programs


def test_program_environment_via_command(instance, tmp_path) -> None:
    user = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
    home = next((instance.top / "home").iterdir())
    home.chmod(0o755)
    (home / ".qmail-list-default").write_text(
        '|env > "$HOME/env.out"; pwd > "$HOME/pwd.out"; cat > "$HOME/stdin.out"; echo fine\n'
    )
    msg = tmp_path / "msg"
    msg.write_bytes(MSG)
    env = instance.env(MESSID="4242", SPAMFILTER="x")
    with open(msg, "rb") as stdin:
        res = instance.run(
            "qmail-local",
            "--",
            user,
            str(home),
            f"{user}-List-a.B",
            "-",
            "List-a.B",
            "mx.example.test",
            "sue@example.net",
            "./Maildir/",
            "X-Q: 1\n",
            stdin=stdin,
            env=env,
        )
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"fine\ndid 0+0+1\n"
    got = dict(
        line.split("=", 1) for line in (home / "env.out").read_text().splitlines() if "=" in line
    )
    expect = {
        "SENDER": "sue@example.net",
        "NEWSENDER": "sue@example.net",
        "RECIPIENT": f"{user}-List-a.B@mx.example.test",
        "USER": user,
        "HOME": str(home),
        "HOST": "mx.example.test",
        "HOST2": "mx.example",
        "HOST3": "mx",
        "HOST4": "mx",
        "LOCAL": f"{user}-List-a.B",
        "EXT": "List-a.B",
        "EXT2": "a.B",
        "EXT3": "",
        "EXT4": "",
        "DEFAULT": "a.B",
        "DTLINE": f"Delivered-To: {user}-List-a.B@mx.example.test",
        "RPLINE": "Return-Path: <sue@example.net>",
        "QQEH": "X-Q: 1",
        "MESSID": "4242",
    }
    for key, value in expect.items():
        assert got.get(key) == value, key
    assert "SPAMFILTER" not in got
    assert re.fullmatch(
        r"From sue@example.net \w{3} \w{3} \d\d \d\d:\d\d:\d\d \d{4}", got["UFLINE"]
    )
    assert (home / "pwd.out").read_text().strip() == str(home)
    assert (home / "stdin.out").read_bytes() == MSG


def test_command_usage_and_bad_homedir(instance) -> None:
    res = instance.run("qmail-local", "a", "b")
    assert res.returncode == 100
    assert b"usage: qmail-local" in res.stderr
    res = instance.run("qmail-local", "u", "relative", "l", "", "", "d", "s", "./Maildir/", "")
    assert res.returncode == 100


def test_program_crash(home) -> None:
    home.qmail(".qmail", "|kill -9 $$\n")
    code, report = home.deliver(MSG)
    assert (code, report) == (111, "Aack, child [kill -9 $$] crashed. (#4.3.0)\n")


def test_envdir_line_and_sanitize(home, tmp_path) -> None:
    envdir = home.path / "envs"
    envdir.mkdir()
    (envdir / "FOO").write_text("bar\n")
    (envdir / "KEEPME").write_text("")
    home.env.update({"KEEPME": "1", "OTHER": "o", "SANITIZE_ENV": "PATH"})
    home.qmail(".qmail", '% envs\n|echo "$FOO-$KEEPME-$OTHER-$SENDER" > out\n')
    assert home.deliver(MSG)[0] == 0
    assert (home.path / "out").read_text() == "bar---sue@example.net\n"


def test_localdomains(home) -> None:
    home.qmail(".qmail", "./Maildir/\n")
    (home.controldir / "localdomains").write_text("example.com\n")
    home.env["LOCALDOMAINS"] = "1"
    code, report = home.deliver(MSG)
    assert code == 100 and "(#5.2.1)" in report
    assert home.deliver(MSG, sender="a@EXAMPLE.com")[0] == 0
    assert home.deliver(MSG, sender="")[0] == 0


# ------------------------------------------------------------------ forwards


def _queue_script(tmp_path: Path, saved: Path, code: int = 0) -> Path:
    script = tmp_path / "fake-queue"
    script.write_text(f"#!/bin/sh\ncat > {saved}.msg\ncat <&1 > {saved}.env\nexit {code}\n")
    script.chmod(0o755)
    return script


def _forward(home, tmp_path, qmail: str, code: int = 0, **kw):
    saved = tmp_path / "fwd"
    home.env["QMAILQUEUE"] = str(_queue_script(tmp_path, saved, code))
    home.qmail(".qmail" + kw.get("dash", "") + kw.get("ext", ""), qmail)
    result = home.deliver(MSG, **kw)
    env = saved.with_suffix(".env")
    return (
        result,
        (saved.with_suffix(".msg").read_bytes() if env.exists() else None),
        (env.read_bytes() if env.exists() else None),
    )


def test_forward_envelope_and_headers(home, tmp_path) -> None:
    (code, report), msg, env = _forward(
        home, tmp_path, "&a@example.com\nb@example.com\n./Maildir/\n", qqeh="X-Q: 1\n"
    )
    assert code == 0
    assert re.fullmatch(r"did 1\+2\+0\nqp \d+\n", report)
    assert env == b"Fsue@example.net\0Ta@example.com\0Tb@example.com\0\0"
    assert msg == (
        b"Delivered-To: joe@example.org\nX-Forwarded-To: a@example.com\n"
        b"X-Forwarded-To: b@example.com\nX-Forwarded-For: sue@example.net\nX-Q: 1\n" + MSG
    )
    assert len(home.new()) == 1


def test_forward_owner_sender(home, tmp_path) -> None:
    home.qmail(".qmail-list-owner", "&owner@example.com\n")
    (code, _), _, env = _forward(
        home, tmp_path, "&a@example.com\n", dash="-", ext="list", local="joe-list"
    )
    assert code == 0
    assert env == b"Fjoe-list-owner@example.org\0Ta@example.com\0\0"
    home.qmail(".qmail-list-owner-default", "&owner@example.com\n")
    (code, _), _, env = _forward(
        home, tmp_path, "&a@example.com\n", dash="-", ext="list", local="joe-list"
    )
    assert env == b"Fjoe-list-owner-@example.org-@[]\0Ta@example.com\0\0"
    for bounce in ("", "#@[]"):
        (code, _), _, env = _forward(
            home,
            tmp_path,
            "&a@example.com\n",
            dash="-",
            ext="list",
            local="joe-list",
            sender=bounce,
        )
        assert env == b"F" + bounce.encode() + b"\0Ta@example.com\0\0"


def test_no_forward_after_failure(home, tmp_path) -> None:
    (code, _), _, env = _forward(home, tmp_path, "&a@example.com\n|exit 111\n")
    assert code == 111
    assert env is None


def test_forward_before_99_still_sent(home, tmp_path) -> None:
    (code, report), _, env = _forward(home, tmp_path, "&a@example.com\n|exit 99\n&b@example.com\n")
    assert code == 0
    assert env == b"Fsue@example.net\0Ta@example.com\0\0"
    assert report.startswith("did 0+1+1\n")


def test_forward_from_executable_qmail(home, tmp_path) -> None:
    saved = tmp_path / "fwd"
    home.env["QMAILQUEUE"] = str(_queue_script(tmp_path, saved))
    home.qmail(".qmail", "# forwards only\n&a@example.com\n", mode=0o755)
    assert home.deliver(MSG)[0] == 0
    assert saved.with_suffix(".env").read_bytes() == b"Fsue@example.net\0Ta@example.com\0\0"


@pytest.mark.parametrize(
    ("qcode", "code", "text"),
    [
        (
            31,
            100,
            "Unable to forward message: qq mail server permanently rejected message (#5.3.0).",
        ),
        (53, 111, "Unable to forward message: qq write error or disk full (#4.3.0)."),
    ],
)
def test_forward_queue_failure(home, tmp_path, qcode, code, text) -> None:
    (got, report), _, _ = _forward(home, tmp_path, "&a@example.com\n", code=qcode)
    assert (got, report) == (code, text + "\n")


def test_forward_into_real_queue(instance, tmp_path) -> None:
    user = __import__("pwd").getpwuid(os.getuid()).pw_name
    home = next((instance.top / "home").iterdir())
    home.chmod(0o755)
    (home / ".qmail").write_text("&other@example.com\n")
    (home / ".qmail").chmod(0o644)
    msg = tmp_path / "msg"
    msg.write_bytes(MSG)
    with open(msg, "rb") as stdin:
        res = instance.run(
            "qmail-local",
            "--",
            user,
            str(home),
            user,
            "",
            "",
            "mx.example.test",
            "sue@example.net",
            "./Maildir/",
            "",
            stdin=stdin,
        )
    assert res.returncode == 0, res.stderr
    assert re.fullmatch(rb"did 0\+1\+0\nqp \d+\n", res.stdout)
    assert len(instance.files("todo")) == 1
    [mess] = instance.files("mess")
    assert b"X-Forwarded-To: other@example.com\n" in mess.read_bytes()


def test_quote2() -> None:
    assert qmail_local.quote2("a b@c") == '"a b"@c'
    assert qmail_local.quote2("a.b@c") == "a.b@c"
    assert qmail_local.quote2("a..b@c") == '"a..b"@c'
    assert qmail_local.quote2("") == ""
    assert qmail_local.quote2('x"y') == '"x\\"y"'


def test_deliver_in_forked_child(home) -> None:
    """The spawner's way: fork, call deliver() with the report pipe as out."""
    home.qmail(".qmail", "|echo from-program\n./Maildir/\n")
    msgfd = os.open(home.message(MSG), os.O_RDONLY)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 111
        try:
            os.close(rfd)
            with open(wfd, "wb", buffering=0) as out:
                code = qmail_local.deliver(
                    home.args(), msgfd, out, environ=home.env, controldir=home.controldir
                )
        finally:
            os._exit(code)
    os.close(wfd)
    os.close(msgfd)
    with open(rfd, "rb") as pipe:
        report = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == b"from-program\ndid 1+0+1\n"
    assert len(home.new()) == 1
