# ruff: noqa: E501  (the shell scripts run inside the tree)
"""The Debian package: built by ``packaging/build.py deb`` (lintian clean),
installed with apt from a local repository into a fresh Debian minbase tree
(no Python in it), mail delivered through it, purged.

Needs root, debhelper, lintian, chrpath, dpkg-dev (dpkg-scanpackages),
debootstrap and the Debian mirror (for the minbase tree, cached, and the
package's few library dependencies).  The machine's own packages are only
compared before and after, never changed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import packaging_support as ps
import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (debootstrap, chroot)")

TOOLS = {
    "dpkg-buildpackage": "dpkg-dev",
    "dh": "debhelper",
    "lintian": "lintian",
    "chrpath": "chrpath",
    "dpkg-scanpackages": "dpkg-dev",
    "debootstrap": "debootstrap",
    "unshare": "util-linux",
}
FQDN = "mx.example.test"


def _need_tools() -> None:
    missing = sorted({pkg for prog, pkg in TOOLS.items() if not shutil.which(prog)})
    if missing:
        pytest.skip(f"needs {' '.join(missing)} (apt-get install {' '.join(missing)})")


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    _need_tools()
    out = tmp_path_factory.mktemp("packages")
    started = time.monotonic()
    res = ps.build_package("deb", out)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    debs = sorted((out / "deb").glob("indimail-mta_*.deb"))
    assert debs, res.stdout[-2000:]
    print(f"deb built in {time.monotonic() - started:.1f} s: {debs[-1]}")
    return debs[-1]


def test_deb_contents(deb: Path) -> None:
    """The frozen binary, a symlink per command, the boot files, the paths file."""
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True).stdout
    assert "./usr/lib/indimail-mta/indimail\n" in listing
    assert "./usr/bin/sendmail -> ../lib/indimail-mta/indimail" in listing
    assert "./usr/bin/svctool -> ../lib/indimail-mta/indimail" in listing
    assert "./usr/bin/mailq" not in listing  # update-alternatives' slave link
    for path in (
        "./etc/init.d/svscan",
        "./lib/systemd/system/svscan.service",
        "./usr/libexec/indimail/svscanboot",
        "./usr/lib/indimail-mta/indimail-paths.conf",
    ):
        assert path in listing, path
    fields = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Depends", "Provides", "Conflicts"],
        capture_output=True,
        text=True,
    ).stdout
    assert "python" not in fields.lower()
    assert "mail-transport-agent" in fields


def test_deb_lintian_no_errors(deb: Path) -> None:
    res = subprocess.run(
        ["lintian", "--fail-on", "error", str(deb)], capture_output=True, text=True
    )
    errors = [ln for ln in res.stdout.splitlines() if ln.startswith("E:")]
    assert res.returncode == 0 and not errors, res.stdout


INSTALL = f"""
set -e
export DEBIAN_FRONTEND=noninteractive
# as in any chroot or container: nothing starts at install time
printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d
echo {FQDN} > /etc/mailname
echo 'deb [trusted=yes] file:/srv/repo ./' > /etc/apt/sources.list.d/local.list
apt-get update -qq
apt-get install -y -qq indimail-mta
echo "== python: $(ls /usr/bin/python* 2>/dev/null | wc -l)"
echo "== users"; getent passwd alias qmaild qmaill qmailp qmailq qmailr qmails indimail
echo "== groups"; getent group qmail nofiles indimail qcerts
echo "== queues"; ls /var/indimail/queue
echo "== me"; cat /etc/indimail/control/me
echo "== services"; ls /service
echo "== alternative"; readlink -f /usr/sbin/sendmail
echo "== commands"; /usr/lib/indimail-mta/indimail --list | tr '\\n' ' '; echo
rm -f /usr/sbin/policy-rc.d
"""

RUN = f"""
set -u
# svscan the way the package starts it without systemd: its init script
/etc/init.d/svscan start
useradd -m -s /bin/sh alice
mkdir -p /home/alice/Maildir/cur /home/alice/Maildir/new /home/alice/Maildir/tmp
chown -R alice: /home/alice/Maildir
sleep 3
echo "== stat"; qmailctl stat
printf 'To: alice@{FQDN}\\nSubject: via sendmail\\n\\nhello from sendmail\\n' | /usr/sbin/sendmail -t
echo "== sendmail exit $?"
printf 'To: alice@{FQDN}\nSubject: via sendmail as qmailq\n\nhello from sendmail\n' | setuidgid qmailq /usr/sbin/sendmail -t
echo "== sendmail as qmailq exit $?"
printf 'To: alice@{FQDN}\nSubject: via sendmail as alice\n\nhello from sendmail\n' | setuidgid alice /usr/sbin/sendmail -t
echo "== sendmail as alice exit $?"
if /usr/lib/indimail-mta/indimail --list | grep -qx tcpserver &&
   /usr/lib/indimail-mta/indimail --list | grep -qx qmail-smtpd ; then
  smtp_ok=no
  for i in $(seq 1 50); do
    if exec 3<>/dev/tcp/127.0.0.1/25 2>/dev/null; then smtp_ok=yes; break; fi
    sleep 0.2
  done
  if [ $smtp_ok = yes ]; then
    say() {{ printf '%s\\r\\n' "$1" >&3; }}
    get() {{ while IFS= read -r -t 20 line <&3; do echo "S: $line"; case "$line" in [0-9][0-9][0-9]-*) ;; *) break ;; esac; done; }}
    get; say "HELO client.example.test"; get
    say "MAIL FROM:<bob@client.example.test>"; get
    say "RCPT TO:<alice@{FQDN}>"; get
    say "DATA"; get
    say "Subject: via smtp"; say ""; say "hello from smtp"; say "."; get
    say "QUIT"; get
    exec 3>&-
    echo "== smtp sent"
  else
    echo "== smtp port 25 not listening"
  fi
