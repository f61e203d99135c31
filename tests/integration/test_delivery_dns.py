"""Remote delivery through DNS, the whole system: sendmail -> qscheduler -> qmail-remote.

A dnspython server on 127.0.0.1 (remote_harness.DnsServer, named by
DNSCACHEIP) answers MX, A and AAAA for test domains whose addresses are
loopback addresses where SmtpPeer servers of the test listen:

* MX preference: the lower preference gets the mail; with it down
  (connection refused) the next one does, in the same delivery;
* a domain without MX is delivered to its A record;
* an MX host with only an AAAA record (::1, declared ``notipme``);
* an IDN domain: U-label in the address, A-label in the DNS queries and
  in the RCPT sent to a server without SMTPUTF8;
* NXDOMAIN: one bounce to the sender with the original's text.

Port: qmail-remote talks to port 25 unless told otherwise.  The servers
listen on 25 of random 127.x.y.z addresses when that is possible (root, and
the port free there); otherwise all of them share one free port and the
instance gets ``domain::port`` smtproutes lines, the extension meaning "use
the MX hosts, on this port" (the MX lookup still happens).
"""

from __future__ import annotations

import random
import re
import socket
import sys
from pathlib import Path

import pytest
from test_delivery import Delivery, queue_empty
from test_delivery_peers import SENDER, SmtpPeer, body_of, inbox, log_matches, send

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "deliver" / "remote_cases"))

from remote_harness import DnsServer


def _bind_all(addrs: list[str], port: int) -> list[socket.socket]:
    socks: list[socket.socket] = []
    try:
        for ip in addrs:
            s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ip, port))
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


def bind_servers(addrs: list[str]) -> tuple[list[socket.socket], int]:
    """Bound sockets for every address: port 25 if free on all, else a
    port that is free on all of them."""
    try:
        return _bind_all(addrs, 25), 25
    except OSError:
        pass
    for _ in range(30):
        with socket.socket(socket.AF_INET6 if ":" in addrs[0] else socket.AF_INET) as s:
            s.bind((addrs[0], 0))
            port = s.getsockname()[1]
        try:
            return _bind_all(addrs, port), port
        except OSError:
            continue
    raise RuntimeError("no port free on all test addresses")


def have_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class Net:
    """DNS zone + SMTP servers + the instance's controls for them."""

    def __init__(self, instance, servers: dict[str, str], zone, routed: list[str]) -> None:
        self.instance = instance
        names = list(servers)
        socks, self.port = bind_servers([servers[n] for n in names])
        self.peers = {
            n: SmtpPeer(servers[n], sock=s).start() for n, s in zip(names, socks, strict=True)
        }
        self.dns = DnsServer(zone).start()
        if self.port != 25:
            routes = "".join(f"{domain}::{self.port}\n" for domain in routed)
            (instance.control / "smtproutes").write_text(routes)
        print(f"SMTP servers on port {self.port}")

    def stop(self) -> None:
        for p in self.peers.values():
            p.stop()
        self.dns.stop()

    def system(self) -> Delivery:
        env = self.instance.env(DNSCACHEIP=self.dns.address, DNSTIMEOUT="5")
        return Delivery(self.instance, env=env)


def base_addr() -> str:
    return f"127.{random.randint(100, 199)}.{random.randint(0, 255)}"


@pytest.fixture
def net_factory(instance):
    made: list[Net] = []

    def make(servers, zone, routed) -> Net:
        n = Net(instance, servers, zone, routed)
        made.append(n)
        return n

    yield make
    for n in made:
        n.stop()


def message(subject: str) -> bytes:
    return f"Subject: {subject}\nFrom: {SENDER}\n\nbody of {subject}\n".encode()


def test_mx_preference_then_next_mx_when_best_is_down(instance, net_factory):
    b = base_addr()
    zone = {
        ("prio.test", "MX"): ["20 mx2.prio.test.", "10 mx1.prio.test."],
        ("mx1.prio.test", "A"): [f"{b}.2"],
        ("mx2.prio.test", "A"): [f"{b}.3"],
    }
    net = net_factory({"mx1": f"{b}.2", "mx2": f"{b}.3"}, zone, ["prio.test"])
    mx1, mx2 = net.peers["mx1"], net.peers["mx2"]
    d = net.system()
    try:
        send(instance, SENDER, "ann@prio.test", message=message("first"))
        d.wait_for(lambda: queue_empty(instance) and log_matches(d, "end msg"))
        assert [body_of(m) for m in mx1.messages] == [b"body of first\n"]
        assert mx2.sessions == []
        # the best MX goes away: the same delivery falls through to the next
        mx1.go_down()
        send(instance, SENDER, "ann@prio.test", message=message("second"))
        d.wait_for(lambda: queue_empty(instance) and len(log_matches(d, "end msg")) == 2)
    finally:
        d.stop()
    assert [body_of(m) for m in mx2.messages] == [b"body of second\n"]
    assert len(mx1.sessions) == 1
    assert ("prio.test", "MX") in net.dns.queries
    ok = log_matches(d, ": success: ")
    assert len(ok) == 2
    assert f"_{b}.2_accepted_message" in ok[0] and f"_{b}.3_accepted_message" in ok[1]
    assert not log_matches(d, "deferral")
    for s in (*mx1.sessions, *mx2.sessions):
        assert s.commands[:4] == [
            "EHLO mx.example.test",
            f"MAIL FROM:<{SENDER}>",
            "RCPT TO:<ann@prio.test>",
            "DATA",
        ]
    assert inbox(instance) == []


