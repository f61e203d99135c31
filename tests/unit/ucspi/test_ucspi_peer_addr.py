"""tcpserver's peer address bytes; qmail-smtpd's DATA spool."""

from __future__ import annotations

from indimail.core.spool import Spool
from indimail.ucspi.tcpserver import _peer_ip16


def test_peer_address_bytes() -> None:
    assert _peer_ip16("127.0.0.1") == b"\0" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1])
    assert _peer_ip16("::ffff:127.0.0.1") == _peer_ip16("127.0.0.1")
    assert _peer_ip16("::1") == b"\0" * 15 + b"\1"
    assert _peer_ip16("fe80::1%lo") == bytes([0xFE, 0x80]) + b"\0" * 13 + b"\1"


def test_spool_memory_then_file() -> None:
    with Spool(limit=8) as s:
        s.write(b"1234")
        s.write(b"5678")
        assert s.message() == b"12345678"
    with Spool(limit=8) as s:
        s.write(b"1234")
        s.write(b"56789")
        f = s.message()
        assert not isinstance(f, bytes) and f.read() == b"123456789"
