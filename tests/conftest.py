"""Shared fixtures: a rootless instance per test (helpers live in support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import Instance, make_instance


@pytest.fixture
def instance(tmp_path: Path) -> Instance:
    """A fresh rootless instance with 2 queues, host mx.example.test."""
    return make_instance(tmp_path / "inst")
