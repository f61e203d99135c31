"""Clients nobody here wrote (Python's smtplib, swaks) against our tcpserver
running qmail-smtpd in-process: plain, STARTTLS, AUTH, SMTPS, PIPELINING,
8BITMIME, SMTPUTF8 with an IDN domain.  Server replies are compared line by
line with the original's texts; every message must be in the queue with the
Received header qmail-smtpd writes."""

from __future__ import annotations

import re
import shutil
import smtplib
import ssl
import subprocess
from pathlib import Path

import pytest
from smtp_service import SmtpService, add_rcpthosts

from support import Instance

IDN_U = "例子.测试"
IDN_A = IDN_U.encode("idna").decode()  # xn--fsqu00a.xn--0zwm56d

DATE = r"\d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d -0000"
PH = {"{date}": DATE, "{n}": r"\d+", "{*}": r".*", "{b64}": r"[A-Za-z0-9+/=]+"}

GREETING = "220 mx.example.test (NO UCE) ESMTP IndiMail {*} {date}"
MECHS = "LOGIN PLAIN CRAM-MD5 CRAM-SHA1 CRAM-SHA224 CRAM-SHA256 CRAM-SHA384 CRAM-SHA512 CRAM-RIPEMD"


def ehlo(port25: bool = True, starttls: bool = True) -> list[str]:
    return [
        "250-mx.example.test",
        f"250-AUTH {MECHS}",
        "250-PIPELINING",
        "250-8BITMIME",
        "250-SIZE 20971520",
        *(["250-ETRN"] if port25 else []),
        *(["250-STARTTLS"] if starttls else []),
        "250-SMTPUTF8",
        "250 HELP",
    ]


SEND = ["250 ok", "250 ok", "354 go ahead", "250 ok {n} qp {n}"]
QUIT = ["221 mx.example.test closing connection"]


def rx(expected: str) -> re.Pattern[str]:
    parts = re.split(r"(\{date\}|\{n\}|\{\*\}|\{b64\})", expected)
    return re.compile("".join(PH.get(p, re.escape(p)) for p in parts))


def assert_lines(got: list[str], expected: list[str]) -> None:
    for i, (g, e) in enumerate(zip(got, expected, strict=False)):
        assert rx(e).fullmatch(g), f"line {i}: {g!r} does not match {e!r}\nall: {got}"
    assert len(got) == len(expected), f"got {len(got)} lines, want {len(expected)}:\n{got}"


RECEIVED = re.compile(
    r"Received: indimail-mta smtpd (\d+) \(HELO client\.test\) \((?:test@)?127\.0\.0\.1\)\n"
    r"  by mx\.example\.test with (\S+)(?:\n? +\(([^)]*)\))?; " + DATE + "\n"
)


