"""In-memory fakes and contract suites, for testing servers without sockets.

Public and typed, but not imported by :mod:`composable_server` itself::

    from composable_server import Server
    from composable_server.testing import MemoryAcceptor, MemoryTransport, RecordingHandler

    transport: MemoryTransport[str, str] = MemoryTransport("memory")
    handler: RecordingHandler[str, str] = RecordingHandler()
    with Server(transport=transport, acceptor=MemoryAcceptor(), handler=handler) as server:
        transport.connect("hello", "client-1")
        server.handle_request()
    assert handler.calls == [("hello", "client-1")]
    assert transport.shutdown_requests == ["hello"]

Fakes (``composable_server.testing._fakes``) follow one naming scheme (trio
``testing``, Twisted ``internet.testing``):

* ``Memory<Role>`` is a working in-memory implementation of the role;
* ``Raising<Role>`` injects configured errors into another implementation;
* ``Recording<Role>`` / :class:`InlineDispatcher` record what they were asked;
* hook attributes (``accept_hook``, ``dispatch_hook``, ``service_hook``, ...)
  run test code at a precise moment.

Contract suites (``composable_server.testing._contracts``,
``check_<role>(make_...)``) are plain functions that raise
:class:`AssertionError`.  Each asserts what the docstrings of
:mod:`composable_server.interfaces` promise; the project runs every suite
against the fake *and* every real implementation, so the fakes cannot drift
from the real components.  Run them against your own components too.
"""

from ._contracts import CONTRACT_WAIT as CONTRACT_WAIT
from ._contracts import check_accept_error_policy as check_accept_error_policy
from ._contracts import check_acceptor as check_acceptor
from ._contracts import check_dispatcher as check_dispatcher
from ._contracts import check_error_policy as check_error_policy
from ._contracts import check_observer as check_observer
from ._contracts import check_timeout_policy as check_timeout_policy
from ._contracts import check_transport as check_transport
from ._contracts import check_verifier as check_verifier
from ._fakes import ErrorRecord as ErrorRecord
from ._fakes import InlineDispatcher as InlineDispatcher
from ._fakes import MemoryAcceptor as MemoryAcceptor
from ._fakes import MemoryRequest as MemoryRequest
from ._fakes import MemoryRequestOps as MemoryRequestOps
from ._fakes import MemoryTransport as MemoryTransport
from ._fakes import MemoryVerifier as MemoryVerifier
from ._fakes import RaisingAcceptor as RaisingAcceptor
from ._fakes import RecordingAcceptErrorPolicy as RecordingAcceptErrorPolicy
from ._fakes import RecordingErrorPolicy as RecordingErrorPolicy
from ._fakes import RecordingHandler as RecordingHandler
from ._fakes import RecordingObserver as RecordingObserver
from ._fakes import RecordingTimeoutPolicy as RecordingTimeoutPolicy

__all__ = (
    "CONTRACT_WAIT",
    "ErrorRecord",
    "InlineDispatcher",
    "MemoryAcceptor",
    "MemoryRequest",
    "MemoryRequestOps",
    "MemoryTransport",
    "MemoryVerifier",
    "RaisingAcceptor",
    "RecordingAcceptErrorPolicy",
    "RecordingErrorPolicy",
    "RecordingHandler",
    "RecordingObserver",
    "RecordingTimeoutPolicy",
    "check_accept_error_policy",
    "check_acceptor",
    "check_dispatcher",
    "check_error_policy",
    "check_observer",
    "check_timeout_policy",
    "check_transport",
    "check_verifier",
)

# The fakes say they come from here, as they did when this was one module
# (reprs, pickles, tracebacks, and the documentation's names).
def _fixup_module_metadata() -> None:
    for name in __all__:
        value = globals()[name]
        if callable(value):  # classes and functions, not CONTRACT_WAIT
            value.__module__ = __name__


_fixup_module_metadata()
