"""tcprules and tcprulescheck.

``tcprules rules.cdb rules.tmp < rules`` compiles rule lines (syntax in
:mod:`indimail.ucspi.rules`) into ``rules.tmp``, fsyncs it and renames it
over ``rules.cdb``.  A line it cannot parse: exit 100 naming the line number,
``rules.cdb`` untouched and ``rules.tmp`` removed.  I/O trouble: exit 111.

``tcprulescheck rules.cdb`` prints which rule tcpserver would follow for
``$TCPREMOTEIP`` (default ``0.0.0.0``), ``$TCPREMOTEHOST`` and
``$TCPREMOTEINFO``, in the original's words.
"""

from __future__ import annotations

import os
import sys

from indimail.core import cdb
from indimail.core.errors import EXIT_TEMP, Fatal, UsageError, describe_oserror
from indimail.ucspi import rules


def tcprules_main(argv: list[str]) -> int:
    if len(argv) < 3:
        raise UsageError("usage: tcprules rules.cdb rules.tmp")
    path, tmp = argv[1], argv[2]
    try:
        writer = cdb.Writer(path, tmp)
    except OSError as exc:
        raise Fatal(EXIT_TEMP, f"fatal: unable to create {tmp}: {describe_oserror(exc)}") from None
    try:
        stdin = sys.stdin.buffer
        for key, data in rules.compile_lines(iter(stdin.readline, b"")):
            writer.add(key, data)
        writer.finish()
    except rules.RuleSyntaxError as exc:
        writer.abort()
        line = getattr(exc, "line", b"").decode("utf-8", "replace")
        raise Fatal(
            100, f"fatal: unable to parse line {getattr(exc, 'lineno', '?')}: {line}: {exc}"
        ) from None
    except (OSError, cdb.CdbError) as exc:
        writer.abort()
        what = describe_oserror(exc) if isinstance(exc, OSError) else str(exc)
        raise Fatal(
            EXIT_TEMP, f"fatal: unable to write {tmp} or move it to {path}: {what}"
        ) from None
    except BaseException:
        writer.abort()
        raise
    return 0


def tcprulescheck_main(argv: list[str]) -> int:
    if len(argv) < 2:
        raise UsageError("usage: tcprulescheck rules.cdb")
    path = argv[1]
    ip = os.environ.get("TCPREMOTEIP") or "0.0.0.0"
    try:
        with cdb.Reader(path) as reader:
            decision = rules.lookup(
                reader, ip, os.environ.get("TCPREMOTEHOST"), os.environ.get("TCPREMOTEINFO")
            )
    except (OSError, cdb.CdbError) as exc:
        what = describe_oserror(exc) if isinstance(exc, OSError) else str(exc)
        raise Fatal(EXIT_TEMP, f"fatal: unable to read {path}: {what}") from None
    out = sys.stdout.buffer
    out.write(rules.describe(decision).encode("utf-8", "surrogateescape"))
    out.flush()
    return 0