def test_a_fallback_aaaa_and_idn(instance, net_factory):
    b = base_addr()
    servers = {"nomx": f"{b}.4", "idn": f"{b}.5"}
    zone = {
        # no MX at all: the A record is the mail host
        ("nomx.test", "A"): [f"{b}.4"],
        # IDN: only the A-label exists in the DNS
        ("xn--bcher-kva.test", "MX"): ["10 mail.xn--bcher-kva.test."],
        ("mail.xn--bcher-kva.test", "A"): [f"{b}.5"],
    }
    routed = ["nomx.test", "bücher.test"]
    v6 = have_ipv6_loopback()
    if v6:
        servers["v6"] = "::1"
        zone[("v6.test", "MX")] = ["10 mx.v6.test."]
        zone[("mx.v6.test", "AAAA")] = ["::1"]
        routed.append("v6.test")
        # ::1 is this host for qmail-remote unless notipme says otherwise
        (instance.control / "notipme").write_text("::1\n")
    net = net_factory(servers, zone, routed)
    d = net.system()
    rcpts = ["nora@nomx.test", "anna@bücher.test"] + (["vic@v6.test"] if v6 else [])
    try:
        for r in rcpts:
            send(instance, SENDER, r, message=message(r))
        d.wait_for(
            lambda: queue_empty(instance) and len(log_matches(d, "end msg")) == len(rcpts),
            timeout=40,
        )
    finally:
        d.stop()
    nomx, idn = net.peers["nomx"], net.peers["idn"]
    assert [body_of(m) for m in nomx.messages] == [b"body of nora@nomx.test\n"]
    assert ("nomx.test", "MX") in net.dns.queries and ("nomx.test", "A") in net.dns.queries
    assert [body_of(m) for m in idn.messages] == ["body of anna@bücher.test\n".encode()]
    # the server has no SMTPUTF8: the domain goes out as its A-label
    assert "RCPT TO:<anna@xn--bcher-kva.test>" in idn.sessions[0].commands
    assert ("xn--bcher-kva.test", "MX") in net.dns.queries
    assert not any(not name.isascii() for name, _ in net.dns.queries)
    if v6:
        assert [body_of(m) for m in net.peers["v6"].messages] == [b"body of vic@v6.test\n"]
        assert ("mx.v6.test", "AAAA") in net.dns.queries
    assert len(log_matches(d, ": success: ")) == len(rcpts)
    assert not log_matches(d, "deferral")


def test_idn_with_smtputf8_server_gets_the_u_label(instance, net_factory):
    b = base_addr()
    zone = {
        ("xn--bcher-kva.test", "MX"): ["10 mail.xn--bcher-kva.test."],
        ("mail.xn--bcher-kva.test", "A"): [f"{b}.6"],
    }
    net = net_factory({"idn": f"{b}.6"}, zone, ["bücher.test"])
    net.peers["idn"].plan = lambda n: {"ehlo": "250-peer.test\r\n250-8BITMIME\r\n250 SMTPUTF8"}
    d = net.system()
    try:
        send(instance, SENDER, "anna@bücher.test", message=message("utf8"))
        d.wait_for(lambda: queue_empty(instance) and log_matches(d, "end msg"))
    finally:
        d.stop()
    (s,) = net.peers["idn"].sessions
    assert f"MAIL FROM:<{SENDER}> SMTPUTF8" in s.commands
    assert "RCPT TO:<anna@bücher.test>" in s.commands
    assert s.message is not None and body_of(s.message) == b"body of utf8\n"


def test_nxdomain_bounces_to_sender(instance, net_factory):
    b = base_addr()
    net = net_factory({"unused": f"{b}.7"}, {("exists.test", "A"): [f"{b}.7"]}, [])
    d = net.system()
    try:
        send(instance, SENDER, "who@nosuch.test", message=message("nowhere"))
        d.wait_for(lambda: queue_empty(instance) and len(inbox(instance)) == 1)
        d.wait_for(lambda: len(log_matches(d, "end msg")) == 2)
    finally:
        d.stop()
    assert ("nosuch.test", "MX") in net.dns.queries
    assert net.peers["unused"].sessions == []
    (bounce,) = inbox(instance)
    data = bounce.read_bytes()
    assert data.startswith(b"Return-Path: <>\nDelivered-To: " + SENDER.encode() + b"\n")
    assert b"\nX-Bounced-Address: <who@nosuch.test>\n" in data
    assert (
        b"\n<who@nosuch.test>:\nSorry, I couldn't find any host named nosuch.test. (#5.1.2)\n\n"
        b"--- Enclosed is a copy of the message.\n"
    ) in data
    assert b"\nbody of nowhere\n" in data
    (fail,) = log_matches(d, ": failure: ")
    assert re.search(
        r"failure: Sorry,_I_couldn't_find_any_host_named_nosuch\.test\._\(#5\.1\.2\)/ queue\d$",
        fail,
    ), fail
    assert not log_matches(d, "deferral")
