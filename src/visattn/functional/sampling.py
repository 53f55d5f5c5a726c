"""Bilinear sampler of the Spatial Transformer (Jaderberg et al., 2015, arXiv:1506.02025, eq. 5-7).

For channel ``c`` and output pixel ``i`` with source coordinates ``(x_i^s, y_i^s)`` in pixel
units of the input ``U`` (H x W)::

    V_i^c = sum_n sum_m U_nm^c * max(0, 1 - |x_i^s - m|) * max(0, 1 - |y_i^s - n|)        (eq. 5)

    dV_i^c / dU_nm^c = max(0, 1 - |x_i^s - m|) * max(0, 1 - |y_i^s - n|)                  (eq. 6)

    dV_i^c / dx_i^s  = sum_n sum_m U_nm^c * max(0, 1 - |y_i^s - n|) * s(m, x_i^s)         (eq. 7)
        s(m, x) = 0 if |m - x| >= 1,  +1 if m >= x,  -1 if m < x      (and the same for y)

Symbols in the code: ``input`` is U (N, C, H, W), ``grid`` holds the normalised (x^s, y^s) in
[-1, 1] with the semantics of :func:`torch.nn.functional.grid_sample` (x indexes the width,
``align_corners`` chooses whether -1 and 1 are the centres or the outer edges of the corner
pixels), ``x``/``y`` are the pixel-unit coordinates, ``x0 = floor(x)`` and ``x1 = x0 + 1``.
Only ``m in {x0, x1}`` and ``n in {y0, y1}`` have non-zero kernel weight, so the double sums
run over those four corners; out-of-range corners hold U = 0 (``padding_mode="zeros"``).

Convention at the kinks: eq. 7 read literally at an integer ``x`` (where only ``m = x`` has
``|m - x| < 1``) gives ``dV/dx = U_x`` even for a constant image, which is not a derivative of
eq. 5. We use ``s = -1`` for ``m = x0`` and ``s = +1`` for ``m = x1`` everywhere, which equals
eq. 7 at every non-integer coordinate and is the right derivative at integer ones — the same
convention as PyTorch's ``grid_sample``. ``border`` and ``reflection`` padding first map the
coordinate into the image; their derivative (0 where clipped, +-1 where reflected) multiplies
dV/dx by the chain rule, again as in ``grid_sample``.

The backward below evaluates eq. 6 and eq. 7 directly (it does not differentiate the forward
through autograd). Tests: ``tests/functional/test_functional_sampling.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .._checks import check_choice, check_tensor
from ..kernels._backend import get_backend, interpret_mode, triton_available

__all__ = ["PADDING_MODES", "bilinear_sample", "bilinear_sample_reference"]

PADDING_MODES = ("zeros", "border", "reflection")


def _unnormalise(coord: torch.Tensor, size: int, align_corners: bool) -> tuple[torch.Tensor, float]:
    """Normalised [-1, 1] coordinate to pixel units; also returns d(pixel)/d(normalised)."""
    if align_corners:
        return (coord + 1) * ((size - 1) / 2), (size - 1) / 2
    return ((coord + 1) * size - 1) / 2, size / 2


def _clip(coord: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip to [0, size - 1]; the derivative is 0 on and beyond the borders (as grid_sample)."""
    inside = (coord > 0) & (coord < size - 1)
    return coord.clamp(0, size - 1), inside.to(coord.dtype)


