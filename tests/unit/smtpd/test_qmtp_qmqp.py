"""qmail-qmtpd, qmail-qmqpd and qmail-qmqpc round trips."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

from smtpd_harness import INDIMAIL, Peer

from support import Instance


def ns(b: bytes) -> bytes:
    return str(len(b)).encode() + b":" + b + b","


def qmtp_package(msg: bytes, sender: bytes, rcpts: list[bytes]) -> bytes:
    return ns(msg) + ns(sender) + ns(b"".join(ns(r) for r in rcpts))


def read_netstrings(data: bytes) -> list[bytes]:
    out = []
    while data:
        n, _, rest = data.partition(b":")
        out.append(rest[: int(n)])
        assert rest[int(n) : int(n) + 1] == b","
        data = rest[int(n) + 1 :]
    return out


def _env(instance: Instance, **extra: str) -> dict[str, str]:
    return instance.env(
        TCPREMOTEIP="192.0.2.9", TCPLOCALIP="192.0.2.1", TCPREMOTEHOST="peer.example", **extra
    )


def test_qmtpd_pipelined_packages(instance: Instance, tmp_path: Path) -> None:
    peer = Peer(["qmail-qmtpd"], _env(instance), tmp_path / "err")
    one = qmtp_package(
        b"\nSubject: one\n\nbody\n", b"a@example.org", [b"bob@mx.example.test", b"x@far.test"]
    )
    two = qmtp_package(b"\rSubject: two\r\n\r\ncr\rlf\r\n", b"", [b"carol@mx.example.test"])
    peer.send(one + two)
    peer.sock.shutdown(socket.SHUT_WR)
    replies = read_netstrings(peer.read_all())
    assert peer.close() == 0
    assert len(replies) == 3
    assert replies[0].startswith(b"Kok ") and b" qp " in replies[0]
    assert replies[1] == b"Dsorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)"
    assert replies[2].startswith(b"Kok ")
    assert len(instance.files("todo")) == 2
    bodies = sorted(p.read_bytes() for p in instance.files("mess"))
    assert any(b"Subject: two\n\ncr\rlf\n" in b for b in bodies)
    assert any(
        b"Received: indimail-mta qmtpd " in b and b" from peer.example (192.0.2.9)\n  by " in b
        for b in bodies
    )


def test_qmtpd_relayclient_and_bad_input(instance: Instance, tmp_path: Path) -> None:
    peer = Peer(["qmail-qmtpd"], _env(instance, RELAYCLIENT=""), tmp_path / "e1")
    peer.send(qmtp_package(b"\nx\n", b"a@example.org", [b"x@far.test"]))
    peer.sock.shutdown(socket.SHUT_WR)
    assert read_netstrings(peer.read_all())[0].startswith(b"Kok ")
    assert peer.close() == 0
    for bad, code in ((b"12x:", 100), (b"999999999999:", 111), (b"0:,", 100)):
        peer = Peer(["qmail-qmtpd"], _env(instance), tmp_path / "e2")
        peer.send(bad)
        peer.sock.shutdown(socket.SHUT_WR)
        assert peer.read_all() == b""
        assert peer.close() == code, bad


def test_qmqpd_direct(instance: Instance, tmp_path: Path) -> None:
    body = ns(b"Subject: q\n\nhi\n") + ns(b"a@example.org") + ns(b"far@elsewhere.test")
    peer = Peer(["qmail-qmqpd"], _env(instance), tmp_path / "err")
    peer.send(ns(body))
    reply = read_netstrings(peer.read_all())
    assert peer.close() == 0
    assert reply[0].startswith(b"Kok "), reply
    envelope = instance.files("todo")[0].read_bytes()
    assert b"Fa@example.org\0Tfar@elsewhere.test\0" in envelope
    # an inner length beyond the outer one is refused before being read
    peer = Peer(["qmail-qmqpd"], _env(instance), tmp_path / "err2")
    peer.send(b"10:99999:")
    assert peer.read_all() == b""
    assert peer.close() == 100


class QmqpServer:
    """Loopback listener: per connection runs qmail-qmqpd, or replies ``canned``."""

    def __init__(self, instance: Instance, canned: bytes | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.env = _env(instance)
        self.canned = canned
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(30)
        conn, _ = self.listener.accept()
        with conn:
            if self.canned is not None:
                data = b""
                for _ in range(100):  # the package ends with the last two commas
                    data += conn.recv(65536)
                    if data.endswith(b",,"):
                        break
                conn.sendall(self.canned)
                return
            subprocess.run(
                [str(INDIMAIL), "qmail-qmqpd"], stdin=conn, stdout=conn, env=self.env, timeout=60
            )

    def close(self) -> None:
        self.thread.join(60)
        self.listener.close()


def run_qmqpc(instance: Instance, port: int, args: list[str], envelope: bytes) -> int:
    r, w = os.pipe()
    os.write(w, envelope)
    os.close(w)
    try:
        res = subprocess.run(
            [str(INDIMAIL), "qmail-qmqpc", *args],
            input=b"Subject: via qmqpc\n\nhello\n",
            stdout=r,
            env=instance.env(PORT_QMQP=str(port)),
            timeout=60,
        )
    finally:
        os.close(r)
    return res.returncode


def test_qmqpc_to_qmqpd(instance: Instance) -> None:
    srv = QmqpServer(instance)
    rc = run_qmqpc(instance, srv.port, ["127.0.0.1"], b"Fa@example.org\0Tbob@far.test\0\0")
    srv.close()
    assert rc == 0
    assert b"Subject: via qmqpc\n\nhello\n" in instance.files("mess")[0].read_bytes()
    assert b"Fa@example.org\0Tbob@far.test\0" in instance.files("todo")[0].read_bytes()


def test_qmqpc_exit_codes(instance: Instance) -> None:
    for canned, code in ((b"5:Dnope,", 31), (b"6:Zlater,", 71)):
        srv = QmqpServer(instance, canned)
        assert run_qmqpc(instance, srv.port, ["127.0.0.1"], b"Fa@b\0Tc@d\0\0") == code
        srv.close()
    # nobody listening: connection refused (73); bad envelope: 79
    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    assert run_qmqpc(instance, port, ["127.0.0.1"], b"Fa@b\0Tc@d\0\0") == 73
    assert run_qmqpc(instance, port, ["127.0.0.1"], b"Xa@b\0\0") == 79
    # servers from control qmqpservers
    (instance.control / "qmqpservers").write_text("127.0.0.1\n")
    srv = QmqpServer(instance, b"3:Kok,")
    assert run_qmqpc(instance, srv.port, [], b"Fa@b\0Tc@d\0\0") == 0
    srv.close()
