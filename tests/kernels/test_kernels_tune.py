"""The measured choice of backend "auto" (``visattn.kernels._tune``): on CUDA it picks, per kind
of call, the faster of the Triton kernels and the reference formulas.

The logic is the same on every device, so these tests turn it on for CPU tensors (candidates:
the C++ kernels and the reference) and make one candidate slow, or failing, on purpose.
"""

from __future__ import annotations

import copy
import time
import warnings

import pytest
import torch
from test_kernels_se_cbam import _close, _close_modules
from torch import nn

import visattn
from visattn.kernels import _tune, clear_tuning, tuning_results, use_backend
from visattn.kernels import cpu as cpu_kernels
from visattn.kernels._backend import select_impl
from visattn.layers import batchnorm_attention

pytestmark = pytest.mark.skipif(
    select_impl(torch.empty(1)) != "c", reason="no C++ kernels on this machine (no compiler)"
)


@pytest.fixture(autouse=True)
def _tune_on_cpu(monkeypatch):
    monkeypatch.setattr(_tune, "TUNED_DEVICES", {"cpu"})
    monkeypatch.setattr(_tune, "WARMUP", 1)
    monkeypatch.setattr(_tune, "REPEATS", 2)
    monkeypatch.delenv("VISATTN_BACKEND", raising=False)
    clear_tuning()
    yield
    clear_tuning()


SLEEP_MS = 50


def _slow(fn):
    """fn, SLEEP_MS slower: far more than the block takes at these shapes."""

    def wrapper(*args, **kwargs):
        time.sleep(SLEEP_MS / 1e3)
        return fn(*args, **kwargs)

    return wrapper


def _block(kind: str) -> tuple[nn.Module, nn.Module]:
    """A training-mode BatchNorm and the attention after it, with non-trivial statistics."""
    norm = nn.BatchNorm2d(16)
    attention = (
        visattn.SqueezeExcite(16, reduction=4)
        if kind == "se"
        else visattn.CBAM(16, reduction=4, norm=True)
    )
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.running_mean.uniform_(-1, 1)
    return norm, attention


@pytest.mark.parametrize("kind", ["se", "cbam"])
@pytest.mark.parametrize("slow", ["fast", "reference"])
def test_the_faster_candidate_is_chosen(monkeypatch, kind, slow):
    if slow == "fast":
        monkeypatch.setattr(cpu_kernels, "apply", _slow(cpu_kernels.apply))
    else:
        from visattn.functional import fused

        ref = "_squeeze_excite" if kind == "se" else "_cbam"  # the reference branch's formulas
        monkeypatch.setattr(fused, ref, _slow(getattr(fused, ref)))
    norm, attention = _block(kind)
    batchnorm_attention(norm, attention, torch.randn(2, 16, 5, 6)).sum().backward()
    (result,) = tuning_results()
    assert result["choice"] == ("reference" if slow == "fast" else "cpu")
    assert result["block"][0] == ("squeeze_excite" if kind == "se" else "cbam")
    assert result["backward"] and set(result["ms"]) == {"cpu", "reference"}
    assert result["ms"][slow.replace("fast", "cpu")] >= SLEEP_MS


