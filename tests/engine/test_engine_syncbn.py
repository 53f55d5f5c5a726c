"""Synchronised BatchNorm (src/visattn/engine/syncbn.py): W processes with B / W images each
compute what one BatchNorm computes on all B images (output, every gradient, running
statistics); one process and evaluation mode are plain BatchNorm; the converter keeps the
parameter objects. ``train --sync-bn`` under torchrun: tests/engine/test_engine_distributed.py."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from visattn.engine import SyncBatchNorm, convert_sync_batchnorm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, seed: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(seed)
        x = torch.randn(6, 3, 5, 4, dtype=torch.float64) * 3 + 1  # the global batch, same on all
        dy = torch.randn(6, 3, 5, 4, dtype=torch.float64)
        bn = SyncBatchNorm(3, momentum=0.3).double()
        with torch.no_grad():
            bn.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
            bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        rows = slice(rank * 6 // world, (rank + 1) * 6 // world)
        xs = x[rows].clone().requires_grad_(True)
        y = bn(xs)
        y.backward(dy[rows])
        # DDP averages parameter gradients; the loss here is a sum, so the global gradient of
        # gamma and beta is the sum over processes.
        for p in (bn.weight, bn.bias):
            dist.all_reduce(p.grad)
        torch.save(
            {"y": y.detach(), "dx": xs.grad, "dw": bn.weight.grad, "db": bn.bias.grad,
             "rm": bn.running_mean, "rv": bn.running_var, "rows": rows},
            f"{out}/rank{rank}.pt",
        )  # fmt: skip
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_batchnorm_on_the_whole_batch(tmp_path, seed):
    mp.spawn(_worker, args=(2, _free_port(), seed, str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(seed)
    x = (torch.randn(6, 3, 5, 4, dtype=torch.float64) * 3 + 1).requires_grad_(True)
    dy = torch.randn(6, 3, 5, 4, dtype=torch.float64)
    bn = nn.BatchNorm2d(3, momentum=0.3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    y = bn(x)
    y.backward(dy)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        rows = got["rows"]
        torch.testing.assert_close(got["y"], y.detach()[rows])
        torch.testing.assert_close(got["dx"], x.grad[rows])
        torch.testing.assert_close(got["dw"], bn.weight.grad)
        torch.testing.assert_close(got["db"], bn.bias.grad)
        torch.testing.assert_close(got["rm"], bn.running_mean)
        torch.testing.assert_close(got["rv"], bn.running_var)


@pytest.mark.parametrize("training", [True, False])
def test_one_process_is_plain_batchnorm(training):
    ref = nn.BatchNorm2d(4, momentum=None)
    sync = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(4, momentum=None)), "cpu")[0]
    sync.load_state_dict(ref.state_dict())
    ref.train(training)
    sync.train(training)
    for _ in range(2):
        x = torch.randn(3, 4, 5, 5)
        torch.testing.assert_close(sync(x), ref(x))
    torch.testing.assert_close(sync.state_dict(), ref.state_dict())


def test_converter_keeps_parameters_and_state_dict_keys():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(4)))
    weight, mean = model[1].weight, model[1].running_mean
    keys = list(model.state_dict())
    out = convert_sync_batchnorm(model, "cpu")
    assert out is model
    assert isinstance(model[1], SyncBatchNorm) and isinstance(model[2][0], SyncBatchNorm)
    assert model[1].weight is weight and model[1].running_mean is mean
    assert list(model.state_dict()) == keys
    assert convert_sync_batchnorm(model, "cpu")[1] is model[1]  # already converted


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="input: expected at least 2-D"):
        SyncBatchNorm(3)(torch.randn(3))