def _reflect(
    coord: torch.Tensor, twice_low: int, twice_high: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reflect ``coord`` into [twice_low / 2, twice_high / 2]; also returns the derivative (+-1)."""
    if twice_low == twice_high:
        return torch.zeros_like(coord), torch.zeros_like(coord)
    low = twice_low / 2
    span = (twice_high - twice_low) / 2
    shifted = coord - low
    sign = torch.where(shifted < 0, -1.0, 1.0).to(coord.dtype)
    shifted = shifted.abs()
    extra = torch.fmod(shifted, span)
    flips = torch.floor(shifted / span)
    even = torch.remainder(flips, 2) == 0
    out = torch.where(even, extra + low, span - extra + low)
    return out, torch.where(even, sign, -sign)


def _source_coordinates(
    coord: torch.Tensor, size: int, align_corners: bool, padding_mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-unit source coordinate after padding, and d(coordinate)/d(normalised grid value)."""
    pixel, scale = _unnormalise(coord, size, align_corners)
    grad = torch.full_like(pixel, scale)
    if padding_mode == "border":
        pixel, g = _clip(pixel, size)
        grad = grad * g
    elif padding_mode == "reflection":
        if align_corners:
            pixel, g = _reflect(pixel, 0, 2 * (size - 1))
        else:
            pixel, g = _reflect(pixel, -1, 2 * size - 1)
        grad = grad * g
        pixel, g = _clip(pixel, size)
        grad = grad * g
    return pixel, grad


def _corners(x: torch.Tensor, y: torch.Tensor, height: int, width: int):
    """The four (index, weight-x, weight-y, sign-x, sign-y, valid) corners around (x, y).

    Weights are the kernel values ``max(0, 1 - |x - m|)`` for ``m = x0, x1``; signs are ``s(m, x)``
    of eq. 7 (see the module docstring for the convention at the kinks).
    """
    x0 = torch.floor(x)
    y0 = torch.floor(y)
    wx1 = x - x0
    wy1 = y - y0
    wx0 = 1 - wx1
    wy0 = 1 - wy1
    x0i = x0.long()
    y0i = y0.long()
    out = []
    for dy, wy, sy in ((0, wy0, -1.0), (1, wy1, 1.0)):
        for dx, wx, sx in ((0, wx0, -1.0), (1, wx1, 1.0)):
            xi = x0i + dx
            yi = y0i + dy
            valid = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
            index = yi.clamp(0, height - 1) * width + xi.clamp(0, width - 1)
            out.append((index, wx, wy, sx, sy, valid.to(x.dtype)))
    return out


class _BilinearSample(torch.autograd.Function):
    """Reference bilinear sampler: forward eq. 5, backward eq. 6 and eq. 7."""

    @staticmethod
    def forward(ctx, input, grid, align_corners, padding_mode):  # type: ignore[override]
        n, c, h, w = input.shape
        ho, wo = grid.shape[1], grid.shape[2]
        x, _ = _source_coordinates(grid[..., 0], w, align_corners, padding_mode)
        y, _ = _source_coordinates(grid[..., 1], h, align_corners, padding_mode)
        flat = input.reshape(n, c, h * w)
        out = input.new_zeros(n, c, ho * wo)
        for index, wx, wy, _, _, valid in _corners(x, y, h, w):
            idx = index.reshape(n, 1, ho * wo).expand(n, c, ho * wo)
            weight = (wx * wy * valid).reshape(n, 1, ho * wo)
            out += flat.gather(2, idx) * weight
        ctx.save_for_backward(input, grid)
        ctx.align_corners = align_corners
        ctx.padding_mode = padding_mode
        return out.reshape(n, c, ho, wo)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):  # type: ignore[override]
        input, grid = ctx.saved_tensors
        n, c, h, w = input.shape
        ho, wo = grid.shape[1], grid.shape[2]
        x, gx = _source_coordinates(grid[..., 0], w, ctx.align_corners, ctx.padding_mode)
        y, gy = _source_coordinates(grid[..., 1], h, ctx.align_corners, ctx.padding_mode)
        need_input, need_grid = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dv = grad_output.reshape(n, c, ho * wo)
        flat = input.reshape(n, c, h * w)
        grad_input = torch.zeros_like(flat) if need_input else None
        dvdx = input.new_zeros(n, ho * wo) if need_grid else None
        dvdy = input.new_zeros(n, ho * wo) if need_grid else None
        for index, wx, wy, sx, sy, valid in _corners(x, y, h, w):
            idx = index.reshape(n, 1, ho * wo).expand(n, c, ho * wo)
            if need_input:
                # eq. 6, scattered: dL/dU_nm = sum_i dL/dV_i * kernel weight.
                weight = (wx * wy * valid).reshape(n, 1, ho * wo)
                grad_input.scatter_add_(2, idx, dv * weight)
            if need_grid:
                # eq. 7, summed over channels: sum_c dL/dV_i^c * U_nm^c.
                u_dv = (flat.gather(2, idx) * dv).sum(1)
                dvdx += u_dv * (sx * wy * valid).reshape(n, ho * wo)
                dvdy += u_dv * (sy * wx * valid).reshape(n, ho * wo)
        if need_input:
            grad_input = grad_input.reshape(n, c, h, w)
        grad_grid = None
        if need_grid:
            grad_grid = torch.stack(
                (dvdx.reshape(n, ho, wo) * gx, dvdy.reshape(n, ho, wo) * gy), dim=-1
            )
        return grad_input, grad_grid, None, None


def _check_sample_args(input, grid, align_corners, padding_mode) -> None:
    check_tensor(input, "input", ndim=4, layout="(N, C, H_in, W_in)")
    check_tensor(grid, "grid", ndim=4, layout="(N, H_out, W_out, 2)")
    if grid.shape[-1] != 2:
        raise ValueError(
            f"grid: expected the last dimension to be 2 (x, y), got shape {tuple(grid.shape)}"
        )
    if grid.shape[0] != input.shape[0]:
        raise ValueError(
            f"grid: expected batch size {input.shape[0]} (as input), got shape {tuple(grid.shape)}"
        )
    if input.shape[2] < 1 or input.shape[3] < 1:
        raise ValueError(f"input: expected H_in, W_in >= 1, got shape {tuple(input.shape)}")
    if not isinstance(align_corners, bool):
        raise TypeError(f"align_corners: expected a bool, got {align_corners!r}")
    check_choice(padding_mode, "padding_mode", PADDING_MODES)