else
  echo "== smtp skipped: tcpserver or qmail-smtpd not in this build"
fi
for i in $(seq 1 100); do
  n=$(ls /home/alice/Maildir/new | wc -l)
  [ "$n" -ge 4 ] && break
  [ "$n" -ge 3 ] && [ "${{SMTP_EXPECTED:-0}}" = 0 ] && break
  sleep 0.2
done
echo "== delivered"; grep -l "hello from" /home/alice/Maildir/new/* 2>/dev/null | wc -l
grep -h "^Subject:" /home/alice/Maildir/new/* 2>/dev/null
echo "== received"; echo "uids alice=$(id -u alice) qmaild=$(id -u qmaild)"
grep -h "invoked" /home/alice/Maildir/new/* 2>/dev/null
echo "== logs"
echo "wrong owner deferrals: $(grep -c 'wrong owner' /var/log/svc/deliver.25/current)"
for f in /var/log/svc/deliver.25/current /var/log/svc/smtpd.25/current; do echo "-- $f"; tail -n 40 $f; done
echo "== purge"
DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq indimail-mta
sleep 1
left=0
for p in /proc/[0-9]*; do
  case "$(cat $p/comm 2>/dev/null)" in svscan|supervise|multilog|qscheduler|tcpserver) left=$((left + 1)) ;; esac
done
echo "== svscan left: $left"
echo "== after purge"
ls -d /etc/indimail /service /var/log/svc 2>&1 | sed 's/^/  /'
echo "== maildir kept: $(ls /home/alice/Maildir/new | wc -l)"
"""


def _host_packages() -> str:
    return subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${Version} ${Status}\n"],
        capture_output=True,
        text=True,
    ).stdout


def _section(out: str, name: str) -> str:
    m = re.search(rf"^== {re.escape(name)}(.*?)(?=^== |\Z)", out, re.S | re.M)
    return m.group(1) if m else ""


def test_deb_install_in_minbase_and_mail_flow(deb: Path, tmp_path: Path) -> None:
    before = _host_packages()
    started = time.monotonic()
    try:
        base = ps.minbase_tree()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    t_tree = time.monotonic() - started
    tree = ps.copy_tree(base, tmp_path / "tree")
    assert not list((tree / "usr/bin").glob("python*")), "minbase tree has Python"
    repo = tree / "srv/repo"
    repo.mkdir(parents=True)
    shutil.copy2(deb, repo)
    pkgs = subprocess.run(
        ["dpkg-scanpackages", "--multiversion", "."], cwd=repo, capture_output=True, check=True
    ).stdout
    (repo / "Packages").write_bytes(pkgs)
    shutil.copy2("/etc/resolv.conf", tree / "etc/resolv.conf")
    archives = ps.CACHE / "archives"
    archives.mkdir(parents=True, exist_ok=True)
    for f in archives.glob("*.deb"):
        shutil.copy2(f, tree / "var/cache/apt/archives")
    res = ps.in_tree(tree, INSTALL, isolated=False)
    out = res.stdout + res.stderr
    for f in (tree / "var/cache/apt/archives").glob("*.deb"):
        if not (archives / f.name).exists():
            shutil.copy2(f, archives)
    t_install = time.monotonic() - started - t_tree
    assert res.returncode == 0, out[-5000:]
    assert _section(out, "python:").strip() == "0"
    users = _section(out, "users")
    for name in ("alias", "qmaild", "qmaill", "qmailp", "qmailq", "qmailr", "qmails"):
        assert f"\n{name}:" in users, users
    assert re.search(r"^indimail:x:555:555:", users, re.M), users
    groups = _section(out, "groups")
    for name in ("qmail", "nofiles", "indimail", "qcerts"):
        assert f"\n{name}:" in groups, groups
    assert _section(out, "queues").split() == ["nqueue", *[f"queue{n}" for n in range(1, 6)]]
    assert _section(out, "me").strip() == FQDN
    services = _section(out, "services").split()
    for svc in ("qmail-send.25", "qmail-smtpd.25", "qmail-smtpd.465", "qmail-smtpd.587"):
        assert svc in services, services
    assert _section(out, "alternative").strip() == "/usr/lib/indimail-mta/indimail"
    commands = _section(out, "commands").split()
    smtp_expected = "tcpserver" in commands and "qmail-smtpd" in commands

    run = ("SMTP_EXPECTED=1\n" if smtp_expected else "") + RUN
    res = ps.in_tree(tree, run, isolated=True, timeout=300)
    out = res.stdout + res.stderr
    t_run = time.monotonic() - started - t_tree - t_install
    print(
        f"minbase tree {t_tree:.1f} s, install {t_install:.1f} s, "
        f"services + mail + purge {t_run:.1f} s"
    )
    stat = _section(out, "stat")
    assert re.search(r"qmail-send\.25: up ", stat), out[-4000:]
    assert "sendmail exit 0" in out, out[-4000:]
    delivered = _section(out, "delivered")
    subjects = re.findall(r"^Subject: (.*)$", delivered, re.M)
    assert re.search(r"qmail-queued: up ", stat), out[-4000:]
    for who in ("", " as qmailq", " as alice"):
        assert f"sendmail{who} exit 0" in out, out[-4000:]
        assert f"via sendmail{who}" in subjects, out[-4000:]
    received = _section(out, "received")
    uids = dict(re.findall(r"(alice|qmaild)=(\d+)", received))
    assert f"(invoked by uid {uids['alice']});" in received, received
    if smtp_expected:
        assert "via smtp" in subjects, out[-4000:]
        assert f"(invoked from network 127.0.0.1, by uid {uids['qmaild']});" in received, received
    else:
        print("SMTP part not run: tcpserver / qmail-smtpd are not in this build yet")
    assert "svscan left: 0" in out, out[-3000:]
    after = _section(out, "after purge")
    assert "/etc/indimail" in after and "No such file" in after, after
    kept = re.search(r"maildir kept: (\d+)", out)
    assert kept and int(kept.group(1)) == len(subjects) >= 1, out[-2000:]
    assert _host_packages() == before, "the machine's own packages changed"
