"""Relay control through tcpserver + qmail-smtpd: rcpthosts, RELAYCLIENT from
tcprules (ours and Debian's ucspi-tcp), and SMTP AUTH."""

from __future__ import annotations

import base64
import smtplib
import socket
from pathlib import Path

import pytest
from smtp_service import SmtpService, compile_rules

from support import Instance

DENIED = (
    "553 sorry, that domain isn't allowed to be relayed thru this MTA without authentication #5.7.1"
)
MSG = b"Subject: relay\r\n\r\nrelay test\r\n"


def dialogue(port: int, lines: list[str]) -> list[str]:
    """Send each line, one at a time, and collect the (whole) replies."""
    out: list[str] = []
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        f = s.makefile("rb")

        def reply() -> None:
            for _ in range(100):
                line = f.readline().decode("utf-8", "replace")
                out.append(line.rstrip("\r\n"))
                if len(line) < 4 or line[3] != "-":
                    return

        reply()
        for line in lines:
            s.sendall(line.encode() + b"\r\n")
            reply()
    return out


def queued(instance: Instance) -> list[bytes]:
    return [p.read_bytes() for p in instance.files("mess")]


def test_unlisted_domain_refused(instance: Instance, tmp_path: Path) -> None:
    with SmtpService(instance, tmp_path) as svc:
        got = dialogue(
            svc.port,
            [
                "HELO client.test",
                "MAIL FROM:<a@example.org>",
                "RCPT TO:<victim@elsewhere.test>",
                "RCPT TO:<victim@sub.mx.example.test>",
                "RCPT TO:<user@mx.example.test>",
                "QUIT",
            ],
        )
    assert got[0].startswith("220 mx.example.test ESMTP") or got[0].startswith(
        "220 mx.example.test (NO UCE) ESMTP"
    ), got
    assert got[1:] == [
        "250 mx.example.test",
        "250 ok",
        DENIED,
        DENIED,  # rcpthosts has no ".mx.example.test" line: subdomains are not ours
        "250 ok",
        "221 mx.example.test closing connection",
    ]
    assert "RELAYCLIENT" not in svc.logtext()


@pytest.mark.parametrize("rule", ['127.0.0.1:allow,RELAYCLIENT=""', "127.:allow,RELAYCLIENT=''"])
def test_relayclient_from_our_tcprules(instance: Instance, tmp_path: Path, rule: str) -> None:
    with (
        SmtpService(instance, tmp_path, rules=rule + "\n:deny\n") as svc,
        smtplib.SMTP("127.0.0.1", svc.port, local_hostname="client.test", timeout=30) as s,
    ):
        assert s.sendmail("a@example.org", ["far@elsewhere.test"], MSG) == {}
    (mess,) = queued(instance)
    assert b"relay test" in mess
    (env,) = [p.read_bytes() for p in instance.files("todo")]
    assert b"Fa@example.org\0" in env
    assert b"Tfar@elsewhere.test\0" in env


def test_auth_allows_relay(instance: Instance, tmp_path: Path) -> None:
    plain_ok = base64.b64encode(b"\0test\0secret").decode()
    plain_bad = base64.b64encode(b"\0test\0wrong").decode()
    with SmtpService(instance, tmp_path, submission=True) as svc:
        got = dialogue(
            svc.port,
            [
                "EHLO client.test",
                "AUTH PLAIN " + plain_bad,
                "MAIL FROM:<test@example.org>",
                "RCPT TO:<far@elsewhere.test>",
                "RSET",
                "AUTH PLAIN " + plain_ok,
                "MAIL FROM:<test@example.org>",
                "RCPT TO:<far@elsewhere.test>",
                "DATA",
                "Subject: auth relay\r\n\r\nbody\r\n.",
                "QUIT",
            ],
        )
    ehlo_end = got.index("250 HELP")
    assert got[ehlo_end + 1 :] == [
        "535 authorization failure (#5.7.8)",
        "250 ok",
        DENIED,
        "250 flushed",
        "235 ok, go ahead (#2.0.0)",
        "250 ok",
        "250 ok",
        "354 go ahead",
        got[ehlo_end + 9],
        "221 mx.example.test closing connection",
    ]
    assert got[ehlo_end + 9].startswith("250 ok ") and " qp " in got[ehlo_end + 9]
    (mess,) = queued(instance)
    assert b" with ESMTPA" in mess, mess
    assert b"AUTH <test: AUTH PLAIN>" in svc.logtext().encode()


def test_debian_tcprules_cdb(instance: Instance, tmp_path: Path) -> None:
    debian = Path("/usr/bin/tcprules")
    if not debian.exists():
        pytest.skip("/usr/bin/tcprules not installed (apt-get install ucspi-tcp)")
    relay_cdb = compile_rules(
        [str(debian)], tmp_path / "relay.cdb", '127.0.0.1:allow,RELAYCLIENT=""\n:deny\n'
    )
    with (
        SmtpService(instance, tmp_path / "a", rules_cdb=relay_cdb) as svc,
        smtplib.SMTP("127.0.0.1", svc.port, local_hostname="client.test", timeout=30) as s,
    ):
        assert s.sendmail("a@example.org", ["far@elsewhere.test"], MSG) == {}
    assert len(queued(instance)) == 1

    plain_cdb = compile_rules([str(debian)], tmp_path / "plain.cdb", "127.:allow\n:deny\n")
    with SmtpService(instance, tmp_path / "b", rules_cdb=plain_cdb) as svc:
        got = dialogue(
            svc.port,
            ["HELO c.test", "MAIL FROM:<a@example.org>", "RCPT TO:<far@elsewhere.test>", "QUIT"],
        )
    assert got[3] == DENIED

    deny_cdb = compile_rules([str(debian)], tmp_path / "deny.cdb", "127.0.0.1:deny\n:allow\n")
    with SmtpService(instance, tmp_path / "c", rules_cdb=deny_cdb) as svc:
        with socket.create_connection(("127.0.0.1", svc.port), timeout=15) as s:
            assert s.recv(100) == b""  # denied: closed without a greeting
        svc_log = svc.logtext()
    assert "tcpserver: deny " in svc_log
    assert len(queued(instance)) == 1
