"""Fast bilinear sampler (Jaderberg et al., arXiv:1506.02025, eq. 5-7) vs the reference.

CPU: ``grid_sample``-backed fast path; CUDA (when present) and the Triton interpreter
(``test_kernels_triton.py`` reruns this file with ``VISATTN_TEST_FAST_BACKEND=triton``): the
Triton kernels with the deterministic (sorted-gather) input gradient.
"""

from __future__ import annotations

import os

import pytest
import torch

from visattn.functional import bilinear_sample, bilinear_sample_reference
from visattn.kernels import use_backend

FAST = os.environ.get("VISATTN_TEST_FAST_BACKEND", "auto")
INTERPRETED = FAST == "triton"
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
PADDINGS = ["zeros"] if INTERPRETED else ["zeros", "border", "reflection"]
TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


def _close(got, want, tol, what):
    got, want = got.float(), want.float()
    err = (got - want).abs().max().item()
    assert err <= tol * (1 + want.abs().max().item()), f"{what}: max error {err:.3g}"


def _run(backend, input, grid, grad, **kw):
    input = input.detach().requires_grad_(True)
    grid = grid.detach().requires_grad_(True)
    with use_backend(backend):
        out = bilinear_sample(input, grid, **kw)
    out.backward(grad)
    return out.detach(), input.grad, grid.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("shape", [(1, 3, 5, 7, 4, 6), (2, 9, 8, 5, 7, 3)])
def test_sampler_matches_reference(
    device, dtype, channels_last, align_corners, padding_mode, shape
):
    n, c, h, w, ho, wo = shape
    input = torch.randn(n, c, h, w, device=device).to(dtype)
    if channels_last:
        input = input.contiguous(memory_format=torch.channels_last)
    grid = (torch.rand(n, ho, wo, 2, device=device) * 2.6 - 1.3).to(dtype)
    grad = torch.randn(n, c, ho, wo, device=device).to(dtype)
    kw = {"align_corners": align_corners, "padding_mode": padding_mode}
    got = _run(FAST, input, grid, grad, **kw)
    want = _run("reference", input.float(), grid.float(), grad.float(), **kw)
    assert got[0].dtype == dtype and got[1].dtype == dtype and got[2].dtype == dtype
    for name, a, b in zip(("output", "grad input", "grad grid"), got, want, strict=True):
        # bf16 grids are coarse: compare with the float32 reference of the same rounded grid.
        _close(a, b, TOL[dtype], name)


@pytest.mark.parametrize("device", DEVICES)
def test_sampler_backward_is_bitwise_deterministic(device):
    """A zooming grid sends many outputs to each input pixel: the scatter order must not matter."""
    input = torch.randn(2, 6, 5, 4, device=device)
    theta = torch.tensor([[0.3, 0.1, 0.05], [-0.1, 0.25, 0.0]], device=device).expand(2, 2, 3)
    grid = torch.nn.functional.affine_grid(theta, (2, 6, 24, 20), align_corners=False)
    grid = grid + 0.01 * torch.randn_like(grid)
    grad = torch.randn(2, 6, 24, 20, device=device)
    first = _run(FAST, input, grid, grad)
    for _ in range(3):
        again = _run(FAST, input, grid, grad)
        for a, b in zip(first, again, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_sampler_under_autocast_returns_float32(device):
    input = torch.randn(1, 2, 4, 4, device=device)
    grid = torch.rand(1, 3, 3, 2, device=device) * 2 - 1
    dtype = torch.bfloat16
    with torch.autocast(device, dtype=dtype), use_backend(FAST):
        out = bilinear_sample(input.to(dtype), grid)
    assert out.dtype == torch.float32
    _close(out, bilinear_sample_reference(input.to(dtype).float(), grid), 1e-5, "autocast")


@pytest.mark.skipif(not (torch.cuda.is_available() or INTERPRETED), reason="Triton op needs CUDA")
def test_sampler_opcheck():
    from visattn.kernels import sampler  # noqa: F401

    device = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"
    input = torch.randn(2, 3, 5, 4, device=device, requires_grad=True)
    grid = (torch.rand(2, 3, 6, 2, device=device) * 2.2 - 1.1).requires_grad_(True)
    torch.library.opcheck(torch.ops.visattn.bilinear_sample.default, (input, grid, False))
