"""The command line's choices: transports and dispatch modes.

Shared by the CLI (``serve``) and the demo, so that neither imports the
other: the demo runs every transport x dispatch mode the CLI offers,
with the same dispatchers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Final

from ._classes import TransportName
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
DISPATCH_MODES: Final = (*DISPATCHERS, "prefork")

# --transport: the CLI's name -> the factories' name.  "unix-dgram" is the
# older spelling of "unix-datagram", kept for the scripts that use it.
TRANSPORTS: Final[Mapping[str, TransportName]] = {
    "tcp": "tcp",
    "udp": "udp",
    "unix": "unix_stream",
    "unix-datagram": "unix_datagram",
    "unix-dgram": "unix_datagram",
}
STREAM_TRANSPORTS: Final = frozenset(name for name, kind in TRANSPORTS.items() if kind in ("tcp", "unix_stream"))
UNIX_TRANSPORTS: Final = frozenset(name for name, kind in TRANSPORTS.items() if kind.startswith("unix"))
