"""Spatial Transformer paper networks: fcn, cnn, stfcn, stcnn (arXiv:1506.02025, Appendix A).

Implementation: ``src/visattn/models/stn_nets.py``.
"""

from __future__ import annotations

import pytest
import torch

import visattn
from visattn.functional import TRANSFORMS
from visattn.models import create_model


@pytest.mark.parametrize("size", [28, 42, 60])
@pytest.mark.parametrize("name", ["fcn", "cnn", "stfcn", "stcnn"])
def test_paper_sizes(name: str, size: int) -> None:
    model = create_model(name, num_classes=10, in_chans=1, input_size=size)
    out = model(torch.randn(2, 1, size, size))
    assert out.shape == (2, 10)
    out.sum().backward()


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_every_transform(transform: str) -> None:
    model = create_model("stcnn", num_classes=10, in_chans=1, input_size=42, transform=transform)
    assert len(model.transformers) == 1
    assert model.transformers[0].transform == transform
    x = torch.randn(1, 1, 42, 42)
    out = model(x)
    out.sum().backward()
    loc = model.transformers[0].localisation
    assert loc[-1].weight.grad is not None and loc[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["stfcn", "stcnn"])
def test_untrained_transformer_is_identity(name: str) -> None:
    """The regression layer starts at the identity transform: ST-x(x) == x-part(x)."""
    model = create_model(name, input_size=28).eval()
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(model.transform_input(x), x, atol=1e-5, rtol=0)
    ref = model.classifier(model.features(x))
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)


def test_parallel_and_series() -> None:
    x = torch.randn(2, 1, 42, 42)
    par = create_model("stcnn", input_size=42, num_transformers=2, arrangement="parallel")
    assert len(par.transformers) == 2
    assert par.features[0].in_channels == 2  # K transformer outputs concatenated
    assert par.transform_input(x).shape == (2, 2, 42, 42)
    ser = create_model(
        "stfcn", input_size=42, num_transformers=3, arrangement="series", st_output_size=21
    )
    assert len(ser.transformers) == 3
    assert ser.transformers[0].input_size == (42, 42)
    assert ser.transformers[1].input_size == (21, 21)
    assert ser.transform_input(x).shape == (2, 1, 21, 21)
    for m in (par, ser):
        m(x).sum().backward()
        for st in m.transformers:
            assert st.localisation[-1].bias.grad is not None


def test_general_channels_and_sizes() -> None:
    """Not only the paper's 1-channel inputs: e.g. 3-channel 32 x 32 and non-square inputs."""
    model = create_model("stcnn", num_classes=5, in_chans=3, input_size=32, transform="tps")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    model = create_model("stfcn", num_classes=5, in_chans=3, input_size=(24, 36))
    assert model(torch.randn(1, 3, 24, 36)).shape == (1, 5)
    model = create_model("stcnn", in_chans=3, input_size=60, st_output_size=30)
    assert model.classifier[-1].in_features == 64 * 7 * 7
    assert model(torch.randn(1, 3, 60, 60).contiguous(memory_format=torch.channels_last)).shape == (
        1,
        10,
    )


def test_cnn_with_attention() -> None:
    model = create_model("stcnn", input_size=28, attention="cbam", attention_kw={"reduction": 4})
    kinds = [type(m) for m in model.features]
    assert kinds.count(visattn.CBAM) == 2
    model(torch.randn(2, 1, 28, 28)).sum().backward()


def test_architecture_matches_docstring() -> None:
    cnn = create_model("cnn", input_size=28)
    convs = [m for m in cnn.modules() if isinstance(m, torch.nn.Conv2d)]
    pools = [m for m in cnn.modules() if isinstance(m, torch.nn.MaxPool2d)]
    linears = [m for m in cnn.modules() if isinstance(m, torch.nn.Linear)]
    assert [c.kernel_size for c in convs] == [(9, 9), (7, 7)]
    assert len(pools) == 2 and len(convs) + len(linears) == 3
    fcn = create_model("fcn", input_size=28)
    assert [m.out_features for m in fcn.modules() if isinstance(m, torch.nn.Linear)] == [
        128,
        128,
        10,
    ]


def test_errors() -> None:
    model = create_model("stcnn", input_size=42)
    with pytest.raises(ValueError, match=r"x: expected shape \(N, 1, 42, 42\)"):
        model(torch.randn(1, 1, 28, 28))
    with pytest.raises(ValueError, match="transform"):
        create_model("stcnn", transform="shear")
    with pytest.raises(ValueError, match="arrangement"):
        create_model("stcnn", num_transformers=2, arrangement="diagonal")
    with pytest.raises(ValueError, match="num_transformers"):
        create_model("stcnn", num_transformers=0)
    with pytest.raises(ValueError, match="attention: expected None for the fully connected"):
        create_model("stfcn", attention="se")
    with pytest.raises(ValueError, match="input_size"):
        create_model("cnn", input_size=3)
    with pytest.raises(ValueError, match="transform: expected a transform family"):
        create_model("cnn", num_transformers=2)
