"""Date formats of qmail: the Received line's date822fmt and RFC 5322 Date."""

from __future__ import annotations

import time

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def date822fmt(when: float | None = None) -> str:
    """qmail's date822fmt: ``27 Nov 2026 00:13:25 -0000`` (UTC, no weekday)."""
    # // floors as math.floor does (also before 1970); math is a shared
    # library to load for every sendmail run, this is the only use
    second = int((when if when is not None else time.time()) // 1)
    if _last_second[0] == second:  # a busy qmail-smtpd stamps many per second
        return _last_second[1]
    t = time.gmtime(second)
    text = (
        f"{t.tm_mday} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} -0000"
    )
    _last_second[:] = [second, text]
    return text


_last_second: list = [None, ""]  # (second, its text): the last one formatted


def rfc5322_date(when: float | None = None) -> str:
    """``Fri, 27 Nov 2026 00:13:25 -0000`` as qmail-inject writes Date:."""
    t = time.gmtime(when if when is not None else time.time())
    return f"{_DAYS[t.tm_wday]}, {date822fmt(when)}"
