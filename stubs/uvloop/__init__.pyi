# The names of uvloop (an optional dependency: the `bench` extra) that
# tests/bench uses, so that mypy checks the benchmark the same whether uvloop
# is installed or not (mypy.ini: mypy_path = stubs, which mypy reads before
# an installed uvloop). uvloop ships its own types, but types install() only
# through a module __getattr__ returning Any. .ci/run checks this file against
# the real uvloop with stubtest.

import asyncio

# Deprecated by uvloop on Python 3.12+ (a DeprecationWarning) in favour of
# uvloop.run(); removed on 3.16.
def install() -> None: ...

# A new uvloop event loop (tests/bench/callgrind_udp runs one in a thread);
# uvloop returns its Loop, an AbstractEventLoop.
def new_event_loop() -> asyncio.AbstractEventLoop: ...
