"""Grad-CAM (Selvaraju et al., ICCV 2017, arXiv:1610.02391), as used in CBAM's Fig. 4.

For a class score y^c and the feature maps A^k (N, K, h, w) of the last convolutional stage:

    alpha_k^c = 1 / (h w) sum_ij  d y^c / d A^k_ij          (eq. 1, global-average-pooled gradients)
    L^c       = ReLU( sum_k alpha_k^c A^k )                 (eq. 2)

L^c is upsampled bilinearly to the input size and scaled to [0, 1] per image (divided by its
maximum; an all-zero map stays zero). Activations and gradients are taken with a forward hook on
the chosen layer (the last module with a spatial output, by default) and a tensor hook on its
output, so the model is not modified.

Tests: ``tests/viz/test_viz_gradcam.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_tensor
from ..layers import ChannelAttention, SpatialAttention, SpatialTransformer, SqueezeExcite

__all__ = ["find_target_layer", "grad_cam"]

_INNER = (SqueezeExcite, ChannelAttention, SpatialAttention, SpatialTransformer)


def find_target_layer(model: nn.Module, x: torch.Tensor) -> str:
    """Name of the module whose 4-D output with more than one position is computed last.

    Runs ``model(x[:1])`` once with hooks. Modules inside attention layers or the spatial
    transformer (their internals, not the layers themselves) are skipped, so the result is the
    output of the last convolutional stage (the block or container that ends it).
    """
    skip: set[str] = set()
    for name, m in model.named_modules():
        if isinstance(m, _INNER):
            skip.update(f"{name}.{sub}" for sub, _ in m.named_modules() if sub)
    order: list[str] = []
    handles = []
    for name, m in model.named_modules():
        if not name or name in skip:
            continue

        def hook(_m, _a, out, name=name):
            if (
                isinstance(out, torch.Tensor)
                and out.dim() == 4
                and out.shape[-1] * out.shape[-2] > 1
            ):
                order.append(name)

        handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    if not order:
        raise ValueError(
            "model: expected at least one module with a spatial (N, C, H, W) output for Grad-CAM, "
            "found none"
        )
    return order[-1]


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor | int | None = None,
    *,
    layer: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps of ``model`` for ``x``.

    Args:
        model: a classifier returning logits (N, K); used as it is (call ``model.eval()`` first).
        x: images (N, C, H, W).
        target: class per image (N,) or one class for all; ``None`` uses the predicted class.
        layer: name (in ``model.named_modules()``) of the layer whose output is A; default
            :func:`find_target_layer`.

    Returns:
        ``(cam, logits)``: cam (N, H, W) in [0, 1] on the CPU, logits (N, K) detached.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    check_tensor(x, "x", ndim=4, layout="(N, C, H, W)")
    modules = dict(model.named_modules())
    if layer is None:
        layer = find_target_layer(model, x)
    elif layer not in modules:
        raise ValueError(f"layer: expected a module name of the model, got {layer!r}")
    saved: dict[str, torch.Tensor] = {}

    def keep(_m, _a, out):
        saved["A"] = out
        out.register_hook(lambda g: saved.__setitem__("dA", g))

    handle = modules[layer].register_forward_hook(keep)
    try:
        with torch.enable_grad():
            inp = x.detach().requires_grad_(False)
            logits = model(inp)
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
                raise ValueError(
                    f"model: expected logits of shape (N, K), got "
                    f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)}"
                )
            n, k = logits.shape
            if target is None:
                cls = logits.argmax(1)
            elif isinstance(target, int):
                cls = torch.full((n,), target, dtype=torch.long, device=logits.device)
            else:
                cls = torch.as_tensor(target, device=logits.device).long().reshape(-1)
                if cls.numel() != n:
                    raise ValueError(f"target: expected {n} classes, got {cls.numel()}")
            if (cls < 0).any() or (cls >= k).any():
                raise ValueError(f"target: expected classes in [0, {k}), got {cls.tolist()}")
            if "A" not in saved or not saved["A"].requires_grad:
                raise ValueError(f"layer: the output of {layer!r} does not take part in autograd")
            score = logits.gather(1, cls[:, None]).sum()
            model.zero_grad(set_to_none=True)
            score.backward()
    finally:
        handle.remove()
    a, da = saved["A"].detach(), saved["dA"].detach()
    alpha = da.mean(dim=(2, 3), keepdim=True)  # eq. 1
    cam = F.relu((alpha * a).sum(1, keepdim=True))  # eq. 2
    cam = F.interpolate(cam.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    cam = cam / peak
    model.zero_grad(set_to_none=True)
    return cam.cpu(), logits.detach().cpu()
