"""ucspi/inproc.py: the lazy stdio of pooled sessions."""

from __future__ import annotations

import os
import subprocess
import sys

CHILD = r"""
import io, os, sys
from indimail.ucspi import inproc

inproc.setup_stdio(lazy=True)
lazy_in, lazy_out = sys.stdin, sys.stdout
sys.stdout.flush()  # nothing written yet: nothing is built
built_early = lazy_out._real is not None
lines = [line for line in sys.stdin]  # iteration builds stdin
print("read", len(lines), lines[-1].strip())  # print builds stdout
sys.stdout.flush()
os.write(2, repr((
    built_early,
    isinstance(sys.stdin, io.TextIOWrapper) and sys.stdin is lazy_in._real,
    isinstance(sys.stdout, io.TextIOWrapper) and sys.stdout is lazy_out._real,
)).encode())
"""


def test_lazy_stdio_is_built_on_first_use_and_takes_its_place() -> None:
    res = subprocess.run(
        [sys.executable, "-c", CHILD],
        input=b"one\ntwo\nthree\n",
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout == b"read 3 three\n"
    assert res.stderr == b"(False, True, True)"
