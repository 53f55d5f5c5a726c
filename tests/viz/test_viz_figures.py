"""Tests of the figure functions in visattn.viz.figures on tiny models and tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from visattn.viz import (
    capture,
    grad_cam,
    plot_confusion_matrix,
    plot_gradcam,
    plot_hardest_examples,
    plot_overlay,
    plot_se_excitation,
    plot_spatial_attention,
    plot_stn,
    plot_training_curves,
)


def _check_png(path, min_w=300, min_h=180):
    """A real PNG of a sensible size that is not a blank page; returns (width, height)."""
    assert path.is_file() and path.suffix == ".png"
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        arr = np.asarray(im.convert("L"), dtype=np.float32)
    assert min_w <= w <= 3000 and min_h <= h <= 3000, (w, h)
    assert arr.std() > 5  # something is drawn
    assert not list(path.parent.glob(".tmp-*"))  # written atomically
    return w, h


@pytest.mark.parametrize("n", [1, 4])
def test_stn_figure(tiny_net, tmp_path, n):
    model = tiny_net("stn").eval()
    with torch.no_grad():
        model.stn.localisation[-1].bias.copy_(torch.tensor([0.8, 0.3, 0.1, -0.3, 0.8, 0.0]))
    x = torch.randn(n, 1, 12, 12)
    maps = capture(model, x)
    with torch.no_grad():
        v = model.stn(x)
    p = plot_stn(x, v, maps.grid["stn"], tmp_path / "stn.png", labels=torch.zeros(n, dtype=int))
    w, _h = _check_png(p)
    assert w >= 150 * n  # one column per image


def test_stn_figure_rgb_and_errors(tmp_path):
    x = torch.rand(2, 3, 10, 14)
    grid = torch.rand(2, 5, 5, 2) * 2 - 1
    _check_png(plot_stn(x, torch.rand(2, 3, 5, 5), grid, tmp_path / "a.png"))
    with pytest.raises(ValueError, match="outputs, grids"):
        plot_stn(x, x, grid[:1], tmp_path / "b.png")
    with pytest.raises(ValueError, match="inputs: expected 1 or 3 channels"):
        plot_stn(torch.rand(2, 2, 4, 4), x, grid, tmp_path / "c.png")
    assert not (tmp_path / "b.png").exists()


def test_spatial_attention_sizes_grow_with_layers_and_images(tiny_net, tmp_path):
    model = tiny_net("cbam").eval()
    x = torch.randn(3, 1, 12, 12)
    maps = capture(model, x).spatial
    w2, h3 = _check_png(plot_spatial_attention(x, maps, tmp_path / "a.png"))
    w1, h1 = _check_png(
        plot_spatial_attention(
            x[:1], {"attn1.spatial": maps["attn1.spatial"][:1]}, tmp_path / "b.png"
        )
    )
    assert w2 > w1 and h3 > h1
    with pytest.raises(ValueError, match="maps"):
        plot_spatial_attention(x, {}, tmp_path / "c.png")


@pytest.mark.parametrize("classes", [1, 3])
def test_se_excitation(tiny_net, tmp_path, classes):
    model = tiny_net("se").eval()
    x = torch.randn(6, 1, 12, 12)
    labels = torch.randint(0, classes, (6,))
    gates = capture(model, x).se
    _check_png(plot_se_excitation(gates, labels, tmp_path / "se.png", class_names=["a", "b", "c"]))
    with pytest.raises(ValueError, match="rows"):
        plot_se_excitation(gates, labels[:2], tmp_path / "bad.png")


@pytest.mark.parametrize("n", [1, 3])
def test_gradcam_figure(tiny_net, tmp_path, n):
    x = torch.randn(n, 1, 12, 12)
    labels = torch.randint(0, 3, (n,))
    cams, preds = {}, {}
    for attn in ("baseline", "se", "cbam"):
        model = tiny_net(None if attn == "baseline" else attn).eval()
        cams[attn], logits = grad_cam(model, x)
        preds[attn] = logits.argmax(1)
    w, _ = _check_png(plot_gradcam(x, cams, tmp_path / "gc.png", labels=labels, preds=preds))
    assert w > 4 * 150


def test_confusion_matrix(tmp_path):
    t = torch.randint(0, 10, (50,))
    _check_png(plot_confusion_matrix(t, t.roll(1), tmp_path / "cm.png"))
    _check_png(plot_confusion_matrix([0], [0], tmp_path / "one.png", class_names=["only"]))
    with pytest.raises(ValueError, match="targets, preds"):
        plot_confusion_matrix([0, 1], [0], tmp_path / "bad.png")


def test_hardest_examples(tmp_path):
    x = torch.rand(7, 1, 9, 9)
    t = torch.randint(0, 3, (7,))
    probs = torch.rand(7, 3).softmax(1)
    _check_png(plot_hardest_examples(x, t, probs, tmp_path / "h.png", k=4))
    right = torch.nn.functional.one_hot(t[:1], 3).float()
    _check_png(plot_hardest_examples(x[:1], t[:1], right, tmp_path / "none.png"), min_w=200)
    with pytest.raises(ValueError, match="probs"):
        plot_hardest_examples(x, t, probs[:2], tmp_path / "bad.png")


def test_training_curves(tmp_path):
    recs = [
        {"epoch": e, "train_loss": 2 / (e + 1), "val_loss": 2.2 / (e + 1), "val_acc": e / 5}
        for e in range(1, 4)
    ]
    _check_png(plot_training_curves({"cnn": recs, "se": recs[:1]}, tmp_path / "c.png"))
    _check_png(plot_training_curves({"x": [{"step": 1, "loss": 1.0}]}, tmp_path / "d.png"))
    with pytest.raises(ValueError, match="histories"):
        plot_training_curves({}, tmp_path / "e.png")


def test_overlay(tmp_path):
    _check_png(plot_overlay(torch.rand(3, 20, 30), torch.rand(5, 5), tmp_path / "o.png"))
