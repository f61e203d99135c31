"""Run the next program of a chain: in-process when it is ours, else exec.

ARCHITECTURE section 3: no interpreter start on the hot path.  A program
is *ours* when the basename of its path is a command of :mod:`indimail.cli`
and

* it is a bare name (no ``/``) that PATH resolves to our binary, or that
  PATH does not resolve at all (``execvp`` could not run it anyway); or
* its path (symlinks resolved) is our binary: the frozen executable, the
  ``indimail`` entry-point script beside the running interpreter, or any
  small ``#!`` script that imports ``indimail.cli`` (a venv entry point).

A bare name that PATH resolves to some other file (say the C qmail-smtpd)
is exec'd, as the original does.  Everything else is exec'd with
``execvp`` exactly as the original.
"""

from __future__ import annotations

import functools
import importlib
import io
import os
import shutil
import signal
import sys

from indimail.core.errors import EXIT_TEMP, Fatal

_SCRIPT_MARK = b"indimail.cli"


@functools.lru_cache(maxsize=1)
def _our_binaries() -> frozenset[str]:
    found = set()
    cands = []
    if getattr(sys, "frozen", False):
        cands.append(sys.executable)
    cands.append(os.path.join(os.path.dirname(sys.executable), "indimail"))
    if sys.argv and sys.argv[0]:
        cands.append(sys.argv[0])
    for c in cands:
        try:
            if os.path.isfile(c):
                found.add(os.path.realpath(c))
        except OSError:
            pass
    return frozenset(found)


@functools.lru_cache(maxsize=64)
def _is_our_file(real: str) -> bool:
    if real in _our_binaries():
        return True
    try:
        with open(real, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"#!") and _SCRIPT_MARK in head


def command_name(prog: str, path_env: str | None = None) -> str | None:
    """The cli command ``prog`` stands for when it is ours, else None."""
    from indimail import cli

    name = os.path.basename(prog)
    if name not in cli.COMMANDS:
        return None
    if "/" not in prog:
        search = path_env if path_env is not None else os.environ.get("PATH")
        found = shutil.which(prog, path=search)
        if found is None:
            return name
        return name if _is_our_file(os.path.realpath(found)) else None
    return name if _is_our_file(os.path.realpath(prog)) else None


def command_module(name: str):
    from indimail import cli

    module_name = cli.COMMANDS[name][0].partition(":")[0]
    return importlib.import_module(module_name)


def warm(argv: list[str]) -> list[str]:
    """Import the modules of our commands named in ``argv`` (a chain such as
    ``rblsmtpd -r x qmail-smtpd``) so forked children share them."""
    warmed = []
    for word in argv:
        name = None if word.startswith("-") else command_name(word)
        if name is not None:
            try:
                mod = command_module(name)
                warmed.append(name)
            except Exception:  # the command reports its own import trouble later
                continue
            for extra in getattr(mod, "UCSPI_WARM", ()):
                try:
                    importlib.import_module(extra)
                except Exception:
                    pass
    return warmed


def _std_stream(fd: int) -> io.TextIOWrapper:
    if fd == 0:
        return io.TextIOWrapper(
            io.BufferedReader(io.FileIO(0, "rb", closefd=False)), errors="surrogateescape"
        )
    return io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(1, "wb", closefd=False)),
        errors="surrogateescape",
        write_through=False,
    )


class LazyStdio:
    """``sys.stdin``/``sys.stdout`` of a pooled session, made on first use.

    qmail-smtpd talks to fds 0/1 directly; building two text streams for
    every connection (two fstat, two lseek and six objects) was ~50 µs of
    CPU per session.  Any use of the stream builds the real one, which then
    takes this object's place in :mod:`sys`."""

    __slots__ = ("_fd", "_real")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._real: io.TextIOWrapper | None = None

    def _get(self) -> io.TextIOWrapper:
        real = self._real
        if real is None:
            real = self._real = _std_stream(self._fd)
            name = "stdin" if self._fd == 0 else "stdout"
            if getattr(sys, name) is self:
                setattr(sys, name, real)
        return real

    def __getattr__(self, name: str):
        return getattr(self._get(), name)

    def __iter__(self):
        return iter(self._get())

    def __enter__(self):
        return self._get().__enter__()

    def __exit__(self, *exc: object) -> None:
        self._get().__exit__(*exc)

    def flush(self) -> None:
        if self._real is not None:  # nothing written: nothing to flush
            self._real.flush()


def setup_stdio(lazy: bool = False) -> None:
    """Fresh sys.stdin/stdout on fds 0/1 (after they were dup2'ed); with
    ``lazy``, made only when the program uses them (pooled sessions)."""
    if lazy:
        sys.stdin = LazyStdio(0)  # type: ignore[assignment]
        sys.stdout = LazyStdio(1)  # type: ignore[assignment]
        return
    sys.stdin = _std_stream(0)
    sys.stdout = _std_stream(1)


def exec_program(argv: list[str], who: str) -> None:
    """``execvp`` with default signal dispositions; Fatal on failure."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM):
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    try:
        sys.stdout.flush()
    except Exception:
        pass
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise Fatal(EXIT_TEMP, f"unable to run {argv[0]}: {exc.strerror}") from None
    raise Fatal(EXIT_TEMP, f"{who}: unable to run {argv[0]}")  # pragma: no cover


def run_or_exec(argv: list[str], who: str = "") -> int:
    """Run ``argv`` in this process if ours (return its exit code), else
    exec it (never returns; Fatal if the exec fails)."""
    name = command_name(argv[0])
    if name is None:
        exec_program(argv, who)
    return run_command(name, argv)


def run_command(name: str, argv: list[str]) -> int:
    """Run our command ``name`` in this process with ``argv``; its exit code."""
    from indimail import cli

    sys.argv = list(argv)
    return cli.run(name, [name, *argv[1:]])
