"""Tests of visattn.viz.mechanisms: every map kind reduced to a picture (positions or gates)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from visattn.viz import AttentionMaps, channel_gates, plot_attention_summary, position_maps


def test_position_maps_reduce_each_kind():
    """spatial as recorded; mixed: mean over C; residual: L2 norm over C; both min-max scaled
    per image to [0, 1] (a constant map: 0.5)."""
    n, c, h, w = 3, 4, 5, 7
    spatial = torch.rand(n, 1, h, w)
    mixed = torch.rand(n, c, h, w)
    residual = torch.randn(n, c, h, w)
    residual[2] = 1.0  # constant norm over positions
    maps = AttentionMaps(spatial={"s": spatial}, mixed={"m": mixed}, residual={"r": residual})
    got = position_maps(maps)
    assert list(got) == ["s", "m", "r"]
    assert got["s"] is spatial
    mean = mixed.mean(1, keepdim=True)
    lo = mean.amin((1, 2, 3), keepdim=True)
    hi = mean.amax((1, 2, 3), keepdim=True)
    torch.testing.assert_close(got["m"], (mean - lo) / (hi - lo))
    norm = residual.norm(dim=1, keepdim=True)
    lo, hi = norm[:2].amin((1, 2, 3), keepdim=True), norm[:2].amax((1, 2, 3), keepdim=True)
    torch.testing.assert_close(got["r"][:2], (norm[:2] - lo) / (hi - lo))
    assert torch.equal(got["r"][2], torch.full((1, h, w), 0.5))


def test_channel_gates_take_gates_and_the_largest_kernel_weight():
    se, ch = torch.rand(3, 8), torch.rand(3, 8)
    sel = torch.rand(3, 2, 8).softmax(1)
    got = channel_gates(AttentionMaps(se={"a": se}, channel={"b": ch}, select={"k": sel}))
    assert got["a"] is se and got["b"] is ch
    assert torch.equal(got["k"], sel[:, 1])


@pytest.mark.parametrize("kind", ["mixed", "residual", "channel", "select"])
def test_plot_attention_summary_draws_every_kind(tmp_path, kind):
    n = 5
    images = torch.rand(n, 1, 12, 12)
    labels = torch.tensor([0, 1, 2, 0, 1])
    tensor = {
        "mixed": torch.rand(n, 4, 6, 6),
        "residual": torch.randn(n, 4, 6, 6),
        "channel": torch.rand(n, 4),
        "select": torch.rand(n, 2, 4).softmax(1),
    }[kind]
    maps = AttentionMaps(**{kind: {"layer": tensor}})
    path, caption = plot_attention_summary(maps, images, labels, tmp_path / "f.png",
                                           mechanism="CNN+X")  # fmt: skip
    assert path.is_file() and Image.open(path).size[0] > 100
    assert caption.startswith("CNN+X: ")
    assert ("largest kernel" in caption) == (kind == "select")


def test_plot_attention_summary_refuses_empty_maps(tmp_path):
    with pytest.raises(ValueError, match=r"maps: expected recorded attention of 'CNN\+X'"):
        plot_attention_summary(AttentionMaps(), torch.rand(2, 1, 8, 8), [0, 1],
                               tmp_path / "f.png", mechanism="CNN+X")  # fmt: skip
    assert not (tmp_path / "f.png").exists()


@pytest.mark.parametrize(("kind", "word"), [("spatial", "suppressed"), ("mixed", "relative")])
def test_the_colour_bar_says_when_maps_are_scaled(monkeypatch, tmp_path, kind, word):
    """A gate's value is drawn as such (spatial maps); min-max scaled maps (mixed, residual) are
    labelled as relative weights."""
    from visattn.viz import mechanisms

    seen = {}
    monkeypatch.setattr(mechanisms, "plot_spatial_attention",
                        lambda *a, **kw: seen.update(kw))  # fmt: skip
    shape = (2, 1, 6, 6) if kind == "spatial" else (2, 3, 6, 6)
    maps = AttentionMaps(**{kind: {"layer": torch.rand(shape)}})
    plot_attention_summary(maps, torch.rand(2, 1, 12, 12), [0, 1], tmp_path / "f.png",
                           mechanism="m")  # fmt: skip
    assert word in seen["colorbar_label"]
