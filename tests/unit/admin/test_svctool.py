"""svctool / create_services in a rootless instance: the generated files."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from indimail.admin import svc_boot, svctool
from indimail.core import paths as _paths
from indimail.core.errors import UsageError
from support import INDIMAIL, Instance, make_instance


@pytest.fixture(scope="module")
def services(tmp_path_factory) -> Instance:
    inst = make_instance(tmp_path_factory.mktemp("svc") / "inst", queues=2)
    res = inst.run("create_services", "--port-offset=20000", "--hostname=mx.example.test")
    assert res.returncode == 0, res.stderr.decode()
    return inst


def test_default_service_set(services: Instance) -> None:
    sdir = services.top / "service"
    names = sorted(os.listdir(sdir))
    assert names == [
        ".svscan",
        "qmail-qmqpd.20628",
        "qmail-qmtpd.20209",
        "qmail-queued",
        "qmail-send.25",
        "qmail-smtpd.20025",
        "qmail-smtpd.20366",
        "qmail-smtpd.20465",
        "qmail-smtpd.20587",
    ]
    for name in names[1:]:
        for f in ("run", "log/run"):
            assert os.access(sdir / name / f, os.X_OK), (name, f)
        vdir = sdir / name / "variables"
        assert (vdir / ".envdir").read_text().strip() == str(services.control / "global_vars")
        assert (vdir / ".options").read_text().startswith("svctool --")


def test_smtp_run_script_and_variables(services: Instance) -> None:
    s = services.top / "service" / "qmail-smtpd.20587"
    run = (s / "run").read_text()
    assert run.startswith("#!/bin/sh\n")
    assert "Refusing to start SMTP listener" in run
    assert f"-x {services.top}/etc/tcp/tcp.smtp.cdb" in run
    assert "-c ./variables/MAXDAEMONS -o -b \\$MAXDAEMONS" in run
    assert f'{services.bin}/qmail-smtpd $HOSTNAME \\$AUTHMODULES /bin/false"' in run
    assert "-u " not in run  # rootless: no role switch
    v = s / "variables"
    assert (v / "PORT").read_text() == "20587\n"
    assert (v / "MAXDAEMONS").read_text() == "75\n"
    assert (v / "QUEUE_COUNT").read_text() == "2\n"
    assert (v / "QMAILQUEUE").read_text() == f"{services.bin}/qmail-multi\n"
    assert (v / "FORCE_TLS").read_text() == "\n"  # set, empty
    assert (v / "REQUIREAUTH").read_text() == "\n"
    assert (v / "QUEUEDIR").read_text() == ""  # unset
    log = (s / "log" / "run").read_text()
    assert log.rstrip().endswith(f"exec {services.bin}/multilog t {services.top}/log/smtpd.20587")


def test_send_service_and_queues(services: Instance) -> None:
    s = services.top / "service" / "qmail-send.25"
    run = (s / "run").read_text()
    assert "qscheduler -s" in run and "softlimit -q \\$MSGQSIZE -m \\$SOFT_MEM" in run
    assert (s / "variables" / "MSGQSIZE").read_text() == "8388608\n"
    assert "deliver.25" in (s / "log" / "run").read_text()
    qb = services.queue_base
    assert sorted(os.listdir(qb)) == ["nqueue", "queue1", "queue2"]
    assert (qb / "queue1" / "lock" / "sendmutex").exists()
    assert (services.control / "queue_base").read_text() == f"{qb}\n"


def test_control_files_and_tcp_rules(services: Instance) -> None:
    c = services.control
    assert (c / "me").read_text() == "mx.example.test\n"
    assert (c / "servicedir.conf").read_text() == f"{services.top}/service\n"
    assert (c / "nodnscheck").read_text().splitlines()[-1] == "@mx.example.test"
    assert (c / "defaultqueue" / "QUEUE_COUNT").read_text() == "2\n"
    assert (c / "global_vars" / "CONFSPLIT").exists()
    assert os.readlink(c / "global_vars" / "DEFAULT_DOMAIN") == "../defaultdomain"
    tcp = services.top / "etc" / "tcp"
    for name in ("tcp.smtp", "tcp.qmtp", "tcp.qmqp"):
        assert (tcp / f"{name}.cdb").exists()
    assert (tcp / "tcp.qmtp").read_text() == ":deny\n"


def test_print_variables(services: Instance) -> None:
    res = services.run("svctool", "--print-variables", "--service-name=qmail-smtpd.20025")
    out = res.stdout.decode()
    assert res.returncode == 0 and "PORT=20025" in out and "CONFSPLIT=" in out


def test_rmsvc_ensvc(services: Instance) -> None:
    sdir = services.top / "service" / "qmail-qmqpd.20628"
    assert services.run("svctool", "--rmsvc=qmail-qmqpd.20628").returncode == 0
    assert (sdir / "down").exists()
    assert services.run("svctool", "--ensvc=qmail-qmqpd.20628").returncode == 0
    assert not (sdir / "down").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--smtp"], "--smtp needs a value"),
        (["--smtp=99999"], "not a port"),
        (["--bogus"], "unknown option --bogus"),
        (["--config=nope"], "expected one of"),
        (["--qcount=x", "--smtp=25"], "not a number"),
    ],
)
def test_bad_options(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        opts, _ = svctool.parse(argv)
        p = _paths.load(environ={})
        svctool.build_options(p, opts, "")
        svctool._port(opts, "smtp")
        if opts.get("config") not in svctool.CONFIG_VERBS:
            raise UsageError(f"--config: expected one of {svctool.CONFIG_VERBS}")


def test_bad_option_exit_code(services: Instance) -> None:
    res = services.run("svctool", "--smtp=abc")
    assert res.returncode == 100
    assert b"--smtp=abc" in res.stderr and b"Traceback" not in res.stderr


def test_ignored_options_warn(services: Instance) -> None:
    res = services.run("svctool", "--queueParam=otherqueue", "--dksign", "--qcount=1")
    assert res.returncode == 0
    assert b"--dksign" in res.stderr and b"ignored" in res.stderr


def test_add_boot_into_destdir(tmp_path: Path) -> None:
    conf = tmp_path / "paths.conf"
    conf.write_text("PREFIX=/usr\nBINDIR=/usr/bin\nSBINDIR=/usr/bin\nSERVICEDIR=/service\n")
    for method, target in (
        ("systemd", "lib/systemd/system/svscan.service"),
        ("sysv", "etc/init.d/svscan"),
        ("openrc", "etc/init.d/svscan"),
        ("none", "usr/libexec/indimail/svscanboot"),
    ):
        dest = tmp_path / method
        res = subprocess.run(
            [
                str(INDIMAIL),
                "svctool",
                "--config=add-boot",
                f"--destdir={dest}",
                f"--boot={method}",
            ],
            env={"INDIMAIL_PATHS": str(conf), "PATH": "/usr/bin:/bin"},
            capture_output=True,
        )
        assert res.returncode == 0, res.stderr.decode()
        assert (dest / target).exists(), (method, target)
        assert (dest / "usr/share/indimail/boot/svscan.plist").exists()
    unit = (tmp_path / "systemd" / "lib/systemd/system/svscan.service").read_text()
    assert "ExecStart=/usr/libexec/indimail/svscanboot /service" in unit
    assert "ExecStop=/usr/bin/qmailctl stop" in unit and "RestartSec=10" in unit
    for script in ("etc/init.d/svscan", "usr/libexec/indimail/svscanboot"):
        res = subprocess.run(["sh", "-n", str(tmp_path / "sysv" / script)])
        assert res.returncode == 0, script


def test_boot_files_render_for_every_platform() -> None:
    for platform in ("linux", "freebsd13", "darwin"):
        p = _paths.load(environ={}, argv0="", platform=platform)
        files = svc_boot.boot_files(p)
        assert set(files) >= {"svscanboot", "systemd", "svscan.init", "svscan.rcd", "svscan.plist"}
        assert str(p.servicedir) in files["svscanboot"][0]