def bilinear_sample_reference(input: torch.Tensor, grid: torch.Tensor, *, align_corners: bool = False,
                              padding_mode: str = "zeros") -> torch.Tensor:  # fmt: skip
    """The reference sampler (eq. 5-7 as written) without any fast-path dispatch.

    Same contract as :func:`bilinear_sample`; the fast kernels are tested against this function.
    """
    _check_sample_args(input, grid, align_corners, padding_mode)
    out_dtype = input.dtype
    device_type = input.device.type
    compute = torch.promote_types(torch.promote_types(input.dtype, grid.dtype), torch.float32)
    if torch.is_autocast_enabled(device_type):
        # Under autocast the sampler computes in float32 (like grid_sample) and returns float32.
        out_dtype = torch.float32
        with torch.autocast(device_type, enabled=False):
            return _BilinearSample.apply(
                input.to(compute), grid.to(compute), align_corners, padding_mode
            )
    out = _BilinearSample.apply(input.to(compute), grid.to(compute), align_corners, padding_mode)
    return out.to(out_dtype)


def bilinear_sample(
    input: torch.Tensor,
    grid: torch.Tensor,
    *,
    align_corners: bool = False,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Sample ``input`` at the normalised locations ``grid`` with the bilinear kernel (eq. 5).

    Args:
        input: U, shape (N, C, H_in, W_in), any memory format.
        grid: normalised source coordinates (x^s, y^s), shape (N, H_out, W_out, 2); -1 is the
            left / top and +1 the right / bottom of the input. Values outside [-1, 1] are
            handled by ``padding_mode``.
        align_corners: if True, -1 and 1 are the centres of the corner pixels; if False (the
            default), their outer edges. Same meaning as in ``grid_sample``.
        padding_mode: ``"zeros"`` (U = 0 outside, the paper's case), ``"border"`` (clip to
            the edge pixels) or ``"reflection"`` (mirror at the borders).

    Returns:
        V, shape (N, C, H_out, W_out), in ``input``'s dtype; under autocast the computation
        and the result are float32 (bilinear weights in bf16 / fp16 lose too much precision).

    Gradients with respect to ``input`` and ``grid`` are the published sums (eq. 6 and eq. 7),
    computed by a custom ``autograd.Function`` backward. While exporting to ONNX the call maps
    to ``torch.nn.functional.grid_sample`` (ONNX ``GridSample``), which has the same values.
    """
    if torch.onnx.is_in_onnx_export():
        _check_sample_args(input, grid, align_corners, padding_mode)
        return F.grid_sample(
            input, grid, mode="bilinear", padding_mode=padding_mode, align_corners=align_corners
        )
    fast = _fast_sample(input, grid, align_corners, padding_mode)
    if fast is not None:
        return fast
    return bilinear_sample_reference(
        input, grid, align_corners=align_corners, padding_mode=padding_mode
    )


def _fast_sample(
    input: torch.Tensor, grid: torch.Tensor, align_corners: bool, padding_mode: str
) -> torch.Tensor | None:
    """The fast sampler for this device, or None where the reference must run.

    CUDA: the Triton operator ``visattn::bilinear_sample`` (zero padding; deterministic
    backward). CPU: ``torch.nn.functional.grid_sample``, whose CPU kernels compute the same
    eq. 5-7 with the same kink / padding conventions and a deterministic backward. Both compute
    in float32 (or float64 for float64 inputs) and return input's dtype (float32 under autocast).
    """
    backend = get_backend()
    if backend == "reference":
        return None
    _check_sample_args(input, grid, align_corners, padding_mode)
    if input.numel() == 0 or grid.numel() == 0:
        return None
    device_type = input.device.type
    autocast = torch.is_autocast_enabled(device_type)
    out_dtype = torch.float32 if autocast else input.dtype
    use_triton = (
        padding_mode == "zeros"
        and input.dtype in (torch.float32, torch.bfloat16, torch.float16)
        and grid.dtype in (torch.float32, torch.bfloat16, torch.float16)
        and triton_available()
        and (device_type == "cuda" or (backend == "triton" and interpret_mode()))
    )
    if use_triton:
        from ..kernels import sampler  # noqa: F401  (registers torch.ops.visattn)

        with torch.autocast(device_type, enabled=False):
            # The kernel computes in float32 and writes input's dtype: upcast when autocast
            # asks for a float32 result.
            return torch.ops.visattn.bilinear_sample(input.to(out_dtype), grid, align_corners)
    if device_type != "cpu" or backend == "triton":
        return None
    compute = torch.promote_types(torch.promote_types(input.dtype, grid.dtype), torch.float32)
    input = input if input.dtype == compute else input.to(compute)
    grid = grid if grid.dtype == compute else grid.to(compute)
    if autocast:
        with torch.autocast(device_type, enabled=False):
            out = F.grid_sample(input, grid, "bilinear", padding_mode, align_corners)
    else:
        out = F.grid_sample(input, grid, "bilinear", padding_mode, align_corners)
    return out if out.dtype == out_dtype else out.to(out_dtype)
