"""The Protocols of composable_server.interfaces: slotted, documented,
self-contained, and satisfied by the fakes of the testing kit."""

from __future__ import annotations

import ast
import inspect
from typing import Protocol

import pytest

from composable_server import interfaces
from composable_server.interfaces import (
    AcceptErrorPolicy,
    Acceptor,
    Dispatcher,
    ErrorPolicy,
    HandlerFactory,
    TimeoutPolicy,
    Transport,
    Verifier,
)
from composable_server.testing import (
    InlineDispatcher,
    MemoryAcceptor,
    MemoryRequest,
    MemoryTransport,
    MemoryVerifier,
    RaisingAcceptor,
    RecordingAcceptErrorPolicy,
    RecordingErrorPolicy,
    RecordingHandler,
    RecordingTimeoutPolicy,
)

PROTOCOLS = sorted(
    (
        value
        for value in vars(interfaces).values()
        if isinstance(value, type) and value.__module__ == interfaces.__name__ and Protocol in value.__mro__
    ),
    key=lambda cls: cls.__name__,
)


def _members(protocol: type) -> dict[str, object]:
    return {
        name: value
        for name, value in vars(protocol).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
    }


class TestProtocols:
    @pytest.mark.timeout(5)
    def test_every_role_is_a_protocol(self) -> None:
        """Each component role of the design is a Protocol in interfaces.py."""
        names = {cls.__name__ for cls in PROTOCOLS}
        assert {"Transport", "Acceptor", "Verifier", "Dispatcher", "ErrorPolicy", "TimeoutPolicy", "Job"} <= names

    @pytest.mark.timeout(5)
    @pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda cls: cls.__name__)
    def test_protocol_has_empty_slots(self, protocol: type) -> None:
        """Every Protocol declares __slots__ = (), so slotted implementations stay slotted."""
        assert vars(protocol).get("__slots__") == ()

    @pytest.mark.timeout(5)
    @pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda cls: cls.__name__)
    def test_every_member_documents_its_contract(self, protocol: type) -> None:
        """Every Protocol and each of its methods and properties has a docstring (the contract)."""
        assert inspect.getdoc(protocol)
        undocumented = [name for name, member in _members(protocol).items() if not inspect.getdoc(member)]
        assert not undocumented, f"{protocol.__name__} members without a contract: {undocumented}"

    @pytest.mark.timeout(5)
    def test_interfaces_import_no_implementation(self) -> None:
        """interfaces.py imports nothing from the package, so the contracts read on their own."""
        tree = ast.parse(inspect.getsource(interfaces))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0 and not (node.module or "").startswith("composable_server"), ast.dump(node)
            elif isinstance(node, ast.Import):
                assert not any(alias.name.startswith("composable_server") for alias in node.names)


class TestFakesSatisfyProtocols:
    @pytest.mark.timeout(5)
    def test_fakes_are_components(self) -> None:
        """Every fake of the testing kit is accepted where its Protocol is expected (checked by mypy)."""
        transport: MemoryTransport[MemoryRequest, str] = MemoryTransport("memory")
        try:
            as_transport: Transport[MemoryRequest, str] = transport
            acceptor: Acceptor[MemoryRequest, str] = MemoryAcceptor()
            raising: Acceptor[MemoryRequest, str] = RaisingAcceptor(acceptor)
            verifier: Verifier[MemoryRequest, str] = MemoryVerifier()
            dispatcher: Dispatcher = InlineDispatcher()
            error_policy: ErrorPolicy = RecordingErrorPolicy()
            timeout_policy: TimeoutPolicy = RecordingTimeoutPolicy()
            accept_errors: AcceptErrorPolicy = RecordingAcceptErrorPolicy()
            handler: HandlerFactory[MemoryRequest, str] = RecordingHandler[MemoryRequest, str]()
            components: list[object] = [
                as_transport, acceptor, raising, verifier, dispatcher, error_policy, timeout_policy, accept_errors, handler
            ]
            assert all(component is not None for component in components)
        finally:
            transport.close()
