"""Argument checks shared by every public function and layer.

Every check raises ``TypeError`` (wrong kind of object) or ``ValueError`` (right kind, wrong
value) with a message that names the argument, what was expected and what came, for example
``input: expected a 4-D tensor (N, C, H, W), got a tensor of shape (3, 32, 32)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

__all__ = [
    "check_choice",
    "check_int",
    "check_pair",
    "check_positive",
    "check_tensor",
    "describe",
]


def describe(value: Any) -> str:
    """Short human description of ``value`` for error messages."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dim()}-D tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{value!r} ({type(value).__name__})"


def check_tensor(
    value: Any,
    name: str,
    *,
    ndim: int | None = None,
    layout: str = "",
    floating: bool = True,
) -> torch.Tensor:
    """Check that ``value`` is a (floating point) tensor of ``ndim`` dimensions."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {describe(value)}")
    if ndim is not None and value.dim() != ndim:
        shape = f" {layout}" if layout else ""
        raise ValueError(f"{name}: expected a {ndim}-D tensor{shape}, got {describe(value)}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating point tensor, got dtype {value.dtype}")
    return value


def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """Check that ``value`` is an ``int`` (not a bool) and at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {describe(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def check_choice(value: Any, name: str, choices: Iterable[str]) -> str:
    """Check that ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_positive(value: Any, name: str) -> float:
    """Check that ``value`` is a real number > 0 (not a bool; NaN is refused); ``ValueError``
    otherwise, e.g. ``reduction: expected a positive number, got 0``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    return value


def check_pair(value: Any, name: str, *, minimum: int = 1) -> tuple[int, int]:
    """Check an ``int`` or a pair of ``int`` (height, width), each at least ``minimum``."""
    if isinstance(value, int) and not isinstance(value, bool):
        pair: Sequence[Any] = (value, value)
    elif isinstance(value, (tuple, list, torch.Size)) and len(value) == 2:
        pair = tuple(value)
    else:
        raise TypeError(f"{name}: expected an int or a pair (height, width), got {describe(value)}")
    for v in pair:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"{name}: expected ints >= {minimum}, got {tuple(pair)!r}")
    return int(pair[0]), int(pair[1])
