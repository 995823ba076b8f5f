"""The error hierarchy: one root, and the builtin each error is also."""

from __future__ import annotations

import pytest

from modfsm.engine import (
    ConfigError,
    ConfigTypeError,
    DeclarationError,
    HookReturnError,
    IllegalTransitionError,
    LifecycleError,
)


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (IllegalTransitionError, RuntimeError),
        (HookReturnError, TypeError),
        (DeclarationError, ValueError),
        (ConfigError, ValueError),
        (ConfigTypeError, TypeError),
    ],
)
def test_every_error_is_a_lifecycle_error_and_the_builtin_users_catch(
    error: type[Exception], builtin: type[Exception]
) -> None:
    assert issubclass(error, LifecycleError)
    assert issubclass(error, builtin)


def test_errors_carry_their_context() -> None:
    illegal = IllegalTransitionError(
        "m", modifier="mod", state="created", trigger="finalize", rule="R6", allowed=["initialize"]
    )
    assert (illegal.modifier, illegal.state, illegal.trigger, illegal.rule) == (
        "mod", "created", "finalize", "R6",
    )  # fmt: skip
    assert illegal.allowed == ("initialize",)
    bad = HookReturnError("m", modifier="mod", hook="on_initialize", value=None)
    assert (bad.hook, bad.value) == ("on_initialize", None)
    declared = DeclarationError("m", declaration="d", where="transitions[0]")
    assert (declared.declaration, declared.where) == ("d", "transitions[0]")
    config = ConfigTypeError("m", owner="Event", field="type_", value=3)
    assert (config.owner, config.field, config.value) == ("Event", "type_", 3)
