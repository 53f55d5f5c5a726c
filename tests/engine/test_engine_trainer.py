"""Tests of visattn.engine.trainer run in-process: outputs, metrics, load_model, cleanup."""

from __future__ import annotations

import io
import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from visattn.data import load_dataset
from visattn.engine import (
    Pipeline,
    PreparedData,
    Trainer,
    TrainOptions,
    evaluate,
    load_model,
    train,
)
from visattn.engine.checkpoint import CheckpointError


def _opts(tmp_path, **kw):
    base = dict(
        model="fcn",
        epochs=2,
        batch_size=32,
        train_subset=192,
        test_subset=100,
        val_subset=64,
        quiet=True,
        out=str(tmp_path / "run"),
        device="cpu",
    )
    base.update(kw)
    return TrainOptions(**base)


def test_run_folder_contents(tmp_path):
    result = train(_opts(tmp_path, checkpoint_every=4))
    out = tmp_path / "run"
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints",
        "metrics.csv",
        "metrics.json",
        "metrics.jsonl",
        "model.safetensors",
        "options.json",
    ]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and [r["step"] for r in records] == [6, 12]
    assert all(0 <= r["val_accuracy"] <= 1 and r["train_loss"] > 0 for r in records)
    csv = (out / "metrics.csv").read_text().splitlines()
    assert csv[0].startswith("epoch,step,lr,train_loss") and len(csv) == 3
    final = json.loads((out / "metrics.json").read_text())
    for key in (
        "test_accuracy",
        "params",
        "flops_per_image",
        "train_images_per_s",
        "data_images_per_s",
    ):
        assert final[key] is not None and final[key] > 0, key
    assert final["params"] == 784 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10
    assert final["flops_per_image"] == 2 * (784 * 128 + 128 * 128 + 128 * 10)
    assert final["test_images"] == 100 and result["test_accuracy"] == final["test_accuracy"]
    assert json.loads((out / "options.json").read_text())["model"] == "fcn"
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-00000008.safetensors", "step-00000012.safetensors"]  # keep 2

    model, info = load_model(out)
    assert info["classes"][0] == "T-shirt/top" and info["input_size"] == 28
    weights = load_file(out / "model.safetensors")
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    test = load_dataset("fashion-mnist-small", "test").subset(100)
    pipe = Pipeline(test, mean=info["mean"], std=info["std"])
    assert evaluate(model, pipe)["accuracy"] == pytest.approx(final["test_accuracy"])
    # the same evaluation on images prepared in memory, with the logits
    x, y = pipe.batch(torch.arange(len(test)))
    model.train()
    prepared = evaluate(model, PreparedData(x, y), batch_size=33, logits=True)
    assert model.training  # mode restored
    assert prepared["accuracy"] == pytest.approx(final["test_accuracy"])
    with torch.no_grad():
        model.eval()
        assert torch.allclose(prepared["logits"], model(x), atol=1e-6)
    model2, _ = load_model(out / "checkpoints" / "step-00000012.safetensors")
    assert all(torch.equal(v, weights[k]) for k, v in model2.state_dict().items())


def test_bundled_subset_trains_clearly_above_chance(tmp_path):
    result = train(
        _opts(
            tmp_path,
            model="cnn",
            epochs=1,
            train_subset=2048,
            val_subset=0,
            test_subset=500,
            batch_size=64,
            lr=3e-3,
        )
    )
    assert result["test_accuracy"] > 0.5  # chance is 0.1


def test_bad_input_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"--model: expected one of .*stcnn"):
        train(_opts(tmp_path, model="vgg99"))
    with pytest.raises(ValueError, match="--batch-size: expected at most the 192"):
        train(_opts(tmp_path, batch_size=500))
    with pytest.raises(ValueError, match="--val-subset"):
        train(_opts(tmp_path, val_subset=20000))
    assert not (tmp_path / "run").exists()


def test_divergence_before_first_checkpoint_removes_run_folder(tmp_path):
    with pytest.raises(FloatingPointError, match="diverged"):
        train(_opts(tmp_path, lr=1e30, optimizer="sgd"))
    assert not (tmp_path / "run").exists()


def test_existing_out_and_resume_conflicts(tmp_path):
    train(_opts(tmp_path, epochs=1))
    with pytest.raises(ValueError, match="already exists and is not empty; pass --resume"):
        train(_opts(tmp_path, epochs=1))
    with pytest.raises(ValueError, match=r"--lr: the run in .* was started with 0.001, got 0.5"):
        train(_opts(tmp_path, resume=True, lr=0.5), explicit={"lr"})
    with pytest.raises(ValueError, match="no run"):
        train(_opts(tmp_path, resume=True, out=str(tmp_path / "none")))
    # more epochs on resume extend the run
    result = train(_opts(tmp_path, resume=True, epochs=2), explicit={"epochs"})
    assert result["steps"] == 12


def test_corrupt_checkpoint_on_resume(tmp_path):
    train(_opts(tmp_path, epochs=1))
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000006.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        train(_opts(tmp_path, resume=True, epochs=2), explicit={"epochs"})


def test_amp_channels_last_and_attention(tmp_path):
    result = train(
        _opts(
            tmp_path,
            model="cnn",
            attention="se",
            amp=True,
            channels_last=True,
            epochs=1,
            val_subset=0,
        )
    )
    assert 0 <= result["test_accuracy"] <= 1
    model, info = load_model(tmp_path / "run")
    assert info["options"]["attention"] == "se" and info["options"]["amp"] is True
    from visattn.layers import SqueezeExcite

    assert any(isinstance(m, SqueezeExcite) for m in model.modules())


class _Terminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(("tty", "quiet"), [(True, False), (False, False), (True, True)])
def test_progress_bar_only_on_a_terminal(tmp_path, monkeypatch, tty, quiet):
    stream = _Terminal(tty)
    monkeypatch.setattr(sys, "stderr", stream)
    train(_opts(tmp_path, epochs=1, val_subset=0, train_subset=64, quiet=quiet))
    text = stream.getvalue()
    has_bar = "img_s=" in text and "loss=" in text and "acc=" in text
    assert has_bar == (tty and not quiet)
    assert ("epoch 1/1: loss" in text) == (not quiet)


def test_resume_before_first_checkpoint_starts_over(tmp_path):
    ref = train(_opts(tmp_path, epochs=1, out=str(tmp_path / "ref")))
    run = tmp_path / "run"
    train(_opts(tmp_path, epochs=1))
    for ckpt in (run / "checkpoints").iterdir():  # as if killed before the first checkpoint
        ckpt.unlink()
    (run / "metrics.json").unlink()
    (run / "model.safetensors").unlink()
    again = train(TrainOptions(resume=True, out=str(run), quiet=True))
    assert again["test_accuracy"] == ref["test_accuracy"] and again["steps"] == ref["steps"]
    a, b = load_file(run / "model.safetensors"), load_file(tmp_path / "ref" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_trainer_steps_are_train(tmp_path):
    """``train`` is ``Trainer(...).run()``: the object form gives the same final weights."""
    a = train(_opts(tmp_path, out=str(tmp_path / "a"), epochs=1))
    trainer = Trainer(_opts(tmp_path, out=str(tmp_path / "b"), epochs=1))
    b = trainer.run()
    assert a["test_accuracy"] == b["test_accuracy"] and trainer.counters["global_step"] == 6
    wa, wb = (
        load_file(tmp_path / "a" / "model.safetensors"),
        load_file(trainer.out / "model.safetensors"),
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
