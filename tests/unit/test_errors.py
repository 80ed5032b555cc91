"""The exception tree: messages, attributes, and which errors are retryable."""

from __future__ import annotations

import pytest

from rhvfs import errors


def test_message_template_and_attributes() -> None:
    e = errors.Conflict("disk d1 is locked", code=409)
    assert str(e) == "conflict: disk d1 is locked"
    assert e.code == 409
    assert isinstance(e, errors.EngineError)


@pytest.mark.parametrize(
    ("cls", "transient"),
    [
        (errors.EngineUnavailable, True),
        (errors.ImageioUnavailable, True),
        (errors.Conflict, False),
        (errors.NotFound, False),
        (errors.TicketGone, False),
        (errors.AuthenticationError, False),
        (errors.DataIntegrityError, False),
    ],
)
def test_only_transient_errors_are_retryable(cls: type[errors.RhvfsError], transient: bool) -> None:
    assert errors.is_transient(cls("x")) is transient


def test_every_error_documents_when_it_is_raised() -> None:
    for name in dir(errors):
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, errors.RhvfsError):
            assert obj.__doc__ and "Raised" in obj.__doc__ or obj is errors.RhvfsError, name


def test_an_unexpected_exception_is_one_line_without_its_repr() -> None:
    from rhvfs.errors import internal_error

    assert internal_error(KeyError("disk")) == "internal error: KeyError: 'disk'"
    assert internal_error(RuntimeError()) == "internal error: RuntimeError"
    group = ExceptionGroup("Exceptions from Trio nursery", [ValueError("bad\nsize")])
    assert internal_error(group) == "internal error: ValueError: bad size"
