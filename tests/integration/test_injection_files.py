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
