"""Exception types of the public functions.

flash-attn and torch's SDPA check their arguments with ``TORCH_CHECK``, which raises
``RuntimeError``; Python code conventionally raises ``ValueError`` / ``TypeError``. A bad argument
to a ``flash_attn_*`` function or to ``scaled_dot_product_attention`` raises one of the types
below, so it is caught by ``except RuntimeError`` (code written against flash-attn or torch) and by
``except ValueError`` / ``except TypeError`` alike. Features a device does not implement raise
``NotImplementedError``, itself a ``RuntimeError``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class ArgumentError(ValueError, RuntimeError):
    """A bad argument value or shape (flash-attn raises RuntimeError for these)."""


class ArgumentTypeError(TypeError, RuntimeError):
    """A bad argument type or dtype (flash-attn raises RuntimeError for these)."""


def as_argument_error(e: Exception) -> Exception:
    """The error to raise in place of `e`: ValueError / TypeError become the dual types above
    (same message); anything else is returned unchanged."""
    if isinstance(e, (ArgumentError, ArgumentTypeError)):
        return e
    if isinstance(e, TypeError):
        return ArgumentTypeError(str(e))
    if isinstance(e, ValueError):
        return ArgumentError(str(e))
    return e


def flash_attn_errors(fn: F) -> F:
    """Decorator for a public function: its ValueError / TypeError (from Python checks or from the
    C++ validator behind the ops) leave it as ArgumentError / ArgumentTypeError."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ValueError, TypeError) as e:
            new = as_argument_error(e)
            if new is e:
                raise
            raise new.with_traceback(e.__traceback__) from None

    return wrapper  # type: ignore[return-value]
