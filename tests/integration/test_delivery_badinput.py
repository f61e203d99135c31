"""Bad input on either side of delivery: what defers, what bounces, what gets logged.

Checked against what the original (indimail-mta qmail-local / qmail-remote)
does:

* qmail-local defers (exit 111) when the home directory is sticky ("user
  is editing his .qmail file"), when a ``.qmail`` file is world-writable,
  when the home directory is missing, and when ``.qmail`` cannot be opened
  for EACCES/EPERM (only reachable when not root: root is never refused);
  the message stays queued and is delivered once the problem is gone.
* A message that already carries the recipient's ``Delivered-To`` line
  (from a ``.qmail`` forwarding to itself, or injected with it) fails
  permanently (exit 100) with "This message is looping ...": one bounce.
* qmail-remote: a reply that is not SMTP counts as 400 (smtpcode()); as a
  greeting that means "try the next MX", and with none left a deferral; a
  connection that dies after the message was sent is a deferral with
  "Possible duplicate!".  The next attempt succeeds when the server behaves.
"""

from __future__ import annotations

import os
import re
import signal

from test_delivery import Delivery, add_user, queue_empty
from test_delivery_peers import (
    CLOSE,
    SENDER,
    SmtpPeer,
    body_of,
    inbox,
    log_matches,
    make_maildir,
    send,
)


def deferral_texts(d: Delivery) -> list[str]:
    return [
        re.sub(r" queue\d+$", "", line.split(": deferral: ", 1)[1])
        for line in log_matches(d, ": deferral: ")
    ]


def qstat(instance) -> bytes:
    return instance.run("qmail-qstat").stdout


def test_unusable_home_or_dotqmail_defers_not_loses(instance):
    alice = add_user(instance, "alice")  # home being edited: sticky
    bob = add_user(instance, "bob")  # .qmail writable by others
    carol = add_user(instance, "carol")  # home missing (not mounted)
    users = {"alice": alice, "bob": bob, "carol": carol}
    for home in users.values():
        make_maildir(home / "Maildir")
        (home / ".qmail").write_text("./Maildir/\n")
    alice.chmod(0o1755)
    (bob / ".qmail").chmod(0o666)
    carol_away = carol.with_name("carol.away")
    carol.rename(carol_away)
    expected = {
        "Home_directory_is_sticky:_user_is_editing_his_.qmail_file._(#4.2.1)/",
        "Uh-oh:_.qmail_file_is_writable._(#4.7.0)/",
        f"Unable_to_switch_to_{carol}:_No_such_file_or_directory._(#4.3.0)/",
    }
    if os.getuid() != 0:  # EACCES on .qmail: only a non-root run can be refused
        dave = add_user(instance, "dave")
        make_maildir(dave / "Maildir")
        (dave / ".qmail").write_text("./Maildir/\n")
        (dave / ".qmail").chmod(0o000)
        users["dave"] = dave
        expected.add("Unable_to_open_.qmail:_Permission_denied._(#4.3.0)/")
    rcpts = [f"{u}@mx.example.test" for u in users]

    d = Delivery(instance)
    try:
        send(instance, SENDER, *rcpts, message=b"Subject: keep me\n\nnot lost\n")
        d.wait_for(lambda: len(log_matches(d, ": deferral: ")) == len(rcpts))
        assert set(deferral_texts(d)) == expected, deferral_texts(d)
        assert not log_matches(d, ": failure: ") and not log_matches(d, ": success: ")
        assert qstat(instance).startswith(b"messages in queue: 1\n")
        # repair everything; ALRM: retry now instead of at birth + 100 s
        alice.chmod(0o755)
        (bob / ".qmail").chmod(0o644)
        carol_away.rename(carol)
        if "dave" in users:
            (users["dave"] / ".qmail").chmod(0o644)
        d.proc.send_signal(signal.SIGALRM)
        d.wait_for(lambda: queue_empty(instance) and log_matches(d, "end msg"))
    finally:
        d.stop()
    for home in users.values():
        (mail,) = (home / "Maildir" / "new").iterdir()
        assert body_of(mail.read_bytes()) == b"not lost\n"
    assert len(log_matches(d, ": success: ")) == len(rcpts)
    assert not log_matches(d, ": failure: ") and inbox(instance) == []


