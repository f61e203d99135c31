"""Recognise a standard logger ``run`` script, to fork multilog instead of
exec'ing a shell and a new interpreter.

Accepted shape (comments, blank lines and backslash-newline continuations
allowed)::

    #!/bin/sh
    [exec 2>&1]
    exec [PATH/]setuidgid USER [PATH/]multilog ARGS...
    exec [PATH/]multilog ARGS...

Arguments may be quoted; anything a shell would expand or redirect
(``$``, backquotes, ``;``, ``|``, ``&``, ``<``, ``>``, parentheses, braces,
an unquoted ``*?[~`` or backslash) makes the script "not standard" and it is
run as usual.  ``EXEC_LOGGERS=1`` in svscan's environment turns this off.
"""

from __future__ import annotations

import os
import shlex

from indimail.core.record import Record

SHELLS = ("#!/bin/sh", "#!/bin/bash", "#!/usr/bin/sh", "#!/usr/bin/bash")
_META = set("$`;|&<>(){}")
_GLOB = set("*?[~\\")


class LogRun(Record):
    """A log/run script that svscan can run in-process."""

    _fields = ("user", "script", "stderr_to_stdout")
    __slots__ = _fields

    def __init__(self, user: str | None, script: list[str], stderr_to_stdout: bool) -> None:
        self._set("user", user)
        self._set("script", script)
        self._set("stderr_to_stdout", stderr_to_stdout)


def _plain(line: str) -> bool:
    quote = ""
    for ch in line:
        if quote == "'":
            if ch == "'":
                quote = ""
            continue
        if quote == '"':
            if ch == '"':
                quote = ""
            elif ch in "$`\\":
                return False
            continue
        if ch in "'\"":
            quote = ch
        elif ch in _META or ch in _GLOB:
            return False
    return quote == ""


def parse(text: str) -> LogRun | None:
    lines = text.replace("\\\n", " ").splitlines()
    if not lines or lines[0].strip() not in SHELLS:
        return None
    body = [ln.strip() for ln in lines[1:]]
    body = [ln for ln in body if ln and not ln.startswith("#")]
    redirect = False
    if body and body[0] == "exec 2>&1":
        redirect = True
        body = body[1:]
    if len(body) != 1 or not _plain(body[0]):
        return None
    try:
        words = shlex.split(body[0], comments=False, posix=True)
    except ValueError:
        return None
    if len(words) < 2 or words[0] != "exec":
        return None
    words = words[1:]
    user = None
    if os.path.basename(words[0]) == "setuidgid":
        if len(words) < 3 or words[1].startswith("-"):
            return None
        user = words[1]
        words = words[2:]
    if os.path.basename(words[0]) != "multilog" or len(words) < 2:
        return None
    return LogRun(user, words[1:], redirect)


def parse_file(path: str) -> LogRun | None:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read(8192)
    except (OSError, UnicodeDecodeError):
        return None
    return parse(text)
