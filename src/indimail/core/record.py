"""Small immutable value classes without ``dataclasses``.

``import dataclasses`` costs a command ~10 ms at start (it pulls in inspect,
ast, dis, tokenize and re), and the commands on the hot path (sendmail,
qmail-inject, qmail-queue) start once per message.  :class:`Record` gives
what the frozen dataclasses here were used for: fields set once in
``__init__``, then read-only, equality and hash by value, a readable repr.

A subclass lists its fields in order in ``_fields``, sets
``__slots__ = _fields`` and assigns them in ``__init__`` with
:meth:`_set`.
"""

from __future__ import annotations


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a :class:`Record` (as dataclasses names it)."""


class Record:
    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)

    def _astuple(self) -> tuple:
        return tuple(getattr(self, name) for name in self._fields)

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._astuple() == other._astuple()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._astuple())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{self.__class__.__qualname__}({fields})"