def test_mail_loop_bounces_once_per_message(instance):
    alice = add_user(instance, "alice")
    bob = add_user(instance, "bob")
    make_maildir(alice / "Maildir")
    make_maildir(bob / "Maildir")
    (alice / ".qmail").write_text("&alice@mx.example.test\n")  # forwards to itself
    (bob / ".qmail").write_text("./Maildir/\n")
    d = Delivery(instance)
    try:
        send(instance, SENDER, "alice@mx.example.test", message=b"Subject: loop 1\n\nround\n")
        send(
            instance,
            SENDER,
            "bob@mx.example.test",
            message=b"Delivered-To: bob@mx.example.test\nSubject: loop 2\n\nbeen here\n",
        )
        # alice's message, its forwarded copy, bob's message, two bounces
        d.wait_for(lambda: queue_empty(instance) and len(log_matches(d, "end msg")) == 5)
    finally:
        d.stop()
    loop = "This message is looping: it already has my Delivered-To line. (#5.4.6)"
    fails = log_matches(d, ": failure: ")
    assert len(fails) == 2
    for line in fails:
        assert re.search(r": failure: " + re.escape(loop.replace(" ", "_")) + r"/ queue\d$", line)
    forwarded = [line for line in log_matches(d, ": success: ") if "did_0+1+0/qp_" in line]
    assert len(forwarded) == 1
    assert list((alice / "Maildir" / "new").iterdir()) == []
    assert list((bob / "Maildir" / "new").iterdir()) == []
    bounces = [p.read_bytes() for p in inbox(instance)]
    assert len(bounces) == 2
    by_rcpt = {re.search(rb"\nX-Bounced-Address: <([^>]*)>\n", b).group(1): b for b in bounces}
    assert set(by_rcpt) == {b"alice@mx.example.test", b"bob@mx.example.test"}
    for rcpt, b in by_rcpt.items():
        assert b"\n<" + rcpt + b">:\n" + loop.encode() + b"\n\n--- Enclosed" in b
    # the looping copy of alice's message carries the forwarding headers
    enclosed = by_rcpt[b"alice@mx.example.test"].split(b"--- Enclosed is a copy")[1]
    assert b"\nDelivered-To: alice@mx.example.test\nX-Forwarded-To: alice@mx.example.test\n" in (
        enclosed
    )
    assert b"\nround\n" in enclosed


def test_garbage_from_the_mx_defers_then_delivers(instance):
    junk = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1 not smtp at all\r\n"
    greeting = SmtpPeer(plan=lambda n: {"greeting": junk} if n == 0 else {})
    after_ehlo = SmtpPeer(plan=lambda n: {"mail": "HTTP/1.1 400 Bad Request"} if n == 0 else {})
    with greeting, after_ehlo:
        (instance.control / "smtproutes").write_text(
            f"g1.test:127.0.0.1:{greeting.port}\ng2.test:127.0.0.1:{after_ehlo.port}\n"
        )
        d = Delivery(instance, env=instance.env(CHANSKIP_REMOTE="1"))
        try:
            send(instance, SENDER, "a@g1.test", message=b"Subject: g1\n\nbody g1\n")
            send(instance, SENDER, "b@g2.test", message=b"Subject: g2\n\nbody g2\n")
            d.wait_for(
                lambda: queue_empty(instance) and len(log_matches(d, "end msg")) == 2,
                timeout=40,
            )
        finally:
            d.stop()
    texts = deferral_texts(d)
    assert len(texts) == 2, texts
    # garbage greeting = 4xx greeting: next MX; none left -> no connection made
    assert (
        "Sorry,_I_wasn't_able_to_establish_a_SMTP_connection_for_127.0.0.1_to_127.0.0.1_port_"
        f"{greeting.port}_bind_IP_[::]._(#4.4.1)/"
    ) in texts, texts
    # garbage as a reply: code 400, a temporary refusal of the sender
    assert (
        "Connected_to_127.0.0.1_but_sender_was_rejected./Remote_host_said:_HTTP/1.1_400_Bad_Request/"
    ) in texts, texts
    assert greeting.sessions[0].commands == ["<EOF>"]  # never got as far as EHLO
    assert after_ehlo.sessions[0].commands[-1] in ("QUIT", "<EOF>")
    assert [body_of(m) for m in greeting.messages] == [b"body g1\n"]
    assert [body_of(m) for m in after_ehlo.messages] == [b"body g2\n"]
    assert len(log_matches(d, ": success: ")) == 2
    assert not log_matches(d, ": failure: ") and inbox(instance) == []


def test_connection_closed_in_data_defers_then_delivers(instance):
    with SmtpPeer(plan=lambda n: {"body": CLOSE} if n == 0 else {}) as peer:
        (instance.control / "smtproutes").write_text(f"peer.test:127.0.0.1:{peer.port}\n")
        d = Delivery(instance, env=instance.env(CHANSKIP_REMOTE="1"))
        try:
            send(instance, SENDER, "c@peer.test", message=b"Subject: cut\n\nsecond try\n")
            d.wait_for(lambda: queue_empty(instance) and log_matches(d, "end msg"), timeout=40)
        finally:
            d.stop()
    assert deferral_texts(d) == [
        f"From:_<{SENDER}>_RCPT:_<c@peer.test>_Connected_to_127.0.0.1_but_connection_died._"
        "Possible_duplicate!_(#4.4.2)/"
    ]
    assert len(peer.sessions) == 2
    assert peer.sessions[0].closed_by_peer
    assert [body_of(m) for m in peer.messages] == [b"second try\n"]
    assert len(log_matches(d, ": success: ")) == 1
    assert inbox(instance) == []
