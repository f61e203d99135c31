"""The benchmark harness in smoke mode, so it never rots.

``bench/run.py --quick`` (100 messages per SMTP scenario, 50 sendmail runs,
1 repetition, 6 s idle) sets up a private Postfix, our rootless instance
from the frozen binary under our svscan and a smtp-sink, all on loopback,
and prints the table; every scenario must have rates and CPU time per
message > 0 for both systems and an idle Pss for both, and our instance
must run the queue count given by ``--queues``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import need_program

ROOT = Path(__file__).resolve().parents[2]
FROZEN = Path(os.environ.get("INDIMAIL_FROZEN") or ROOT / "dist" / "indimail") / "indimail"
SCENARIOS = ["smtp-local c1", "smtp-local c5", "smtp-local c20", "smtp-relay c20", "inject"]


@pytest.mark.peer
def test_bench_quick(tmp_path: Path) -> None:
    for prog in ("postfix", "smtp-source", "smtp-sink"):
        need_program(prog, "postfix")
    if os.getuid() != 0:
        pytest.skip("bench/run.py needs root (a private Postfix starts as root)")
    if not FROZEN.exists():
        pytest.skip(f"no frozen binary at {FROZEN} (nox -s freeze)")
    out = tmp_path / "bench.json"
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--idle",
            "6",
            "--queues",
            "2",
            "--json",
            str(out),
        ],
        capture_output=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    table = res.stdout.decode()
    for name in [*SCENARIOS, "idle"]:
        assert name in table, table
    results = json.loads(out.read_text())
    rows = {r["scenario"]: r for r in results["rows"]}
    assert sorted(rows) == sorted([*SCENARIOS, "idle"])
    for name in SCENARIOS:
        r = rows[name]
        assert r["ours_rate"] > 0 and r["postfix_rate"] > 0 and r["ours_peak_pss_kb"] > 0, r
        # each system spends CPU on every message it takes (receiving,
        # queueing, delivering): a zero would mean its processes went uncounted
        assert r["ours_cpu_ms"] > 0 and r["postfix_cpu_ms"] > 0, r
        # user time is part of it; ours runs Python code for every message
        # (Postfix's few ms of user time may all be sampled as system time)
        assert 0 < r["ours_user_ms"] <= r["ours_cpu_ms"], r
        assert 0 <= r["postfix_user_ms"] <= r["postfix_cpu_ms"], r
    assert "CPU ms/msg" in table and "user ms/msg" in table
    assert rows["idle"]["ours_pss_kb"] > 0 and rows["idle"]["postfix_pss_kb"] > 0
    # --queues 2 made two queues: qscheduler runs four processes per queue
    # (qmail-send, qmail-lspawn, qmail-rspawn, qmail-clean) beside svscan,
    # two multilog, tcpserver and itself; 6 s idle outlast the reused
    # delivery workers (retired after 5 s idle, send/spawn.py WORKER_IDLE)
    assert results["queues"] == 2 and "(our queues: 2;" in table
    assert rows["idle"]["ours_processes"] == 5 + 4 * 2, rows["idle"]
    # disk flushes per message, where the kernel counts them for the device
    # under /tmp: both systems fsync every message they take into Maildir
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    assert spec is not None and spec.loader is not None
    bench_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_run)
    if bench_run.disk_flushes(Path("/tmp")) is not None:
        for name in ("smtp-local c1", "inject"):
            r = rows[name]
            assert r["ours_flushes"] >= 3 and r["postfix_flushes"] >= 1, r
            assert "flushes/msg" in table
