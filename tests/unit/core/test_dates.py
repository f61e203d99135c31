"""qmail's date formats: the Received line's date822fmt and the Date: header."""

from __future__ import annotations

import pytest

from indimail.core.dates import date822fmt, rfc5322_date


@pytest.mark.parametrize(
    ("when", "text"),
    [
        (0, "1 Jan 1970 00:00:00 -0000"),
        (1796000000.999, "30 Nov 2026 00:53:20 -0000"),  # the second it is in
        (-1.5, "31 Dec 1969 23:59:58 -0000"),  # floored, not truncated
        (951782400, "29 Feb 2000 00:00:00 -0000"),
    ],
)
def test_date822fmt(when, text) -> None:
    assert date822fmt(when) == text
    assert date822fmt(when) == text  # the kept last second gives the same


def test_rfc5322_date_has_the_weekday() -> None:
    assert rfc5322_date(1796000000) == "Mon, 30 Nov 2026 00:53:20 -0000"
