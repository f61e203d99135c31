"""qmail-inject: header completion, address rewriting, envelope, exit codes.

The cases in ``inject_cases/`` were checked against the original C
qmail-inject (built from indimail-mta and libqmail with the queue and
control calls stubbed): ``NN-name.expect`` is the output of
``qmail-inject -n`` and ``NN-name.rcpts`` the envelope records it hands the
queue, with the volatile Date/Message-ID/VERP values normalised.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CASES = Path(__file__).parent / "inject_cases"

_NORMALISE = [
    (
        re.compile(
            rb"^((?:Resent-)?Date: )[A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{4} "
            rb"\d\d:\d\d:\d\d [-+]\d{4}$",
            re.M,
        ),
        rb"\1DATE",
    ),
    (re.compile(rb"<\d{14}\.\d+\.indimail@"), b"<STAMP.PID.indimail@"),
    (re.compile(rb"-\d{10}\.\d+(?=[-@])"), b"-TIME.PID"),
]


def normalise(data: bytes) -> bytes:
    for rx, repl in _NORMALISE:
        data = rx.sub(repl, data)
    return data


def case_env(instance, case: str) -> dict[str, str]:
    env = instance.env()
    for line in (CASES / f"{case}.env").read_text("utf-8").splitlines():
        key, _, value = line.partition("=")
        env[key] = value
    return env


def records(todo: Path) -> list[bytes]:
    data = todo.read_bytes()
    assert data.endswith(b"\0")
    return data[:-1].split(b"\0")


def queued(instance) -> tuple[list[bytes], bytes]:
    """(envelope records after u/p, message after the Received line)."""
    (todo,) = instance.files("todo")
    recs = records(todo)
    assert recs[0] == b"u%d" % os.getuid()
    assert re.fullmatch(rb"p\d+", recs[1])
    (mess,) = [m for m in instance.files("mess") if m.name == todo.name]
    return recs[2:], strip_received(mess.read_bytes())


def strip_received(data: bytes) -> bytes:
    assert data.startswith(b"Received: indimail-mta queue ")
    lines = data.split(b"\n")
    i = 1
    while lines[i][:1] in (b" ", b"\t"):
        i += 1
    return b"\n".join(lines[i:])


def no_traceback(res) -> None:
    assert b"Traceback" not in res.stderr
    assert b"internal error" not in res.stderr


@pytest.mark.parametrize("case", sorted(p.stem for p in CASES.glob("*.msg")))
def test_inject_cases(instance, case):
    msg = (CASES / f"{case}.msg").read_bytes()
    args = (CASES / f"{case}.args").read_text("utf-8").splitlines()
    env = case_env(instance, case)
    expect = (CASES / f"{case}.expect").read_bytes()

    res = instance.run("qmail-inject", "-n", *args, input=msg, env=env)
    assert res.returncode == 0, res.stderr
    assert normalise(res.stdout) == expect
    assert instance.files("todo") == []  # -n queues nothing

    res = instance.run("qmail-inject", *args, input=msg, env=env)
    assert res.returncode == 0, res.stderr
    recs, body = queued(instance)
    want = (CASES / f"{case}.rcpts").read_bytes().splitlines()
    assert [normalise(r) for r in recs] == want
    # The queued message is the -n output without its Return-Path line.
    first, rest = expect.split(b"\n", 1)
    assert first.startswith(b"Return-Path: <")
    assert normalise(body) == rest


def test_generated_fields_format(instance):
    res = instance.run(
        "qmail-inject", "-n", "a@example.org", input=b"\n", env=instance.env(USER="alice")
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split(b"\n")
    assert re.fullmatch(
        rb"Date: (Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d -0000",
        lines[1],
    ), lines[1]
    # indimail's Message-ID: <YYYYMMDDHHMMSS.pid.indimail@idhost>, idhost
    # defaulting to control/me.
    assert re.fullmatch(rb"Message-ID: <\d{14}\.\d+\.indimail@mx\.example\.test>", lines[2])


def test_idhost_control_and_env(instance):
    (instance.control / "idhost").write_text("ids.example.test\n")
    res = instance.run("qmail-inject", "-n", "a@x.y", input=b"\n")
    assert b".indimail@ids.example.test>\n" in res.stdout
    res = instance.run(
        "qmail-inject", "-n", "a@x.y", input=b"\n", env=instance.env(QMAILIDHOST="env.example")
    )
    assert b".indimail@env.example>\n" in res.stdout


def test_qmailinject_n_prints_and_capital_n_queues(instance):
    env = instance.env(QMAILINJECT="n")
    res = instance.run("qmail-inject", "a@example.org", input=b"Subject: x\n\nhi\n", env=env)
    assert res.returncode == 0
    assert res.stdout.startswith(b"Return-Path: <")
    assert instance.files("todo") == []
    res = instance.run("qmail-inject", "-N", "a@example.org", input=b"Subject: x\n\nhi\n", env=env)
    assert res.returncode == 0, res.stderr
    assert len(instance.files("todo")) == 1


def test_bcc_removed_from_stored_message(instance):
    msg = b"To: to@example.org\nCc: cc@example.org\nBcc: secret@example.org\nSubject: s\n\nbody\n"
    res = instance.run("qmail-inject", "-h", input=msg)
    assert res.returncode == 0, res.stderr
    recs, body = queued(instance)
    assert sorted(recs[1:]) == [b"Tcc@example.org", b"Tsecret@example.org", b"Tto@example.org"]
    assert b"Bcc" not in body and b"secret" not in body
    assert b"To: to@example.org\nCc: cc@example.org\nSubject: s\n\nbody\n" in body


def test_mail_followup_to(instance):
    (instance.control / "mftlists").write_text("# lists\nList@Example.ORG\n")
    msg = b"To: list@example.org, bob@example.net\n\nhi\n"
    env = instance.env(QMAILMFTFILE="mftlists", USER="alice")
    res = instance.run("qmail-inject", "-n", input=msg, env=env)
    assert res.returncode == 0, res.stderr
    assert b"Mail-Followup-To: list@example.org,\n  bob@example.net\n" in res.stdout
    # Not added when the message has one, nor when no list is addressed.
    res = instance.run("qmail-inject", "-n", input=b"Mail-Followup-To: x@y.z\n" + msg, env=env)
    assert res.stdout.count(b"Mail-Followup-To:") == 1
    res = instance.run("qmail-inject", "-n", input=b"To: a@b.c\n\nhi\n", env=env)
    assert b"Mail-Followup-To" not in res.stdout


# -- bad input and exit codes ---------------------------------------------


def test_no_recipients_is_permanent(instance):
    res = instance.run("qmail-inject", input=b"Subject: nobody\n\nhi\n")
    assert res.returncode == 100
    assert res.stderr.startswith(b"qmail-inject: fatal: no recipients")
    assert instance.files("todo") == [] and instance.files("mess") == []
    res = instance.run("qmail-inject", "-a", input=b"To: ignored@example.org\n\nhi\n")
    assert res.returncode == 100


@pytest.mark.parametrize(
    "args, text",
    [
        (["-q", "a@b.c"], b"qmail-inject: illegal option -- q\n"),
        (["-f"], b"qmail-inject: option requires an argument -- f\n"),
    ],
)
def test_bad_options(instance, args, text):
    res = instance.run("qmail-inject", *args, input=b"\n")
    assert res.returncode == 100
    assert res.stderr.startswith(text)
    assert b"usage: qmail-inject" in res.stderr
    assert instance.files("todo") == []


def test_options_stop_at_first_argument(instance):
    # As the original's getopt: "-n" after a recipient is a recipient.
    res = instance.run("qmail-inject", "a@example.org", "-n", input=b"\n")
    assert res.returncode == 0, res.stderr
    recs, _ = queued(instance)
    assert recs[1:] == [b"Ta@example.org", b"T-n@mx.example.test"]


def test_unparsable_header_line(instance):
    msg = b'To: "unterminated <a@b.c>\n\nbody\n'
    res = instance.run("qmail-inject", "-h", input=msg)
    assert res.returncode == 100
    assert res.stderr == (
        b'qmail-inject: fatal: unable to parse this line:\nTo: "unterminated <a@b.c>\n'
    )
    assert instance.files("todo") == []
    # Not a recipient field with -a: passed through untouched.
    res = instance.run("qmail-inject", "-a", "x@y.z", input=msg)
    assert res.returncode == 0, res.stderr


def test_unparsable_argument(instance):
    # The local part is quoted as needed; a broken domain part cannot be.
    res = instance.run("qmail-inject", "a@(open", input=b"\n")
    assert res.returncode == 100
    assert res.stderr == b"qmail-inject: fatal: unable to parse address: a@(open\n"


def test_unparsable_sender_option(instance):
    res = instance.run("qmail-inject", "-f", "a@(open", "x@y.z", input=b"\n")
    assert res.returncode == 100
    assert b"unable to parse this line" in res.stderr


def test_max_recipients(instance):
    res = instance.run(
        "qmail-inject",
        "a@x.y",
        "b@x.y",
        input=b"\n",
        env=instance.env(MAXRECIPIENTS="1"),
    )
    assert res.returncode == 100
    assert res.stderr == b"qmail-inject: fatal: max number of recipients exceeded\n"
    (instance.control / "maxrecipients").write_text("2\n")
    res = instance.run("qmail-inject", "a@x.y", "b@x.y", "c@x.y", input=b"\n")
    assert res.returncode == 100
    res = instance.run("qmail-inject", "a@x.y", "b@x.y", input=b"\n")
    assert res.returncode == 0, res.stderr
    # 0 in the environment lifts the control's limit.
    res = instance.run(
        "qmail-inject", "a@x.y", "b@x.y", "c@x.y", input=b"\n", env=instance.env(MAXRECIPIENTS="0")
    )
    assert res.returncode == 0, res.stderr


def test_databytes(instance, tmp_path):
    env = instance.env(DATABYTES="200")
    res = instance.run("qmail-inject", "a@x.y", input=b"Subject: x\n\n" + b"y" * 300, env=env)
    assert res.returncode == 100
    assert res.stderr == b"qmail-inject: fatal: message size exceeds my databytes limit\n"
    assert instance.files("todo") == [] and instance.files("mess") == []
    # A regular file on stdin is refused by its size before it is read.
    big = tmp_path / "big"
    big.write_bytes(b"z" * 300)
    with open(big, "rb") as fh:
        res = instance.run("qmail-inject", "a@x.y", stdin=fh, env=env)
    assert res.returncode == 100
    assert b"databytes" in res.stderr
    res = instance.run("qmail-inject", "a@x.y", input=b"Subject: x\n\nsmall\n", env=env)
    assert res.returncode == 0, res.stderr


def test_unreadable_stdin(instance, tmp_path):
    # A write-only descriptor: the interpreter starts, every read fails.
    # (A directory on stdin is refused by the Python runtime itself before
    # any of our code runs: exit 1, "init_sys_streams".)
    target = tmp_path / "write-only"
    target.write_bytes(b"")
    fd = os.open(target, os.O_WRONLY)
    try:
        res = instance.run("qmail-inject", "a@x.y", stdin=fd)
    finally:
        os.close(fd)
    assert res.returncode == 111
    assert res.stderr == b"qmail-inject: fatal: read error: Bad file descriptor\n"
    assert instance.files("todo") == [] and instance.files("mess") == []
    no_traceback(res)


def test_closed_stdin(instance):
    res = instance.run(
        "qmail-inject", "a@x.y", stdin=subprocess.DEVNULL, preexec_fn=lambda: os.close(0)
    )
    assert res.returncode == 111
    assert b"Bad file descriptor" in res.stderr
    no_traceback(res)


def test_missing_queue_directory(instance):
    shutil.rmtree(instance.queue_base)
    res = instance.run("qmail-inject", "a@x.y", input=b"Subject: x\n\nhi\n")
    assert res.returncode == 111
    assert str(instance.queue_base).encode() in res.stderr
    assert res.stderr.endswith(b"qmail-inject: fatal: qq trouble in home directory (#4.3.0)\n")
    no_traceback(res)


def test_unreadable_control_file(instance):
    (instance.control / "defaulthost").unlink()
    (instance.control / "defaulthost").mkdir()
    res = instance.run("qmail-inject", "a@x.y", input=b"\n")
    assert res.returncode == 111
    assert b"defaulthost" in res.stderr
    no_traceback(res)


def test_one_megabyte_header_lines(instance):
    subject = b"Subject: " + b"s" * (1 << 20) + b"\n"
    to = b"To: " + b", ".join(b"u%d@example.org" % i for i in range(50000)) + b"\n"
    nocolon = b"x" * (1 << 20) + b"\n"
    res = instance.run("qmail-inject", "-n", "-h", input=subject + to + b"\nbody\n")
    assert res.returncode == 0, res.stderr[:200]
    assert subject in res.stdout
    # The address field is folded at 80 columns, every address kept.
    to_out = res.stdout.split(b"\nTo: ", 1)[1].split(b"\n\n", 1)[0]
    assert max(len(line) for line in to_out.split(b"\n")) <= 80
    assert to_out.count(b"@example.org") == 50000
    # A long line without a colon ends the header and goes to the body.
    res = instance.run("qmail-inject", "a@x.y", input=subject + nocolon)
    assert res.returncode == 0, res.stderr[:200]
    _, body = queued(instance)
    assert body.endswith(subject + b"\n" + nocolon)
    # An unparsable megabyte line is named, but not printed whole.
    res = instance.run("qmail-inject", "-h", input=b'To: "' + b"q" * (1 << 20) + b"\n\n")
    assert res.returncode == 100
    assert res.stderr.startswith(b'qmail-inject: fatal: unable to parse this line:\nTo: "qqq')
    assert len(res.stderr) < 2000
    no_traceback(res)


# -- defaultqueue ------------------------------------------------------------


def _make_envdir(path: Path, **values: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for key, value in values.items():
        (path / key).write_text(value + "\n")


def test_control_defaultqueue_chooses_queue(instance):
    _make_envdir(instance.control / "defaultqueue", QUEUE_START="2", QUEUE_COUNT="1")
    for _ in range(4):
        res = instance.run("qmail-inject", "a@x.y", input=b"\n")
        assert res.returncode == 0, res.stderr
    todos = instance.files("todo")
    assert len(todos) == 4
    assert all(t.parent.parent.name == "queue2" for t in todos)


def test_home_defaultqueue_and_skip(instance):
    home = instance.top / "home"
    _make_envdir(home / ".defaultqueue", QUEUE_START="2", QUEUE_COUNT="1")
    for _ in range(3):
        assert instance.run("qmail-inject", "a@x.y", input=b"\n").returncode == 0
    assert {t.parent.parent.name for t in instance.files("todo")} == {"queue2"}
    # The envdir may also carry injection settings.
    (home / ".defaultqueue" / "QMAILDEFAULTDOMAIN").write_text("dq.example\n")
    res = instance.run("qmail-inject", "-n", "joe@box", input=b"\n")
    assert b"Return-Path: <anonymous@mx.example.test>" in res.stdout
    res = instance.run("qmail-inject", "-n", "-h", input=b"To: joe@box\n\n")
    assert b"To: joe@box.dq.example\n" in res.stdout
    res = instance.run(
        "qmail-inject", "-n", "-h", input=b"To: joe@box\n\n", env=instance.env(FASTQUEUE="1")
    )
    assert b"To: joe@box.example.test\n" in res.stdout
    res = instance.run(
        "qmail-inject",
        "-n",
        "-h",
        input=b"To: joe@box\n\n",
        env=instance.env(SKIP_LOCAL_ENVIRONMENT="1"),
    )
    assert b"To: joe@box.example.test\n" in res.stdout


# -- QMAILQUEUE naming an external program ---------------------------------


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_external_queue_permanent_failure(instance, tmp_path):
    prog = _script(tmp_path / "qq", "cat >/dev/null; echo 'refused by policy' >&2; exit 31\n")
    res = instance.run("qmail-inject", "a@x.y", input=b"\n", env=instance.env(QMAILQUEUE=str(prog)))
    assert res.returncode == 100
    assert res.stderr == (
        b"refused by policy\n"
        b"qmail-inject: fatal: qq mail server permanently rejected message (#5.3.0)\n"
    )


def test_external_queue_temporary_failure(instance, tmp_path):
    prog = _script(tmp_path / "qq", "cat >/dev/null; exit 71\n")
    res = instance.run("qmail-inject", "a@x.y", input=b"\n", env=instance.env(QMAILQUEUE=str(prog)))
    assert res.returncode == 111
    assert res.stderr == (
        b"qmail-inject: fatal: qq mail server temporarily rejected message (#4.3.0)\n"
    )


def test_external_queue_gets_message_and_envelope(instance, tmp_path):
    prog = _script(tmp_path / "qq", f'cat > "{tmp_path}/msg"; cat <&1 > "{tmp_path}/env"; exit 0\n')
    msg = b"To: t@example.org\nBcc: b@example.org\n\nbody\n"
    env = instance.env(QMAILQUEUE=str(prog), USER="alice")
    res = instance.run(
        "qmail-inject", "-f", "s@example.test", "-H", "arg@example.net", input=msg, env=env
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "env").read_bytes() == (
        b"Fs@example.test\0Targ@example.net\0Tt@example.org\0Tb@example.org\0\0"
    )
    data = (tmp_path / "msg").read_bytes()
    assert data.startswith(b"Date: ")  # no Received line: that is the queue's job
    assert data.endswith(b"From: alice@mx.example.test\nTo: t@example.org\n\nbody\n")
    assert instance.files("todo") == []


def test_missing_external_queue_program(instance, tmp_path):
    res = instance.run(
        "qmail-inject",
        "a@x.y",
        input=b"\n",
        env=instance.env(QMAILQUEUE=str(tmp_path / "nope")),
    )
    assert res.returncode == 111
    assert str(tmp_path / "nope").encode() in res.stderr
    assert res.stderr.endswith(b"qmail-inject: fatal: qq unable to exec qq (#4.3.0)\n")


# -- in-process pieces ---------------------------------------------------------


def test_tokenizer_and_unparse_round_trip():
    from indimail.smtpd import qmail_inject as qi

    toks = qi.tokenize(b'To: "A \\"B\\"" <a.b@[1.2.3.4]> (c (d)), x\\@y@z')
    assert toks == [
        (qi.ATOM, b"To"),
        (qi.COLON, b""),
        (qi.QUOTE, b'A "B"'),
        (qi.LEFT, b""),
        (qi.ATOM, b"a"),
        (qi.DOT, b""),
        (qi.ATOM, b"b"),
        (qi.AT, b""),
        (qi.LITERAL, b"1.2.3.4"),
        (qi.RIGHT, b""),
        (qi.COMMENT, b"c d"),
        (qi.COMMA, b""),
        (qi.ATOM, b"x@y"),
        (qi.AT, b""),
        (qi.ATOM, b"z"),
    ]
    assert qi.unparse(toks) == b'To: "A \\"B\\"" <a.b@[1.2.3.4]>(c d), x@y@z\n'
    assert qi.tokenize(b"To: a)b") is not None  # ')' inside an atom
    assert qi.tokenize(b"To: )") is None
    assert qi.tokenize(b"To: (open") is None
    assert qi.tokenize(b'To: "open\\') is None


def test_quote2():
    from indimail.smtpd.qmail_inject import quote2

    assert quote2(b"") == b""
    assert quote2(b"plain@host") == b"plain@host"
    assert quote2(b"a b@host") == b'"a b"@host'
    assert quote2(b'q"@x@host') == b'"q\\"@x"@host'
    assert quote2(b".dot@host") == b'".dot"@host'
    assert quote2(b"\xc3\xa9@host") == b'"\xc3\xa9"@host'
