"""Port arguments of tcpserver and tcpclient: numbers past 65535, odd digits
and unknown names are refused with the port named, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

INDIMAIL = Path(sys.executable).parent / "indimail"

BAD_PORTS = ["65536", "99999", "0123456", "\u00b2", "9" * 5000, "no-such-service"]


@pytest.mark.parametrize("command", ["tcpserver", "tcpclient"])
@pytest.mark.parametrize("port", BAD_PORTS, ids=lambda p: p[:12].encode().hex())
def test_bad_port_is_refused_by_name(command: str, port: str) -> None:
    res = subprocess.run(
        [str(INDIMAIL), command, "127.0.0.1", port, "true"],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )
    assert res.returncode == 111, res.stderr
    err = res.stderr.decode()
    assert f"unable to figure out port number for {port}" in err, err[:300]
    assert "internal error" not in err and "Traceback" not in err


def test_highest_port_is_taken() -> None:
    from indimail.ucspi import addr

    assert addr.port_number("65535") == 65535
    assert addr.port_number("00025") == 25
