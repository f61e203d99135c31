"""The frozen multicall binary works on a host with no Python.

The frozen tree (``dist/indimail``: the binary plus ``bin/<command>``
symlinks) comes from ``$INDIMAIL_FROZEN`` (``nox -s tests`` sets it); when
that is unset, ``packaging/pyinstaller/freeze.py`` builds one into a temp
directory once for this module.

Every command here runs with an environment as bare as ``env -i`` gives:
only ``PATH``, and no Python reachable on it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from indimail.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
FREEZE = ROOT / "packaging" / "pyinstaller" / "freeze.py"
NO_PYTHON_PATH = "/nonexistent"
FQDN = "mx.example.test"
SENDER = "a@example.test"
RECIPIENT = "b@example.org"


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The frozen tree: ``$INDIMAIL_FROZEN``, else one built for this module."""
    given = os.environ.get("INDIMAIL_FROZEN")
    if given:
        tree = Path(given)
        if not (tree / "indimail").is_file():
            pytest.fail(f"INDIMAIL_FROZEN={given} holds no indimail binary (run: nox -s freeze)")
        return tree
    if importlib.util.find_spec("PyInstaller") is None:
        pytest.skip("PyInstaller not installed (pip install -e '.[freeze]')")
    dist = tmp_path_factory.mktemp("frozen-dist")
    work = tmp_path_factory.mktemp("frozen-work")
    res = subprocess.run(
        [sys.executable, str(FREEZE), "--dist", str(dist), "--work", str(work)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, f"freeze.py failed:\n{res.stdout}\n{res.stderr}"
    return dist / "indimail"


def bare_env() -> dict[str, str]:
    """What ``env -i PATH=/nonexistent`` leaves: no Python can be found."""
    return {"PATH": NO_PYTHON_PATH}


def run(
    argv: list[str | Path], cwd: Path, input: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in argv],
        input=input,
        env=bare_env() if env is None else env,
        cwd=cwd,
        capture_output=True,
        timeout=60,
    )


def text(res: subprocess.CompletedProcess) -> str:
    return f"exit {res.returncode}\nstdout:\n{res.stdout.decode()}\nstderr:\n{res.stderr.decode()}"


def assert_no_traceback(res: subprocess.CompletedProcess) -> None:
    assert b"Traceback" not in res.stdout + res.stderr, text(res)


def source_modules() -> set[str]:
    """Dotted names of every module under src/indimail."""
    src = ROOT / "src"
    names = set()
    for path in (src / "indimail").rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if "__pycache__" not in parts and parts[-1] != "__main__":
            names.add(".".join(parts))
    return names


def test_bare_path_has_no_python() -> None:
    for name in ("python3", "python", f"python3.{sys.version_info.minor}"):
        assert shutil.which(name, path=NO_PYTHON_PATH) is None


def test_list_prints_every_command(frozen: Path, tmp_path: Path) -> None:
    res = run([frozen / "indimail", "--list"], tmp_path)
    assert res.returncode == 0, text(res)
    assert res.stdout.decode().split() == sorted(COMMANDS)
    assert res.stderr == b""


def test_bin_holds_a_relative_symlink_per_command(frozen: Path) -> None:
    binary = (frozen / "indimail").resolve()
    for name in COMMANDS:
        link = frozen / "bin" / name
        assert link.is_symlink(), f"{link} missing"
        assert os.readlink(link) == "../indimail"
        assert link.resolve() == binary


def bundled_modules(frozen: Path) -> set[str]:
    """Modules in the frozen tree: .pyc files under _internal/ (freeze.py
    builds with ``noarchive``), plus an embedded PYZ archive if there is one."""
    internal = frozen / "_internal"
    names = set()
    for pyc in internal.rglob("*.pyc"):
        parts = list(pyc.relative_to(internal).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.add(".".join(parts))
    try:
        from PyInstaller.archive.readers import CArchiveReader
    except ImportError:
        if not any(n.startswith("indimail.") for n in names):
            pytest.skip("modules are in a PYZ archive and PyInstaller is not installed")
        return names
    archive = CArchiveReader(str(frozen / "indimail"))
    if "PYZ.pyz" in archive.toc:
        names |= set(archive.open_embedded_archive("PYZ.pyz").toc)
    return names


def test_every_source_module_is_bundled(frozen: Path) -> None:
    """cli.py imports commands lazily: freeze.py must name every module."""
    missing = source_modules() - bundled_modules(frozen)
    assert not missing, f"not in the frozen binary (rebuild with freeze.py?): {sorted(missing)}"


def test_unknown_command_is_one_clear_error(frozen: Path, tmp_path: Path) -> None:
    res = run([frozen / "indimail", "no-such-command"], tmp_path)
    assert res.returncode == 100, text(res)
    assert res.stdout == b""
    lines = res.stderr.decode().splitlines()
    assert lines[0] == "indimail: unknown command: no-such-command", text(res)
    assert all(line.startswith("usage:") for line in lines[1:]), text(res)
    assert_no_traceback(res)


def test_no_command_prints_usage(frozen: Path, tmp_path: Path) -> None:
    res = run([frozen / "indimail"], tmp_path)
    assert res.returncode == 100, text(res)
    assert res.stderr.decode().startswith("usage:"), text(res)
    assert_no_traceback(res)


@pytest.mark.parametrize("via", ["symlink", "subcommand"])
def test_bad_option_is_one_clear_error(frozen: Path, tmp_path: Path, via: str) -> None:
    if via == "symlink":
        argv: list[str | Path] = [frozen / "bin" / "indimail-instance", "-Z"]
    else:
        argv = [frozen / "indimail", "indimail-instance", "-Z"]
    res = run([*argv, tmp_path / "inst"], tmp_path)
    assert res.returncode == 100, text(res)
    assert res.stdout == b""
    first = res.stderr.decode().splitlines()[0]
    assert first.startswith("indimail-instance: ") and "-Z" in first, text(res)
    assert_no_traceback(res)
    assert not (tmp_path / "inst").exists()


def test_sendmail_qread_qstat_without_python(frozen: Path, tmp_path: Path) -> None:
    """The issue: a rootless instance driven by the frozen binary alone."""
    top = tmp_path / "inst"
    res = run([frozen / "indimail", "indimail-instance", "-q", "2", "-H", FQDN, top], tmp_path)
    assert res.returncode == 0, text(res)
    assert (top / "indimail-paths.conf").is_file()
    binary = (frozen / "indimail").resolve()
    for name in ("sendmail", "qmail-qread", "qmail-qstat"):
        assert (top / "bin" / name).resolve() == binary, f"bin/{name} not linked to {binary}"

    # DIR/bin/NAME finds DIR/indimail-paths.conf by itself: no INDIMAIL_PATHS.
    message = (
        f"From: {SENDER}\nTo: {RECIPIENT}\nSubject: frozen\n\nsent by a frozen sendmail\n"
    ).encode()
    res = run([top / "bin" / "sendmail", "-f", SENDER, RECIPIENT], tmp_path, input=message)
    assert res.returncode == 0, text(res)
    assert_no_traceback(res)

    queued = [p for p in (top / "var" / "queue").glob("queue*/mess/*/*") if p.is_file()]
    assert len(queued) == 1, f"expected one message in the queue, found {queued}"
    size = queued[0].stat().st_size

    res = run([top / "bin" / "qmail-qread"], tmp_path)
    assert res.returncode == 0, text(res)
    assert_no_traceback(res)
    # No qmail-send runs, so the message is still in todo/: as in the
    # original, qmail-qread lists such messages with -t.
    res = run([top / "bin" / "qmail-qread", "-t"], tmp_path)
    assert res.returncode == 0, text(res)
    assert_no_traceback(res)
    out = res.stdout.decode()
    assert f"<{SENDER}>" in out, text(res)
    assert RECIPIENT in out, text(res)
    assert f"#{queued[0].name}" in out, text(res)
    assert re.search(rf"(?<!\d){size}(?!\d)", out), f"size {size} not shown\n{text(res)}"

    res = run([top / "bin" / "qmail-qstat"], tmp_path)
    assert res.returncode == 0, text(res)
    assert_no_traceback(res)
    out = res.stdout.decode()
    assert re.search(r"messages in queue: 1$", out, re.MULTILINE), text(res)
    assert re.search(r"messages in queue but not yet preprocessed: 1$", out, re.MULTILINE), text(
        res
    )


def test_frozen_supervise_keeps_a_double_forking_daemon(frozen: Path, tmp_path: Path) -> None:
    """Sticky ``run``: the frozen supervise becomes a child subreaper (prctl
    through _ctypes; the ctypes package is not in the binary) and monitors
    the daemon that ``run`` left behind."""
    import time

    assert not (frozen / "_internal" / "ctypes").exists(), "ctypes is bundled again"
    svc = tmp_path / "svc"
    svc.mkdir()
    pidfile = tmp_path / "daemon.pid"
    (svc / "run").write_text(f"#!/bin/sh\nsh -c 'sleep 1004.5 & echo $! > {pidfile}'\nexit 0\n")
    os.chmod(svc / "run", 0o1755)
    env = {"PATH": "/usr/bin:/bin"}
    sup = subprocess.Popen(
        [str(frozen / "bin" / "supervise"), "svc"],  # relative, as the original wants
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    daemon = 0
    try:
        deadline = time.monotonic() + 10
        shown = ""
        while time.monotonic() < deadline:
            if pidfile.is_file() and pidfile.read_text().strip():
                daemon = int(pidfile.read_text())
                res = run([frozen / "bin" / "svstat", svc], tmp_path, env=env)
                shown = res.stdout.decode()
                if f"(pid {daemon})" in shown or f" pid {daemon} " in shown:
                    break
            time.sleep(0.1)
        assert daemon and str(daemon) in shown, shown
    finally:
        run([frozen / "bin" / "svc", "-dx", svc], tmp_path, env=env)
        if daemon:
            try:
                os.kill(daemon, 9)
            except ProcessLookupError:
                pass
        try:
            sup.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sup.kill()
            sup.wait()
    err = sup.stderr.read().decode() if sup.stderr else ""
    assert "Traceback" not in err and "internal error" not in err, err


@pytest.mark.parametrize(
    ("given", "expect"),
    [({}, None), ({"LD_LIBRARY_PATH": "/opt/x"}, "/opt/x")],
    ids=["unset", "set"],
)
def test_started_programs_get_the_environment_we_got(
    frozen: Path, tmp_path: Path, given: dict[str, str], expect: str | None
) -> None:
    """A program a frozen command starts (here envdir exec'ing printenv)
    sees no bootloader variables, and LD_LIBRARY_PATH as we got it: not
    our bundled library directory, which would shadow the system's."""
    printenv = shutil.which("printenv")
    assert printenv is not None
    (tmp_path / "vars").mkdir()
    res = run(
        [frozen / "bin" / "envdir", tmp_path / "vars", printenv],
        tmp_path,
        env={**bare_env(), **given},
    )
    assert res.returncode == 0, text(res)
    env = dict(line.split("=", 1) for line in res.stdout.decode().splitlines())
    assert not [name for name in env if name.startswith("_PYI_")], env
    assert "LD_LIBRARY_PATH_ORIG" not in env, env
    assert env.get("LD_LIBRARY_PATH") == expect, env


def test_command_started_by_a_command_has_its_own_name(frozen: Path, tmp_path: Path) -> None:
    """tai64n exec'd by envdir is ``tai64n`` to ps/pgrep/killall (its
    /proc/PID/comm), not ``envdir`` (the bootloader used to hand down the
    first command's name)."""
    (tmp_path / "vars").mkdir()
    proc = subprocess.Popen(
        [str(frozen / "bin" / "envdir"), str(tmp_path / "vars"), str(frozen / "bin" / "tai64n")],
        env=bare_env(),
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"hello\n")
        proc.stdin.flush()
        line = proc.stdout.readline()  # tai64n itself is running now
        assert line.startswith(b"@") and line.endswith(b" hello\n"), line
        comm = Path(f"/proc/{proc.pid}/comm").read_text().strip()
        assert comm == "tai64n"
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=30)
