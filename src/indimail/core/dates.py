"""Date formats of qmail: the Received line's date822fmt and RFC 5322 Date."""

from __future__ import annotations

import time

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def date822fmt(when: float | None = None) -> str:
    """qmail's date822fmt: ``27 Nov 2026 00:13:25 -0000`` (UTC, no weekday)."""
    t = time.gmtime(when if when is not None else time.time())
    return (
        f"{t.tm_mday} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} -0000"
    )


def rfc5322_date(when: float | None = None) -> str:
    """``Fri, 27 Nov 2026 00:13:25 -0000`` as qmail-inject writes Date:."""
    t = time.gmtime(when if when is not None else time.time())
    return f"{_DAYS[t.tm_wday]}, {date822fmt(when)}"
