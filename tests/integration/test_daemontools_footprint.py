"""Footprint of the supervision tree (bench/supervision_footprint.py, quick)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_supervision_tree_footprint_below_60mb():
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "supervision_footprint.py"),
            "--settle",
            "1",
            "--json",
        ],
        capture_output=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr.decode()
    results = {r["label"]: r for r in json.loads(res.stdout)}
    ours = results["ours"]
    assert ours["services"] == 15
    assert ours["pss_kb"] / 1024 <= 60, ours
    # one Python process supervises all; loggers are forked multilogs
    assert ours["kinds"].get("svscan") == 1 and ours["kinds"].get("multilog") == 15
