"""AllowAll and the all_of / any_of combinators."""

from __future__ import annotations

import pytest

from composable_server import AllowAll, all_of, any_of
from composable_server.testing import MemoryVerifier

ADDRESS = ("192.0.2.1", 5555)


class TestAllowAll:
    @pytest.mark.timeout(5)
    def test_admits_everything(self) -> None:
        """AllowAll admits any request from any address."""
        verifier = AllowAll()
        assert verifier.verify(object(), ADDRESS) is True
        assert verifier.verify(None, "/tmp/sock") is True

    @pytest.mark.timeout(5)
    def test_repr_and_equality(self) -> None:
        """AllowAll is a frozen value with a plain repr."""
        assert repr(AllowAll()) == "AllowAll()"
        assert AllowAll() == AllowAll()


class TestAllOf:
    @pytest.mark.timeout(5)
    @pytest.mark.parametrize(
        ("verdicts", "expected"),
        [((), True), ((True,), True), ((False,), False), ((True, True), True), ((True, False), False)],
    )
    def test_admits_only_if_every_verifier_does(self, verdicts: tuple[bool, ...], expected: bool) -> None:
        """all_of admits a request only when every verifier admits it (and admits with none)."""
        verifier = all_of(*(MemoryVerifier(v) for v in verdicts))
        assert verifier.verify("req", ADDRESS) is expected

    @pytest.mark.timeout(5)
    def test_short_circuits_on_first_refusal(self) -> None:
        """Verifiers after the first refusal are not asked."""
        first, refusing, last = MemoryVerifier(True), MemoryVerifier(False), MemoryVerifier(True)
        assert all_of(first, refusing, last).verify("req", ADDRESS) is False
        assert first.calls == [("req", ADDRESS)]
        assert refusing.calls == [("req", ADDRESS)]
        assert last.calls == []

    @pytest.mark.timeout(5)
    def test_flattens_nested_all_of(self) -> None:
        """all_of(a, all_of(b, c)) is all_of(a, b, c), but an any_of inside stays nested."""
        a, b, c = AllowAll(), MemoryVerifier(True), MemoryVerifier(False)
        flat = all_of(a, all_of(b, c))
        assert repr(flat) == f"all_of({a!r}, {b!r}, {c!r})"
        assert flat == all_of(a, b, c)
        mixed = all_of(a, any_of(b, c))
        assert repr(mixed) == f"all_of({a!r}, any_of({b!r}, {c!r}))"

    @pytest.mark.timeout(5)
    def test_repr(self) -> None:
        """The repr reads as the expression that built it."""
        assert repr(all_of()) == "all_of()"
        assert repr(all_of(AllowAll(), AllowAll())) == "all_of(AllowAll(), AllowAll())"


class TestAnyOf:
    @pytest.mark.timeout(5)
    @pytest.mark.parametrize(
        ("verdicts", "expected"),
        [((), False), ((True,), True), ((False,), False), ((False, True), True), ((False, False), False)],
    )
    def test_admits_if_any_verifier_does(self, verdicts: tuple[bool, ...], expected: bool) -> None:
        """any_of admits a request when at least one verifier admits it (and refuses with none)."""
        verifier = any_of(*(MemoryVerifier(v) for v in verdicts))
        assert verifier.verify("req", ADDRESS) is expected

    @pytest.mark.timeout(5)
    def test_short_circuits_on_first_admission(self) -> None:
        """Verifiers after the first admission are not asked."""
        refusing, admitting, last = MemoryVerifier(False), MemoryVerifier(True), MemoryVerifier(False)
        assert any_of(refusing, admitting, last).verify("req", ADDRESS) is True
        assert len(refusing.calls) == 1 and len(admitting.calls) == 1
        assert last.calls == []

    @pytest.mark.timeout(5)
    def test_flattens_nested_any_of(self) -> None:
        """any_of(a, any_of(b, c)) is any_of(a, b, c), but an all_of inside stays nested."""
        a, b, c = AllowAll(), MemoryVerifier(True), MemoryVerifier(False)
        assert repr(any_of(a, any_of(b, c))) == f"any_of({a!r}, {b!r}, {c!r})"
        assert repr(any_of(a, all_of(b, c))) == f"any_of({a!r}, all_of({b!r}, {c!r}))"

    @pytest.mark.timeout(5)
    def test_exception_propagates(self) -> None:
        """An exception from a verifier leaves any_of unchanged (the server routes it to the error policy)."""

        def explode(request: object, client_address: object) -> bool:
            raise LookupError("broken verifier")

        with pytest.raises(LookupError):
            any_of(MemoryVerifier(False), MemoryVerifier(explode)).verify("req", ADDRESS)
