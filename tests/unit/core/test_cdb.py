"""cdb reader and writer: layout, round trips, and hostile files."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indimail.core import cdb
from indimail.core.cdb import CdbError, Reader, Writer, cdb_hash, make_from_pairs

CORPUS = Path(__file__).parent / "cdb_corpus"
PAIR = struct.Struct("<II")


def build(tmp_path: Path, pairs, name: str = "t.cdb") -> Path:
    path = tmp_path / name
    make_from_pairs(path, tmp_path / (name + ".tmp"), pairs)
    return path


def build_bytes(pairs) -> bytes:
    """A cdb image, built in a throwaway directory (for module-level data)."""
    with tempfile.TemporaryDirectory() as tmp:
        return build(Path(tmp), pairs).read_bytes()


# -- hash ---------------------------------------------------------------------

# Values computed with an independent C implementation of djb's hash.
HASHES = [
    (b"", 5381),
    (b"a", 177604),
    (b"ab", 5860902),
    (b"hello", 178056679),
    (b"example.com", 3904343938),
    (b"postmaster@example.com", 843157414),
    (b"\x00\xff\x80\n", 2086596784),
    (b"x" * 1000, 422167813),
]


@pytest.mark.parametrize(("key", "expected"), HASHES)
def test_hash_known_values(key, expected):
    assert cdb_hash(key) == expected


# -- layout -------------------------------------------------------------------


def test_layout_of_one_record_is_djbs(tmp_path):
    # h("a") = 177604: table 196, 2 slots, home slot (h >> 8) % 2 = 1.
    data = build(tmp_path, [(b"a", b"b")]).read_bytes()
    record = PAIR.pack(1, 1) + b"ab"
    table = PAIR.pack(0, 0) + PAIR.pack(177604, 2048)
    header = b"".join(
        PAIR.pack(2058, 2 if i == 196 else 0) if i <= 196 else PAIR.pack(2074, 0)
        for i in range(256)
    )
    assert data == header + record + table


def test_empty_database_is_bare_header(tmp_path):
    data = build(tmp_path, []).read_bytes()
    assert data == PAIR.pack(2048, 0) * 256
    with Reader(tmp_path / "t.cdb") as r:
        assert r.get(b"") is None
        assert list(r.iter_items()) == []
        assert b"x" not in r


# -- round trips ----------------------------------------------------------------

ROUND_TRIPS = {
    "one key": [(b"key", b"value")],
    "empty key and data": [(b"", b"")],
    "duplicates": [(b"a", b"1"), (b"b", b"x"), (b"a", b"2"), (b"a", b"")],
    "binary": [(b"\x00\xff\n+,:->", b"\r\n\x00"), (bytes(range(256)), bytes(range(255, -1, -1)))],
    "long key": [(b"k" * 5000, b"d" * 70000)],
}


@pytest.mark.parametrize("pairs", ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_round_trip(tmp_path, pairs):
    path = build(tmp_path, pairs)
    assert not (tmp_path / "t.cdb.tmp").exists()
    with Reader(path) as r:
        assert list(r.iter_items()) == pairs
        for key in {k for k, _ in pairs}:
            expected = [d for k, d in pairs if k == key]
            assert r.get(key) == expected[0]
            assert r.get_all(key) == expected
            assert key in r
        assert r.get(b"absent") is None
        assert r.get_all(b"absent") == []


def test_ten_thousand_keys(tmp_path):
    pairs = [(b"key%d" % i, b"data%d" % (i * 7)) for i in range(10_000)]
    path = build(tmp_path, pairs)
    with Reader(path) as r:
        assert all(r.get(k) == d for k, d in pairs)
        assert r.get(b"key10000") is None
        assert list(r.iter_items()) == pairs


def test_from_bytes_matches_file(tmp_path):
    pairs = [(b"a", b"1"), (b"a", b"2")]
    r = Reader.from_bytes(build(tmp_path, pairs).read_bytes())
    assert r.get_all(b"a") == [b"1", b"2"]


def test_locate_counts_probes(tmp_path):
    with Reader(build(tmp_path, [(b"a", b"1"), (b"a", b"2")])) as r:
        hits = list(r.locate(b"a"))
    assert [p for _, _, p in hits] == [1, 2]


def test_contains_rejects_non_bytes(tmp_path):
    with Reader(build(tmp_path, [(b"a", b"1")])) as r:
        assert "a" not in r
        assert bytearray(b"a") in r


@given(st.dictionaries(st.binary(max_size=40), st.binary(max_size=80), max_size=60))
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_round_trip_property(tmp_path, mapping):
    path = build(tmp_path, list(mapping.items()), name="prop.cdb")
    with Reader(path) as r:
        assert dict(r.iter_items()) == mapping
        for key, data in mapping.items():
            assert r.get(key) == data
        assert (b"\xffnot-a-key" in r) == (b"\xffnot-a-key" in mapping)


# -- reader resource handling ---------------------------------------------------------


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        Reader(tmp_path / "nope.cdb")


def test_closed_reader_refuses_lookups(tmp_path):
    r = Reader(build(tmp_path, [(b"a", b"1")]))
    r.close()
    r.close()  # idempotent
    with pytest.raises(ValueError):
        r.get(b"a")


# -- writer -------------------------------------------------------------------------


def test_writer_replaces_atomically(tmp_path):
    path = build(tmp_path, [(b"old", b"1")])
    with Writer(path, tmp_path / "new.tmp") as w:
        w.add(b"new", b"2")
        assert Reader(path).get(b"old") == b"1"  # old db visible until finish
    assert not (tmp_path / "new.tmp").exists()
    assert Reader(path).get(b"new") == b"2"


def test_writer_aborts_on_exception(tmp_path):
    path = tmp_path / "t.cdb"
    with pytest.raises(RuntimeError), Writer(path, tmp_path / "t.tmp") as w:
        w.add(b"a", b"b")
        raise RuntimeError("boom")
    assert not (tmp_path / "t.tmp").exists()
    assert not path.exists()


def test_writer_refuses_use_after_finish(tmp_path):
    w = Writer(tmp_path / "t.cdb", tmp_path / "t.tmp")
    w.finish()
    with pytest.raises(ValueError):
        w.add(b"a", b"b")
    with pytest.raises(ValueError):
        w.finish()


def test_writer_refuses_4gib_records(tmp_path, monkeypatch):
    monkeypatch.setattr(cdb, "MAX_SIZE", 4096)
    writer = Writer(tmp_path / "t.cdb", tmp_path / "t.tmp")
    with pytest.raises(CdbError, match="4 GiB"), writer as w:
        w.add(b"a", b"x" * 1000)
        w.add(b"b", b"x" * 2000)
    assert not (tmp_path / "t.tmp").exists()


def test_writer_refuses_4gib_tables(tmp_path, monkeypatch):
    # Records fit, but the hash tables would push the file over the limit.
    monkeypatch.setattr(cdb, "MAX_SIZE", 2048 + 100 * 10 + 100)
    w = Writer(tmp_path / "t.cdb", tmp_path / "t.tmp")
    for i in range(100):
        w.add(b"%02d" % i, b"")
    with pytest.raises(CdbError, match="4 GiB"):
        w.finish()
    assert not (tmp_path / "t.tmp").exists()
    assert not (tmp_path / "t.cdb").exists()


def test_writer_reports_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        Writer(tmp_path / "t.cdb", tmp_path / "no" / "t.tmp")


# -- hostile files ----------------------------------------------------------------

# file -> (result of get(b"key"), result of iter_items()); CdbError = must raise it.
CORPUS_CASES = {
    "empty.cdb": (CdbError, CdbError),
    "truncated_header.cdb": (CdbError, CdbError),
    "truncated_tables.cdb": (b"value", [(b"key", b"value"), (b"other", b"data")]),
    "table_past_eof.cdb": (CdbError, []),
    "huge_slot_count.cdb": (CdbError, []),
    "record_past_eof.cdb": (CdbError, []),
    "record_header_straddles_eof.cdb": (CdbError, []),
    "looping_table.cdb": (None, [(b"kez", b"")]),
    "huge_data_length.cdb": (CdbError, CdbError),
    "huge_key_length.cdb": (None, CdbError),
    "eod_past_eof.cdb": (None, CdbError),
}


def test_corpus_is_complete():
    assert sorted(p.name for p in CORPUS.iterdir()) == sorted(CORPUS_CASES)


def _outcome(func):
    try:
        return func()
    except CdbError:
        return CdbError


@pytest.mark.parametrize("opener", ["path", "bytes"])
@pytest.mark.parametrize("name", sorted(CORPUS_CASES))
def test_corpus(name, opener):
    path = CORPUS / name
    want_get, want_iter = CORPUS_CASES[name]
    try:
        r = Reader(path) if opener == "path" else Reader.from_bytes(path.read_bytes())
    except CdbError as exc:
        assert want_get is CdbError and want_iter is CdbError
        assert "offset" in str(exc)
        return
    with r:
        assert _outcome(lambda: r.get(b"key")) == want_get
        assert _outcome(lambda: list(r.iter_items())) == want_iter
        assert _outcome(lambda: r.get(b"other")) in (CdbError, None, b"data")


def test_truncated_table_is_reported_with_offset():
    with Reader(CORPUS / "truncated_tables.cdb") as r, pytest.raises(CdbError, match="offset"):
        r.get(b"other")


def exercise(data: bytes, keys) -> None:
    """Every public read on ``data``; only CdbError may escape."""
    try:
        r = Reader.from_bytes(data)
    except CdbError:
        return
    for key in keys:
        for op in (r.get, r.get_all, r.__contains__):
            try:
                op(key)
            except CdbError:
                pass
    try:
        for _ in r.iter_items():
            pass
    except CdbError:
        pass


@given(st.binary(max_size=4096))
@settings(max_examples=300)
def test_arbitrary_bytes_only_raise_cdberror(data):
    exercise(data, [b"", b"key", data[:3]])


KEYS = [b"", b"a", b"key", b"other", b"\x00"]
VALID = build_bytes([(k, k * 3) for k in KEYS] + [(b"a", b"dup")])


@st.composite
def mutated_cdb(draw):
    """A valid cdb with u32 fields overwritten and perhaps truncated."""
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data) - 4))
        value = draw(
            st.one_of(
                st.sampled_from([0, 1, 7, 2048, len(data), 0x7FFFFFFF, 0xFFFFFFFF]),
                st.integers(0, 0xFFFFFFFF),
            )
        )
        data[pos : pos + 4] = value.to_bytes(4, "little")
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@given(mutated_cdb())
@settings(max_examples=500)
def test_mutated_cdb_only_raises_cdberror(data):
    exercise(data, KEYS)
