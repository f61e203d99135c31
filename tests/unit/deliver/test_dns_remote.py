"""qmail-remote's DNS: MX order, A fallback, IDN, NXDOMAIN, against a DNS
server on 127.0.0.1:<random port> (dnspython) named by DNSCACHEIP."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

CASES = Path(__file__).parent / "remote_cases"
sys.path.insert(0, str(CASES))

from remote_harness import DnsServer, ScriptedServer, base_env, run_remote  # noqa: E402

from indimail.deliver import dns as rdns  # noqa: E402

RECORDS = {
    ("example.test", "MX"): [
        "20 mx2.example.test.",
        "10 mx1.example.test.",
        "30 mx3.example.test.",
    ],
    ("mx1.example.test", "A"): ["127.0.0.2"],
    ("mx1.example.test", "AAAA"): ["fd00::1"],
    ("mx2.example.test", "A"): ["127.0.0.3", "127.0.0.4"],
    ("mx3.example.test", "A"): ["127.0.0.5"],
    ("nomx.test", "A"): ["127.0.0.6"],
    ("xn--bcher-kva.example", "MX"): ["5 mail.xn--bcher-kva.example."],
    ("mail.xn--bcher-kva.example", "A"): ["127.0.0.7"],
    ("nullmx.test", "MX"): ["0 ."],
    ("equal.test", "MX"): ["10 a.equal.test.", "10 b.equal.test.", "10 c.equal.test."],
    ("a.equal.test", "A"): ["127.0.1.1"],
    ("b.equal.test", "A"): ["127.0.1.2"],
    ("c.equal.test", "A"): ["127.0.1.3"],
}


@pytest.fixture
def dnsd():
    server = DnsServer(RECORDS).start()
    yield server
    server.stop()


@pytest.fixture
def resolver(dnsd):
    return rdns.make_resolver({"DNSCACHEIP": dnsd.address, "DNSTIMEOUT": "3"})


def test_mx_preference_order_aaaa_first(resolver) -> None:
    ips = rdns.mx_ips("example.test", resolver, 12345)
    assert [(x.pref, x.ip) for x in ips][:2] == [(10, "fd00::1"), (10, "127.0.0.2")]
    assert [x.pref for x in ips] == [10, 10, 20, 20, 30]
    assert {x.ip for x in ips if x.pref == 20} == {"127.0.0.3", "127.0.0.4"}
    assert ips[0].fqdn == "mx1.example.test"


def test_no_mx_falls_back_to_a(resolver) -> None:
    ips = rdns.mx_ips("nomx.test", resolver, 1)
    assert [(x.pref, x.ip, x.fqdn) for x in ips] == [(0, "127.0.0.6", "nomx.test")]


def test_idn_domain_is_looked_up_as_a_labels(resolver, dnsd) -> None:
    ips = rdns.mx_ips("bücher.example", resolver, 1)
    assert [x.ip for x in ips] == ["127.0.0.7"]
    assert ("xn--bcher-kva.example", "MX") in dnsd.queries


def test_nxdomain_is_hard(resolver) -> None:
    with pytest.raises(rdns.DnsHard):
        rdns.mx_ips("nosuch.test", resolver, 1)


def test_null_mx_gives_nothing(resolver) -> None:
    assert rdns.mx_ips("nullmx.test", resolver, 1) == []


def test_equal_preferences_are_shuffled(resolver) -> None:
    orders = {tuple(x.ip for x in rdns.mx_ips("equal.test", resolver, seed)) for seed in range(40)}
    assert len(orders) > 1
    assert all(len(o) == 3 for o in orders)


def test_unreachable_server_is_soft() -> None:
    res = rdns.make_resolver({"DNSCACHEIP": "127.0.0.1:9", "DNSTIMEOUT": "1"})
    with pytest.raises(rdns.DnsSoft):
        rdns.mx_ips("example.test", res, 1)


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("127.0.0.1", [("127.0.0.1", 53)]),
        ("127.0.0.1:5353 10.0.0.1", [("127.0.0.1", 5353), ("10.0.0.1", 53)]),
        ("::1,[::1]:5300", [("::1", 53), ("::1", 5300)]),
    ],
)
def test_dnscacheip_syntax(value, want) -> None:
    assert rdns.parse_servers(value) == want


def test_literals() -> None:
    assert rdns.ip_literal("[1.2.3.4]") == "1.2.3.4"
    assert rdns.ip_literal("[IPv6:::1]") == "::1"
    assert rdns.ip_literal("example.com") is None


# -- through qmail-remote -------------------------------------------------------


def test_nxdomain_is_permanent_failure(tmp_path, dnsd) -> None:
    env = base_env(tmp_path)
    env["DNSCACHEIP"] = dnsd.address
    _, out = run_remote(
        ["qmail-remote", "nosuch.test", "a@b.test", "", "5", "x@nosuch.test"], b"x\n", env, tmp_path
    )
    assert out == b"DSorry, I couldn't find any host named nosuch.test. (#5.1.2)\n\0"


def test_dns_down_is_temporary(tmp_path) -> None:
    env = base_env(tmp_path)
    env["DNSTIMEOUT"] = "1"
    _, out = run_remote(
        ["qmail-remote", "example.test", "a@b.test", "", "5", "x@example.test"],
        b"x\n",
        env,
        tmp_path,
    )
    assert out == b"ZSorry, I couldn't find any host by that name. (#4.1.2)\n\0"


def test_null_mx_is_permanent(tmp_path, dnsd) -> None:
    env = base_env(tmp_path)
    env["DNSCACHEIP"] = dnsd.address
    _, out = run_remote(
        ["qmail-remote", "nullmx.test", "a@b.test", "", "5", "x@nullmx.test"], b"x\n", env, tmp_path
    )
    assert out == b"DSorry, I couldn't find a mail exchanger or IP address. (#5.4.4)\n\0"


def test_best_mx_is_me(tmp_path) -> None:
    server = DnsServer(
        {("self.test", "MX"): ["10 me.self.test."], ("me.self.test", "A"): ["127.0.0.1"]}
    )
    server.start()
    try:
        env = base_env(tmp_path)
        env["DNSCACHEIP"] = server.address
        _, out = run_remote(
            ["qmail-remote", "self.test", "a@b.test", "", "5", "x@self.test"], b"x\n", env, tmp_path
        )
    finally:
        server.stop()
    assert out.startswith(
        b"DSorry. Although I'm listed as a best-preference MX or A for that host,\n"
    )
    assert out.endswith(b"/locals file, so I don't treat it as local. (#5.4.6)\n\0")


def test_mx_delivery_uses_lowest_preference(tmp_path) -> None:
    """MX 10 -> 127.0.0.2, MX 20 -> 127.0.0.3: only the first is used."""
    script = [
        ("S", "220 hi"),
        ("C", "EHLO helo.example.test"),
        ("S", "250 hi"),
        ("C", "MAIL FROM:<a@b.test>"),
        ("S", "250 ok"),
        ("C", "RCPT TO:<x@mx.test>"),
        ("S", "250 ok"),
        ("C", "DATA"),
        ("S", "354 go"),
        ("C", "<MESSAGE>"),
        ("S", "250 ok"),
        ("C", "QUIT"),
    ]
    first = ScriptedServer("127.0.0.2", [script]).start()
    port = first.port
    dnsd = DnsServer(
        {
            ("mx.test", "MX"): ["20 two.mx.test.", "10 one.mx.test."],
            ("one.mx.test", "A"): ["127.0.0.2"],
            ("two.mx.test", "A"): ["127.0.0.3"],
        }
    ).start()
    try:
        env = base_env(tmp_path)
        env["DNSCACHEIP"] = dnsd.address
        (Path(env["CONTROLDIR"]) / "smtproutes").write_text(f"mx.test::{port}\n")
        _, out = run_remote(
            ["qmail-remote", "mx.test", "a@b.test", "", "5", "x@mx.test"], b"x\n", env, tmp_path
        )
    finally:
        first.stop()
        dnsd.stop()
    assert out.endswith(
        b"K127.0.0.2 accepted message - Protocol SMTP.\nRemote host said: 250 ok\n\0"
    )
    assert first.received == first.expected()
