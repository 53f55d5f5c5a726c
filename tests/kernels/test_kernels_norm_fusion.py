"""BatchNorm followed by SE / CBAM as one autograd node (``input_norm=``,
``visattn.layers.batchnorm_attention``, the residual blocks' standard placement).

The fused node must be indistinguishable from ``attention(bn(c))``: output, the gradient of c and
of every parameter (BatchNorm's included, through its batch statistics), the running statistics
and ``num_batches_tracked``; and it must keep one full-size tensor less for backward. Rerun on
the Triton kernels under the interpreter by ``test_kernels_triton.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from folded import batchnorm_as_folded
from test_kernels_se_cbam import (
    DEVICES,
    FAST,
    INTERPRETED,
    _close,
    _close_modules,
    _fast_impl_expected,
    _layout,
)
from torch import nn

import visattn
from visattn.functional._norm_fusion import float_batch_stats
from visattn.kernels import use_backend
from visattn.kernels._backend import select_impl
from visattn.layers import batchnorm_attention
from visattn.models import Bottleneck

FUSED_NODE = "_BatchNormThenBackward"
SHAPE = (3, 24, 7, 9) if not INTERPRETED else (2, 12, 5, 6)


def _graph_has(y: torch.Tensor, name: str) -> bool:
    """Whether the autograd graph behind y has a node of this class name."""
    stack, seen = [y.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == name:
            return True
        stack.extend(n for n, _ in node.next_functions)
    return False


def _compare_twins(block, backend, twin, twin_backend, x, tol, buffer_tol=1e-5):
    """block(x) on one backend against twin(copy of x) on another: output, grad x, every
    parameter's gradient and every buffer. Returns both outputs."""
    xr = x.detach().clone().requires_grad_(True)
    with use_backend(backend):
        y = block(x)
    with use_backend(twin_backend):
        y_ref = twin(xr)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad)
    _close(y, y_ref, tol, "output")
    _close(x.grad, xr.grad, tol, "grad x")
    _close_modules(block, twin, tol, buffer_tol)
    return y, y_ref


def _attention(kind: str, channels: int) -> nn.Module:
    if kind == "se":
        return visattn.SqueezeExcite(channels, reduction=4)
    if kind == "se_max":
        return visattn.SqueezeExcite(channels, reduction=4, squeeze="max", gate="hard_sigmoid")
    if kind == "cbam":
        return visattn.CBAM(channels, reduction=4, norm=True)  # the official layout
    return visattn.CBAM(channels, reduction=4, pool=("max",), kernel_size=3, bias=False)


def _pair(kind: str, device: str, **bn_kw) -> tuple[nn.Module, nn.Module]:
    norm = nn.BatchNorm2d(SHAPE[1], **bn_kw)
    if norm.affine:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    if norm.track_running_stats:
        with torch.no_grad():
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
    return norm.to(device), _attention(kind, SHAPE[1]).to(device)


def _check_same(fused_mods, plain_mods, c, dtype, channels_last, training):
    """Run both and compare everything: in float32 the plain modules on the reference backend;
    in bfloat16 the plain modules on the fast backend (the path the fused node replaces) fed
    with the folded kernels' rounding of bn(c) (``folded.batchnorm_as_folded``): with a differently
    rounded bn(c) a ReLU of the MLP or a maximum can switch, which moves gradients."""
    for m in (*fused_mods, *plain_mods):
        m.train(training)
    c = _layout(c, channels_last).to(dtype)
    c1 = c.detach().clone().requires_grad_(True)
    c2 = c.detach().clone().requires_grad_(True)
    autocast = torch.autocast(c.device.type, torch.bfloat16, enabled=dtype == torch.bfloat16)
    with use_backend(FAST), autocast:
        y1 = batchnorm_attention(*fused_mods, c1)
    with use_backend(FAST if dtype == torch.bfloat16 else "reference"), autocast:
        bn_out = (
            batchnorm_as_folded(plain_mods[0], c2) if dtype == torch.bfloat16 else plain_mods[0](c2)
        )
        y2 = plain_mods[1](bn_out)
    assert type(y1.grad_fn).__name__ == FUSED_NODE
    assert type(y2.grad_fn).__name__ != FUSED_NODE
    assert y1.dtype == y2.dtype == dtype
    assert y1.is_contiguous(memory_format=torch.channels_last) == channels_last
    grad = torch.randn(y2.shape, device=c.device).to(dtype)
    y1.backward(grad)
    y2.backward(grad)
    tol = 2e-4 if dtype == torch.float32 else 3e-2
    _close(y1, y2, tol, "output")
    _close(c1.grad, c2.grad, tol, "grad c")
    for got, want in zip(fused_mods, plain_mods, strict=True):
        _close_modules(got, want, tol)


