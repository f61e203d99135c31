"""qmail-remote's kept connection (ConnCache): when one is given back, when
it is closed, and that it says QUIT when it goes."""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from pathlib import Path

import pytest

from indimail.deliver import qmail_remote as qr

KEY = ("peer.test", "127.0.0.1", 25, None, "me.test", False, False)


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    theirs.settimeout(2)
    yield ours, theirs
    ours.close()
    theirs.close()


def _cache(pair, idle: float = 2.0) -> tuple[qr.ConnCache, qr.Kept]:
    cache = qr.ConnCache(idle)
    cache.enabled = True
    kept = qr.Kept(KEY, qr.Conn(pair[0], 5), {"PIPELINING": ""}, time.monotonic())
    cache.put(kept)
    return cache, kept


def test_given_back_for_its_key_only(pair) -> None:
    cache, kept = _cache(pair)
    assert cache.take((*KEY[:1], "127.0.0.2", *KEY[2:])) is None
    assert cache.kept is kept  # still kept for its own route
    assert cache.take(KEY) is kept and kept.used == 2
    assert cache.kept is None and cache.due() is None


def test_idle_too_long_is_closed_with_quit(pair) -> None:
    cache, _kept = _cache(pair, idle=0.05)
    time.sleep(0.1)
    deadline = cache.due()
    assert deadline is not None and deadline <= time.monotonic()
    assert cache.take(KEY) is None
    assert pair[1].recv(100) == b"QUIT\r\n"
    assert pair[1].recv(100) == b""  # and closed


def test_expire_says_quit(pair) -> None:
    cache, _kept = _cache(pair)
    cache.expire()
    assert cache.kept is None
    assert pair[1].recv(100) == b"QUIT\r\n"
    assert pair[1].recv(100) == b""


def test_server_hung_up_or_spoke_is_not_reused(pair) -> None:
    cache, _kept = _cache(pair)
    pair[1].sendall(b"421 idle timeout\r\n")
    assert cache.take(KEY) is None
    try:  # closed without a QUIT: the server spoke first
        assert pair[1].recv(100) == b""
    except ConnectionResetError:
        pass


def test_use_count_and_age_limits(pair) -> None:
    cache, kept = _cache(pair)
    kept.used = qr.REUSE_COUNT
    assert cache.take(KEY) is None
    assert pair[1].recv(100) == b"QUIT\r\n"
    ours, theirs = socket.socketpair()
    try:
        old = qr.Kept(KEY, qr.Conn(ours, 5), {}, time.monotonic() - qr.REUSE_AGE - 1)
        cache.put(old)
        assert cache.take(KEY) is None
        theirs.settimeout(2)
        assert theirs.recv(100) == b"QUIT\r\n"
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize(
    ("value", "enabled", "idle"),
    [(None, True, qr.REUSE_IDLE), ("0", False, 0.0), ("7.5", True, 7.5), ("x", True, 2.0)],
)
def test_smtp_reuse_variable(value, enabled, idle) -> None:
    cache = qr.ConnCache()
    cache.enable({} if value is None else {"SMTP_REUSE": value})
    assert (cache.enabled, cache.idle) == (enabled, idle)


def test_command_run_keeps_nothing_without_an_enabled_cache() -> None:
    cache = qr.ConnCache()  # as in the spawner and its one-off children
    r = qr.Remote(["qmail-remote"], 0, None, {}, cache)  # type: ignore[arg-type]
    assert r.cache is None


class _Sends(qr.Conn):
    def __init__(self) -> None:
        super().__init__(None, 5)  # type: ignore[arg-type]
        self.writes: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.writes.append(data)


def _blast(msg: bytes, qqeh: bytes = b"") -> list[bytes]:
    r = qr.Remote(["qmail-remote"], 0, None, {})  # type: ignore[arg-type]
    r.conn = _Sends()
    r.msg = msg
    r.qqeh = qqeh
    r.blast()
    assert r.flagcritical
    return r.conn.writes


@pytest.mark.parametrize(
    ("msg", "qqeh", "wire"),
    [
        (b"Subject: a\n\n.dot\nx\n", b"", b"Subject: a\r\n\r\n..dot\r\nx\r\n.\r\n"),
        (b".\n", b"X-Q: 1\n", b"X-Q: 1\r\n..\r\n.\r\n"),
        (b"", b"", b".\r\n"),
    ],
)
def test_small_message_is_one_write_with_its_dot(msg, qqeh, wire) -> None:
    """A small write after another waits for the server's delayed ACK
    (Nagle): the message, the qqeh and the final dot go in one write."""
    assert _blast(msg, qqeh) == [wire]


