"""SMTPS with tcpserver doing TLS (``-n``) and qmail-smtpd in-process.

tcpserver hands its TLS session to qmail-smtpd through
``indimail.ucspi.context`` (qmail-smtpd declares ``UCSPI_TLS_AWARE``): the
session is TLS from the first byte, so STARTTLS is not offered even with
``STARTTLS`` set, ``SECURE_AUTH`` offers LOGIN/PLAIN, ``FORCE_TLS`` is
satisfied, and the Received line and log show the TLS details as the
original's own SMTPS does (``ESMTPSA (TLSv1.3 <cipher> bits=N)``, log
``TLS=TLSv1.3``).  Clients: Python's smtplib (SMTP_SSL) and swaks --tlsc.
"""

from __future__ import annotations

import re
import shutil
import smtplib
import ssl
import subprocess
from pathlib import Path

import pytest
from smtp_service import SmtpService

from support import Instance

TLS_ENV = {"STARTTLS": "1", "SECURE_AUTH": "1", "FORCE_TLS": "1"}
RECEIVED = re.compile(
    r"Received: indimail-mta smtpd \d+ \(HELO client\.test\) \(test@127\.0\.0\.1\)\n"
    r"  by mx\.example\.test with ESMTPSA \((TLSv1\.[23]) (\S+) bits=(\d+)\); "
)


def only_message(instance: Instance) -> str:
    mess = instance.files("mess")
    assert len(mess) == 1, mess
    return mess[0].read_text(errors="replace")


def test_smtplib_smtps_handoff_auth(instance: Instance, tmp_path: Path) -> None:
    with SmtpService(instance, tmp_path, smtps="tcpserver", env=TLS_ENV) as svc:
        ctx = ssl.create_default_context(cafile=str(svc.ca))
        with smtplib.SMTP_SSL(
            "127.0.0.1", svc.port, context=ctx, local_hostname="client.test", timeout=30
        ) as s:
            s.ehlo()
            assert not s.has_extn("starttls")
            mechs = s.esmtp_features["auth"].split()
            assert "PLAIN" in mechs and "LOGIN" in mechs  # SECURE_AUTH: TLS is on
            code, text = s.docmd("STARTTLS")
            assert (code, text) == (502, b"command STARTTLS unimplimented not recognized (#5.5.2)")
            s.user, s.password = "test", "secret"
            assert s.auth("PLAIN", s.auth_plain) == (235, b"ok, go ahead (#2.0.0)")
            assert (
                s.sendmail("test@example.org", ["far@elsewhere.test"], b"Subject: t\r\n\r\nx\r\n")
                == {}
            )
            version = s.sock.version()
            cipher = s.sock.cipher()
        log = svc.logtext()
    text = only_message(instance)
    m = RECEIVED.search(text)
    assert m, text
    assert (m.group(1), m.group(2), int(m.group(3))) == (version, cipher[0], cipher[2])
    assert "tls provider" not in text
    assert re.search(
        rf"qmail-smtpd: pid \d+ from 127\.0\.0\.1  HELO <client\.test> MAIL from "
        rf"<test@example\.org> RCPT <far@elsewhere\.test> AUTH <test: AUTH PLAIN> "
        rf"Size: \d+ TLS={re.escape(version)}$",
        log,
        re.M,
    ), log


def test_smtplib_smtps_handoff_refuses_bad_password(instance: Instance, tmp_path: Path) -> None:
    with SmtpService(instance, tmp_path, smtps="tcpserver", env=TLS_ENV) as svc:
        ctx = ssl.create_default_context(cafile=str(svc.ca))
        with smtplib.SMTP_SSL(
            "127.0.0.1", svc.port, context=ctx, local_hostname="client.test", timeout=30
        ) as s:
            s.ehlo()
            with pytest.raises(smtplib.SMTPAuthenticationError) as err:
                s.login("test", "wrong")
            assert err.value.smtp_code == 535
            # no auth: relaying refused, local delivery fine
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                s.sendmail("a@example.org", ["far@elsewhere.test"], b"Subject: t\r\n\r\nx\r\n")
            s.rset()
            assert (
                s.sendmail("a@example.org", ["u@mx.example.test"], b"Subject: t\r\n\r\nx\r\n") == {}
            )
    assert " with ESMTPS (TLSv1." in only_message(instance)


def test_swaks_tlsc_handoff_auth(instance: Instance, tmp_path: Path) -> None:
    swaks = shutil.which("swaks")
    if swaks is None:
        pytest.skip("swaks not installed (apt-get install swaks)")
    with SmtpService(instance, tmp_path, smtps="tcpserver", env=TLS_ENV) as svc:
        res = subprocess.run(
            [
                swaks,
                "--server",
                "127.0.0.1",
                "--port",
                str(svc.port),
                "--tlsc",
                "--tls-verify",
                "--tls-ca-path",
                str(svc.ca),
                "--helo",
                "client.test",
                "-a",
                "LOGIN",
                "-au",
                "test",
                "-ap",
                "secret",
                "-f",
                "test@example.org",
                "-t",
                "far@elsewhere.test",
            ],
            capture_output=True,
            timeout=60,
        )
    out = res.stdout.decode(errors="replace")
    assert res.returncode == 0, out + res.stderr.decode(errors="replace")
    assert "=== TLS started with cipher TLSv1." in out
    assert "STARTTLS" not in out
    assert "<~  235 ok, go ahead (#2.0.0)" in out
    assert RECEIVED.search(only_message(instance))
