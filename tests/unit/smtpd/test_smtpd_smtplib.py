"""qmail-smtpd against Python's smtplib on loopback: STARTTLS, SMTPS, AUTH."""

from __future__ import annotations

import smtplib
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from smtpd_harness import INDIMAIL, make_checkpw

from support import Instance, TriggerReader, make_certs

cryptography = pytest.importorskip("cryptography")


class OneShotServer:
    """Accept one loopback connection and run qmail-smtpd on it (fds 0/1)."""

    def __init__(self, instance: Instance, args: list[str], **env: str) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.env = instance.env(
            TCPREMOTEIP="127.0.0.1",
            TCPLOCALIP="127.0.0.1",
            TCPLOCALPORT="25",
            TCPLOCALHOST="mx.example.test",
            **env,
        )
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.stderr = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(30)
        conn, _ = self.listener.accept()
        with conn:
            self.proc = subprocess.Popen(
                [str(INDIMAIL), "qmail-smtpd", *self.args],
                stdin=conn,
                stdout=conn,
                stderr=subprocess.PIPE,
                env=self.env,
            )
        _, self.stderr = self.proc.communicate(timeout=60)

    def finish(self) -> int:
        self.thread.join(60)
        self.listener.close()
        assert self.proc is not None
        return self.proc.returncode


def _client_ctx(ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    return ctx


def test_starttls_auth_and_send(instance: Instance, tmp_path: Path) -> None:
    ca = make_certs(tmp_path / "certs")
    checkpw = make_checkpw(tmp_path)
    srv = OneShotServer(
        instance,
        ["mx.example.test", str(checkpw), "/bin/false"],
        STARTTLS="1",
        SECURE_AUTH="1",
        CERTDIR=str(tmp_path / "certs"),
    )
    with smtplib.SMTP("127.0.0.1", srv.port, local_hostname="client.test", timeout=30) as s:
        s.ehlo()
        assert s.has_extn("starttls")
        assert "PLAIN" not in s.esmtp_features.get("auth", "")  # SECURE_AUTH
        code, msg = s.starttls(context=_client_ctx(ca))
        assert (code, msg) == (220, b"ready for tls")
        s.ehlo()
        assert not s.has_extn("starttls")
        assert "PLAIN" in s.esmtp_features["auth"].split()
        s.user, s.password = "test", "secret"
        code, _ = s.auth("PLAIN", s.auth_plain)
        assert code == 235
        refused = s.sendmail(
            "test@example.org", ["far@elsewhere.test"], b"Subject: t\r\n\r\nhi\r\n"
        )
        assert refused == {}
    assert srv.finish() == 0
    mess = instance.files("mess")
    assert len(mess) == 1
    text = mess[0].read_text()
    assert " with ESMTPSA (TLSv1." in text and " bits=" in text, text
    assert b"ssl-version=TLSv1." in srv.stderr


def test_cram_md5_and_login(instance: Instance, tmp_path: Path) -> None:
    checkpw = make_checkpw(tmp_path)
    for mech in ("CRAM-MD5", "LOGIN"):
        srv = OneShotServer(instance, ["mx.example.test", str(checkpw), "/bin/false"])
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as s:
            s.ehlo("client.test")
            s.user, s.password = "test", "wrong"
            method = s.auth_cram_md5 if mech == "CRAM-MD5" else s.auth_login
            with pytest.raises(smtplib.SMTPAuthenticationError) as err:
                s.auth(mech, method)
            assert err.value.smtp_code == 535
            assert err.value.smtp_error == b"authorization failure (#5.7.8)"
            s.password = "secret"
            code, text = s.auth(mech, method)
            assert (code, text) == (235, b"ok, go ahead (#2.0.0)")
            s.sendmail("test@example.org", ["far@elsewhere.test"], b"Subject: c\r\n\r\nx\r\n")
        assert srv.finish() == 0
    assert len(instance.files("todo")) == 2


def test_smtps(instance: Instance, tmp_path: Path) -> None:
    ca = make_certs(tmp_path / "certs")
    srv = OneShotServer(instance, [], SMTPS="1", CERTDIR=str(tmp_path / "certs"))
    with smtplib.SMTP_SSL(
        "127.0.0.1", srv.port, context=_client_ctx(ca), timeout=30, local_hostname="c.test"
    ) as s:
        s.ehlo()
        assert not s.has_extn("starttls")
        s.sendmail("a@example.org", ["bob@mx.example.test"], b"Subject: s\r\n\r\nx\r\n")
    assert srv.finish() == 0
    assert " with ESMTPS (TLSv1." in instance.files("mess")[0].read_text()


def test_each_accepted_message_wakes_the_queue(instance: Instance) -> None:
    """qmail-smtpd answers 250 before it pokes lock/trigger; every accepted
    message still pokes it once, and a refused one does not."""
    q = instance.queue(1)
    with TriggerReader(q) as trigger:
        srv = OneShotServer(instance, [], RELAYCLIENT="", QUEUEDIR=str(q))
        with smtplib.SMTP("127.0.0.1", srv.port, local_hostname="client.test", timeout=30) as s:
            for n in range(2):
                s.sendmail("a@example.org", ["b@elsewhere.test"], b"Subject: %d\r\n\r\nhi\r\n" % n)
            looping = b"Received: from x\r\n" * 101 + b"\r\nhi\r\n"
            with pytest.raises(smtplib.SMTPDataError) as err:  # too many hops: refused
                s.sendmail("a@example.org", ["b@elsewhere.test"], looping)
            assert err.value.smtp_code == 554
        assert srv.finish() == 0
        assert trigger.pokes() == b"\0\0"
    assert len(list((q / "todo").iterdir())) == 2
