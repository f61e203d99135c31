"""qmail-getpw: the password-database half of qmail-lspawn's lookup.

``qmail-getpw local`` prints ``user\\0uid\\0gid\\0home\\0dash\\0ext\\0``;
exit 100 without an argument, 116 (QLX_NOALIAS) when not even the alias
account exists, 115 (QLX_NFS) when a home directory cannot be checked.
"""

from __future__ import annotations

import sys

from indimail.core import paths as _paths
from indimail.deliver.users import QLX_NOALIAS, UserLookupError, lookup_passwd


def main(argv: list[str]) -> int:
    """qmail-getpw local"""
    if len(argv) < 2:
        return 100
    try:
        entry = lookup_passwd(argv[1], _paths.get().user("alias"))
    except UserLookupError as exc:
        sys.stderr.write(f"qmail-getpw: {exc.reason}\n")
        return exc.code
    if entry is None:
        return QLX_NOALIAS
    sys.stdout.buffer.write(entry.nughde())
    sys.stdout.buffer.flush()
    return 0
