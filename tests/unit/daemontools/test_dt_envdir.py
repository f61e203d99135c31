"""envdir's recursive scan (.envdir, .envfile) and the command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from indimail.core.envdir import envdir_operations, read_envdir
from indimail.core.errors import Fatal

INDIMAIL = Path(sys.executable).parent / "indimail"


def test_plain_files(tmp_path: Path):
    (tmp_path / "A").write_bytes(b"one  \t\nsecond line")
    (tmp_path / "B").write_bytes(b"")
    (tmp_path / "C").write_bytes(b"x\0y\n")
    (tmp_path / ".hidden").write_bytes(b"no")
    ops = dict(envdir_operations(tmp_path))
    assert ops == {"A": "one", "B": None, "C": "x\ny"}
    assert read_envdir(tmp_path) == ops  # the old API is unchanged


def test_envdir_first_and_loops(tmp_path: Path):
    top = tmp_path / "top"
    sub = tmp_path / "sub"
    top.mkdir()
    sub.mkdir()
    (sub / "X").write_text("sub\n")
    (sub / "Y").write_text("suby\n")
    (top / "X").write_text("top\n")
    os.symlink(sub, top / ".envdir")
    os.symlink(top, sub / ".envdir")  # a loop: must stop
    ops = envdir_operations(top)
    env: dict[str, str] = {}
    for k, v in ops:
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    assert env == {"X": "top", "Y": "suby"}


def test_envdir_file_lists_dirs_and_envfile(tmp_path: Path):
    d1 = tmp_path / "d1"
    d1.mkdir()
    (d1 / "P").write_text("p1\n")
    main = tmp_path / "main"
    main.mkdir()
    (main / ".envdir").write_text("# dirs\n../d1\n")
    (main / ".envfile").write_text("  Q=with space \n# c\nR\n\nS=s\n")
    ops = envdir_operations(main)
    assert ops == [("P", "p1"), ("Q", "with space "), ("R", None), ("S", "s")]


def test_bad_name_and_unreadable(tmp_path: Path):
    (tmp_path / "A=B").write_text("x")
    with pytest.raises(Fatal):
        envdir_operations(tmp_path)
    with pytest.raises(Fatal):
        envdir_operations(tmp_path / "missing")


def test_envdir_command(tmp_path: Path):
    (tmp_path / "FOO").write_text("bar\n")
    (tmp_path / "HOME").write_text("")
    env = {"PATH": "/usr/bin:/bin", "HOME": "/x", "KEEP": "1"}
    res = subprocess.run(
        [str(INDIMAIL), "envdir", str(tmp_path), "env"], env=env, capture_output=True, timeout=30
    )
    lines = set(res.stdout.decode().splitlines())
    assert res.returncode == 0
    assert (
        "FOO=bar" in lines and "KEEP=1" in lines and not any(x.startswith("HOME=") for x in lines)
    )
    res = subprocess.run(
        [str(INDIMAIL), "envdir", "-c", str(tmp_path), "/usr/bin/env"],
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert res.stdout.decode().splitlines() == ["FOO=bar"]
    res = subprocess.run(
        [str(INDIMAIL), "envdir", str(tmp_path / "nope"), "env"],
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert res.returncode == 111 and b"unable to read envdir" in res.stderr
    res = subprocess.run(
        [str(INDIMAIL), "envdir", str(tmp_path), "sh", "-c", "exit 7"],
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert res.returncode == 7
