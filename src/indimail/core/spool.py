"""A message on its way to the queue: in memory up to a limit, beyond it
in an unnamed temporary file (never synced: the queue makes the message
durable).  tempfile is imported only when a message outgrows memory, since
qmail-inject and sendmail start once per message."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~10 ms)
if TYPE_CHECKING:
    from typing import BinaryIO


class Spool:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buf = bytearray()
        self.file: BinaryIO | None = None

    def _new_file(self) -> BinaryIO:
        import tempfile

        return tempfile.TemporaryFile()

    def write(self, data: bytes) -> int:
        if self.file is None:
            if len(self.buf) + len(data) <= self.limit:
                self.buf += data
                return len(data)
            self.file = self._new_file()
            self.file.write(self.buf)
            self.buf = bytearray()
        self.file.write(data)
        return len(data)

    def message(self) -> bytes | BinaryIO:
        """Everything written: bytes, or the file positioned at its start."""
        if self.file is None:
            return bytes(self.buf)
        self.file.flush()
        self.file.seek(0)
        return self.file

    def close(self) -> None:
        self.buf = bytearray()
        if self.file is not None:
            self.file.close()
            self.file = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
