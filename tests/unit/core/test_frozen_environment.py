"""What the frozen binary takes back from its bootloader's environment."""

from __future__ import annotations

import pytest

from indimail.core.frozen import PYI_VARIABLES, restore_environment

LIB = "/opt/indimail/_internal"
PYI = {name: "x" for name in PYI_VARIABLES}


@pytest.mark.parametrize(
    ("given", "expect"),
    [
        # started with no LD_LIBRARY_PATH: the bootloader's goes entirely
        ({"LD_LIBRARY_PATH": LIB, **PYI}, {}),
        # started with one: the bootloader kept it in ..._ORIG
        (
            {"LD_LIBRARY_PATH": f"{LIB}:/opt/x", "LD_LIBRARY_PATH_ORIG": "/opt/x", **PYI},
            {"LD_LIBRARY_PATH": "/opt/x"},
        ),
        # not the bootloader's doing (not started through it): left alone
        ({"LD_LIBRARY_PATH": "/opt/x", **PYI}, {"LD_LIBRARY_PATH": "/opt/x"}),
        ({"LD_LIBRARY_PATH": f"/opt/x:{LIB}"}, {"LD_LIBRARY_PATH": f"/opt/x:{LIB}"}),
        ({"PATH": "/bin", **PYI}, {"PATH": "/bin"}),
        ({}, {}),
    ],
)
def test_restore_environment(given: dict[str, str], expect: dict[str, str]) -> None:
    env = {"HOME": "/root", **given}
    restore_environment(env, LIB)
    assert env == {"HOME": "/root", **expect}
