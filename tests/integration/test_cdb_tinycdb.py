"""Cross-check our cdb against Debian's tinycdb (``cdb -c/-q/-d/-s``).

Both implement djb's format and fill the hash tables in insertion order,
so the same records in the same order must give byte-identical files.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from indimail.core.cdb import Reader, make_from_pairs

pytestmark = pytest.mark.peer

INDIMAIL = Path(sys.executable).parent / "indimail"


@pytest.fixture(scope="module")
def tinycdb() -> str:
    found = shutil.which("cdb")
    if not found:
        pytest.skip("tinycdb not installed (apt-get install tinycdb)")
    return found


def encode(pairs) -> bytes:
    return b"".join(b"+%d,%d:%s->%s\n" % (len(k), len(d), k, d) for k, d in pairs) + b"\n"


def random_pairs(seed: int, count: int) -> list[tuple[bytes, bytes]]:
    """Binary keys without NUL (so each can be passed as an argument to cdb -q)."""
    rng = random.Random(seed)
    pairs = [
        (
            bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 20))),
            bytes(rng.randrange(256) for _ in range(rng.randrange(0, 60))),
        )
        for _ in range(count)
    ]
    return pairs + pairs[: count // 20]  # some duplicate keys


CASES = {
    "empty": [],
    "one": [(b"key", b"value")],
    "duplicates": [(b"a", b"1"), (b"b", b"2"), (b"a", b"3"), (b"a", b"")],
    "binary": [(b"\xff\n+,:->", b"\x00\r\n"), (b"\x01", b"")],
    "random": random_pairs(1, 3000),
}


def tiny(*args: str | Path, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["cdb", *map(str, args)], input=input, capture_output=True, timeout=60)


def ours(cmd: str, *args: str | bytes, stdin: Path) -> subprocess.CompletedProcess:
    with open(stdin, "rb") as f:
        return subprocess.run([str(INDIMAIL), cmd, *args], stdin=f, capture_output=True, timeout=60)


def expected_by_key(pairs) -> dict[bytes, list[bytes]]:
    found: dict[bytes, list[bytes]] = {}
    for key, data in pairs:
        found.setdefault(key, []).append(data)
    return found


def sample(pairs, n: int = 200):
    """A few keys, always including every duplicated one, to keep runs short."""
    by_key = expected_by_key(pairs)
    dups = [k for k, v in by_key.items() if len(v) > 1]
    return list(dict.fromkeys(dups + list(by_key)[:n]).items())


@pytest.mark.parametrize("pairs", CASES.values(), ids=CASES.keys())
def test_tinycdb_reads_our_file(tinycdb, tmp_path, pairs):
    path = tmp_path / "ours.cdb"
    make_from_pairs(path, tmp_path / "ours.tmp", pairs)
    dumped = tiny("-d", path)
    assert (dumped.returncode, dumped.stdout) == (0, encode(pairs))
    by_key = expected_by_key(pairs)
    for key, _ in sample(pairs):
        for n, data in enumerate(by_key[key], start=1):
            # "--": a random key may begin with '-'
            res = subprocess.run(
                [b"cdb", b"-q", b"-n", b"%d" % n, b"--", bytes(path), key], capture_output=True
            )
            assert (res.returncode, res.stdout) == (0, data)
    missing = tiny("-q", path, "no such key")
    assert missing.returncode != 0 and missing.stdout == b""


@pytest.mark.parametrize("pairs", CASES.values(), ids=CASES.keys())
def test_we_read_tinycdb_file(tinycdb, tmp_path, pairs):
    path = tmp_path / "tiny.cdb"
    res = tiny("-c", "-t", tmp_path / "tiny.tmp", path, input=encode(pairs))
    assert res.returncode == 0, res.stderr
    with Reader(path) as r:
        assert list(r.iter_items()) == pairs
        for key, values in expected_by_key(pairs).items():
            assert r.get_all(key) == values
    dumped = ours("cdbdump", stdin=path)
    assert (dumped.returncode, dumped.stdout) == (0, tiny("-d", path).stdout)
    by_key = expected_by_key(pairs)
    for key, _ in sample(pairs, 50):
        for skip, data in enumerate(by_key[key]):
            got = ours("cdbget", "--", key, b"%d" % skip, stdin=path)
            assert (got.returncode, got.stdout) == (0, data)
    tested = ours("cdbtest", stdin=path)
    assert tested.returncode == 0
    assert tested.stdout.startswith(b"found: %d\n" % len(by_key))


@pytest.mark.parametrize("pairs", CASES.values(), ids=CASES.keys())
def test_files_are_byte_identical(tinycdb, tmp_path, pairs):
    make_from_pairs(tmp_path / "ours.cdb", tmp_path / "ours.tmp", pairs)
    made = subprocess.run(
        [str(INDIMAIL), "cdbmake", str(tmp_path / "cmd.cdb"), str(tmp_path / "cmd.tmp")],
        input=encode(pairs),
        capture_output=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    res = tiny("-c", "-t", tmp_path / "tiny.tmp", tmp_path / "tiny.cdb", input=encode(pairs))
    assert res.returncode == 0, res.stderr
    tiny_bytes = (tmp_path / "tiny.cdb").read_bytes()
    assert (tmp_path / "ours.cdb").read_bytes() == tiny_bytes
    assert (tmp_path / "cmd.cdb").read_bytes() == tiny_bytes


def test_cdbstats_agrees_with_tinycdb_distances(tinycdb, tmp_path):
    pairs = CASES["random"]
    path = tmp_path / "t.cdb"
    make_from_pairs(path, tmp_path / "t.tmp", pairs)
    theirs = {}
    for line in tiny("-s", path).stdout.decode().splitlines():
        label, _, rest = line.strip().partition(":")
        if (label.startswith("d") and label[1:].isdigit()) or label == ">9":
            theirs[label] = int(rest.split()[0])
    mine = dict(line.split() for line in ours("cdbstats", stdin=path).stdout.decode().splitlines())
    assert int(mine["records"]) == len(pairs)
    assert {k: int(v) for k, v in mine.items() if k != "records"} == theirs
