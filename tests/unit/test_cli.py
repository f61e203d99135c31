"""The multicall dispatcher: names, --list, unknown commands, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from indimail import cli

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
