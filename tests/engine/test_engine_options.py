"""Tests of visattn.engine.options and visattn.engine.pipeline (seeds, schedules, batches)."""

from __future__ import annotations

import math

import pytest
import torch

from visattn.data import load_dataset
from visattn.engine import Pipeline, TrainOptions, channel_stats, derive_seed, epoch_permutation
from visattn.engine.options import lr_at, validate_options


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lr", 0.0, "--lr: expected a number > 0"),
        ("lr", -1.0, "--lr: expected a number > 0"),
        ("lr", float("nan"), "--lr: expected a finite number"),
        ("batch_size", 0, "--batch-size: expected an integer >= 1"),
        ("epochs", -1, "--epochs: expected an integer >= 0"),
        ("momentum", 1.0, "--momentum"),
        ("optimizer", "adam", "--optimizer: expected one of sgd, adamw"),
        ("schedule", "linear", "--schedule"),
        ("distortion", "shear", "--distortion"),
        ("device", "tpu", "--device"),
        ("train_subset", 1.5, "--train-subset"),
    ],
)
def test_validate_rejects(field, value, message):
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        validate_options(TrainOptions(**{field: value}))


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown keys \\['colour'\\]"):
        TrainOptions.from_dict({"colour": 1})
    assert TrainOptions.from_dict(TrainOptions(lr=0.5).to_dict()).lr == 0.5


def test_schedules():
    assert lr_at("constant", 0.1, 7, 10) == 0.1
    assert lr_at("cosine", 0.1, 0, 10) == pytest.approx(0.1)
    assert lr_at("cosine", 0.1, 5, 10) == pytest.approx(0.05)
    assert lr_at("cosine", 0.1, 10, 10) == pytest.approx(0.0, abs=1e-12)
    assert [lr_at("step", 1.0, s, 8) for s in (0, 3, 4, 5, 6, 7)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )


def test_derived_seeds_and_permutations():
    assert derive_seed(1, "a", 2) == derive_seed(1, "a", 2) != derive_seed(1, "a", 3)
    assert 0 <= derive_seed(-5) < 2**63
    p = epoch_permutation(50, 3, 1)
    assert torch.equal(p, epoch_permutation(50, 3, 1)) and sorted(p.tolist()) == list(range(50))
    assert not torch.equal(p, epoch_permutation(50, 3, 2))


def test_pipeline_normalises_and_is_deterministic():
    data = load_dataset("fashion-mnist-small", "test").subset(64)
    mean, std = channel_stats(data.images)
    pipe = Pipeline(data, mean=mean, std=std, distortion="rts", distortion_seed=4, augment=True)
    idx = torch.randperm(64)[:17]
    x, y = pipe.batch(idx, augment_seed=9)
    assert x.shape == (17, 1, 42, 42) and torch.equal(y, data.labels[idx])
    x2, _ = pipe.batch(idx, augment_seed=9)
    assert torch.equal(x, x2)
    assert not torch.equal(x, pipe.batch(idx, augment_seed=10)[0])
    plain = Pipeline(data, mean=mean, std=std)
    z, _ = plain.batch(torch.arange(64))
    assert abs(float(z.mean())) < 1e-4 and float(z.std()) == pytest.approx(1, rel=1e-3)
    assert not math.isnan(float(z.sum()))


def test_augment_shift_and_flip_are_exact_pixel_moves():
    data = load_dataset("fashion-mnist-small", "test").subset(8)
    pipe = Pipeline(data, mean=[0.0], std=[1.0], augment=True)
    x, _ = pipe.batch(torch.arange(8), augment_seed=1)
    plain = data.images.float() / 255
    for i in range(8):  # every output is a shifted (and maybe flipped) copy: same pixel multiset
        kept = x[i][x[i] > 0].sort().values
        src = plain[i][plain[i] > 0].sort().values
        assert kept.numel() <= src.numel()
        assert torch.isin(kept, src).all()


def test_preprocess_matches_pipeline_and_adapts_inputs():
    from visattn.engine import preprocess

    data = load_dataset("fashion-mnist-small", "test").subset(6)
    mean, std = channel_stats(data.images)
    info = {"in_chans": 1, "input_size": 28, "mean": mean, "std": std}
    expected, _ = Pipeline(data, mean=mean, std=std).batch(torch.arange(6))
    torch.testing.assert_close(preprocess(data.images, info), expected)
    torch.testing.assert_close(preprocess(data.images[0].float() / 255, info), expected[:1])
    rgb = data.images.expand(-1, 3, -1, -1)
    torch.testing.assert_close(preprocess(rgb, info), expected, atol=1e-5, rtol=0)
    big = preprocess(
        torch.rand(2, 3, 40, 33), {**info, "in_chans": 3, "mean": [0.0] * 3, "std": [1.0] * 3}
    )
    assert big.shape == (2, 3, 28, 28)
    with pytest.raises(ValueError, match="images: expected"):
        preprocess(torch.rand(28, 28), info)
