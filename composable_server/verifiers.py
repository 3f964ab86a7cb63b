"""Verifiers: may this request be served?

* :class:`AllowAll` admits everything (the stdlib behaviour);
* :func:`all_of` / :func:`any_of` combine verifiers into a policy that reads
  as one: ``all_of(deny_list, per_ip_cap)``.  Nested combinators of the same
  kind are flattened, so the repr stays readable.
"""

from __future__ import annotations

from typing import TypeVar, final

import attrs

from .interfaces import Verifier

__all__ = ("AllowAll", "all_of", "any_of")

RequestT = TypeVar("RequestT")
AddressT = TypeVar("AddressT")


@final
@attrs.frozen
class AllowAll:
    """A verifier that admits every request."""

    def verify(self, request: object, client_address: object) -> bool:
        """Return True."""
        return True


@final
@attrs.frozen(repr=False)
class _AllOf:
    verifiers: tuple[Verifier[object, object], ...]

    def verify(self, request: object, client_address: object) -> bool:
        # Short-circuits: later verifiers (rate limits, caps) see only
        # requests the earlier ones admitted.
        return all(v.verify(request, client_address) for v in self.verifiers)

    def __repr__(self) -> str:
        return f"all_of({', '.join(map(repr, self.verifiers))})"


@final
@attrs.frozen(repr=False)
class _AnyOf:
    verifiers: tuple[Verifier[object, object], ...]

    def verify(self, request: object, client_address: object) -> bool:
        return any(v.verify(request, client_address) for v in self.verifiers)

    def __repr__(self) -> str:
        return f"any_of({', '.join(map(repr, self.verifiers))})"


def _flatten(kind: type[_AllOf] | type[_AnyOf], verifiers: tuple[object, ...]) -> tuple[Verifier[object, object], ...]:
    flat: list[Verifier[object, object]] = []
    for v in verifiers:
        if isinstance(v, kind):
            flat.extend(v.verifiers)
        else:
            flat.append(v)  # type: ignore[arg-type]  # typed at the public signature
    return tuple(flat)


def all_of(*verifiers: Verifier[RequestT, AddressT]) -> Verifier[RequestT, AddressT]:
    """A verifier that admits a request only if every one of *verifiers* does.

    Verifiers are asked in order and the first refusal stops the check.
    ``all_of()`` with no verifiers admits everything.
    """
    return _AllOf(_flatten(_AllOf, verifiers))


def any_of(*verifiers: Verifier[RequestT, AddressT]) -> Verifier[RequestT, AddressT]:
    """A verifier that admits a request if at least one of *verifiers* does.

    ``any_of()`` with no verifiers refuses everything.
    """
    return _AnyOf(_flatten(_AnyOf, verifiers))
