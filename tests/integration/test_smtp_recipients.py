"""CHECKRECIPIENT through real SMTP sessions: our tcpserver running
qmail-smtpd in-process, the recipients cdb built by qmail-cdb -r, Python's
smtplib as the client."""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

import pytest
from smtp_service import SmtpService

from indimail.smtpd import qmail_cdb
from support import Instance

BODY = b"Subject: r\r\n\r\nx\r\n"


def setup_recipients(instance: Instance) -> None:
    users = instance.top / "etc" / "users"
    users.mkdir(exist_ok=True)
    (users / "recipients").write_text("alice@mx.example.test\nlist-@mx.example.test\n")
    qmail_cdb.build(users / "recipients", recipients=True)
    (instance.control / "recipients").write_text("@mx.example.test:users/recipients.cdb\n")


def test_checkrecipient_smtplib(instance: Instance, tmp_path: Path) -> None:
    setup_recipients(instance)
    env = {"CHECKRECIPIENT": "3", "MAX_RCPT_ERRCOUNT": "2", "PENALTY": "1"}
    with SmtpService(instance, tmp_path, env=env) as svc:
        with smtplib.SMTP("127.0.0.1", svc.port, local_hostname="client.test", timeout=30) as s:
            start = time.monotonic()
            refused = s.sendmail(
                "a@example.org",
                ["alice@mx.example.test", "ghost@mx.example.test", "list-owner@mx.example.test"],
                BODY,
            )
            assert time.monotonic() - start >= 1  # PENALTY after the invalid one
            assert refused == {
                "ghost@mx.example.test": (
                    550,
                    b"sorry, a@example.org mailbox <ghost@mx.example.test> is absent on "
                    b"this domain (#5.1.1)",
                )
            }
            # all recipients refused: nothing is sent
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                s.sendmail("a@example.org", ["nobody@mx.example.test"], BODY)
        with smtplib.SMTP("127.0.0.1", svc.port, local_hostname="client.test", timeout=30) as s:
            s.ehlo()
            assert s.mail("a@example.org")[0] == 250
            assert s.rcpt("x1@mx.example.test")[0] == 550
            assert s.rcpt("x2@mx.example.test")[0] == 550
            assert s.rcpt("alice@mx.example.test") == (
                421,
                b"too many invalid addresses, goodbye (#4.7.1)",
            )
            with pytest.raises(smtplib.SMTPServerDisconnected):
                s.noop()
                s.noop()
        log = svc.logtext()
    mess = instance.files("mess")
    assert len(mess) == 1
    todo = instance.files("todo")
    assert len(todo) == 1
    env_bytes = todo[0].read_bytes()
    assert b"Talice@mx.example.test\0Tlist-owner@mx.example.test\0" in env_bytes
    assert b"ghost" not in env_bytes
    assert (
        "Invalid RECIPIENT address: MAIL from <a@example.org> RCPT <ghost@mx.example.test> "
        "state <is absent on this domain (#5.1.1)>" in log
    )
    assert "Too many Invalid RECIPIENTS (2): MAIL from <a@example.org>" in log
