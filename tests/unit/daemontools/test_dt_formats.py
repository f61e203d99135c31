"""Status file, TAI64N labels, svstat lines, log/run shapes."""

from __future__ import annotations

import struct
import time

from indimail.core import tai64n
from indimail.daemontools import logrun
from indimail.daemontools import status as statusfile
from indimail.daemontools.svctl import format_status
from indimail.daemontools.tai64n_tools import convert_line, stamp_lines


def test_tai64n_label_roundtrip():
    label = tai64n.label(1_700_000_000, 123)
    assert label == b"@400000006553f10a0000007b"
    assert tai64n.parse_label(label) == (1_700_000_000, 123)
    assert tai64n.unpack(tai64n.pack(5, 6)) == (5, 6)
    assert tai64n.parse_label(b"@xyz") is None


def test_status_encode_is_readable_by_every_reader():
    stamp = tai64n.pack(1_700_000_000, 5)
    data = statusfile.encode(stamp, 4242, False, "u", 0, True, 99)
    assert len(data) == 25
    # daemontools' view: first 18 bytes, pid little-endian at 12
    assert struct.unpack_from("<I", data, 12)[0] == 4242
    assert data[16] == 0 and data[17:18] == b"u"
    st = statusfile.decode(data)
    assert (st.pid, st.up, st.want, st.spid, st.paused) == (4242, True, "u", 99, False)
    down = statusfile.encode(stamp, 0, False, "d", 0, False, 99)
    assert struct.unpack_from("<I", down, 12)[0] == 0  # Debian svstat: down
    assert statusfile.decode(down).spid == 99


def test_status_decode_classic_and_fork():
    stamp = tai64n.pack(1_700_000_000, 0)
    classic = stamp + struct.pack("<I", 77) + b"\x01u"
    st = statusfile.decode(classic)
    assert (st.up, st.pid, st.paused, st.size) == (True, 77, True, 18)
    classic_down = stamp + struct.pack("<I", 0) + b"\x00\x00"
    assert statusfile.decode(classic_down).up is False
    fork_down = stamp + struct.pack("<I", 555) + b"\x00d" + struct.pack("=h", 0) + b"\x00"
    st = statusfile.decode(fork_down)
    assert (st.up, st.spid, st.want) == (False, 555, "d")
    fork_wait = stamp + struct.pack("<I", 555) + b"\x00u" + struct.pack("=h", -2) + b"\x00"
    assert statusfile.decode(fork_wait).wait == -2
    try:
        statusfile.decode(b"short")
    except ValueError:
        pass
    else:  # pragma: no cover
        raise AssertionError("short status accepted")


def test_svstat_lines_and_codes():
    now = time.time_ns()
    secs, nanos = divmod(now - 5_000_000_000, 1_000_000_000)
    stamp = tai64n.pack(secs, nanos)
    import os

    me = os.getpid()
    line, code = format_status(
        "svc/x", statusfile.decode(statusfile.encode(stamp, me, False, "u", 0, True, 1)), True
    )
    assert line.startswith("svc/x: up 5.") and line.endswith(f"  pid {me} ")
    assert code == 0
    line, code = format_status(
        "d", statusfile.decode(statusfile.encode(stamp, 0, False, "u", 0, False, 9)), True
    )
    assert ", normally up, want up spid 9" in line and code == 4
    line, code = format_status(
        "d", statusfile.decode(statusfile.encode(stamp, me, True, "u", 0, True, 9)), False
    )
    assert ", normally down, paused" in line and code == 3
    line, code = format_status(
        "d", statusfile.decode(statusfile.encode(stamp, me, False, "d", 0, True, 9)), True
    )
    assert ", want down" in line and code == 5
    line, code = format_status(
        "d", statusfile.decode(statusfile.encode(stamp, 0, False, "u", 60, False, 9)), True
    )
    assert line.startswith("d: wait ") and "remaining 5" in line and code == 6


def test_tai64n_tools_helpers():
    out, at_start = stamp_lines(b"a\nb", True, b"@4000000065538f0a0000007b")
    assert out == b"@4000000065538f0a0000007b a\n@4000000065538f0a0000007b b"
    assert at_start is False
    text = convert_line(b"@4000000065538f0a0000007b hello")
    assert text.endswith(b".000000123 hello")
    assert text[:4] == time.strftime("%Y", time.localtime(1_700_000_000)).encode()
    assert convert_line(b"plain") == b"plain"


def test_logrun_shapes():
    ok = logrun.parse("#!/bin/sh\nexec setuidgid qmaill multilog t /var/log/svc/smtpd.25\n")
    assert ok is not None and ok.user == "qmaill" and ok.script == ["t", "/var/log/svc/smtpd.25"]
    cont = logrun.parse(
        "#!/bin/sh\n# log\nexec 2>&1\n"
        "exec /usr/bin/setuidgid qmaill \\\n  /usr/sbin/multilog t '-*x*' ./main\n"
    )
    assert cont is not None and cont.stderr_to_stdout and cont.script == ["t", "-*x*", "./main"]
    assert logrun.parse("#!/bin/sh\nexec multilog t $LOGDIR\n") is None
    assert logrun.parse("#!/bin/sh\nexec multilog t -* ./main\n") is None  # unquoted glob
    assert logrun.parse("#!/bin/sh\ncd /x; exec multilog t ./main\n") is None
    assert logrun.parse("#!/usr/bin/perl\nexec multilog t ./main\n") is None
    assert logrun.parse("#!/bin/sh\nexec cat\n") is None