def test_big_message_in_chunks_the_dot_with_the_last() -> None:
    line = b"y" * 99 + b"\n"
    msg = line * (3 * qr.CHUNK // len(line) + 7)
    writes = _blast(msg)
    assert len(writes) == 4
    assert all(not w.endswith(b".\r\n") for w in writes[:-1])
    assert b"".join(writes) == msg.replace(b"\n", b"\r\n") + b".\r\n"


def _remote(cache: qr.ConnCache, env: dict[str, str]) -> qr.Remote:
    r = qr.Remote(["qmail-remote"], 0, None, env, cache)  # type: ignore[arg-type]
    r.host, r.port, r.outip, r.helohost = "peer.test", 25, None, "me.test"
    r.smtps = r.notls = False
    r.use_auth = None
    r.timeoutdata = 5
    return r


def test_other_tls_settings_do_not_take_the_kept_connection(pair) -> None:
    from indimail.deliver.dns import MxIp

    cache, _kept = _cache(pair)
    ix = MxIp(0, "127.0.0.1", None)
    first = _remote(cache, {"CLIENTCERT": "a.pem"})
    first.reuse(ix)  # nothing kept for its key yet: it would connect
    assert first.conn is None and first.key is not None
    kept = qr.Kept(first.key, cache.kept.conn, {}, time.monotonic())  # type: ignore[union-attr]
    cache.kept = kept
    other = _remote(cache, {"CLIENTCERT": "b.pem"})
    other.reuse(ix)
    assert other.key != first.key
    assert other.conn is None and cache.kept is kept  # not taken, still kept
    auth = _remote(cache, {"CLIENTCERT": "a.pem"})
    auth.use_auth = "PLAIN"
    auth.reuse(ix)
    assert auth.key is None and cache.kept is kept  # AUTH sessions are never shared


HELLO = [("S", "220 mx"), ("C", "EHLO helo.example.test"), ("S", "250 mx")]
ARGV = ["qmail-remote", "example.test", "from@example.org", "", "6", "to@example.test"]


def _harness():
    sys.path.insert(0, str(Path(__file__).parent / "remote_cases"))
    import remote_harness

    return remote_harness


@contextlib.contextmanager
def _routed(tmp_path, scripts):
    """(env, cache) for deliveries to a scripted server that smtproutes
    sends example.test to, with a worker's cache that keeps connections;
    at the end the kept connection goes (QUIT), and the server must have
    seen exactly its scripts."""
    h = _harness()
    server = h.ScriptedServer("127.0.0.2", scripts).start()
    env = h.base_env(tmp_path)
    (Path(env["CONTROLDIR"]) / "smtproutes").write_text(f"example.test:127.0.0.2:{server.port}\n")
    cache = qr.ConnCache()
    cache.enable({"SMTP_REUSE": "30"})
    try:
        yield env, cache
        cache.expire()
    finally:
        server.stop()
    assert server.errors == []
    assert server.received == server.expected()


def test_a_connection_carries_at_most_reuse_count_messages(tmp_path, monkeypatch) -> None:
    """The count survives from one delivery to the next: with REUSE_COUNT 2
    the third message goes on a new connection, the full one got QUIT."""
    h = _harness()
    monkeypatch.setattr(qr, "REUSE_COUNT", 2)
    one, quit_ = h.transaction(), [("C", "QUIT")]
    with _routed(tmp_path, [HELLO + one + one + quit_, HELLO + one + quit_]) as (env, cache):
        for _ in range(3):
            assert b"accepted message" in h.run_remote(ARGV, b"hello\n", env, tmp_path, cache)[1]


def test_a_kept_connection_goes_on_though_the_timeout_table_marks_its_address(
    tmp_path,
) -> None:
    """Another delivery's failures may mark the address in lock/tcpto while a
    worker holds a live connection to it: the kept connection carries the
    next message (it just answered), and the table is read only when a new
    connection is needed."""
    from indimail.deliver import tcpto

    h = _harness()
    one = h.transaction()
    qdir = tmp_path / "queue"
    (qdir / "lock").mkdir(parents=True)
    (qdir / "lock" / "tcpto").write_bytes(bytes(2048))
    with _routed(tmp_path, [HELLO + one + one + [("C", "QUIT")]]) as (env, cache):
        env["QUEUEDIR"] = str(qdir)
        assert b"accepted message" in h.run_remote(ARGV, b"one\n", env, tmp_path, cache)[1]
        table = tcpto.Table(qdir / "lock" / "tcpto")
        now = time.time()
        table.record("127.0.0.2", True, now=now - 300)  # two failures, beyond the tolerance
        table.record("127.0.0.2", True, now=now)
        assert table.is_timed_out("127.0.0.2")
        assert b"accepted message" in h.run_remote(ARGV, b"two\n", env, tmp_path, cache)[1]