CASES = [(kind, torch.float32) for kind in ("se", "se_max", "cbam", "cbam_max")] + [
    ("se", torch.bfloat16),
    ("cbam", torch.bfloat16),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind, dtype", CASES, ids=[f"{k}-{str(d)[6:]}" for k, d in CASES])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_batchnorm_then_attention_matches_the_two_modules(device, kind, dtype, channels_last):
    """Training (twice: the running statistics move), then evaluation (running statistics)."""
    _fast_impl_expected(device)
    fused = _pair(kind, device)
    plain = tuple(copy.deepcopy(m) for m in fused)
    for training in (True, True, False):
        c = torch.randn(SHAPE, device=device) * 2 + 0.5
        _check_same(fused, plain, c, dtype, channels_last, training)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "bn_kw, dtype",
    [
        ({"momentum": None}, torch.float32),
        ({"affine": False}, torch.float32),
        ({"track_running_stats": False}, torch.float32),
        # float32 statistics of a bfloat16 input also without running statistics to update
        ({"track_running_stats": False}, torch.bfloat16),
    ],
    ids=["cumulative", "no_affine", "no_running_stats", "no_running_stats_bf16"],
)
def test_fused_batchnorm_options(device, bn_kw, dtype):
    _fast_impl_expected(device)
    fused = _pair("cbam", device, **bn_kw)
    plain = tuple(copy.deepcopy(m) for m in fused)
    for training in (True, True, False):
        c = torch.randn(1, *SHAPE[1:], device=device)  # N = 1
        _check_same(fused, plain, c, dtype, False, training)


@pytest.mark.parametrize("kind", ["se", "se_max", "cbam", "cbam_max"])
def test_fused_batchnorm_with_zero_and_negative_gamma(kind):
    """gamma = 0 (timm / torchvision's zero_init_residual) makes BN(c) constant per channel, so
    every position ties for the maximum; gamma < 0 turns the maximum of BN(c) into c's minimum.
    The folded kernels never divide by gamma and must agree with the two modules on both."""
    device = DEVICES[0]
    _fast_impl_expected(device)
    fused = _pair(kind, device)
    with torch.no_grad():
        gamma = fused[0].weight
        gamma.copy_(torch.linspace(-1.0, 1.0, gamma.numel()))
        gamma[::3] = 0.0
    plain = tuple(copy.deepcopy(m) for m in fused)
    for training in (True, False):
        c = torch.randn(SHAPE, device=device) * 2 + 0.5
        _check_same(fused, plain, c, torch.float32, True, training)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batch_statistics_are_float32(dtype):
    """The folded BatchNorm normalises with float32 statistics, as nn.BatchNorm2d does, also for
    a bfloat16 input without running statistics (where torch.batch_norm_update_stats alone
    returns them rounded to bfloat16)."""
    c = (torch.randn(SHAPE) * 3 + 1).to(dtype)
    mean, var = float_batch_stats(c)
    assert mean.dtype == var.dtype == torch.float32
    torch.testing.assert_close(mean, c.float().mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var, c.float().var((0, 2, 3), unbiased=False), rtol=1e-5, atol=1e-6)


