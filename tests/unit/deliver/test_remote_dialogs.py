"""qmail-remote against scripted SMTP servers: one case per remote_cases/*.dialog.

Each case checks both sides: the commands qmail-remote sent (the ``C:``
lines of the script) and its stdout records (the ``.expect`` file).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

CASES = Path(__file__).parent / "remote_cases"
sys.path.insert(0, str(CASES))

from remote_harness import (  # noqa: E402
    DEFAULT_MESSAGE,
    DnsServer,
    ScriptedServer,
    base_env,
    expect_bytes,
    free_port,
    parse_dialog,
    run_remote,
    server_ip,
)

DIALOGS = sorted(CASES.glob("*.dialog"))


@pytest.mark.parametrize("case", DIALOGS, ids=[p.stem for p in DIALOGS])
def test_dialog(case: Path, tmp_path: Path) -> None:
    d = parse_dialog(case.read_text())
    env = base_env(tmp_path)
    env.update(d.env)
    control = Path(env["CONTROLDIR"])
    for name, value in d.controls.items():
        (control / name).write_text(value + "\n")
    host, sender, *recips = d.args
    ips = [server_ip(n) for n in sorted(d.servers)]
    port = free_port(ips)
    servers = {
        n: ScriptedServer(server_ip(n), conns, port=port).start() for n, conns in d.servers.items()
    }
    dns_server = None
    try:
        if d.mx:
            records: dict[tuple[str, str], list[str]] = {
                (host, "MX"): [f"{pref} mx{n}.{host}." for pref, n in d.mx]
            }
            for _, n in d.mx:
                records[(f"mx{n}.{host}", "A")] = [server_ip(n)]
            dns_server = DnsServer(records).start()
            env["DNSCACHEIP"] = dns_server.address
            route = d.route or f"{host}::{port}"
        else:
            route = d.route or f"{host}:{server_ip(1)}:{port}"
        (control / "smtproutes").write_text(route.replace("{port}", str(port)) + "\n")
        size = str(len(d.message or DEFAULT_MESSAGE))
        argv = ["qmail-remote", host, sender, "", size, *recips]
        code, out = run_remote(argv, d.message or DEFAULT_MESSAGE, env, tmp_path)
    finally:
        for s in servers.values():
            s.stop()
        if dns_server:
            dns_server.stop()
    want = expect_bytes(
        case.with_suffix(".expect").read_text(),
        ip=server_ip(1),
        ip2=server_ip(2),
        port=str(port),
    )
    assert code == 0
    assert out == want
    for n, s in servers.items():
        assert not s.errors, f"server {n}: {s.errors}"
        assert s.received == s.expected(), f"server {n} saw other commands"
