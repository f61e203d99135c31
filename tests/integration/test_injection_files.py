"""sendmail in a rootless instance leaves exactly the documented queue files.

One message to one remote address: ``mess/<inode%151>/<inode>``,
``intd/<inode>`` and ``todo/<inode>`` (a hard link of intd) in one queue,
nothing else anywhere in the queue tree; envelope bytes as in the spec
(``u<uid>\\0p<pid>\\0F<sender>\\0T<rcpt>\\0``); qmail-qread lists it.
"""

from __future__ import annotations

import os
import re


def tree(instance) -> set[str]:
    base = instance.queue_base
    return {str(p.relative_to(base)) for p in base.rglob("*") if not p.is_dir()}


def test_sendmail_leaves_exactly_the_documented_files(instance):
    before = tree(instance)
    msg = b"Subject: files\n\nexactly these\n"
    res = instance.run("sendmail", "-f", "a@example.test", "b@example.org", input=msg)
    assert res.returncode == 0, res.stderr
    new = sorted(tree(instance) - before)
    assert len(new) == 3, new
    queue = {p.split("/")[0] for p in new}
    assert len(queue) == 1
    (q,) = queue
    inode = int(new[0].rsplit("/", 1)[1])
    assert new == sorted(
        [f"{q}/intd/{inode}", f"{q}/mess/{inode % 151}/{inode}", f"{q}/todo/{inode}"]
    )
    base = instance.queue_base
    mess = base / q / "mess" / str(inode % 151) / str(inode)
    assert mess.stat().st_ino == inode
    todo, intd = base / q / "todo" / str(inode), base / q / "intd" / str(inode)
    assert todo.stat().st_ino == intd.stat().st_ino
    envelope = todo.read_bytes()
    m = re.fullmatch(rb"u(\d+)\0p(\d+)\0Fa@example\.test\0Tb@example\.org\0", envelope)
    assert m, envelope
    assert int(m.group(1)) == os.getuid()
    data = mess.read_bytes()
    assert data.startswith(b"Received: indimail-mta queue " + m.group(2) + b" by host ")
    assert re.search(
        rb"\nDate: .+\nMessage-ID: <\d{14}\.\d+\.indimail@mx\.example\.test>\n"
        rb"From: a@example\.test\n",
        data,
    ), data
    assert data.endswith(b"\nSubject: files\n\nexactly these\n")

    res = instance.run("qmail-qread", "-t")
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode()
    assert f"#{inode}  {len(data)}  <a@example.test>" in out
    assert "\ttodo\tb@example.org" in out
    res = instance.run("qmail-qstat")
    assert res.stdout == (b"messages in queue: 1\nmessages in queue but not yet preprocessed: 1\n")


def test_root_queues_as_the_queue_owner():
    # On an installed system the queue belongs to qmailq; root's sendmail (and
    # root running qmail-queue) must leave files owned by it, as the original's
    # setuid qmail-queue does, or qmail-lspawn refuses them ("wrong owner").
    import pwd
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import pytest

    if os.getuid() != 0:
        pytest.skip("needs root to own a queue by another account")
    # pytest's temp dirs are 0700: the queue owner could not reach the queue
    top = Path(tempfile.mkdtemp(prefix="owner-", dir="/tmp"))
    try:
        os.chmod(top, 0o755)
        indimail = Path(sys.executable).parent / "indimail"
        subprocess.run(
            [
                str(indimail),
                "indimail-instance",
                "-q",
                "1",
                "-H",
                "mx.example.test",
                str(top / "i"),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        nobody = pwd.getpwnam("nobody")
        q = top / "i" / "var" / "queue" / "queue1"
        for path in [q, *q.rglob("*")]:
            os.lchown(path, nobody.pw_uid, nobody.pw_gid)
        env = {
            "PATH": "/usr/bin:/bin",
            "QUEUEDIR": str(q),
            "INDIMAIL_PATHS": str(top / "i" / "indimail-paths.conf"),
        }
        bindir = top / "i" / "bin"
        res = subprocess.run(
            [str(bindir / "sendmail"), "-f", "a@example.test", "b@example.org"],
            input=b"Subject: owner\n\nx\n",
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        env_file = top / "env.in"
        env_file.write_bytes(b"Fa@example.test\0Tc@example.org\0\0")
        with open(env_file, "rb") as fd1:
            res = subprocess.run(
                [str(bindir / "qmail-queue")],
                input=b"Subject: qq\n\ny\n",
                stdout=fd1,
                stderr=subprocess.PIPE,
                env=env,
                timeout=60,
            )
        assert res.returncode == 0, res.stderr
        files = [p for sub in ("mess", "intd", "todo") for p in (q / sub).rglob("*") if p.is_file()]
        assert len(files) == 6
        for f in files:
            assert f.stat().st_uid == nobody.pw_uid, f
        for todo in (q / "todo").iterdir():
            assert todo.read_bytes().startswith(b"u0\0p")  # the invoker stays root
    finally:
        shutil.rmtree(top, ignore_errors=True)
