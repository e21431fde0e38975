"""Typed errors. The library raises them; the CLI maps them to exit codes."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type name when it has none): messages stay one line."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class OnnxAttackError(Exception):
    """Base class of every error the library raises on purpose."""

    exit_code = 1


class BadInputError(OnnxAttackError):
    """The user gave something unusable: a path, an option, an array (exit code 2)."""

    exit_code = 2


class UnsupportedModelError(OnnxAttackError):
    """The model cannot be handled: unreadable, unconvertible, unfaithful (exit code 3)."""

    exit_code = 3


class ConversionError(UnsupportedModelError):
    """The score graph cannot become a torch graph; names every blocking op."""

    def __init__(self, message: str, blocking_ops: list[str] | None = None) -> None:
        super().__init__(message)
        self.blocking_ops = blocking_ops or []


class FidelityError(UnsupportedModelError):
    """The torch graph disagrees with onnxruntime beyond the tolerance; `difference` is the largest score
    difference measured (None when the two cannot be compared: other shapes, NaN)."""

    def __init__(self, message: str, difference: float | None = None) -> None:
        super().__init__(message)
        self.difference = difference


class ConfigError(BadInputError):
    """A setting is invalid; `field` names it (an AttackConfig field or an attack hyperparameter),
    so that the CLI can name the flag it came from."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
