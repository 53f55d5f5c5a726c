"""``summary(model, input_size)``: parameters and FLOPs, in total and for the attention alone.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass: matrix
multiplications and convolutions, 2 FLOPs per multiply-add (ResNet-50 at 224 x 224: 8.2 GFLOPs =
4.1 GMACs); element-wise operations (gates, pooling, BatchNorm) are not counted. This is how the
SE paper (arXiv:1709.01507, Table 2) and CBAM paper (arXiv:1807.06521, Table 4) report the
"negligible" cost of attention; the real cost of these blocks on hardware is memory traffic,
which ``visattn bench`` measures.

Attention modules are found by :func:`visattn.models.scan.attention_modules` (by type, and by
the ``se`` attribute of residual blocks, timm's convention); only the outermost one of nested
attention modules is counted. FLOPs of an attention module are
counted by re-running it on the input it received in the full forward pass.

Tests: ``tests/models/test_models_summary.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .._checks import check_int
from .scan import attention_modules

__all__ = ["ModelSummary", "attention_modules", "forward_flops", "summary"]


@dataclass(frozen=True)
class ModelSummary:
    """Result of :func:`summary` (FLOPs of one forward pass at ``input_size``)."""

    model: str
    input_size: tuple[int, ...]
    params: int
    trainable_params: int
    flops: int
    attention_params: int
    attention_flops: int
    attention_blocks: tuple[str, ...]

    @property
    def attention_param_fraction(self) -> float:
        return self.attention_params / self.params if self.params else 0.0

    @property
    def attention_flop_fraction(self) -> float:
        return self.attention_flops / self.flops if self.flops else 0.0

    def __str__(self) -> str:
        def pct(x: float) -> str:
            return f"{100 * x:.2f}%"

        return "\n".join(
            [
                f"{self.model}  input {tuple(self.input_size)}",
                f"{'':<22}{'parameters':>16}{'GFLOPs':>12}",
                f"{'total':<22}{self.params:>16,}{self.flops / 1e9:>12.4f}",
                f"{'attention':<22}{self.attention_params:>16,}{self.attention_flops / 1e9:>12.4f}",
                f"{'attention share':<22}{pct(self.attention_param_fraction):>16}"
                f"{pct(self.attention_flop_fraction):>12}",
                f"trainable parameters: {self.trainable_params:,}; attention blocks: "
                f"{len(self.attention_blocks)}",
            ]
        )


def forward_flops(module: nn.Module, *inputs: object) -> int:
    """FLOPs of one call ``module(*inputs)`` (see the module docstring for what is counted).

    The module runs in eval mode under ``torch.no_grad``; its mode is restored. The one FLOP
    counter of visattn: :func:`summary` and the training engine's ``count_flops`` use it.
    """
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(*inputs)
        return int(counter.get_total_flops())
    finally:
        module.train(was_training)


def summary(model: nn.Module, input_size: Sequence[int], *, verbose: bool = True) -> ModelSummary:
    """Count parameters and FLOPs of ``model`` in total and for its attention blocks.

    Args:
        model: any ``nn.Module`` taking one (N, C, H, W) tensor.
        input_size: (C, H, W) (batch of one) or (N, C, H, W).
        verbose: print the table (``str(result)``).

    Returns:
        :class:`ModelSummary`. The model runs once in eval mode under ``torch.no_grad`` on
        random input on the device / dtype of its first parameter, and its mode is restored.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    size = tuple(input_size) if isinstance(input_size, (tuple, list, torch.Size)) else None
    if size is None or len(size) not in (3, 4):
        raise ValueError(f"input_size: expected (C, H, W) or (N, C, H, W), got {input_size!r}")
    for v in size:
        check_int(v, "input_size", minimum=1)
    if len(size) == 3:
        size = (1, *size)
    ref = next(model.parameters(), None)
    x = torch.randn(
        size,
        device=ref.device if ref is not None else None,
        dtype=ref.dtype if ref is not None and ref.is_floating_point() else None,
    )
    blocks = attention_modules(model)
    inputs: dict[str, tuple] = {}
    handles = []
    for name, m in blocks.items():

        def hook(mod, args, name=name):
            inputs.setdefault(name, args)

        handles.append(m.register_forward_pre_hook(hook))
    try:
        flops = forward_flops(model, x)
    finally:
        for h in handles:
            h.remove()
    attention_flops = sum(forward_flops(blocks[name], *args) for name, args in inputs.items())
    seen: set[int] = set()
    attention_params = 0
    for m in blocks.values():
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                attention_params += p.numel()
    result = ModelSummary(
        model=type(model).__name__,
        input_size=size,
        params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        flops=flops,
        attention_params=attention_params,
        attention_flops=attention_flops,
        attention_blocks=tuple(blocks),
    )
    if verbose:
        print(result)
    return result