class Queue:
    """New messages in the instance's queues since the last call."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.seen: set[Path] = set(instance.files("mess"))

    def new(self) -> list[tuple[bytes, bytes]]:
        """(mess, envelope) for every message queued since last time."""
        out = []
        for p in sorted(set(self.instance.files("mess")) - self.seen):
            self.seen.add(p)
            q = p.parent.parent.parent  # queueN/mess/SPLIT/INODE
            todo = q / "todo" / p.name
            env = todo.read_bytes() if todo.exists() else b""
            if not env:
                for t in (q / "todo").rglob(p.name):
                    env = t.read_bytes()
            out.append((p.read_bytes(), env))
        return out

    def one(self, proto: str) -> tuple[bytes, bytes, re.Match[str]]:
        new = self.new()
        assert len(new) == 1, new
        mess, env = new[0]
        text = mess.decode("utf-8", "replace")
        m = RECEIVED.search(text)
        assert m, text
        assert m.group(2) == proto, text
        assert text.index(m.group(0)) < text.index("\n\n"), "Received not in the header"
        return mess, env, m


# ------------------------------------------------------------------ smtplib


def ca_context(svc: SmtpService) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(svc.ca))


def test_smtplib_plain_8bitmime(instance: Instance, tmp_path: Path) -> None:
    q = Queue(instance)
    body = "Subject: 8bit\r\n\r\nGrüße aus Köln \u20ac\r\n".encode()
    with (
        SmtpService(instance, tmp_path) as svc,
        smtplib.SMTP("127.0.0.1", svc.port, local_hostname="client.test", timeout=30) as s,
    ):
        code, greet = s.ehlo()
        assert code == 250
        assert greet.decode().splitlines() == [x[4:] for x in ehlo()]
        assert s.sendmail("a@example.org", ["user@mx.example.test"], body, ["BODY=8BITMIME"]) == {}
    mess, env, _ = q.one("ESMTP")
    assert mess.endswith(body.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n"))
    assert b"Fa@example.org\0" in env and b"Tuser@mx.example.test\0" in env


def test_smtplib_starttls_login(instance: Instance, tmp_path: Path) -> None:
    q = Queue(instance)
    with (
        SmtpService(instance, tmp_path, submission=True) as svc,
        smtplib.SMTP("127.0.0.1", svc.port, local_hostname="client.test", timeout=30) as s,
    ):
        s.ehlo()
        assert s.has_extn("starttls") and not s.has_extn("etrn")
        assert s.starttls(context=ca_context(svc)) == (220, b"ready for tls")
        _code, text = s.ehlo()
        assert text.decode().splitlines() == [x[4:] for x in ehlo(False, False)]
        with pytest.raises(smtplib.SMTPAuthenticationError) as err:
            s.login("test", "wrong")
        assert err.value.smtp_code == 535
        assert s.login("test", "secret") == (235, b"ok, go ahead (#2.0.0)")
        s.sendmail("test@example.org", ["far@elsewhere.test"], b"Subject: s\r\n\r\nx\r\n")
    _, env, m = q.one("ESMTPSA")
    assert m.group(3).startswith("TLSv1.") and "bits=" in m.group(3)
    assert b"Tfar@elsewhere.test\0" in env


@pytest.mark.parametrize("mode", ["env", "tcpserver"])
def test_smtplib_smtps(instance: Instance, tmp_path: Path, mode: str) -> None:
    q = Queue(instance)
    with (
        SmtpService(instance, tmp_path, smtps=mode) as svc,
        smtplib.SMTP_SSL(
            "127.0.0.1",
            svc.port,
            context=ca_context(svc),
            local_hostname="client.test",
            timeout=30,
        ) as s,
    ):
        s.ehlo()
        assert not s.has_extn("starttls")
        s.sendmail("a@example.org", ["user@mx.example.test"], b"Subject: s\r\n\r\nx\r\n")
    _, _, m = q.one("ESMTPS")
    # SMTPS=1: qmail-smtpd's own handshake; tcpserver -n: tcpserver's, handed
    # to the in-process qmail-smtpd (UCSPI_TLS_AWARE): the same TLS details
    assert m.group(3).startswith("TLSv1.") and " bits=" in m.group(3)


def test_smtplib_smtputf8_idn(instance: Instance, tmp_path: Path) -> None:
    add_rcpthosts(instance, IDN_U, IDN_A)
    q = Queue(instance)
    rcpt_u = f"用户@{IDN_U}"
    with (
        SmtpService(instance, tmp_path) as svc,
        smtplib.SMTP("127.0.0.1", svc.port, local_hostname="client.test", timeout=30) as s,
    ):
        s.ehlo()
        assert s.has_extn("smtputf8")
        msg = f"From: ö@example.org\r\nTo: {rcpt_u}\r\nSubject: ü\r\n\r\nbody\r\n".encode()
        refused = s.sendmail(
            "ö@example.org", [rcpt_u, f"user@{IDN_A}"], msg, ["SMTPUTF8", "BODY=8BITMIME"]
        )
        assert refused == {}
        code, text = s.docmd("MAIL", "FROM:<a@example.org>")
        assert code == 250
        code, text = s.docmd("RCPT", "TO:<x@例子.invalid>")
        assert (code, text.decode()) == (553, DENIED_TEXT)
    _, env, _ = q.one("UTF8ESMTP")
    assert f"T{rcpt_u}\0".encode() in env and f"Tuser@{IDN_A}\0".encode() in env
    assert "Fö@example.org\0".encode() in env


DENIED_TEXT = (
    "sorry, that domain isn't allowed to be relayed thru this MTA without authentication #5.7.1"
)

# -------------------------------------------------------------------- swaks


def swaks(port: int, *args: str, timeout: float = 60) -> tuple[list[str], str]:
    prog = shutil.which("swaks")
    if prog is None:
        pytest.skip("swaks not installed (apt-get install swaks)")
    res = subprocess.run(
        [prog, "-s", "127.0.0.1", "-p", str(port), "--helo", "client.test", *args],
        capture_output=True,
        timeout=timeout,
    )
    out = res.stdout.decode("utf-8", "replace")
    assert res.returncode == 0, out + res.stderr.decode()
    assert "Traceback" not in out
    # server lines: "<-  " plain, "<~  " TLS, "<** " / "<~* " error replies
    server = [line[4:] for line in out.splitlines() if line.startswith("<")]
    return server, out


def test_swaks_plain(instance: Instance, tmp_path: Path) -> None:
    q = Queue(instance)
    with SmtpService(instance, tmp_path) as svc:
        got, _ = swaks(svc.port, "-f", "a@example.org", "-t", "user@mx.example.test")
    assert_lines(got, [GREETING, *ehlo(), *SEND, *QUIT])
    mess, env, m = q.one("ESMTP")
    assert m.group(3) is None
    assert b"X-Mailer: swaks" in mess and b"Tuser@mx.example.test\0" in env


def test_swaks_pipelining_8bit(instance: Instance, tmp_path: Path) -> None:
    q = Queue(instance)
    body = "Subject: p\n\nna\u00efve caf\u00e9 \u2603\n"
    with SmtpService(instance, tmp_path) as svc:
        got, out = swaks(
            svc.port,
            "--pipeline",
            "-f",
            "a@example.org",
            "-t",
            "user@mx.example.test,other@mx.example.test",
            "--data",
            body,
        )
    assert "PIPELINING" in out
    assert_lines(got, [GREETING, *ehlo(), "250 ok", "250 ok", *SEND[1:], *QUIT])
    mess, env, _ = q.one("ESMTP")
    assert "caf\u00e9 \u2603".encode() in mess
    assert env.count(b"\0T") == 2


def test_swaks_starttls(instance: Instance, tmp_path: Path) -> None:
    q = Queue(instance)
    with SmtpService(instance, tmp_path) as svc:
        got, out = swaks(
            svc.port,
            "--tls",
            "--tls-verify",
            "--tls-ca-path",
            str(svc.ca),
            "-f",
            "a@example.org",
            "-t",
            "user@mx.example.test",
        )
    assert "=== TLS started with cipher TLSv1." in out
    assert_lines(got, [GREETING, *ehlo(), "220 ready for tls", *ehlo(starttls=False), *SEND, *QUIT])
    q.one("ESMTPS")


AUTH_REPLIES = {
    "PLAIN": ["235 ok, go ahead (#2.0.0)"],
    "LOGIN": ["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6", "235 ok, go ahead (#2.0.0)"],
    "CRAM-MD5": ["334 {b64}", "235 ok, go ahead (#2.0.0)"],
}


@pytest.mark.parametrize("mech", list(AUTH_REPLIES))
def test_swaks_auth_submission(instance: Instance, tmp_path: Path, mech: str) -> None:
    q = Queue(instance)
    with SmtpService(instance, tmp_path, submission=True) as svc:
        auth = ["-a", mech, "-au", "test", "-ap", "secret"]
        got, _ = swaks(
            svc.port,
            "--tls",
            "--tls-ca-path",
            str(svc.ca),
            *auth,
            "-f",
            "test@example.org",
            "-t",
            "far@elsewhere.test",
        )
        assert_lines(
            got,
            [
                GREETING,
                *ehlo(False),
                "220 ready for tls",
                *ehlo(False, False),
                *AUTH_REPLIES[mech],
                *SEND,
                *QUIT,
            ],
        )
        q.one("ESMTPSA")
        # a wrong password: 535 and no relaying (swaks stops after AUTH)
        prog = shutil.which("swaks")
        bad = ["-a", mech, "-au", "test", "-ap", "bad", "-f", "x@example.org"]
        res = subprocess.run(
            [
                prog,
                "-s",
                "127.0.0.1",
                "-p",
                str(svc.port),
                "--helo",
                "c.test",
                *bad,
                "-t",
                "f@e.test",
            ],
            capture_output=True,
            timeout=60,
        )
        assert res.returncode != 0
        assert "<** 535 authorization failure (#5.7.8)" in res.stdout.decode()
    assert q.new() == []
    assert f"AUTH <test: AUTH {mech}>" in svc.logtext()


@pytest.mark.parametrize("mode", ["env", "tcpserver"])
def test_swaks_smtps(instance: Instance, tmp_path: Path, mode: str) -> None:
    q = Queue(instance)
    with SmtpService(instance, tmp_path, smtps=mode) as svc:
        got, out = swaks(
            svc.port,
            "--tlsc",
            "--tls-verify",
            "--tls-ca-path",
            str(svc.ca),
            "-f",
            "a@example.org",
            "-t",
            "user@mx.example.test",
        )
    assert "=== TLS started with cipher TLSv1." in out
    assert out.index("=== TLS started") < out.index("<~  220 ")
    assert_lines(got, [GREETING, *ehlo(starttls=False), *SEND, *QUIT])
    q.one("ESMTPS")


def test_swaks_idn_recipient(instance: Instance, tmp_path: Path) -> None:
    add_rcpthosts(instance, IDN_U, IDN_A)
    q = Queue(instance)
    with SmtpService(instance, tmp_path) as svc:
        got, _ = swaks(svc.port, "-f", "a@example.org", "-t", f"用户@{IDN_U}")
        assert_lines(got, [GREETING, *ehlo(), *SEND, *QUIT])
        got, _ = swaks(svc.port, "-f", "a@example.org", "-t", f"user@{IDN_A}")
        assert_lines(got, [GREETING, *ehlo(), *SEND, *QUIT])
    new = q.new()
    assert len(new) == 2
    envs = b"".join(env for _, env in new)
    assert f"T用户@{IDN_U}\0".encode() in envs and f"Tuser@{IDN_A}\0".encode() in envs
    for mess, _ in new:
        assert RECEIVED.search(mess.decode("utf-8", "replace"))
