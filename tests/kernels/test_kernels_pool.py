"""The CPU kernels' output pool (visattn/kernels/_pool.py): memory is reused only once nothing
refers to it, outputs keep their values, limits and switches hold, and the fused SE / CBAM stay
equal to the reference when their outputs come from reused memory."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import visattn
from visattn.kernels import _pool, select_impl, use_backend
from visattn.kernels._pool import MIN_BYTES, OutputPool

BIG = (4, 16, 128, 128)  # 1 Mi float32 elements: exactly MIN_BYTES
CL = torch.channels_last
NCHW = torch.contiguous_format

pytestmark = pytest.mark.skipif(
    getattr(torch._C, "_storage_Use_Count", None) is None, reason="torch lacks _storage_Use_Count"
)


def _new_pool(limit_blocks: int = 8) -> OutputPool:
    return OutputPool(limit_blocks * MIN_BYTES)


def test_freed_output_memory_is_reused():
    pool = _new_pool()
    a = pool.empty(BIG, torch.float32, NCHW)
    ptr = a.data_ptr()
    del a
    b = pool.empty(BIG, torch.float32, NCHW)
    assert b.data_ptr() == ptr
    assert (pool.hits, pool.misses) == (1, 1)
    assert b.shape == BIG and b.is_contiguous()


@pytest.mark.parametrize("hold", ["tensor", "view", "numpy", "autograd"])
def test_memory_still_referenced_is_never_handed_out(hold):
    pool = _new_pool()
    a = pool.empty(BIG, torch.float32, NCHW).normal_()
    ptr = a.data_ptr()
    keep: object
    if hold == "tensor":
        keep = a
    elif hold == "view":
        keep = a[1:, :3]
    elif hold == "numpy":
        keep = a.numpy()
    else:  # saved by autograd for the backward of a * w
        w = torch.ones(BIG, requires_grad=True)
        keep = (a * w).sum()
    expected = a.clone()
    del a
    b = pool.empty(BIG, torch.float32, NCHW)
    assert b.data_ptr() != ptr
    b.fill_(7.0)
    if hold == "numpy":
        np.testing.assert_array_equal(keep, expected.numpy())
    elif hold == "autograd":
        keep.backward()
        assert torch.equal(w.grad, expected)
    else:
        assert torch.equal(keep, expected[1:, :3] if hold == "view" else expected)
    del keep, b
    if hold == "autograd":
        del w
    pool.empty(BIG, torch.float32, NCHW)  # everything released: a reuse, no new storage
    assert pool.hits == 1 and pool.stats()["storages"] == 2


def test_layout_and_dtype_of_reused_memory():
    pool = _new_pool()
    a = pool.empty(BIG, torch.float32, NCHW)
    ptr = a.data_ptr()
    del a
    # Same byte size, other dtype and layout: the storage is reused with the right strides.
    shape = (4, 32, 128, 128)
    b = pool.empty(shape, torch.bfloat16, CL)
    assert b.data_ptr() == ptr and b.dtype == torch.bfloat16
    assert b.shape == shape and b.is_contiguous(memory_format=CL)
    assert b.stride() == torch.empty(shape, memory_format=CL).stride()


def test_small_outputs_bypass_the_pool():
    pool = _new_pool()
    t = pool.empty((2, 3, 4, 5), torch.float32, NCHW)
    assert t.shape == (2, 3, 4, 5)
    assert pool.stats() == {**pool.stats(), "storages": 0, "hits": 0, "misses": 0}


def test_limit_zero_turns_the_pool_off():
    pool = OutputPool(0)
    a = pool.empty(BIG, torch.float32, NCHW)
    del a
    pool.empty(BIG, torch.float32, NCHW)
    assert pool.stats()["storages"] == 0 and pool.hits == 0


def test_limit_evicts_free_storages_and_never_exceeds():
    pool = OutputPool(2 * MIN_BYTES)
    a = pool.empty(BIG, torch.float32, NCHW)
    b = pool.empty(BIG, torch.float32, NCHW)
    c = pool.empty(BIG, torch.float32, NCHW)  # both pooled storages in use: a plain tensor
    assert pool.stats()["held_bytes"] == 2 * MIN_BYTES
    assert len({a.data_ptr(), b.data_ptr(), c.data_ptr()}) == 3
    del a
    bigger = (4, 16, 128, 256)  # 2 * MIN_BYTES: the free storage of a is evicted first,
    d = pool.empty(bigger, torch.float32, NCHW)  # then there is still no room (b in use)
    assert pool.stats()["held_bytes"] <= 2 * MIN_BYTES
    del b, c, d
    e = pool.empty(bigger, torch.float32, NCHW)
    stats = pool.stats()
    assert stats["held_bytes"] == 2 * MIN_BYTES and stats["storages"] == 1
    assert e.shape == bigger


def test_empty_cache_frees_only_free_storages():
    pool = _new_pool()
    a = pool.empty(BIG, torch.float32, NCHW)
    b = pool.empty(BIG, torch.float32, NCHW)
    del b
    assert pool.stats()["free_bytes"] == MIN_BYTES
    assert pool.empty_cache() == MIN_BYTES
    stats = pool.stats()
    assert stats["held_bytes"] == MIN_BYTES and stats["free_bytes"] == 0
    del a
    assert pool.empty_cache() == MIN_BYTES and pool.stats()["storages"] == 0


def test_threads_never_share_live_memory():
    pool = _new_pool(limit_blocks=6)
    errors: list[str] = []

    def work(value: float) -> None:
        for _ in range(20):
            t = pool.empty(BIG, torch.float32, NCHW)
            t.fill_(value)
            if not bool((t == value).all()):
                errors.append(f"thread {value}: memory overwritten while in use")
            del t

    threads = [threading.Thread(target=work, args=(float(i),)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert pool.stats()["held_bytes"] <= 6 * MIN_BYTES


@pytest.mark.parametrize("raw, expected", [("0", 0), ("16", 16 * 2**20), ("", 2048 * 2**20)])
def test_limit_from_environment(monkeypatch, raw, expected):
    monkeypatch.setenv("VISATTN_CPU_POOL_MB", raw)
    assert _pool._limit_from_env() == expected


@pytest.mark.parametrize("raw", ["lots", "-1", "1.5"])
def test_bad_limit_in_environment_names_the_variable(monkeypatch, raw):
    monkeypatch.setenv("VISATTN_CPU_POOL_MB", raw)
    with pytest.raises(ValueError, match="VISATTN_CPU_POOL_MB"):
        _pool._limit_from_env()


def test_negative_limit_is_refused():
    with pytest.raises(ValueError, match="limit_bytes"):
        OutputPool(-1)


@pytest.mark.parametrize("block", ["se", "cbam"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_blocks_on_reused_memory_equal_the_reference(block, channels_last):
    """Three training steps whose y and dx (>= MIN_BYTES) come from the pool: every step equals
    the reference, and outputs still held from an earlier step keep their values.

    CBAM pools by average only here: with max pooling over channels, the fused path's M_c and
    the reference's differ in the last bit (summation order), and among the 10^5 positions of
    these steps two channels' M_c x can be that close, which sends the max's gradient to another
    channel (both are exact gradients of their own forward). Max routing and ties are tested at
    small sizes in test_kernels_se_cbam.py."""
    if select_impl(torch.empty(1)) != "c":
        pytest.skip("the C++ kernels are not available here")
    c = 32
    if block == "se":
        layer = visattn.SqueezeExcite(c)
    else:
        layer = visattn.CBAM(c, norm=True, bias=False, pool=("avg",))
    fmt = CL if channels_last else NCHW
    before = _pool.pool_stats()
    held = []
    for _ in range(3):
        x = torch.randn(3, c, 112, 112).contiguous(memory_format=fmt).requires_grad_(True)
        dy = torch.randn_like(x)
        y = layer(x)
        y.backward(dy)
        held.append((y.detach(), x.grad, y.detach().clone(), x.grad.clone()))
        xr = x.detach().clone().requires_grad_(True)
        with use_backend("reference"):
            yr = layer(xr)
        yr.backward(dy)
        torch.testing.assert_close(y, yr, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-5)
        if len(held) == 2:
            held.pop(0)  # release step 1's outputs: step 3 may reuse their memory
        del x, y, yr, xr
    for y, dx, y_copy, dx_copy in held:
        assert torch.equal(y, y_copy) and torch.equal(dx, dx_copy)
    assert _pool.pool_stats()["hits"] > before["hits"]


def test_opcheck_with_pooled_outputs():
    """torch.library.opcheck (schema, fake tensors, autograd registration, AOT dispatch) on a
    shape whose outputs come from the pool, after a first call has left a storage to reuse."""
    if select_impl(torch.empty(1)) != "c":
        pytest.skip("the C++ kernels are not available here")
    c, hidden = 32, 4
    x = torch.randn(3, c, 112, 112, requires_grad=True)
    w1 = torch.randn(hidden, c, requires_grad=True)
    w2 = torch.randn(c, hidden, requires_grad=True)
    b1, b2 = torch.randn(hidden, requires_grad=True), torch.randn(c, requires_grad=True)
    args = (x, w1, b1, w2, b2, None, "avg", "sigmoid", "c")
    torch.ops.visattn.squeeze_excite(*args)  # its y, released at once, stays in the pool
    hits = _pool.pool_stats()["hits"]
    torch.library.opcheck(torch.ops.visattn.squeeze_excite.default, args)
    assert _pool.pool_stats()["hits"] > hits


def test_memory_moved_to_shared_memory_is_never_reused():
    pool = _new_pool()
    a = pool.empty(BIG, torch.float32, NCHW)
    a.share_memory_()  # e.g. sent to another process, which may still read it
    shared = a.untyped_storage().data_ptr()
    del a
    b = pool.empty(BIG, torch.float32, NCHW)
    assert b.data_ptr() != shared
    assert pool.stats()["storages"] == 1  # the shared storage left the pool
