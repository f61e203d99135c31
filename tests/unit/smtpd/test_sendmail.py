"""sendmail: option translation to qmail-inject, lone dot, modes, errors."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

MSG = b"Subject: hello\n\nline one\n"


def records(todo: Path) -> list[bytes]:
    data = todo.read_bytes()
    assert data.endswith(b"\0")
    return data[:-1].split(b"\0")


def strip_received(data: bytes) -> bytes:
    assert data.startswith(b"Received: indimail-mta queue ")
    lines = data.split(b"\n")
    i = 1
    while lines[i][:1] in (b" ", b"\t"):
        i += 1
    return b"\n".join(lines[i:])


def queued(instance) -> tuple[list[bytes], bytes]:
    """(envelope records after u/p, message after the Received line)."""
    (todo,) = instance.files("todo")
    recs = records(todo)
    assert recs[0] == b"u%d" % os.getuid()
    assert re.fullmatch(rb"p\d+", recs[1])
    (mess,) = [m for m in instance.files("mess") if m.name == todo.name]
    return recs[2:], strip_received(mess.read_bytes())


def header(body: bytes) -> bytes:
    return body.split(b"\n\n", 1)[0] + b"\n"


def test_sender_and_recipient(instance):
    res = instance.run("sendmail", "-f", "a@example.test", "b@example.org", input=MSG)
    assert res.returncode == 0, res.stderr
    recs, body = queued(instance)
    assert recs == [b"Fa@example.test", b"Tb@example.org"]
    # The -f sender also names the From: of a message without one.
    assert b"\nFrom: a@example.test\n" in body
    assert b"Cc: recipient list not shown: ;\n" in body
    assert body.endswith(b"Subject: hello\n\nline one\n")


def test_attached_sender_and_r(instance):
    res = instance.run("sendmail", "-fa@example.test", "b@example.org", input=MSG)
    assert res.returncode == 0, res.stderr
    assert queued(instance)[0][0] == b"Fa@example.test"
    for t in instance.files("todo"):
        t.unlink()
    res = instance.run("sendmail", "-r", "bounce", "b@example.org", input=MSG)
    assert res.returncode == 0, res.stderr
    recs = [r for t in instance.files("todo") for r in records(t)[2:]]
    assert recs == [b"Fbounce@mx.example.test", b"Tb@example.org"]


def test_null_sender(instance):
    res = instance.run("sendmail", "-f", "", "b@example.org", input=MSG)
    assert res.returncode == 0, res.stderr
    assert queued(instance)[0] == [b"F", b"Tb@example.org"]


def test_default_sender_is_the_user(instance):
    res = instance.run(
        "sendmail", "b@example.org", input=MSG, env=instance.env(USER="carol", NAME="Carol C")
    )
    assert res.returncode == 0, res.stderr
    recs, body = queued(instance)
    assert recs == [b"Fcarol@mx.example.test", b"Tb@example.org"]
    assert b'\nFrom: "Carol C" <carol@mx.example.test>\n' in body


def test_fullname(instance):
    env = instance.env(USER="alice", QMAILNAME="From Env")
    res = instance.run("sendmail", "-F", "Alice Liddell", "b@example.org", input=MSG, env=env)
    assert res.returncode == 0, res.stderr
    _, body = queued(instance)
    assert b'\nFrom: "Alice Liddell" <alice@mx.example.test>\n' in body


def test_fullname_with_sender(instance):
    res = instance.run("sendmail", "-FAl Ice", "-f", "al@example.test", "b@example.org", input=MSG)
    assert res.returncode == 0, res.stderr
    _, body = queued(instance)
    assert b'\nFrom: "Al Ice" <al@example.test>\n' in body


def test_existing_from_is_kept(instance):
    msg = b"From: Real <real@example.org>\nSubject: s\n\nx\n"
    res = instance.run("sendmail", "-F", "Ignored", "-f", "env@example.test", "b@x.y", input=msg)
    assert res.returncode == 0, res.stderr
    recs, body = queued(instance)
    assert recs[0] == b"Fenv@example.test"
    assert b"From: Real <real@example.org>\n" in body
    assert b"Ignored" not in body


def test_t_reads_to_cc_bcc_and_drops_bcc(instance):
    msg = (
        b"To: to@example.org, Friend <friend@example.org>\n"
        b"Cc: cc@example.org\n"
        b"Bcc: hidden@example.org\n"
        b"Subject: t\n\nbody\n"
    )
    res = instance.run("sendmail", "-t", "-f", "s@example.test", "extra@example.net", input=msg)
    assert res.returncode == 0, res.stderr
    recs, body = queued(instance)
    assert recs[0] == b"Fs@example.test"
    assert sorted(recs[1:]) == [
        b"Tcc@example.org",
        b"Textra@example.net",
        b"Tfriend@example.org",
        b"Thidden@example.org",
        b"Tto@example.org",
    ]
    assert recs[1] == b"Textra@example.net"  # arguments first, as the original
    assert b"Bcc" not in body and b"hidden" not in body
    assert b"To: to@example.org, Friend <friend@example.org>\nCc: cc@example.org\n" in body


def test_without_t_header_recipients_are_ignored(instance):
    msg = b"To: to@example.org\nBcc: hidden@example.org\n\nbody\n"
    res = instance.run("sendmail", "arg@example.net", input=msg)
    assert res.returncode == 0, res.stderr
    recs, body = queued(instance)
    assert recs[1:] == [b"Targ@example.net"]
    assert b"hidden" not in body  # Bcc is dropped all the same


def test_t_without_recipients(instance):
    res = instance.run("sendmail", "-t", input=b"Subject: none\n\nbody\n")
    assert res.returncode == 100
    assert res.stderr.startswith(b"qmail-inject: fatal: no recipients")
    assert instance.files("todo") == []


def test_no_recipients(instance):
    res = instance.run("sendmail", input=b"To: x@example.org\n\nbody\n")
    assert res.returncode == 100
    assert b"no recipients" in res.stderr
    assert instance.files("todo") == [] and instance.files("mess") == []


LONE_DOT = b"Subject: dot\n\nbefore\n..double\n.\nafter\n"


@pytest.mark.parametrize("flags", [[], ["-i"], ["-oi"], ["-o", "i"]])
def test_lone_dot_never_truncates(instance, flags):
    # As the original: the whole input is the message, with or without -i.
    res = instance.run("sendmail", *flags, "b@example.org", input=LONE_DOT)
    assert res.returncode == 0, res.stderr
    _, body = queued(instance)
    assert body.endswith(b"\n\nbefore\n..double\n.\nafter\n")


def test_lone_dot_in_header_kept(instance):
    res = instance.run("sendmail", "b@example.org", input=b"Subject: d\n.\nafter\n")
    assert res.returncode == 0, res.stderr
    assert b"Subject: d\n" in queued(instance)[1]
    assert queued(instance)[1].endswith(b"after\n")


def test_ignored_options(instance):
    res = instance.run(
        "sendmail",
        "-oem",
        "-odb",
        "-oo",
        "-o7",
        "-v",
        "-Am",
        "-Ac",
        "-B",
        "8BITMIME",
        "-N",
        "never",
        "-R",
        "hdrs",
        "-V",
        "envid",
        "-X",
        "/dev/null",
        "-L",
        "label",
        "-h",
        "10",
        "-U",
        "-n",
        "-m",
        "-x",
        "-e",
        "m",
        "-p",
        "smtp:host",
        "-bm",
        "-bh",
        "-EJunk",
        "-J",
        "-f",
        "s@example.test",
        "b@example.org",
        input=MSG,
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr == b""
    recs, _ = queued(instance)
    assert recs == [b"Fs@example.test", b"Tb@example.org"]


@pytest.mark.parametrize("args", [["-q"], ["-bz"], ["-Ax"], ["-f"], ["-G", "x@y.z"]])
def test_bad_option_is_usage_error(instance, args):
    res = instance.run("sendmail", *args, input=MSG)
    assert res.returncode == 100
    assert res.stderr.endswith(
        b"sendmail: usage: sendmail [ -t ] [ -fsender ] [ -Fname ] [ -bp ] [ -bs ] [ arg ... ]\n"
    )
    assert instance.files("todo") == []


def test_illegal_option_named(instance):
    res = instance.run("sendmail", "-q", "b@x.y", input=MSG)
    assert res.stderr.startswith(b"sendmail: illegal option -- q\n")


@pytest.mark.parametrize("args", [["-bi"], ["-I"]])
def test_newaliases_unsupported(instance, args):
    res = instance.run("sendmail", *args, input=MSG)
    assert res.returncode == 100
    assert res.stderr == b"sendmail: fatal: please use fastforward/newaliases instead\n"


def test_newaliases_by_name():
    from indimail.smtpd import sendmail

    assert sendmail.main(["newaliases"]) == 100


def test_bs_not_available_yet(instance):
    res = instance.run("sendmail", "-bs", input=b"QUIT\r\n")
    assert res.returncode == 111
    assert b"qmail-smtpd" in res.stderr and b"not available yet" in res.stderr
    assert instance.files("todo") == []


def test_bp_lists_the_queue_like_qmail_qread(instance):
    assert instance.run("sendmail", "-f", "a@x.y", "b@example.org", input=MSG).returncode == 0
    want = instance.run("qmail-qread")
    res = instance.run("sendmail", "-bp")
    assert res.returncode == want.returncode
    assert res.stdout == want.stdout


def test_missing_queue_directory(instance):
    shutil.rmtree(instance.queue_base)
    res = instance.run("sendmail", "-f", "a@example.test", "b@example.org", input=MSG)
    assert res.returncode == 111
    assert str(instance.queue_base).encode() in res.stderr
    assert b"Traceback" not in res.stderr


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_qmailqueue_permanent_rejection(instance, tmp_path):
    prog = _script(tmp_path / "qq", "cat >/dev/null; exit 31\n")
    res = instance.run(
        "sendmail",
        "-f",
        "a@example.test",
        "b@example.org",
        input=MSG,
        env=instance.env(QMAILQUEUE=str(prog)),
    )
    assert res.returncode == 100
    assert res.stderr == (
        b"qmail-inject: fatal: qq mail server permanently rejected message (#5.3.0)\n"
    )


def test_qmailqueue_receives_envelope(instance, tmp_path):
    prog = _script(tmp_path / "qq", f'cat > "{tmp_path}/msg"; cat <&1 > "{tmp_path}/env"; exit 0\n')
    msg = b"To: t@example.org\nBcc: h@example.org\n\nbody\n.\nstill the body\n"
    res = instance.run(
        "sendmail",
        "-t",
        "-f",
        "a@example.test",
        "b@example.org",
        input=msg,
        env=instance.env(QMAILQUEUE=str(prog)),
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "env").read_bytes() == (
        b"Fa@example.test\0Tb@example.org\0Tt@example.org\0Th@example.org\0\0"
    )
    data = (tmp_path / "msg").read_bytes()
    assert header(data).endswith(b"From: a@example.test\nTo: t@example.org\n")
    assert data.endswith(b"\n\nbody\n.\nstill the body\n")


def test_eight_bit_message_passes_unchanged(instance):
    msg = b"Subject: caf\xc3\xa9 \xff\n\nb\xc3\xb6dy \x00 \xfe\r\n"
    res = instance.run("sendmail", "b@example.org", input=msg)
    assert res.returncode == 0, res.stderr
    assert queued(instance)[1].endswith(msg)
