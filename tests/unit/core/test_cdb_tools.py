"""cdbmake, cdbget, cdbdump, cdbtest, cdbstats run as commands."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from indimail import cli
from indimail.core import cdb_tools
from indimail.core.cdb import Reader, make_from_pairs
from indimail.core.errors import Fatal

INDIMAIL = Path(sys.executable).parent / "indimail"
CORPUS = Path(__file__).parent / "cdb_corpus"


def run(cmd: str, *args: str, stdin: bytes | Path = b"") -> subprocess.CompletedProcess:
    """Run ``indimail cmd args``; a Path is given as a seekable stdin."""
    argv = [str(INDIMAIL), cmd, *args]
    if isinstance(stdin, Path):
        with open(stdin, "rb") as f:
            return subprocess.run(argv, stdin=f, capture_output=True, timeout=60)
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=60)


def make(tmp_path: Path, records: bytes) -> subprocess.CompletedProcess:
    return run("cdbmake", str(tmp_path / "t.cdb"), str(tmp_path / "t.tmp"), stdin=records)


def encode(pairs) -> bytes:
    return b"".join(b"+%d,%d:%s->%s\n" % (len(k), len(d), k, d) for k, d in pairs) + b"\n"


def assert_clean_failure(res: subprocess.CompletedProcess) -> None:
    assert res.returncode == 111
    assert b"Traceback" not in res.stderr
    assert b"internal error" not in res.stderr


# -- cdbmake ------------------------------------------------------------------

GOOD_PAIRS = {
    "empty": [],
    "one": [(b"key", b"value")],
    "duplicates": [(b"a", b"1"), (b"b", b""), (b"a", b"2")],
    "binary": [(b"\x00+,:->\n", b"\n\n\xff"), (b"", b"empty key")],
    "large": [(b"k%d" % i, b"v" * (i % 300)) for i in range(2000)],
}


@pytest.mark.parametrize("pairs", GOOD_PAIRS.values(), ids=GOOD_PAIRS.keys())
def test_cdbmake_then_cdbdump_round_trips(tmp_path, pairs):
    records = encode(pairs)
    res = make(tmp_path, records)
    assert (res.returncode, res.stdout, res.stderr) == (0, b"", b"")
    assert not (tmp_path / "t.tmp").exists()
    with Reader(tmp_path / "t.cdb") as r:
        assert list(r.iter_items()) == pairs
    dumped = run("cdbdump", stdin=tmp_path / "t.cdb")
    assert (dumped.returncode, dumped.stdout) == (0, records)


def test_cdbmake_empty_lengths_mean_zero(tmp_path):
    assert make(tmp_path, b"+,:->\n\n").returncode == 0
    assert Reader(tmp_path / "t.cdb").get(b"") == b""


# input -> text the message must contain (record number and byte offset)
BAD_INPUT = {
    "no input": (b"", "record 1 at byte 0: input ended at the start of a record"),
    "no blank line": (b"+1,1:a->b\n", "record 2 at byte 10: input ended at the start"),
    "not plus": (b"+1,1:a->b\nx", "record 2 at byte 10: expected '+'"),
    "letter in klen": (b"+1x,1:a->b\n\n", "record 1 at byte 2: expected a digit or ','"),
    "letter in dlen": (b"+1,y:a->b\n\n", "record 1 at byte 3: expected a digit or ':'"),
    "missing arrow": (b"+1,1:a=>b\n\n", "record 1 at byte 6: expected '-' after the key"),
    "missing gt": (b"+1,1:a-=b\n\n", "record 1 at byte 7: expected '>' after the key"),
    "data too long": (b"+1,1:a->bc\n\n", "record 1 at byte 9: expected a newline"),
    "short key": (b"+5,1:ab", "record 1 at byte 7: input ended inside the 5-byte key"),
    "short data": (b"+1,9:a->b\n\n", "record 1 at byte 11: input ended inside the 9-byte data"),
    "huge claimed key": (
        b"+4000000000,1:abc",
        "record 1 at byte 17: input ended inside the 4000000000-byte key",
    ),
    "key length over 4 GiB": (b"+99999999999,1:a->b\n\n", "key length exceeds 4 GiB"),
    "truncated length": (b"+12", "record 1 at byte 3: input ended in the key length"),
}


@pytest.mark.parametrize(("records", "message"), BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_cdbmake_bad_input(tmp_path, records, message):
    res = make(tmp_path, records)
    assert_clean_failure(res)
    assert res.stderr.startswith(b"cdbmake: unable to read input: bad format: ")
    assert message.encode() in res.stderr
    assert res.stderr.count(b"\n") == 1
    assert sorted(os.listdir(tmp_path)) == []


def test_cdbmake_bad_input_keeps_old_database(tmp_path):
    make_from_pairs(tmp_path / "t.cdb", tmp_path / "t.tmp", [(b"old", b"1")])
    assert_clean_failure(make(tmp_path, b"+3,1:new->2\n"))
    assert os.listdir(tmp_path) == ["t.cdb"]
    assert Reader(tmp_path / "t.cdb").get(b"old") == b"1"


@pytest.mark.parametrize("args", [[], ["only-one"]])
def test_cdbmake_usage(args):
    res = run("cdbmake", *args)
    assert res.returncode == 100
    assert res.stderr == b"cdbmake: usage: cdbmake f ftmp\n"


def test_cdbmake_cannot_create_tmp(tmp_path):
    res = run("cdbmake", str(tmp_path / "t.cdb"), str(tmp_path / "no" / "t.tmp"), stdin=b"\n")
    assert_clean_failure(res)
    assert res.stderr == (
        f"cdbmake: unable to create {tmp_path}/no/t.tmp: No such file or directory\n".encode()
    )


def test_cdbmake_cannot_rename(tmp_path):
    (tmp_path / "t.cdb").mkdir()
    (tmp_path / "t.cdb" / "keep").write_text("x")
    res = make(tmp_path, b"+1,1:a->b\n\n")
    assert_clean_failure(res)
    assert res.stderr.startswith(
        f"cdbmake: unable to rename {tmp_path}/t.tmp to {tmp_path}/t.cdb: ".encode()
    )
    assert not (tmp_path / "t.tmp").exists()


# -- cdbget -------------------------------------------------------------------


@pytest.fixture
def db(tmp_path) -> Path:
    pairs = [
        (b"a", b"first"),
        (b"b", b"\x00bin\nary\xff"),
        (b"a", b"second"),
        (b"-dash", b"option-like"),
        (b"!gmail\x00", b"token"),
        (b"empty", b""),
    ]
    path = tmp_path / "db.cdb"
    make_from_pairs(path, tmp_path / "db.tmp", pairs)
    return path


CDBGET = {
    "first": (["a"], 0, b"first"),
    "skip 1": (["a", "1"], 0, b"second"),
    "skip 2": (["a", "2"], 100, b""),
    "skip junk is 0": (["a", "x"], 0, b"first"),
    "skip with suffix": (["a", "1x"], 0, b"second"),
    "binary data": (["b"], 0, b"\x00bin\nary\xff"),
    "empty data": (["empty"], 0, b""),
    "missing": (["zz"], 100, b""),
    "dash key": (["--", "-dash"], 0, b"option-like"),
    "-n appends NUL": (["-n", "!gmail"], 0, b"token"),
    "without -n": (["!gmail"], 100, b""),
}


@pytest.mark.parametrize(("args", "code", "out"), CDBGET.values(), ids=CDBGET.keys())
def test_cdbget(db, args, code, out):
    res = run("cdbget", *args, stdin=db)
    assert (res.returncode, res.stdout, res.stderr) == (code, out, b"")


def test_cdbget_reads_a_pipe(db):
    res = run("cdbget", "a", "1", stdin=db.read_bytes())
    assert (res.returncode, res.stdout) == (0, b"second")


def test_cdbget_large_data(tmp_path):
    data = bytes(range(256)) * 1000
    make_from_pairs(tmp_path / "t.cdb", tmp_path / "t.tmp", [(b"k", data)])
    res = run("cdbget", "k", stdin=tmp_path / "t.cdb")
    assert (res.returncode, res.stdout) == (0, data)


@pytest.mark.parametrize("args", [[], ["-x", "a"]])
def test_cdbget_usage(args):
    res = run("cdbget", *args)
    assert res.returncode == 111
    assert res.stderr == b"cdbget: usage: cdbget [-n] key [skip]\n"


def test_cdbget_usage_in_process(capsys):
    assert cli.main(["cdbget"]) == 111
    assert capsys.readouterr().err == "cdbget: usage: cdbget [-n] key [skip]\n"


def test_cdbget_not_a_cdb():
    res = run("cdbget", "a", stdin=b"short")
    assert_clean_failure(res)
    assert res.stderr.startswith(b"cdbget: unable to read input: truncated header")


# -- cdbdump ------------------------------------------------------------------


def test_cdbdump_reads_a_pipe(db):
    res = run("cdbdump", stdin=db.read_bytes())
    assert (res.returncode, res.stderr) == (0, b"")
    assert res.stdout == (
        b"+1,5:a->first\n"
        b"+1,9:b->\x00bin\nary\xff\n"
        b"+1,6:a->second\n"
        b"+5,11:-dash->option-like\n"
        b"+7,5:!gmail\x00->token\n"
        b"+5,0:empty->\n"
        b"\n"
    )


def test_cdbdump_truncated_record(db):
    data = db.read_bytes()
    eod = struct.unpack_from("<I", data)[0]
    res = run("cdbdump", stdin=data[: eod - 3])
    assert_clean_failure(res)
    assert res.stderr.startswith(b"cdbdump: unable to read input: truncated file")


@pytest.mark.parametrize("size", [0, 100, 2047])
def test_cdbdump_truncated_header(size):
    res = run("cdbdump", stdin=b"\0" * size)
    assert_clean_failure(res)
    assert res.stderr == (
        f"cdbdump: unable to read input: truncated file: header needs 2048 bytes, "
        f"got {size}\n".encode()
    )


# -- cdbtest and cdbstats ---------------------------------------------------------


def test_cdbtest_counts(tmp_path):
    pairs = [(b"a", b"1"), (b"a", b"2"), (b"k" * 1025, b"long"), (b"k" * 1024, b"ok")]
    make_from_pairs(tmp_path / "t.cdb", tmp_path / "t.tmp", pairs)
    res = run("cdbtest", stdin=tmp_path / "t.cdb")
    assert res.returncode == 0
    assert res.stdout == (
        b"found: 2\ndifferent record: 1\nbad length: 0\nnot found: 0\nuntested: 1\n"
    )


def unindexed_cdb() -> bytes:
    """One record that no hash table points to."""
    record = struct.pack("<II", 3, 1) + b"keyv"
    header = struct.pack("<II", 2048 + len(record), 0) * 256
    return header + record


def test_cdbtest_not_found():
    res = run("cdbtest", stdin=unindexed_cdb())
    assert (res.returncode, res.stdout) == (
        0,
        b"found: 0\ndifferent record: 0\nbad length: 0\nnot found: 1\nuntested: 0\n",
    )


def test_cdbstats_output(tmp_path):
    pairs = [(b"a", b"1"), (b"a", b"2"), (b"k" * 1025, b"long")]
    make_from_pairs(tmp_path / "t.cdb", tmp_path / "t.tmp", pairs)
    res = run("cdbstats", stdin=tmp_path / "t.cdb")
    assert res.returncode == 0
    labels = ["records", "d0", "d1", *(f"d{i}" for i in range(2, 10)), ">9"]
    counts = [2, 1, 1, *([0] * 8), 0]
    assert res.stdout.decode() == "".join(
        f"{label:<8}{count:>10}\n" for label, count in zip(labels, counts, strict=True)
    )
    assert res.stdout.startswith(b"records          2\nd0               1\n")


def test_cdbstats_long_chain_goes_to_over_nine(tmp_path):
    # Twelve copies of one key: the last ones sit more than 9 slots from home.
    make_from_pairs(tmp_path / "t.cdb", tmp_path / "t.tmp", [(b"k", b"%d" % i) for i in range(12)])
    res = run("cdbstats", stdin=tmp_path / "t.cdb")
    lines = dict(line.split() for line in res.stdout.decode().splitlines())
    assert lines["records"] == "12"
    assert lines[">9"] == "2"
    assert all(lines[f"d{i}"] == "1" for i in range(10))


def test_cdbstats_unindexed_record_is_an_error():
    res = run("cdbstats", stdin=unindexed_cdb())
    assert_clean_failure(res)
    assert b"not reachable" in res.stderr


@pytest.mark.parametrize("cmd", ["cdbtest", "cdbstats"])
def test_empty_input_is_an_error(cmd):
    res = run(cmd, stdin=b"")
    assert_clean_failure(res)
    assert res.stderr.startswith(f"{cmd}: unable to read input: truncated header".encode())


# -- hostile files --------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [["cdbdump"], ["cdbtest"], ["cdbstats"], ["cdbget", "key"], ["cdbget", "other"]],
    ids=lambda a: " ".join(a),
)
@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.iterdir()))
def test_corpus_never_crashes(name, argv):
    res = run(*argv, stdin=CORPUS / name)
    assert res.returncode in (0, 100, 111), res.stderr
    assert b"Traceback" not in res.stderr
    assert b"internal error" not in res.stderr
    if res.returncode == 111:
        assert res.stderr.startswith(f"{argv[0]}: unable to read input: ".encode())


# -- dispatch -------------------------------------------------------------------


def test_unknown_name_is_refused():
    with pytest.raises(Fatal) as exc:
        cdb_tools.main(["/usr/bin/cdbfrob"])
    assert exc.value.code == 100


def test_dispatch_on_basename(tmp_path):
    link = tmp_path / "cdbtest"
    link.symlink_to(INDIMAIL)
    make_from_pairs(tmp_path / "t.cdb", tmp_path / "t.tmp", [(b"a", b"b")])
    with open(tmp_path / "t.cdb", "rb") as f:
        res = subprocess.run([str(link)], stdin=f, capture_output=True, timeout=60)
    assert res.returncode == 0
    assert res.stdout.startswith(b"found: 1\n")
