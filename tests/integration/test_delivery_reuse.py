"""Remote deliveries reuse a connection (qmail-rspawn's workers, SMTP_REUSE).

A one-queue instance routes ``peer.test`` by smtproutes to the scripted
:class:`SmtpPeer`; qscheduler runs the queue.  Messages are sent one after
another, each once the previous one is delivered, so that the worker that
kept the connection gets the next one.  What the peer saw on each
connection is the check: transactions, QUIT, how many connections.
"""

from __future__ import annotations

import contextlib
import time

import pytest
from test_delivery import Delivery, queue_empty
from test_delivery_peers import CLOSE, SENDER, SmtpPeer, log_matches, send

from support import make_instance

pytestmark = pytest.mark.peer

ONE = ["MAIL", "RCPT", "DATA", "<MESSAGE>"]


def _instance(tmp_path, peer: SmtpPeer, domains=("peer.test",)):
    inst = make_instance(tmp_path / "inst", queues=1)
    routes = "".join(f"{dom}:127.0.0.1:{peer.port}\n" for dom in domains)
    (inst.control / "smtproutes").write_text(routes)
    return inst


@contextlib.contextmanager
def _queue_to_peer(tmp_path, reuse: str, plan=None):
    """A scripted peer, a one-queue instance routing peer.test to it, and
    qscheduler running it with SMTP_REUSE=``reuse``: (peer, instance, delivery)."""
    with SmtpPeer(plan=plan) as peer:
        inst = _instance(tmp_path, peer)
        d = Delivery(inst, {**inst.env(), "SMTP_REUSE": reuse})
        try:
            yield peer, inst, d
        finally:
            d.stop()


def _deliver(inst, d: Delivery, i: int, domain: str = "peer.test") -> None:
    """Queue message ``i`` and wait until it is delivered (the i+1-th success)."""
    send(inst, SENDER, f"rcpt{i}@{domain}", message=f"Subject: reuse {i}\n\nbody {i}\n".encode())
    d.wait_for(lambda: len(log_matches(d, "success:")) == i + 1 and queue_empty(inst))


def _verbs(commands: list[str]) -> list[str]:
    return [c.split(" ", 1)[0].split(":", 1)[0].upper() for c in commands]


def _wait(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_messages_in_a_row_share_one_connection(tmp_path) -> None:
    with _queue_to_peer(tmp_path, "1") as (peer, inst, d):
        for i in range(3):
            _deliver(inst, d, i)
        assert len(peer.sessions) == 1, [s.commands for s in peer.sessions]
        s = peer.sessions[0]
        # kept after the third message until it was idle 1 s, then QUIT
        assert _wait(lambda: s.commands[-1:] == ["QUIT"], 10), s.commands
        assert _verbs(s.commands) == ["EHLO", *ONE * 3, "QUIT"]
        rcpts = [c for c in s.commands if c.startswith("RCPT")]
        assert rcpts == [f"RCPT TO:<rcpt{i}@peer.test>" for i in range(3)]
        assert [b"body %d" % i in m for i, m in enumerate(s.received)] == [True] * 3
        assert len(log_matches(d, "accepted_message")) == 3
        assert peer.errors == []


def test_smtp_reuse_0_is_one_connection_per_message(tmp_path) -> None:
    with _queue_to_peer(tmp_path, "0") as (peer, inst, d):
        for i in range(2):
            _deliver(inst, d, i)
        assert _wait(lambda: all(s.commands[-1:] == ["QUIT"] for s in peer.sessions))
        assert [_verbs(s.commands) for s in peer.sessions] == [["EHLO", *ONE, "QUIT"]] * 2


def test_server_hung_up_on_the_kept_connection(tmp_path) -> None:
    """The peer hangs up after each message (as an idle timeout would):
    the next message sees the closed connection and connects again."""
    with _queue_to_peer(tmp_path, "30", lambda n: {"after": CLOSE}) as (peer, inst, d):
        for i in range(2):
            _deliver(inst, d, i)
        assert [_verbs(s.commands) for s in peer.sessions] == [["EHLO", *ONE, "<HANGUP>"]] * 2
        assert not log_matches(d, "deferral")


def test_kept_connection_dropped_at_mail_goes_on_a_new_one(tmp_path) -> None:
    """The peer drops the kept connection at the next MAIL, after it looked
    alive: the message goes out on a new connection, reported once."""
    with _queue_to_peer(tmp_path, "30", lambda n: {"again": CLOSE}) as (peer, inst, d):
        for i in range(2):
            _deliver(inst, d, i)
        first, second = peer.sessions
        assert _verbs(first.commands) == ["EHLO", *ONE, "MAIL"] and first.closed_by_peer
        assert _verbs(second.commands)[:5] == ["EHLO", *ONE]
        got = [m for s in peer.sessions for m in s.received]
        assert [b"body %d" % i in m for i, m in enumerate(got)] == [True, True]
        assert not log_matches(d, "deferral")
        assert len(log_matches(d, "success:")) == 2


def test_a_connection_is_kept_per_route(tmp_path) -> None:
    """Domains routed to one server share its connection (as a smarthost's
    do); a message for another route gets its own, and the one kept before
    ends with QUIT."""
    with SmtpPeer() as a, SmtpPeer() as b:
        inst = make_instance(tmp_path / "inst", queues=1)
        (inst.control / "smtproutes").write_text(
            f"peer.test:127.0.0.1:{a.port}\nalso.test:127.0.0.1:{a.port}\n"
            f"other.test:127.0.0.1:{b.port}\n"
        )
        d = Delivery(inst, {**inst.env(), "SMTP_REUSE": "1"})
        try:
            _deliver(inst, d, 0, "peer.test")
            _deliver(inst, d, 1, "also.test")
            _deliver(inst, d, 2, "other.test")
            assert _wait(lambda: all(s.commands[-1:] == ["QUIT"] for s in a.sessions + b.sessions))
            assert [_verbs(s.commands) for s in a.sessions] == [["EHLO", *ONE * 2, "QUIT"]]
            assert [_verbs(s.commands) for s in b.sessions] == [["EHLO", *ONE, "QUIT"]]
        finally:
            d.stop()
