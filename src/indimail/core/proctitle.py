"""The name ``ps``, ``top`` and ``pgrep`` show for a process.

Every command is one frozen binary, and the queue's processes are forks of
qscheduler: without this they would all show as ``qscheduler``, while an
admin (and svscan) looks for ``qmail-send``, ``qmail-lspawn``, ...
"""

from __future__ import annotations


def set_proc_name(name: str) -> None:
    """Set /proc/self/comm (15 bytes at most; silently nothing elsewhere)."""
    try:
        with open("/proc/self/comm", "w") as fh:
            fh.write(name[:15])
    except OSError:
        pass
