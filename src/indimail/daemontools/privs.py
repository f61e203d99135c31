"""Changing user and group, as setuidgid does."""

from __future__ import annotations

import grp
import os
import pwd

from indimail.core.errors import Fatal


def lookup(account: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(account)
    except KeyError:
        raise Fatal(111, f"unknown account {account}") from None


def become(
    account: str,
    supplementary: bool = False,
    extra_groups: list[str] | None = None,
) -> pwd.struct_passwd:
    """setgroups + setgid + setuid to ``account``.

    Already running as that account (a rootless instance maps every role
    to the invoking user) it is a no-op instead of a failure.
    """
    pw = lookup(account)
    if os.geteuid() == pw.pw_uid and os.getegid() == pw.pw_gid and os.getuid() == pw.pw_uid:
        return pw
    groups = [pw.pw_gid]
    if supplementary:
        groups += [g for g in os.getgrouplist(pw.pw_name, pw.pw_gid) if g not in groups]
    for name in extra_groups or []:
        try:
            gid = int(name) if name.isdecimal() else grp.getgrnam(name).gr_gid
        except KeyError:
            raise Fatal(111, f"unknown group {name}") from None
        if gid not in groups:
            groups.append(gid)
    try:
        os.setgroups(groups)
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    except OSError as exc:
        raise Fatal(111, f"unable to set uid/gid to {account}: {exc.strerror}") from None
    return pw
