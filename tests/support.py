"""Helpers shared by tests (imported as ``support``; tests/ is on sys.path).

The one place for them: a module named ``conftest`` exists in several test
folders, so ``from conftest import`` would be ambiguous."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INDIMAIL = Path(sys.executable).parent / "indimail"


@dataclass
class Instance:
    """A rootless instance made by ``indimail-instance`` in a temp dir."""

    top: Path

    @property
    def conf(self) -> Path:
        return self.top / "indimail-paths.conf"

    @property
    def bin(self) -> Path:
        return self.top / "bin"

    @property
    def control(self) -> Path:
        return self.top / "etc" / "control"

    @property
    def queue_base(self) -> Path:
        return self.top / "var" / "queue"

    def queue(self, n: int) -> Path:
        return self.queue_base / f"queue{n}"

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment pointing every command at this instance."""
        env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "HOME": str(self.top / "home"),
            "INDIMAIL_PATHS": str(self.conf),
            "LANG": "C.UTF-8",
        }
        env.update(extra)
        return env

    def run(
        self,
        cmd: str,
        *args: str,
        input: bytes | None = None,
        env: dict | None = None,
        timeout: float = 60,
        **popen,
    ) -> subprocess.CompletedProcess:
        """Run ``bin/cmd args`` with this instance's environment."""
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
        return subprocess.run(
            [str(self.bin / cmd), *args],
            input=input,
            env=env if env is not None else self.env(),
            timeout=timeout,
            **popen,
        )

    def files(self, sub: str) -> list[Path]:
        """Every regular file under ``queueN/sub`` of all queues."""
        found = []
        for q in sorted(self.queue_base.glob("queue*")):
            found += [p for p in (q / sub).rglob("*") if p.is_file()]
        return found


def make_instance(top: Path, queues: int = 2, fqdn: str = "mx.example.test") -> Instance:
    res = subprocess.run(
        [str(INDIMAIL), "indimail-instance", "-q", str(queues), "-H", fqdn, str(top)],
        capture_output=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr.decode()
    return Instance(top)


def need_program(name: str, package: str) -> str:
    """Path of ``name``, or skip naming the Debian package that brings it."""
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} not installed (apt-get install {package})")
    return found


def clean_env_without_python() -> dict[str, str]:
    """PATH with no python on it, for frozen-binary tests."""
    return {"PATH": "/usr/bin:/bin" if not os.path.exists("/usr/bin/python3") else "/nonexistent"}


# -- SMTP test helpers shared by unit and integration tests ------------------

CHECKPW = r"""#!{python}
# test checkpassword: user "test" password "secret"; "norelay"/"secret" exits 3
import hmac, os, sys
data = b""
while True:
    chunk = os.read(3, 4096)
    if not chunk:
        break
    data += chunk
parts = data.split(b"\0")
user, secret, resp = parts[0], parts[1], parts[2]
method = parts[3][0] if parts[3] else 0
names = {{3: "md5", 4: "sha1", 5: "sha224", 6: "sha256", 7: "sha384", 8: "sha512"}}

def good(pw):
    if resp:
        return method in names and hmac.new(pw, secret, names[method]).hexdigest().encode() == resp
    return secret == pw

if user == b"test" and good(b"secret"):
    sys.exit(0)
if user == b"norelay" and good(b"secret"):
    sys.exit(3)
if user == b"tempfail":
    sys.exit(111)
if len(sys.argv) > 1:
    os.execv(sys.argv[1], sys.argv[1:])
sys.exit(1)
"""


def make_checkpw(directory: Path) -> Path:
    path = directory / "checkpw"
    path.write_text(CHECKPW.format(python=sys.executable))
    path.chmod(0o755)
    return path


def make_certs(certdir: Path) -> Path:
    """A throw-away CA and ``servercert.pem`` (key + cert) for mx.example.test
    and 127.0.0.1 in ``certdir``; returns the CA file (``certdir/ca.pem``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_file = certdir / "ca.pem"
    if ca_file.exists() and (certdir / "servercert.pem").exists():
        return ca_file
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.example.test")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("mx.example.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    certdir.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ) + cert.public_bytes(serialization.Encoding.PEM)
    (certdir / "servercert.pem").write_bytes(pem)
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return ca_file


def fsync_spy(monkeypatch, fail_dirs: bool = False) -> list[int]:
    """Record the inode of everything ``os.fsync`` is called on, in order
    (by inode: /proc/self/fd names a queue's mess file by its pid/ name);
    with ``fail_dirs`` an fsync of a directory fails with EIO."""
    import stat

    seen: list[int] = []
    real = os.fsync

    def spy(fd: int) -> None:
        st = os.fstat(fd)
        seen.append(st.st_ino)
        if fail_dirs and stat.S_ISDIR(st.st_mode):
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


class TriggerReader:
    """The read end of a queue's ``lock/trigger``, held as qmail-send holds
    it (a poke needs a reader: without one the writer's open fails and it
    gives up).  :meth:`pokes` is what was written since the last call."""

    def __init__(self, queue: Path) -> None:
        self.fd = os.open(queue / "lock" / "trigger", os.O_RDONLY | os.O_NONBLOCK)

    def pokes(self) -> bytes:
        try:
            return os.read(self.fd, 64)
        except BlockingIOError:
            return b""

    def __enter__(self) -> TriggerReader:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
