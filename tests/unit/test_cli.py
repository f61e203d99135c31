"""The multicall dispatcher: names, --list, unknown commands, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from indimail import cli
from support import make_instance

INDIMAIL = Path(sys.executable).parent / "indimail"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(INDIMAIL), *args], capture_output=True, timeout=60)


def test_list_prints_every_command():
    res = run("--list")
    assert res.returncode == 0
    assert res.stdout.decode().split() == sorted(cli.COMMANDS)


def test_every_command_module_imports():
    import importlib

    for name, (entry, _code) in cli.COMMANDS.items():
        module, _, func = entry.partition(":")
        mod = importlib.import_module(module)
        assert callable(getattr(mod, func or "main")), name


def test_unknown_command():
    res = run("no-such-command")
    assert res.returncode == 100
    assert res.stderr.decode().startswith("indimail: unknown command: no-such-command")
    assert b"Traceback" not in res.stderr


def test_no_command():
    res = run()
    assert res.returncode == 100
    assert b"usage:" in res.stderr


def test_dispatch_on_argv0(tmp_path):
    link = tmp_path / "queue-fix"
    link.symlink_to(INDIMAIL)
    res = subprocess.run([str(link)], capture_output=True, timeout=60)
    assert res.returncode == 100
    assert b"usage: queue-fix" in res.stderr


def test_internal_error_is_one_line(monkeypatch, capsys):
    import types

    boom = types.ModuleType("boom")

    def main(argv):
        raise ZeroDivisionError("division by zero")

    boom.main = main
    monkeypatch.setitem(sys.modules, "boom", boom)
    monkeypatch.setitem(cli.COMMANDS, "boom", ("boom", 81))
    assert cli.main(["boom"]) == 81
    err = capsys.readouterr().err
    assert err == "boom: internal error: ZeroDivisionError: division by zero\n"


def _closing(*fds: int):
    """preexec_fn: start the command with these fds closed."""

    def close() -> None:
        import os

        for fd in fds:
            os.close(fd)

    return close


def test_closed_stdout_fails_writes_as_closed():
    # started with fd 1 (and 2) closed, as from some init scripts: Python
    # leaves sys.stdout None.  No traceback; the output fails as to a closed
    # fd (EBADF), the original's "unable to write output"; and /dev/null
    # holds the fd, so the next file the command opens cannot become it
    res = subprocess.run(
        [str(INDIMAIL), "--list"], stderr=subprocess.PIPE, preexec_fn=_closing(1), timeout=60
    )
    assert res.returncode == 111
    assert res.stderr == b"indimail: unable to write output: Bad file descriptor\n"
    res = subprocess.run(
        [str(INDIMAIL), "--list"], preexec_fn=_closing(1, 2), timeout=60, capture_output=False
    )
    assert res.returncode == 111


def test_closed_stdin_fails_reads_as_closed(tmp_path):
    # qmail-lspawn reads qmail-send's commands from fd 0: closed, the read
    # fails with EBADF and it ends with 111, as the original does
    inst = make_instance(tmp_path / "inst")
    res = subprocess.run(
        [str(inst.bin / "qmail-lspawn"), "./Maildir/"],
        capture_output=True,
        env=inst.env(),
        preexec_fn=_closing(0),
        timeout=60,
    )
    assert res.returncode == 111, res.stderr
    assert res.stderr == b"qmail-lspawn: unable to read commands: Bad file descriptor\n"
    assert len(res.stdout) == 2  # its concurrency, announced before


def test_output_that_cannot_be_written_fails_the_command(tmp_path):
    # a full disk under the output: the original says "unable to write
    # output" and exits 111; so do we, whether the output was still in the
    # buffer at exit (--list) or written through stdout's buffer (cdbdump)
    records = b"".join(b"+%d,%d:key%05d->%s\n" % (8, 500, i, b"v" * 500) for i in range(100))
    cdb = tmp_path / "big.cdb"
    made = subprocess.run(
        [str(INDIMAIL), "cdbmake", str(cdb), str(tmp_path / "big.tmp")],
        input=records + b"\n",
        capture_output=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    for args, stdin, name in (
        (["--list"], subprocess.DEVNULL, "indimail"),
        (["cdbdump"], cdb.open("rb"), "cdbdump"),
    ):
        with open("/dev/full", "wb") as full:
            res = subprocess.run(
                [str(INDIMAIL), *args], stdin=stdin, stdout=full, stderr=subprocess.PIPE, timeout=60
            )
        assert res.returncode == 111, res.stderr
        assert res.stderr == f"{name}: unable to write output: No space left on device\n".encode()


@pytest.mark.parametrize(
    "args",
    [
        ["rblsmtpd", "-t", "\u00b2", "true"],
        ["tcpclient", "-T", "\u00b2", "127.0.0.1", "25", "true"],
        ["indimail-instance", "-q", "\u00b2", "/nonexistent/instance"],
        ["queue-fix", "-b", "\u00b2", "/nonexistent/queue"],
        ["qmail-queued", "-c", "\u00b2"],
    ],
    ids=lambda a: a[0],
)
def test_numbers_in_other_digits_are_refused_as_usage(args: list[str]) -> None:
    # "²" passes str.isdigit() but not int(): refused, naming the option,
    # as any other bad number is, never an internal error
    res = subprocess.run(
        [str(INDIMAIL), *args], capture_output=True, stdin=subprocess.DEVNULL, timeout=30
    )
    err = res.stderr.decode()
    assert res.returncode in (100, 111), err
    assert err.startswith(f"{args[0]}: "), err
    assert args[1] in err.splitlines()[0], err  # names the option
    assert "internal error" not in err and "Traceback" not in err
