"""Record: the frozen-dataclass stand-in of Paths, Layout and Envelope."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from indimail.core.record import FrozenInstanceError
from indimail.queue.layout import Layout
from indimail.queue.qmail_queue import Envelope


def test_value_semantics():
    a = Layout(Path("/q"), split=23)
    assert a == Layout(root=Path("/q"), split=23, bigtodo=0)
    assert a != Layout(Path("/q"))
    assert hash(a) == hash(Layout(Path("/q"), 23, 0))
    assert Layout("/q/", split=23) == a  # a string root, normalised as Path would
    assert a.root == Path("/q")
    assert repr(a) == "Layout(root_s='/q', split=23, bigtodo=0)"
    assert Envelope(b"s", (b"r",)) == Envelope(b"s", (b"r",))
    assert Envelope(b"s", (b"r",)) != (b"s", (b"r",))


def test_frozen():
    a = Layout(Path("/q"))
    with pytest.raises(FrozenInstanceError):
        a.split = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del a.root
    with pytest.raises(AttributeError):
        a.other = 1  # type: ignore[attr-defined]


HEAVY = (  # math: a shared library to load (lib-dynload), ~0.3 ms
    "{'dataclasses', 'typing', 'tempfile', 'subprocess', 'socket', 'inspect',"
    " 'pathlib', 're', 'enum', 'ctypes', 'math'}"
)


def heavy_loaded(code: str, **run) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (no site), then print which of
    the modules that cost milliseconds at every start it imported."""
    tail = f"heavy = {HEAVY}\nprint(sorted(heavy & set(sys.modules)))\n"
    return subprocess.run(
        [sys.executable, "-S", "-c", f"import sys; sys.path[:0] = {sys.path!r}\n{code}\n{tail}"],
        capture_output=True,
        timeout=60,
        **run,
    )


def test_injection_path_imports_stay_light():
    # sendmail runs once per message: what it imports must not pull in
    # modules that cost milliseconds at every start.
    res = heavy_loaded(
        "import indimail.smtpd.sendmail, indimail.queue.qmail_queue, indimail.core.control\n"
        "import indimail.queue.door  # how a user who cannot write the queue queues"
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().strip() == "[]"


def test_a_whole_injection_stays_light(tmp_path):
    # not only the imports: queueing a message (paths file, controls,
    # defaultqueue, the queue itself) must not pull in pathlib & co either
    from support import make_instance

    inst = make_instance(tmp_path / "i", queues=2)
    res = heavy_loaded(
        "from indimail import cli\n"
        "rc = cli.run('sendmail', ['sendmail', '-f', 'a@example.test', 'b@example.test'])\n"
        "print(rc)",
        input=b"Subject: light\n\nbody\n",
        env=inst.env(),
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().split() == ["0", "[]"], res.stdout + res.stderr
    assert len(inst.files("todo")) == 1


def test_resident_processes_keep_dataclasses_out():
    """tcpserver's listener (qmail-smtpd warmed in it) and svscan with its
    in-process loggers stay for as long as the system runs: dataclasses
    would bring inspect, ast, dis and tokenize into each, ~1.3 MB of the
    idle system's memory apiece (docs/performance.md, session 17)."""
    code = (
        "import sys\n"
        f"sys.path[:0] = {sys.path!r}\n"
        "from indimail.ucspi import inproc, tcpserver\n"
        "inproc.warm(['qmail-smtpd'])\n"
        "import indimail.daemontools.svscan, indimail.daemontools.multilog\n"
        "print(sorted({'dataclasses', 'inspect', 'ast'} & set(sys.modules)))\n"
    )
    res = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().strip() == "[]"
