"""tcprules, data-driven: ``tcprules_cases/NN-name.rules`` compiled by our
tcprules must give exactly the records listed in ``NN-name.expect``
(``key -> value`` per line, Python escapes, in insertion order), or
``! exit N line L`` for input that must be refused."""

from __future__ import annotations

import codecs
import re
import subprocess
import sys
from pathlib import Path

import pytest

from indimail.core import cdb

CASES = Path(__file__).parent / "tcprules_cases"
INDIMAIL = Path(sys.executable).parent / "indimail"


def _unescape(text: str) -> bytes:
    return codecs.escape_decode(text.encode("latin-1"))[0]


@pytest.mark.parametrize("case", sorted(CASES.glob("*.rules")), ids=lambda p: p.stem)
def test_tcprules_case(case: Path, tmp_path: Path) -> None:
    expect = case.with_suffix(".expect").read_text().splitlines()
    out = tmp_path / "rules.cdb"
    tmp = tmp_path / "rules.tmp"
    res = subprocess.run(
        [str(INDIMAIL), "tcprules", str(out), str(tmp)],
        input=case.read_bytes(),
        capture_output=True,
        timeout=30,
    )
    if expect and expect[0].startswith("!"):
        m = re.match(r"! exit (\d+) line (\d+)", expect[0])
        assert m, expect[0]
        assert res.returncode == int(m.group(1)), res.stderr
        err = res.stderr.decode()
        assert err.startswith("tcprules: fatal: unable to parse line " + m.group(2) + ":"), err
        assert "Traceback" not in err
        assert not out.exists() and not tmp.exists()
        return
    assert res.returncode == 0, res.stderr
    assert not tmp.exists()
    want = []
    for line in expect:
        key, sep, value = line.partition(" -> ")
        assert sep, line
        want.append((_unescape(key), _unescape(value)))
    with cdb.Reader(out) as reader:
        assert list(reader.iter_items()) == want
