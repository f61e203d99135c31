"""Rule lookup order and the address text forms it depends on."""

from __future__ import annotations

import os

import pytest

from indimail.core import cdb, control
from indimail.ucspi import addr, rules
from indimail.ucspi.tcpserver import parse_options, safe


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("::1", "::1"),
        ("::", "::"),
        ("2001:db8::1", "2001:db8::1"),
        ("1:0:0:2:0:0:0:3", "1::2:0:0:0:3"),  # first run compressed, as the original
        ("1:2:3:4:5:6:7:0", "1:2:3:4:5:6:7:0"),
        ("1::", "1::"),
        ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),
        ("FE80::A:B", "fe80::a:b"),
    ],
)
def test_ip6_fmt(text: str, want: str) -> None:
    ip16 = addr.parse(text)
    assert ip16 is not None
    assert addr.ip6_fmt(ip16) == want


def test_expand_and_reverse() -> None:
    assert addr.ip6_expand("2001:db8::1") == "2001:0db8:0000:0000:0000:0000:0000:0001"
    assert addr.ip6_expand("1.2.3.4") is None
    assert addr.reverse_name("1.2.3.4") == "4.3.2.1."
    assert addr.reverse_name("::ffff:1.2.3.4") == "4.3.2.1."
    assert addr.reverse_name("2001:db8::1") == "1." + "0." * 23 + "8.b.d.0.1.0.0.2."


def _reader(tmp_path, lines: list[str]) -> cdb.Reader:
    path = tmp_path / "r.cdb"
    w = cdb.Writer(path, tmp_path / "r.tmp")
    for key, data in rules.compile_lines([line.encode() + b"\n" for line in lines]):
        w.add(key, data)
    w.finish()
    return cdb.Reader(path)


RULES = [
    'joe@10.1.2.3:allow,K="info@ip"',
    'joe@=h.example.com:allow,K="info@=host"',
    '10.1.2.3:allow,K="ip"',
    '=h.example.com:allow,K="=host"',
    '10.1.:allow,K="10.1."',
    '10.:allow,K="10."',
    '10.2/16:allow,K="/16"',
    '10.0/8:allow,K="/8"',
    '=.example.com:allow,K=".example.com"',
    '=.com:allow,K=".com"',
    '=:allow,K="="',
    ":deny",
    '2001:db8::5:allow,K="v6"',
    '2001:db8::/32:allow,K="v6/32"',
    '2001:db8:1::/48:deny,K="v6/48"',
]


@pytest.mark.parametrize(
    ("ip", "host", "info", "want"),
    [
        ("10.1.2.3", "h.example.com", "joe", "info@ip"),
        ("10.1.2.4", "h.example.com", "joe", "info@=host"),
        ("10.1.2.3", "h.example.com", "bob", "ip"),
        ("10.1.2.4", "h.example.com", None, "=host"),
        ("10.1.9.9", "x.example.com", None, "10.1."),
        ("10.2.9.9", None, None, "10."),  # dotted prefixes before CIDR
        ("11.2.9.9", "a.b.example.com", None, ".example.com"),
        ("11.2.9.9", "a.b.com", None, ".com"),
        ("11.2.9.9", "a.b.net", None, "="),
        ("11.2.9.9", None, None, None),  # the empty rule: deny
        ("2001:db8::5", None, None, "v6"),
        ("2001:db8:1::7", None, None, "v6/48"),
        ("2001:db8:2::7", None, None, "v6/32"),
    ],
)
def test_lookup_order(tmp_path, ip, host, info, want) -> None:
    with _reader(tmp_path, RULES) as r:
        d = rules.lookup(r, ip, host, info)
    if want is None:
        assert d.key == b"" and d.deny
    else:
        assert dict(d.env)["K"] == want


def test_cidr_longest_prefix_wins(tmp_path) -> None:
    with _reader(tmp_path, ["10.0/8:deny", '10.1.2/24:allow,X="24"']) as r:
        assert rules.lookup(r, "10.1.2.77").env == [("X", "24")]
        assert rules.lookup(r, "10.1.3.77").deny
        assert rules.lookup(r, "11.1.3.77").key is None


