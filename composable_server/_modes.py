"""The dispatchers behind the command line's ``--dispatch`` choices.

Shared by the CLI (``serve``) and the demo, so that neither imports the
other: the demo runs every transport x dispatch mode the CLI offers, with
the same dispatchers.  The choices themselves (names only) are in
:mod:`composable_server._cliparse`, which the parser reads without loading
any dispatcher.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Final

from ._cliparse import DISPATCH_MODES, STREAM_TRANSPORTS, TRANSPORTS, UNIX_TRANSPORTS
from .dispatchers import ForkingDispatcher, SyncDispatcher, ThreadingDispatcher, ThreadPoolDispatcher
from .interfaces import Dispatcher

__all__ = ("DISPATCHERS", "DISPATCH_MODES", "PREFORK_POOL", "STREAM_TRANSPORTS", "TRANSPORTS", "UNIX_TRANSPORTS")

# --dispatch: one line per mode.  Threads are daemonic and children are not
# waited for on close, because drain() has already bounded the wait: a
# straggler cut at the deadline must not hold the exit up a second time.
DISPATCHERS: Final[Mapping[str, Callable[[], Dispatcher]]] = {
    "sync": SyncDispatcher,
    "threading": functools.partial(ThreadingDispatcher, daemon=True),
    "forking": functools.partial(ForkingDispatcher, block_on_close=False),
    # 16 reused workers, 64 queued connections, then backpressure.
    "pool": functools.partial(ThreadPoolDispatcher, 16, daemon=True),
}

# --dispatch prefork: --workers processes (default: one per CPU), each with this pool.
PREFORK_POOL: Final = DISPATCHERS["pool"]
