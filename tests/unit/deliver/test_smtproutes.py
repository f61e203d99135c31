"""smtproutes syntax and lookup order."""

from __future__ import annotations

from indimail.deliver.smtproutes import build_map, lookup, parse_envstr, parse_value, suffixes

TABLE = build_map(
    [
        "example.com:relay.example.net",
        ".example.com:sub-relay.example.net:2525",
        "plain.example.com:",
        ":default.example.net",
        "!@:bounce.example.net:26",
        "Upper.Test:upper.example.net",
        "dup.test:first",
        "dup.test:second",
        "no colon line",
    ]
)


def test_suffixes() -> None:
    assert suffixes("a.b.c") == ["a.b.c", ".b.c", ".c", ""]


def test_exact_then_dot_suffix_then_default() -> None:
    assert lookup(TABLE, "example.com").relay == "relay.example.net"
    r = lookup(TABLE, "mx.sub.example.com")
    assert (r.relay, r.port) == ("sub-relay.example.net", 2525)
    assert lookup(TABLE, "elsewhere.org").relay == "default.example.net"


def test_empty_relay_means_mx() -> None:
    assert lookup(TABLE, "plain.example.com") is None


def test_case_insensitive_and_last_wins() -> None:
    assert lookup(TABLE, "upper.test").relay == "upper.example.net"
    assert lookup(TABLE, "dup.test").relay == "second"


def test_null_sender_route() -> None:
    r = lookup(TABLE, "example.com", null_sender=True)
    assert (r.relay, r.port) == ("bounce.example.net", 26)


def test_no_default_no_route() -> None:
    assert lookup(build_map(["a.test:b"]), "c.test") is None


def test_full_syntax() -> None:
    r = parse_value("smart.example.net:587:0:300 joe pa:ss AUTH_SMTP=LOGIN,FOO=")
    assert (r.relay, r.port, r.penalty, r.tolerance) == ("smart.example.net", 587, 0, 300)
    assert (r.user, r.password, r.envstr) == ("joe", "pa:ss", "AUTH_SMTP=LOGIN,FOO=")
    assert parse_envstr(r.envstr) == {"AUTH_SMTP": "LOGIN", "FOO": None}


def test_bracket_ip_and_ipv6() -> None:
    assert parse_value("[192.0.2.1]:2525").relay == "[192.0.2.1]"
    r = parse_value("[2001:db8::1]:2525")
    assert (r.relay, r.port) == ("[2001:db8::1]", 2525)


def test_auth_lookup_forms() -> None:
    assert parse_value("relay /s").auth_lookup == "/s"
    assert parse_value("relay").user is None
    assert parse_value("relay joe").user is None  # no password: no AUTH


def test_mx_with_port() -> None:
    r = parse_value(":2525")
    assert (r.relay, r.port) == ("", 2525)
