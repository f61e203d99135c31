"""Helpers shared by tests (imported as ``support``; tests/ is on sys.path)."""

from __future__ import annotations

import shutil

import pytest


def need_program(name: str, package: str) -> str:
    """Path of ``name``, or skip naming the Debian package that brings it."""
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} not installed (apt-get install {package})")
    return found