@pytest.mark.parametrize("kind", ["se", "cbam"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_measuring_changes_nothing(kind, channels_last):
    """Output, every gradient, running statistics and batch counters as with the chosen backend
    pinned: measuring leaves no trace in the modules."""
    norm, attention = _block(kind)
    twin_norm, twin_attention = copy.deepcopy(norm), copy.deepcopy(attention)
    c = torch.randn(3, 16, 7, 5)
    if channels_last:
        c = c.contiguous(memory_format=torch.channels_last)
    dy = torch.randn_like(c)
    c1, c2 = c.clone().requires_grad_(), c.clone().requires_grad_()
    y1 = batchnorm_attention(norm, attention, c1)
    assert all(p.grad is None for p in (*norm.parameters(), *attention.parameters()))
    y1.backward(dy)
    (result,) = tuning_results()
    with use_backend(result["choice"]):
        y2 = batchnorm_attention(twin_norm, twin_attention, c2)
        y2.backward(dy)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    torch.testing.assert_close(c1.grad, c2.grad, rtol=0, atol=0)
    _close_modules(norm, twin_norm, 0, 0)
    _close_modules(attention, twin_attention, 0, 0)
    assert int(norm.num_batches_tracked) == 1


def test_each_kind_is_measured_once(monkeypatch):
    calls = []
    per_call = _tune._seconds_per_call
    monkeypatch.setattr(_tune, "_seconds_per_call", lambda *a: calls.append(1) or per_call(*a))
    layer = visattn.SqueezeExcite(16, reduction=4)
    x = torch.randn(2, 16, 5, 6)
    for _ in range(3):
        layer(x)
    assert len(calls) == 2  # the two candidates, once
    layer(torch.randn(2, 16, 5, 6))  # same kind, other values
    assert len(calls) == 2
    layer(x.contiguous(memory_format=torch.channels_last))  # other strides
    layer(torch.randn(3, 16, 5, 6))  # other shape
    with torch.no_grad():
        layer(x)  # forward only
    layer(x.bfloat16().float().requires_grad_())  # gradients to x as well
    with torch.autocast("cpu", torch.bfloat16):
        layer(x)
    assert len(calls) == 2 * 6 and len(tuning_results()) == 6
    assert [r["backward"] for r in tuning_results()] == [True, True, True, False, True, True]
    clear_tuning()
    layer(x)
    assert len(calls) == 2 * 7 and len(tuning_results()) == 1


def test_pinned_backends_and_float64_do_not_measure():
    layer = visattn.CBAM(16, reduction=4)
    x = torch.randn(2, 16, 5, 6)
    for backend in ("cpu", "reference"):
        with use_backend(backend):
            layer(x)
    layer.double()(x.double())  # no kernel for float64: nothing to choose
    assert tuning_results() == []


def test_deterministic_algorithms_take_the_kernels_unmeasured(monkeypatch):
    """A choice by timing could differ between two runs: with deterministic algorithms on, the
    kernels (bitwise repeatable) run without measuring, even when they are the slower."""
    monkeypatch.setattr(cpu_kernels, "apply", _slow(cpu_kernels.apply))
    layer = visattn.SqueezeExcite(16, reduction=4)
    before = torch.are_deterministic_algorithms_enabled()
    with torch.autograd.profiler.profile() as prof:
        try:
            torch.use_deterministic_algorithms(True)
            layer(torch.randn(2, 16, 5, 6))
        finally:
            torch.use_deterministic_algorithms(before)
    assert tuning_results() == []
    assert any(e.name == "visattn::squeeze_excite" for e in prof.function_events)


def test_nothing_is_measured_while_compiling():
    """Inside torch.compile the reference formulas run, traced in one graph, and nothing is
    timed (a tracer's tensors cannot be)."""
    layer = visattn.SqueezeExcite(16, reduction=4)
    x = torch.randn(2, 16, 5, 6)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    y = compiled(x)
    assert tuning_results() == []
    with use_backend("reference"):
        torch.testing.assert_close(y, layer(x))


def test_a_failing_fast_kernel_falls_back_to_the_reference(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image for this device")

    monkeypatch.setattr(cpu_kernels, "apply", broken)
    layer = visattn.SqueezeExcite(16, reduction=4)
    x = torch.randn(2, 16, 5, 6)
    with pytest.warns(
        RuntimeWarning, match="cpu kernels: RuntimeError: no kernel image.*use the formulas"
    ):
        y = layer(x)
    (result,) = tuning_results()
    assert result["choice"] == "reference" and set(result["ms"]) == {"reference"}
    with use_backend("reference"):
        _close(y, layer(x), 0, "output")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(x)  # decided: no second warning, no kernel call


def test_the_benchmark_reports_the_choices(monkeypatch):
    from visattn import bench

    monkeypatch.setattr(cpu_kernels, "apply", _slow(cpu_kernels.apply))
    assert bench.tuning_lines() == []
    visattn.CBAM(16, reduction=4, norm=True)(torch.randn(2, 16, 5, 6).bfloat16().float())
    header, _, row = bench.tuning_lines()
    assert "chosen" in header
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:6] == ["cbam", "avg+max, bn", "2x16x5x6", "float32", "NCHW", "True"]
    assert cells[6].endswith("(cpu)") and cells[8] == "reference"


@pytest.mark.parametrize("reentrant", [False, True])
def test_measuring_inside_activation_checkpointing(reentrant):
    """The first call may come inside torch.utils.checkpoint (timm's grad checkpointing): the
    measurement's own saved tensors must not enter the checkpoint's bookkeeping, whose
    recomputation (already decided, nothing measured) must find what the forward saved."""
    norm, attention = _block("cbam")
    twin_norm, twin_attention = copy.deepcopy(norm), copy.deepcopy(attention)
    c = torch.randn(2, 16, 5, 6)
    dy = torch.randn_like(c)
    c1, c2 = c.clone().requires_grad_(), c.clone().requires_grad_()
    y1 = torch.utils.checkpoint.checkpoint(
        batchnorm_attention, norm, attention, c1, use_reentrant=reentrant
    )
    y1.backward(dy)
    # reentrant: the checkpoint's forward runs without gradients, its recomputation with them:
    # two kinds, measured apart (their choices may differ); the gradients come from the second.
    results = tuning_results()
    assert sorted(r["backward"] for r in results) == ([False, True] if reentrant else [True])
    choice = next(r["choice"] for r in results if r["backward"])
    with use_backend(choice):
        batchnorm_attention(twin_norm, twin_attention, c2).backward(dy)
    _close(c1.grad, c2.grad, 1e-6, "grad c")
    # Parameters only: the recomputation updates the running statistics a second time.
    for got, want in ((norm, twin_norm), (attention, twin_attention)):
        for (name, p), q in zip(got.named_parameters(), want.parameters(), strict=True):
            _close(p.grad, q.grad, 1e-6, f"grad {name}")


@pytest.mark.parametrize("both", [False, True])
def test_running_out_of_memory_while_measuring(monkeypatch, both):
    """Measuring runs a block while the outer forward holds its tensors: if the formulas run out
    of memory there, the kernels (which keep less) are chosen, also when neither could be timed.
    Other errors of the formulas are the caller's and propagate."""
    from visattn.functional import fused

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("out of memory (test)")

    monkeypatch.setattr(fused, "_squeeze_excite", oom)
    if both:
        monkeypatch.setattr(cpu_kernels, "apply", _fails_once(cpu_kernels.apply, oom))
    layer = visattn.SqueezeExcite(16, reduction=4)
    with pytest.warns(RuntimeWarning, match="formulas: OutOfMemoryError.*use the cpu kernels"):
        y = layer(torch.randn(2, 16, 5, 6))
    assert y.shape == (2, 16, 5, 6)
    (result,) = tuning_results()
    assert result["choice"] == "cpu" and set(result["ms"]) == ({"cpu"} if not both else set())


def _fails_once(fn, failure):
    """fn, except that its first call runs failure instead (the measurement's first call)."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        return failure() if len(calls) == 1 else fn(*args, **kwargs)

    return wrapper


def test_other_errors_of_the_formulas_propagate(monkeypatch):
    from visattn.functional import fused

    def broken(*args, **kwargs):
        raise ValueError("a bug in the formulas")

    monkeypatch.setattr(fused, "_squeeze_excite", broken)
    with pytest.raises(ValueError, match="a bug in the formulas"):
        visattn.SqueezeExcite(16, reduction=4)(torch.randn(2, 16, 5, 6))
    assert tuning_results() == []


def _ddp_worker(rank: int, init: str, out: str) -> None:
    """One of two gloo processes: a residual BatchNorm + CBAM branch under DDP, measured by
    backend "auto" inside the first forward, against the same step without DDP (gradients
    averaged by hand) on the backend this process chose."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    _tune.TUNED_DEVICES = {"cpu"}
    _tune.WARMUP, _tune.REPEATS = 1, 2
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        block = nn.ModuleDict({"bn": nn.BatchNorm2d(16), "att": visattn.CBAM(16, reduction=4)})
        twin = copy.deepcopy(block)
        ddp = nn.parallel.DistributedDataParallel(_Branch(block))
        torch.manual_seed(1 + rank)
        c = torch.randn(2, 16, 5, 6)
        ddp(c).square().sum().backward()
        (result,) = tuning_results()
        with use_backend(result["choice"]):
            _Branch(twin)(c).square().sum().backward()
        worst = 0.0
        for p, q in zip(block.parameters(), twin.parameters(), strict=True):
            dist.all_reduce(q.grad)
            worst = max(worst, (p.grad - q.grad / 2).abs().max().item())
        torch.save({"worst": worst, "choice": result["choice"]}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


class _Branch(nn.Module):
    def __init__(self, block: nn.ModuleDict) -> None:
        super().__init__()
        self.block = block

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return c + batchnorm_attention(self.block["bn"], self.block["att"], c)


def test_measuring_inside_distributed_data_parallel(tmp_path):
    """Measuring calls autograd.grad inside DDP's forward: DDP's gradient hooks must see only
    the step's own backward, and every process ends with the average of the two processes'
    gradients."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "result")
    mp.spawn(_ddp_worker, args=(f"file://{tmp_path / 'init'}", out), nprocs=2, join=True)
    for rank in (0, 1):
        result = torch.load(f"{out}.{rank}")
        assert result["worst"] <= 1e-6, result
