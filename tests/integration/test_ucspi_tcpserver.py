"""tcpserver on loopback: environment, rules, limits, in-process hot path, TLS."""

from __future__ import annotations

import datetime
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

INDIMAIL = Path(sys.executable).parent / "indimail"


class Server:
    """``indimail tcpserver -1 ...`` in the background; stop() kills it by pid."""

    def __init__(self, tmp: Path, args: list[str], env: dict | None = None) -> None:
        self.log = tmp / f"tcpserver-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen(
            [str(INDIMAIL), "tcpserver", "-1", *args],
            stdout=subprocess.PIPE,
            stderr=open(self.log, "wb"),  # noqa: SIM115
            env=env or {**os.environ, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        line = self.proc.stdout.readline()
        assert line.strip().isdigit(), (line, self.log.read_text())
        self.port = int(line)

    def logtext(self) -> str:
        return self.log.read_text()

    def wait_log(self, needle: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.logtext()
            if needle in text:
                return text
            time.sleep(0.02)
        raise AssertionError(f"{needle!r} not in log:\n{self.logtext()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc.stdout.close()


@pytest.fixture
def servers():
    started: list[Server] = []
    yield started
    for s in started:
        s.stop()


def start(servers, tmp_path, args, env=None) -> Server:
    s = Server(tmp_path, args, env)
    servers.append(s)
    return s


def read_all(sock: socket.socket, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def fetch(host: str, port: int, send: bytes = b"") -> bytes:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect((host, port))
        if send:
            s.sendall(send)
        s.shutdown(socket.SHUT_WR)
        return read_all(s)


@pytest.fixture
def envscript(tmp_path: Path) -> Path:
    p = tmp_path / "printenv.sh"
    p.write_text("#!/bin/sh\necho hello from $$\nenv | sort\n")
    p.chmod(0o755)
    return p


def parse_env(out: bytes) -> dict[str, str]:
    env = {}
    for line in out.decode().splitlines()[1:]:
        k, sep, v = line.partition("=")
        if sep:
            env[k] = v
    return env


def compile_rules(tmp_path: Path, text: str) -> Path:
    out = tmp_path / "rules.cdb"
    res = subprocess.run(
        [str(INDIMAIL), "tcprules", str(out), str(tmp_path / "rules.tmp")],
        input=text.encode(),
        capture_output=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    return out


def have_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_env_of_external_program_ipv4(tmp_path, servers, envscript) -> None:
    rules = compile_rules(tmp_path, '127.0.0.1:allow,RELAYCLIENT="",FOO="bar",!UNSETME\n')
    env = {**os.environ, "UNSETME": "x", "TCPREMOTEHOST": "stale"}
    srv = start(
        servers,
        tmp_path,
        ["-v", "-H", "-R", "-l", "0", "-x", str(rules), "127.0.0.1", "0", str(envscript)],
        env,
    )
    with socket.socket() as c:
        c.connect(("127.0.0.1", srv.port))
        cport = c.getsockname()[1]
        out = read_all(c)
    e = parse_env(out)
    assert e["PROTO"] == "TCP"
    assert e["TCPLOCALIP"] == "127.0.0.1" and e["TCPLOCALPORT"] == str(srv.port)
    assert e["TCPLOCALHOST"] == "0"
    assert e["TCPREMOTEIP"] == "127.0.0.1" and e["TCPREMOTEPORT"] == str(cport)
    assert "TCPREMOTEHOST" not in e and "TCPREMOTEINFO" not in e
    assert not any(k.startswith("TCP6") for k in e)
    assert e["RELAYCLIENT"] == "" and e["FOO"] == "bar" and "UNSETME" not in e
    pid = out.split()[2].decode()
    log = srv.wait_log(f"status: 0/40 sigchild, pid={pid}")
    assert f"tcpserver: pid {pid} from 127.0.0.1\n" in log
    assert f"tcpserver: ok {pid} 0[127.0.0.1]{srv.port} [127.0.0.1]:{cport}:maxperip=20\n" in log
    assert "tcpserver: status: 0/40 startup, pid=" in log


@pytest.mark.skipif(not have_ipv6_loopback(), reason="no IPv6 loopback")
def test_env_of_external_program_ipv6(tmp_path, servers, envscript) -> None:
    rules = compile_rules(tmp_path, '::1:allow,V6="yes"\n')
    srv = start(
        servers,
        tmp_path,
        ["-v", "-H", "-R", "-l", "0", "-x", str(rules), "::1", "0", str(envscript)],
    )
    e = parse_env(fetch("::1", srv.port))
    assert e["PROTO"] == "TCP6"
    assert e["TCPREMOTEIP"] == e["TCP6REMOTEIP"] == "::1"
    assert e["TCPLOCALIP"] == e["TCP6LOCALIP"] == "::1"
    assert e["TCP6LOCALPORT"] == str(srv.port) and e["TCP6REMOTEPORT"] == e["TCPREMOTEPORT"]
    assert e["V6"] == "yes"
    srv.wait_log("ok ")
    assert f"0[::1]{srv.port} [::1]:" in srv.logtext()


def test_rules_deny_closes_without_running(tmp_path, servers, envscript) -> None:
    rules = compile_rules(tmp_path, "127.0.0.1:deny\n")
    srv = start(
        servers,
        tmp_path,
        ["-v", "-HR", "-x", str(rules), "-B", "banner\n", "127.0.0.1", "0", str(envscript)],
    )
    assert fetch("127.0.0.1", srv.port) == b"banner\n"  # the banner comes first, as the original
    log = srv.wait_log(" status 100\n")
    assert "tcpserver: deny " in log and "hello" not in log


def test_missing_rules_drop_unless_X(tmp_path, servers, envscript) -> None:
    missing = str(tmp_path / "nonexistent.cdb")
    srv = start(servers, tmp_path, ["-HR", "-x", missing, "127.0.0.1", "0", str(envscript)])
    assert fetch("127.0.0.1", srv.port) == b""
    srv.wait_log("unable to read")
    srv2 = start(servers, tmp_path, ["-HR", "-X", "-x", missing, "127.0.0.1", "0", str(envscript)])
    assert fetch("127.0.0.1", srv2.port).startswith(b"hello")


@pytest.fixture
def holder(tmp_path: Path) -> Path:
    """A program that says hi and waits for the client to close."""
    p = tmp_path / "hold.sh"
    p.write_text("#!/bin/sh\necho hi\nexec cat >/dev/null\n")
    p.chmod(0o755)
    return p


def test_per_ip_limit(tmp_path, servers, holder) -> None:
    srv = start(servers, tmp_path, ["-v", "-HR", "-C", "1", "127.0.0.1", "0", str(holder)])
    first = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    try:
        assert first.recv(10) == b"hi\n"
        assert fetch("127.0.0.1", srv.port) == b""  # refused: one per IP
        srv.wait_log("tcpserver: end 127.0.0.1 perIPlimit 1\n")
    finally:
        first.close()
    deadline = time.monotonic() + 10
    while b"hi" not in fetch("127.0.0.1", srv.port):
        assert time.monotonic() < deadline


def test_maxperip_rule_variable(tmp_path, servers, holder) -> None:
    rules = compile_rules(tmp_path, '127.0.0.1:allow,MAXPERIP="1"\n')
    srv = start(servers, tmp_path, ["-v", "-HR", "-x", str(rules), "127.0.0.1", "0", str(holder)])
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as first:
        assert first.recv(10) == b"hi\n"
        assert fetch("127.0.0.1", srv.port) == b""
        log = srv.wait_log("no ip slots for 127.0.0.1, perIPlimit 1")
        assert ":maxperip=1\n" in log


def test_concurrency_limit_makes_clients_wait(tmp_path, servers, holder) -> None:
    srv = start(servers, tmp_path, ["-v", "-HR", "-c", "1", "127.0.0.1", "0", str(holder)])
    first = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    assert first.recv(10) == b"hi\n"
    second = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    second.settimeout(0.7)
    with pytest.raises(TimeoutError):
        second.recv(10)  # waits in the backlog: no program runs for it yet
    first.close()
    second.settimeout(10)
    assert second.recv(10) == b"hi\n"
    second.close()
    srv.wait_log("status: 1/1 un-encrypted session")


def test_limit_file_reread_on_hup(tmp_path, servers, holder) -> None:
    limit = tmp_path / "concurrency"
    limit.write_text("1\n")
    srv = start(servers, tmp_path, ["-v", "-HR", "-c", str(limit), "127.0.0.1", "0", str(holder)])
    srv.wait_log("status: 0/1 startup")
    limit.write_text("3\n")
    os.kill(srv.proc.pid, signal.SIGHUP)
    srv.wait_log("tcpserver: sighup: 0/3")


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def _linked_command(tmp_path: Path, name: str) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    link = bindir / name
    link.symlink_to(INDIMAIL)
    return link


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_our_command_runs_in_process(tmp_path, servers) -> None:
    """tai64n through a symlink to our binary: the forked child runs it
    without exec - its command line stays the server's - and it works."""
    prog = _linked_command(tmp_path, "tai64n")
    srv = start(servers, tmp_path, ["-v", "-HR", "127.0.0.1", "0", str(prog)])
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as c:
        log = srv.wait_log("un-encrypted session")
        pid = int(log.split("tcpserver: pid ")[1].split()[0])
        assert _cmdline(pid) == _cmdline(srv.proc.pid)  # no exec happened
        c.sendall(b"line one\n")
        c.shutdown(socket.SHUT_WR)
        out = read_all(c)
    assert out.startswith(b"@4000") and out.endswith(b" line one\n")
    srv.wait_log(f"sigchild, pid={pid}")
    assert f"end {pid}" not in srv.logtext()  # exit status 0


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_bare_name_resolved_by_path(tmp_path, servers) -> None:
    """A bare name runs in-process when PATH gives our binary (or nothing),
    and is exec'd when PATH gives some other program of that name."""
    _linked_command(tmp_path, "tcprulescheck")
    other = tmp_path / "other"
    other.mkdir()
    (other / "tcprulescheck").write_text("#!/bin/sh\necho foreign $$\n")
    (other / "tcprulescheck").chmod(0o755)
    rules = compile_rules(tmp_path, '127.0.0.1:allow,X="1"\n')
    ours_env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    srv = start(
        servers, tmp_path, ["-v", "-HR", "127.0.0.1", "0", "tcprulescheck", str(rules)], ours_env
    )
    assert (
        fetch("127.0.0.1", srv.port)
        == b"rule 127.0.0.1:\nset environment variable X=1\nallow connection\n"
    )
    theirs_env = {**os.environ, "PATH": f"{other}:/usr/bin:/bin"}
    srv2 = start(
        servers, tmp_path, ["-v", "-HR", "127.0.0.1", "0", "tcprulescheck", str(rules)], theirs_env
    )
    assert fetch("127.0.0.1", srv2.port).startswith(b"foreign ")


def _make_cert(tmp_path: Path) -> Path:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "servercert.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    return path


def _tls_fetch(port: int, send: bytes = b"", until: bytes | None = None) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        if send:
            s.sendall(send)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ssl.SSLEOFError, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
            if until is not None and until in data:
                break
        return data


def test_tls_external_program_sees_plain_bytes(tmp_path, servers, envscript) -> None:
    cert = _make_cert(tmp_path)
    srv = start(
        servers,
        tmp_path,
        ["-v", "-HR", "-z", "-i", str(tmp_path), "-n", str(cert), "127.0.0.1", "0", str(envscript)],
    )
    out = _tls_fetch(srv.port)
    assert out.startswith(b"hello from ")
    e = parse_env(out)
    assert e["TLS_PROVIDER"].startswith("tcpserver, TLS Server=TLSv1.")
    assert e["TCPREMOTEIP"] == "127.0.0.1"
    log = srv.wait_log("encrypted session")
    assert ", sslpid=" in log and ", childpid=" in log and "Ciphers=" in log


def test_tls_in_process_command(tmp_path, servers) -> None:
    cert = _make_cert(tmp_path)
    prog = _linked_command(tmp_path, "tai64n")
    srv = start(
        servers,
        tmp_path,
        ["-v", "-HR", "-i", str(tmp_path), "-n", str(cert), "127.0.0.1", "0", str(prog)],
    )
    out = _tls_fetch(srv.port, b"secret line\n", until=b"secret line\n")
    assert out.startswith(b"@4000") and out.endswith(b" secret line\n")


def test_tls_handshake_timeout_drops_silent_client(tmp_path, servers, envscript) -> None:
    cert = _make_cert(tmp_path)
    srv = start(
        servers,
        tmp_path,
        ["-v", "-HR", "-S", "1", "-n", str(cert), "127.0.0.1", "0", str(envscript)],
    )
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as c:
        assert read_all(c) == b""  # no handshake from us: dropped after -S seconds
    srv.wait_log("unable to accept SSL connection")


def test_usage_and_bad_port_are_clean_errors(tmp_path) -> None:
    res = subprocess.run([str(INDIMAIL), "tcpserver"], capture_output=True, timeout=30)
    assert res.returncode == 100 and b"usage: tcpserver" in res.stderr
    res = subprocess.run(
        [str(INDIMAIL), "tcpserver", "127.0.0.1", "nosuchservice", "true"],
        capture_output=True,
        timeout=30,
    )
    assert res.returncode == 111 and b"unable to figure out port number" in res.stderr
    assert b"Traceback" not in res.stderr


def test_tcpclient_runs_program_on_fds_6_7(tmp_path, servers) -> None:
    greeter = tmp_path / "greet.sh"
    greeter.write_text("#!/bin/sh\necho 220 greetings\nread x\necho got $x\n")
    greeter.chmod(0o755)
    srv = start(servers, tmp_path, ["-HR", "127.0.0.1", "0", str(greeter)])
    script = (
        'read banner <&6; echo "$banner"; echo hello >&7; read reply <&6; echo "$reply"; '
        "echo $PROTO $TCPREMOTEIP $TCPREMOTEPORT $TCPLOCALIP $TCPLOCALHOST"
    )
    res = subprocess.run(
        [
            str(INDIMAIL),
            "tcpclient",
            "-HR",
            "-l",
            "me",
            "127.0.0.1",
            str(srv.port),
            "sh",
            "-c",
            script,
        ],
        capture_output=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.decode().splitlines()
    assert lines[0] == "220 greetings" and lines[1] == "got hello"
    assert lines[2] == f"TCP 127.0.0.1 {srv.port} 127.0.0.1 me"


def test_tcpclient_without_program_copies(tmp_path, servers) -> None:
    srv = start(servers, tmp_path, ["-HR", "127.0.0.1", "0", "/bin/cat"])
    res = subprocess.run(
        [str(INDIMAIL), "tcpclient", "-HR", "127.0.0.1", str(srv.port)],
        input=b"echo me\n",
        capture_output=True,
        timeout=30,
    )
    assert res.returncode == 0 and res.stdout == b"echo me\n"
    res = subprocess.run(
        [str(INDIMAIL), "tcpclient", "-T", "1+0", "127.0.0.1", "1"],
        capture_output=True,
        timeout=30,
    )
    assert res.returncode == 111 and b"unable to connect" in res.stderr