def test_operators_refuse_autograd_through_a_folded_norm():
    """Called directly with ``in_norm``, the operators' own backward would not know the
    BatchNorm's statistics mode: it must refuse rather than return a wrong gradient."""
    _fast_impl_expected("cpu")
    with use_backend(FAST):
        impl = select_impl(torch.empty(1))
    c = torch.randn(2, 6, 3, 4, requires_grad=True)
    w1, w2 = torch.randn(2, 6), torch.randn(6, 2)
    in_norm = torch.stack(
        [torch.ones(6), torch.zeros(6), torch.zeros(6), torch.ones(6), torch.zeros(6)]
    )
    y = torch.ops.visattn.squeeze_excite(c, w1, None, w2, None, in_norm, "avg", "sigmoid", impl)[0]
    with pytest.raises(NotImplementedError, match="in_norm"):
        y.sum().backward()


@pytest.mark.parametrize("kind", ["se", "cbam"])
def test_fused_node_saves_one_full_size_tensor_less(kind):
    """What autograd keeps for backward: c alone (plus (N, C)- and (N, H, W)-sized tensors)
    instead of c and bn(c)."""
    _fast_impl_expected("cpu")
    norm, att = _pair(kind, "cpu")
    c = torch.randn(SHAPE, requires_grad=True)

    def saved_full_size(fn) -> int:
        storages = {}

        def pack(t):
            if t.numel() == c.numel():
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), use_backend(FAST):
            fn()
        return len(storages)

    assert saved_full_size(lambda: batchnorm_attention(norm, att, c)) == 1
    assert saved_full_size(lambda: att(norm(c))) == 2


def test_hooks_no_grad_and_other_norms_take_the_plain_path():
    _fast_impl_expected("cpu")
    norm, att = _pair("se", "cpu")
    c = torch.randn(SHAPE, requires_grad=True)
    with use_backend(FAST):
        assert type(batchnorm_attention(norm, att, c).grad_fn).__name__ == FUSED_NODE
        with torch.no_grad():
            assert batchnorm_attention(norm, att, c).grad_fn is None
        # a forward hook must see the attention called on bn(c)
        seen = []
        handle = att.register_forward_hook(lambda m, args, out: seen.append(args[0]))
        norm.eval()
        y = batchnorm_attention(norm, att, c)
        handle.remove()
        torch.testing.assert_close(seen[0], norm(c))
        assert type(y.grad_fn).__name__ != FUSED_NODE
        handle = norm.register_forward_hook(lambda m, args, out: seen.append(out))
        assert type(batchnorm_attention(norm, att, c).grad_fn).__name__ != FUSED_NODE
        handle.remove()

        # a subclass of BatchNorm2d (SyncBatchNorm, ...) keeps its own forward
        class MyNorm(nn.BatchNorm2d):
            pass

        other = MyNorm(SHAPE[1])
        assert type(batchnorm_attention(other, att, c).grad_fn).__name__ != FUSED_NODE
        ident = batchnorm_attention(nn.Identity(), att, c)
        torch.testing.assert_close(ident, att(c))


@pytest.mark.parametrize("attention", ["se", "cbam"])
def test_bottleneck_uses_the_fused_node_and_matches_reference(attention):
    """A visattn Bottleneck (standard placement): fused on the fast backend, equal to the
    reference backend's block, gradients and BatchNorm statistics included."""
    _fast_impl_expected("cpu")
    from visattn.models.resnet import build_attention

    torch.manual_seed(0)
    down = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32))
    se = build_attention(attention, 32, {"reduction": 4})
    block = Bottleneck(16, 8, downsample=down, se=se)
    twin = copy.deepcopy(block)
    x = torch.randn(2, 16, 9, 8, requires_grad=True)
    y, _ = _compare_twins(block, FAST, twin, "reference", x, 2e-4)
    assert _graph_has(y, FUSED_NODE)


@pytest.mark.skipif(INTERPRETED, reason="compile is covered on the native backend")
def test_torch_compile_of_a_fused_block_matches_eager():
    _fast_impl_expected("cpu")
    torch.manual_seed(0)
    block = Bottleneck(32, 8, se=visattn.CBAM(32, reduction=4, norm=True))
    twin = copy.deepcopy(block)
    x = torch.randn(2, 32, 6, 7, requires_grad=True)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    _, y_ref = _compare_twins(compiled, FAST, twin, FAST, x, 1e-5, buffer_tol=1e-6)
    assert _graph_has(y_ref, FUSED_NODE)
