"""Retries, permanent failures, double bounces and queuelifetime, end to end.

The remote side is an SmtpPeer on loopback reached by smtproutes; qmail-send
runs with ``CHANSKIP_REMOTE=1`` so that the retry schedule
``next = birth + (floor(sqrt(now - birth)) + 1)^2`` gives attempts at about
birth + 0, 1, 4, 9 ... seconds (birth = mtime of ``info/<id>``).
"""

from __future__ import annotations

import itertools
import math
import signal
import time

from test_delivery import Delivery, queue_empty
from test_delivery_peers import (
    SENDER,
    SmtpPeer,
    alias_inbox,
    body_of,
    inbox,
    log_matches,
    send,
)

SLACK = 2.5  # seconds an attempt may come late on a loaded 2-core machine
EARLY = 0.05  # clock granularity between info's mtime and the server's clock


def system(instance, **env: str) -> Delivery:
    return Delivery(instance, env=instance.env(CHANSKIP_REMOTE="1", **env))


def route(instance, peer: SmtpPeer, domain: str = "peer.test") -> None:
    # penalty 0: no tcpto bookkeeping, every attempt really connects
    (instance.control / "smtproutes").write_text(f"{domain}:{peer.ip}:{peer.port}:0\n")


def birth_of(instance, timeout: float = 20) -> float:
    """mtime of the only info/<id> file, once preprocessing made it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        infos = instance.files("info")
        if infos:
            try:
                return infos[0].stat().st_mtime
            except FileNotFoundError:
                pass
        time.sleep(0.01)
    raise AssertionError("no info file")


def due_after(birth: float, attempt: float, chanskip: int = 1) -> float:
    """When the next attempt is due if a pass started at ``attempt``."""
    n = math.isqrt(max(0, int(attempt - birth))) + chanskip
    return birth + n * n


PASS_LEAD = 0.5  # a pass starts a little before the server sees the connection


def test_451_twice_then_accepted_on_the_retry_schedule(instance):
    plan = lambda n: {"rcpt": "451 4.3.0 mailbox busy, try later"} if n < 2 else {}  # noqa: E731
    with SmtpPeer(plan=plan) as peer:
        route(instance, peer)
        d = system(instance)
        try:
            send(instance, SENDER, "rita@peer.test", message=b"Subject: retry\n\nthird time\n")
            birth = birth_of(instance)
            d.wait_for(lambda: queue_empty(instance) and log_matches(d, "end msg"), timeout=40)
            time.sleep(1.5)  # a stray extra attempt would show up now
        finally:
            d.stop()
    starts = [s.start for s in peer.sessions]
    offsets = [round(t - birth, 2) for t in starts]
    print(f"attempts at {offsets} s after birth")
    assert len(starts) == 3, offsets
    assert starts[0] - birth < SLACK, offsets
    # attempt k+1 is due at birth + (isqrt(t_k - birth) + 1)^2, t_k being
    # when qmail-send started attempt k's pass (a moment before the server
    # saw it): 1 s, then 4 s after birth
    for prev, got in itertools.pairwise(starts):
        assert got >= due_after(birth, prev - PASS_LEAD) - EARLY, offsets
        assert got < due_after(birth, prev) + SLACK, offsets
    assert starts[1] - birth >= 1 - EARLY and starts[2] - birth >= 4 - EARLY, offsets
    assert [body_of(m) for m in peer.messages] == [b"third time\n"]
    defer = log_matches(d, ": deferral: ")
    assert len(defer) == 2
    for line in defer:
        assert line.endswith(
            f"deferral: From:_<{SENDER}>_RCPT:_<rita@peer.test>_127.0.0.1_does_not_like_"
            "recipient./Remote_host_said:_451_4.3.0_mailbox_busy,_try_later/"
            "Giving_up_on_127.0.0.1./ queue" + line[-1]
        ), line
    assert len(log_matches(d, ": success: ")) == 1
    assert queue_empty(instance) and inbox(instance) == []


def test_550_bounces_once_and_bounce_of_bounce_goes_to_doublebounceto(instance):
    plan = lambda n: {"rcpt": "550 5.1.1 no such user here"}  # noqa: E731
    with SmtpPeer(plan=plan) as peer:
        route(instance, peer)
        d = system(instance)
        try:
            send(instance, SENDER, "nobody@peer.test", message=b"Subject: hard\n\nsorry\n")
            send(instance, "", "ghost@peer.test", message=b"Subject: null sender\n\nbody2\n")
            d.wait_for(
                lambda: (
                    queue_empty(instance)
                    and len(inbox(instance)) == 1
                    and len(alias_inbox(instance)) == 1
                    and len(log_matches(d, "end msg")) == 4
                ),
                timeout=40,
            )
            # nothing more comes, even when everything is retried now
            d.proc.send_signal(signal.SIGALRM)
            time.sleep(1.5)
        finally:
            d.stop()
    assert len(peer.sessions) == 2  # one attempt each: no retry of a 5xx
    assert len(inbox(instance)) == 1 and len(alias_inbox(instance)) == 1

    bounce = inbox(instance)[0].read_bytes()
    assert bounce.startswith(b"Return-Path: <>\nDelivered-To: " + SENDER.encode() + b"\n")
    assert b"\nX-Bounced-Address: <nobody@peer.test>\n" in bounce
    assert b"\nFrom: MAILER-DAEMON@mx.example.test\n" in bounce
    assert b"\nTo: " + SENDER.encode() + b"\n" in bounce
    want = (
        b"<nobody@peer.test>:\n"
        b"From: <" + SENDER.encode() + b"> RCPT: <nobody@peer.test> "
        b"127.0.0.1 does not like recipient.\n"
        b"Remote host said: 550 5.1.1 no such user here\n"
        b"Giving up on 127.0.0.1.\n"
        b"\n--- Enclosed is a copy of the message.\n"
    )
    assert b"I've given up. Sorry it didn't work out.\n\n" + want in bounce, bounce.decode()
    assert b"Return-Path: <" + SENDER.encode() + b">\nReceived: " in bounce
    assert b"\nsorry\n" in bounce

    double = alias_inbox(instance)[0].read_bytes()
    assert double.startswith(b"Return-Path: <#@[]>\nDelivered-To: ")
    assert b"\nTo: postmaster@mx.example.test\n" in double
    assert (
        b"I tried to deliver a bounce message to this address, but the bounce bounced!\n\n"
        b"<ghost@peer.test>:\n"
    ) in double
    assert (
        b"<ghost@peer.test>:\nFrom: <> RCPT: <ghost@peer.test> 127.0.0.1 does not like "
        b"recipient.\nRemote host said: 550 5.1.1 no such user here\nGiving up on 127.0.0.1.\n"
        b"\n--- Enclosed is the original bounce.\n"
    ) in double
    assert b"Return-Path: <>\n" in double.split(b"--- Enclosed is the original bounce.")[1]

    fails = log_matches(d, ": failure: ")
    assert len(fails) == 2
    assert any(
        f"failure: From:_<{SENDER}>_RCPT:_<nobody@peer.test>_127.0.0.1_does_not_like_recipient./"
        "Remote_host_said:_550_5.1.1_no_such_user_here/Giving_up_on_127.0.0.1./ queue" in line
        for line in fails
    ), fails
    assert len(log_matches(d, "bounce msg ")) == 2  # the bounce and the double bounce
    assert not log_matches(d, "discarding")


def test_queuelifetime_turns_deferral_into_bounce(instance):
    (instance.control / "queuelifetime").write_text("3\n")
    plan = lambda n: {"rcpt": "452 4.2.2 over quota for now"}  # noqa: E731
    with SmtpPeer(plan=plan) as peer:
        route(instance, peer)
        d = system(instance)
        try:
            send(instance, SENDER, "slow@peer.test", message=b"Subject: too long\n\nold\n")
            birth = birth_of(instance)
            d.wait_for(
                lambda: queue_empty(instance) and len(inbox(instance)) == 1,
                timeout=40,
            )
            d.wait_for(lambda: len(log_matches(d, "end msg")) == 2)
        finally:
            d.stop()
    starts = [s.start for s in peer.sessions]
    offsets = [round(t - birth, 2) for t in starts]
    print(f"attempts at {offsets} s after birth")
    # attempts at ~0, ~1, ~4 s: only the one started after birth + 3 (dying)
    # turns the 4xx into a bounce
    assert len(starts) >= 2, offsets
    assert starts[-1] - birth > 3, offsets
    assert all(t - birth <= 3 + PASS_LEAD for t in starts[:-1]), offsets
    for prev, got in itertools.pairwise(starts):
        assert got >= due_after(birth, prev - PASS_LEAD) - EARLY, offsets
    defer = log_matches(d, ": deferral: ")
    (fail,) = log_matches(d, ": failure: ")
    assert len(defer) == len(starts) - 1
    assert fail.endswith(
        "Remote_host_said:_452_4.2.2_over_quota_for_now/Giving_up_on_127.0.0.1./"
        "I'm_not_going_to_try_again;_this_message_has_been_in_the_queue_too_long./ queue" + fail[-1]
    ), fail
    bounce = inbox(instance)[0].read_bytes()
    assert (
        b"<slow@peer.test>:\nFrom: <" + SENDER.encode() + b"> RCPT: <slow@peer.test> "
        b"127.0.0.1 does not like recipient.\n"
        b"Remote host said: 452 4.2.2 over quota for now\n"
        b"Giving up on 127.0.0.1.\n"
        b"I'm not going to try again; this message has been in the queue too long.\n\n"
    ) in bounce, bounce.decode()
    assert b"\nX-Bounced-Address: <slow@peer.test>\n" in bounce
