"""ONNX export (opset 17+) of SE, CBAM and SpatialTransformer, checked with onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visattn import CBAM, SpatialTransformer, SqueezeExcite

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def export_and_run(model: torch.nn.Module, x: torch.Tensor, path) -> np.ndarray:
    model.eval()
    torch.onnx.export(
        model, (x,), str(path), opset_version=18, input_names=["x"], output_names=["y"]
    )
    onnx.checker.check_model(onnx.load(str(path)))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.numpy()})[0]


@pytest.mark.parametrize(
    "make",
    [
        lambda: SqueezeExcite(16, reduction=4),
        lambda: CBAM(16, reduction=4),
        lambda: CBAM(16, reduction=4, norm=True, order="parallel"),
    ],
    ids=["se", "cbam", "cbam_norm_parallel"],
)
def test_export_attention(make, tmp_path):
    model = make()
    x = torch.randn(2, 16, 7, 9)
    got = export_and_run(model, x, tmp_path / "m.onnx")
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("transform", ["affine", "rts", "projective", "tps"])
def test_export_spatial_transformer(transform, tmp_path):
    st = SpatialTransformer(transform, in_channels=1, input_size=(12, 10))
    with torch.no_grad():
        st.localisation[-1].bias.add_(0.05 * torch.randn(st.num_params))
    x = torch.randn(2, 1, 12, 10)
    got = export_and_run(st, x, tmp_path / "st.onnx")
    np.testing.assert_allclose(got, st(x).detach().numpy(), atol=1e-4, rtol=1e-3)
