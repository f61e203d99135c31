"""qmail-remote and TLS: opportunistic STARTTLS, mandatory verification via
certs/tlshosts/<host>.pem, fallback to plain, SMTPS.  Certificates come from
a throw-away CA made with ``cryptography``."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CASES = Path(__file__).parent / "remote_cases"
sys.path.insert(0, str(CASES))

from remote_harness import ScriptedServer, base_env, run_remote, transaction  # noqa: E402

IP = "127.0.0.2"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_leaf(ca_key, ca_cert, cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(cn), x509.IPAddress(ipaddress.ip_address(IP))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca = make_ca("Test CA")
    _other_key, other_ca = make_ca("Other CA")
    key, cert = make_leaf(ca_key, ca, IP)
    (d / "server.pem").write_bytes(pem(cert) + key_pem(key))
    (d / "ca.pem").write_bytes(pem(ca))
    (d / "other-ca.pem").write_bytes(pem(other_ca))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(d / "server.pem"))
    return {"dir": d, "server_ctx": ctx}


def starttls_script() -> list[tuple[str, str]]:
    return [
        ("S", "220 mx.example.test ESMTP"),
        ("C", "EHLO helo.example.test"),
        ("S", "250-mx.example.test"),
        ("S", "250 STARTTLS"),
        ("C", "STARTTLS"),
        ("S", "220 ready"),
        ("S", "<STARTTLS>"),
        *tail(),
    ]


def tail() -> list[tuple[str, str]]:
    return [
        ("C", "EHLO helo.example.test"),
        ("S", "250 mx.example.test"),
        *transaction(),
        ("C", "QUIT"),
    ]


def deliver(tmp_path, server, env_extra=None, clientcert=True, tlshost_pem=None, pki=None):
    env = base_env(tmp_path)
    env.update(env_extra or {})
    certs = Path(env["CERTDIR"])
    if clientcert:
        (certs / "clientcert.pem").write_bytes((pki["dir"] / "server.pem").read_bytes())
    if tlshost_pem:
        (certs / "tlshosts").mkdir(exist_ok=True)
        (certs / "tlshosts" / f"{IP}.pem").write_bytes((pki["dir"] / tlshost_pem).read_bytes())
    (Path(env["CONTROLDIR"]) / "smtproutes").write_text(f"example.test:{IP}:{server.port}\n")
    argv = ["qmail-remote", "example.test", "from@example.org", "", "6", "to@example.test"]
    try:
        _, out = run_remote(argv, b"hello\n", env, tmp_path)
    finally:
        server.stop()
    return out


OK_SMTPS = (
    b"rFrom: <from@example.org> RCPT: <to@example.test> \0"
    b"K127.0.0.2 accepted message - Protocol SMTPS.\nRemote host said: 250 ok\n\0"
)
OK_SMTP = OK_SMTPS.replace(b"SMTPS", b"SMTP")


def test_opportunistic_starttls(tmp_path, pki) -> None:
    server = ScriptedServer(IP, [starttls_script()], tls=pki["server_ctx"]).start()
    out = deliver(tmp_path, server, pki=pki)
    assert out == OK_SMTPS
    assert server.received == server.expected()
    assert server.messages == [b"hello\r\n"]


def test_no_clientcert_means_no_tls(tmp_path, pki) -> None:
    script = [
        ("S", "220 mx"),
        ("C", "EHLO helo.example.test"),
        ("S", "250-mx"),
        ("S", "250 STARTTLS"),
        *tail()[2:],
    ]
    server = ScriptedServer(IP, [script], tls=pki["server_ctx"]).start()
    out = deliver(tmp_path, server, clientcert=False, pki=pki)
    assert out == OK_SMTP
    assert server.received == server.expected()


def test_tlshosts_pem_verified(tmp_path, pki) -> None:
    server = ScriptedServer(IP, [starttls_script()], tls=pki["server_ctx"]).start()
    out = deliver(tmp_path, server, tlshost_pem="ca.pem", pki=pki)
    assert out == OK_SMTPS


def test_tlshosts_pem_wrong_ca_defers(tmp_path, pki) -> None:
    script = starttls_script()[:7]
    server = ScriptedServer(IP, [script], tls=pki["server_ctx"]).start()
    out = deliver(tmp_path, server, tlshost_pem="other-ca.pem", pki=pki)
    certfile = Path(base_env(tmp_path)["CERTDIR"]) / "tlshosts" / f"{IP}.pem"
    assert out.startswith(f"ZTLS unable to verify server with {certfile}: ".encode())
    assert b"certificate" in out
    assert out.endswith(b"; connecting to 127.0.0.2.\n\0")


def test_tlshosts_pem_but_no_starttls_defers(tmp_path, pki) -> None:
    script = [("S", "220 mx"), ("C", "EHLO helo.example.test"), ("S", "250 mx"), ("C", "QUIT")]
    server = ScriptedServer(IP, [script]).start()
    out = deliver(tmp_path, server, tlshost_pem="ca.pem", pki=pki)
    certfile = Path(base_env(tmp_path)["CERTDIR"]) / "tlshosts" / f"{IP}.pem"
    assert out == f"ZNo TLS achieved while {certfile} exists; connecting to {IP}.\n\0".encode()


def test_failed_handshake_falls_back_to_plain(tmp_path, pki) -> None:
    broken = [
        ("S", "220 mx"),
        ("C", "EHLO helo.example.test"),
        ("S", "250-mx"),
        ("S", "250 STARTTLS"),
        ("C", "STARTTLS"),
        ("S", "220 ready"),
        ("S", "<RAW>this is not TLS\\r\\n"),
    ]
    plain = [
        ("S", "220 mx"),
        ("C", "EHLO helo.example.test"),
        ("S", "250-mx"),
        ("S", "250 STARTTLS"),
        *tail()[2:],
    ]
    server = ScriptedServer(IP, [broken, plain]).start()
    out = deliver(tmp_path, server, pki=pki)
    assert out == OK_SMTP
    assert server.received[1] == server.expected()[1]


def test_starttls_refused_goes_on_in_plain(tmp_path, pki) -> None:
    script = [
        ("S", "220 mx"),
        ("C", "EHLO helo.example.test"),
        ("S", "250-mx"),
        ("S", "250 STARTTLS"),
        ("C", "STARTTLS"),
        ("S", "454 4.7.0 TLS not available"),
        *tail()[2:],
    ]
    server = ScriptedServer(IP, [script]).start()
    out = deliver(tmp_path, server, pki=pki)
    assert out == OK_SMTP
    assert server.received == server.expected()


def test_smtps_implicit_tls(tmp_path, pki) -> None:
    script = [("S", "220 mx.example.test ESMTP"), *tail()]
    server = ScriptedServer(IP, [script], tls=pki["server_ctx"], implicit_tls=True).start()
    out = deliver(tmp_path, server, env_extra={"SMTPS": "1"}, pki=pki)
    assert out == OK_SMTPS
    assert server.received == server.expected()


def test_kept_tls_connection_carries_the_next_message(tmp_path, pki) -> None:
    """A delivery worker's kept connection (SMTP_REUSE) stays encrypted:
    the second message goes over the same TLS session, with no second
    handshake or EHLO, and the connection ends with QUIT when let go."""
    from indimail.deliver import qmail_remote

    script = [
        *starttls_script()[:7],
        ("C", "EHLO helo.example.test"),
        ("S", "250 mx.example.test"),
        *transaction(),
        *transaction(),
        ("C", "QUIT"),
    ]
    server = ScriptedServer(IP, [script], tls=pki["server_ctx"]).start()
    env = base_env(tmp_path)
    certs = Path(env["CERTDIR"])
    (certs / "clientcert.pem").write_bytes((pki["dir"] / "server.pem").read_bytes())
    (Path(env["CONTROLDIR"]) / "smtproutes").write_text(f"example.test:{IP}:{server.port}\n")
    argv = ["qmail-remote", "example.test", "from@example.org", "", "6", "to@example.test"]
    cache = qmail_remote.ConnCache()
    cache.enable({"SMTP_REUSE": "30"})
    outs = []
    try:
        for body in (b"one\n", b"two\n"):
            outs.append(run_remote(argv, body, env, tmp_path, cache)[1])
        assert cache.kept is not None and cache.kept.conn.tls
        cache.expire()
    finally:
        server.stop()
    assert outs == [OK_SMTPS, OK_SMTPS]
    assert server.errors == []
    assert server.received == server.expected()  # one connection, all of it
    assert server.messages == [b"one\r\n", b"two\r\n"]