def test_decision_env_and_describe(tmp_path) -> None:
    with _reader(tmp_path, ['1.2.3.4:allow,A="1",!B', '1.2.3.5:deny,C="x"']) as r:
        d = rules.lookup(r, "1.2.3.4")
        assert d.allow and d.env == [("A", "1"), ("B", None)]
        assert rules.describe(d) == (
            "rule 1.2.3.4:\nset environment variable A=1\n"
            "unset environment variable B\nallow connection\n"
        )
        d = rules.lookup(r, "1.2.3.5")
        assert d.deny
        assert rules.describe(d) == "rule 1.2.3.5:\ndeny connection\n"
        assert rules.describe(rules.lookup(r, "9.9.9.9")) == "default:\nallow connection\n"


def test_tcpserver_options_and_safe(monkeypatch) -> None:
    monkeypatch.delenv("MAXPERIP", raising=False)
    o, rest = parse_options(
        ["tcpserver", "-vHR", "-c", "7", "-C", "3", "-x", "r.cdb", "0", "25", "p"]
    )
    assert (o.verbosity, o.remotehost, o.remoteinfo, o.limit, o.perhostlimit, o.maxperip) == (
        2,
        False,
        False,
        7,
        3,
        3,
    )
    assert o.rules == "r.cdb" and rest == ["0", "25", "p"]
    monkeypatch.setenv("MAXPERIP", "5")
    o, _ = parse_options(["tcpserver", "0", "25", "p"])
    assert o.maxperip == o.perhostlimit == 5
    assert safe("a b%c\x01") == "a?b?c?"
    assert safe("x" * 120) == "x" * 100 + "..."


def _build(path, lines: list[str]) -> str:
    w = cdb.Writer(path, str(path) + ".tmp")
    for key, data in rules.compile_lines([line.encode() + b"\n" for line in lines]):
        w.add(key, data)
    w.finish()
    return str(path)


def _count_reads(monkeypatch) -> list[int]:
    reads = [0]
    real = cdb.Reader.from_fd.__func__

    def counting(cls, fd):
        reads[0] += 1
        return real(cls, fd)

    monkeypatch.setattr(cdb.Reader, "from_fd", classmethod(counting))
    return reads


def test_cache_answers_a_known_client_without_reading_the_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(control, "RACY_NS", 0)  # every file counts as settled
    path = _build(tmp_path / "r.cdb", ['1.2.3.4:allow,A="1"', "1.2.3.5:deny"])
    reads = _count_reads(monkeypatch)
    cache = rules.Cache(path)
    for _ in range(3):
        assert cache.lookup("1.2.3.4").env == [("A", "1")]
        assert cache.lookup("1.2.3.5").deny
        assert cache.lookup("1.2.3.6").key is None  # no rule: kept as well
    assert reads[0] == 3  # once per client, not per connection


def test_cache_sees_a_rebuilt_file_at_the_next_lookup(tmp_path, monkeypatch) -> None:
    """tcprules renames a new cdb into place: the next connection follows it."""
    monkeypatch.setattr(control, "RACY_NS", 0)
    path = _build(tmp_path / "r.cdb", ['1.2.3.4:allow,A="1"'])
    cache = rules.Cache(path)
    assert cache.lookup("1.2.3.4").env == [("A", "1")]
    _build(tmp_path / "r.cdb", ["1.2.3.4:deny"])
    assert cache.lookup("1.2.3.4").deny
    os.unlink(path)
    with pytest.raises(FileNotFoundError):
        cache.lookup("1.2.3.4")


def test_cache_rereads_a_file_changed_within_the_racy_window(tmp_path, monkeypatch) -> None:
    """A file changed in the last two seconds is read at every lookup: an edit
    in the same timestamp tick, keeping the size, could not be told apart."""
    path = _build(tmp_path / "r.cdb", ["1.2.3.4:deny"])
    reads = _count_reads(monkeypatch)
    cache = rules.Cache(path)
    assert cache.lookup("1.2.3.4").deny
    assert cache.lookup("1.2.3.4").deny
    assert reads[0] == 2 and not cache.decisions


def test_cache_is_bounded(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(control, "RACY_NS", 0)
    monkeypatch.setattr(rules.Cache, "MAX", 4)
    cache = rules.Cache(_build(tmp_path / "r.cdb", ["10.:deny"]))
    for n in range(10):
        assert cache.lookup(f"10.0.0.{n}").deny
        assert len(cache.decisions) <= 4
