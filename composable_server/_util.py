"""Helpers shared across modules that touch no socket."""

from __future__ import annotations

import threading
from typing import final

import attrs

__all__ = ("LogLimiter", "attrs_repr")

_repring = threading.local()


def attrs_repr(self: attrs.AttrsInstance) -> str:
    """The ``__repr__`` attrs generates (``Name(field=value, ...)``: the fields
    with ``repr=True`` or their own repr callable, ``...`` for a cycle), shared.

    A class body sets ``__repr__ = attrs_repr`` and attrs (which detects an
    own ``__repr__``) compiles none for it: compiling one costs ~0.9M
    instructions per class at import, about a fifth of what compat's own
    modules cost to import (issue 18).
    """
    try:
        active: set[int] = _repring.active
    except AttributeError:
        active = _repring.active = set()
    key = id(self)
    if key in active:
        return "..."
    active.add(key)
    try:
        parts = []
        for field in attrs.fields(type(self)):
            if field.repr is False:
                continue
            value = getattr(self, field.name) if field.init else getattr(self, field.name, attrs.NOTHING)
            shown = repr(value) if field.repr is True else field.repr(value)
            parts.append(f"{field.name}={shown}")
        return f"{type(self).__qualname__.rsplit('>.', 1)[-1]}({', '.join(parts)})"
    finally:
        active.discard(key)


@final
class LogLimiter:
    """Decides whether a rate-limited log record is due: at most one per *interval* seconds.

    Not thread-safe on its own: its owner calls :meth:`due` under the lock
    that guards the counters the record reports.  The owner passes the time,
    from its own (injectable) clock.  A plain class: it is private and built
    at import by several modules, where an attrs class costs ~1M instructions.

    Args:
        interval: the least time between two records, in seconds.
    """

    __slots__ = ("_last", "_skipped", "interval")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: float | None = None
        self._skipped = 0

    def __repr__(self) -> str:
        return f"LogLimiter(interval={self.interval!r}, _last={self._last!r}, _skipped={self._skipped!r})"

    def due(self, now: float) -> int | None:
        """If a record is due at *now*: how many were skipped since the last one; else None (and count it)."""
        if self._last is not None and now - self._last < self.interval:
            self._skipped += 1
            return None
        skipped, self._skipped, self._last = self._skipped, 0, now
        return skipped
