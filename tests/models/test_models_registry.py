"""Model registry: every registered model builds, runs forward and backward; bad names fail.

Implementation: ``src/visattn/models/registry.py``.
"""

from __future__ import annotations

import pytest
import torch

import visattn
import visattn.models as vm

# Small inputs per family, so the whole zoo stays fast on a CPU.
IMAGENET_SIZE = 32
ST_SIZE = 28


def _input(name: str, n: int = 2) -> torch.Tensor:
    if name in ("fcn", "cnn", "stfcn", "stcnn"):
        return torch.randn(n, 1, ST_SIZE, ST_SIZE)
    if name.endswith("_cifar"):
        return torch.randn(n, 3, 32, 32)
    return torch.randn(n, 3, IMAGENET_SIZE, IMAGENET_SIZE)


def _skip_unless_buildable(name: str) -> None:
    """Models of a mechanism that is not registered yet (``ecaresnet50d`` before ``"eca"``)."""
    needed = vm.registry._MODELS[name].fixed_attention
    if needed is not None and needed not in visattn.list_attention():
        pytest.skip(f"{name} needs attention {needed!r}, which is not registered")


def test_list_models_contents() -> None:
    names = vm.list_models()
    assert names == sorted(names)
    for depth in (18, 34, 50, 101, 152):
        assert {f"resnet{depth}", f"seresnet{depth}", f"cbam_resnet{depth}"} <= set(names)
    for name in ("resnet20_cifar", "resnet32_cifar", "resnet56_cifar", "resnet110_cifar"):
        assert name in names
    assert {"resnet50d", "resnet26t", "ecaresnet50d", "ecaresnet26t"} <= set(names)
    assert set(vm.PAPER_RESNETS) <= set(names)
    assert "bam_resnet50" in vm.PAPER_RESNETS and "nonlocal_resnet50" in vm.PAPER_RESNETS
    assert {"fcn", "cnn", "stfcn", "stcnn"} <= set(names)
    assert {"skresnet18", "skresnet34", "skresnet50", "skresnext50_32x4d"} <= set(names)
    assert vm.list_models("seresnet1*") == ["seresnet101", "seresnet152", "seresnet18"]


@pytest.mark.parametrize("name", vm.list_models())
def test_every_model_forward_backward(name: str) -> None:
    _skip_unless_buildable(name)
    num_classes = 7
    model = vm.create_model(name, num_classes=num_classes)
    x = _input(name)
    out = model(x)
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    # Batch of one in eval mode (BatchNorm uses running statistics).
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, num_classes)


@pytest.mark.parametrize("name", vm.list_models())
def test_every_model_compiles(name: str) -> None:
    """torch.compile of every registered model agrees with eager.

    Graph capture (Dynamo) and AOTAutograd run for every model with the ``aot_eager`` backend;
    Inductor's code generation costs 10-60 s per model on a 2-core CPU, so it is exercised on
    representatives in ``test_models_summary.py`` / ``test_models_stn.py``.
    """
    _skip_unless_buildable(name)
    model = vm.create_model(name, num_classes=7).eval()
    x = _input(name)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(
        ValueError, match=r"name: expected one of .*resnet50.*stcnn.*got 'resnet51'"
    ):
        vm.create_model("resnet51")
    with pytest.raises(ValueError, match="name"):
        vm.create_model(50)  # type: ignore[arg-type]


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="num_classes"):
        vm.create_model("resnet18", num_classes=2.5)
    with pytest.raises(ValueError, match="num_classes"):
        vm.create_model("resnet18", num_classes=0)
    with pytest.raises(ValueError, match="in_chans"):
        vm.create_model("resnet18", in_chans=0)
    with pytest.raises(ValueError, match="attention: 'seresnet50' always uses 'se'"):
        vm.create_model("seresnet50", attention="cbam")
    with pytest.raises(ValueError, match="name: expected one of"):
        vm.create_model("resnet18", attention="nonexistent")
    with pytest.raises(TypeError, match="attention_kw"):
        vm.create_model("resnet18", attention="se", attention_kw=[("reduction", 4)])
    with pytest.raises(ValueError, match="attention_kw"):
        vm.create_model("resnet18", attention_kw={"reduction": 4})


def test_model_of_an_unregistered_mechanism() -> None:
    """A named network whose mechanism is missing fails only when built, saying what it needs."""
    vm.register_model("_test_absent", vm.registry.imagenet_resnet, fixed_attention="_absent")
    try:
        assert "_test_absent" in vm.list_models()
        with pytest.raises(
            ValueError, match=r"name: '_test_absent' needs the attention mechanism '_absent'"
        ):
            vm.create_model("_test_absent")
    finally:
        vm.registry._MODELS.pop("_test_absent")


def test_default_num_classes_and_channels() -> None:
    assert vm.create_model("resnet18").fc.out_features == 1000
    assert vm.create_model("resnet20_cifar").fc.out_features == 10
    st = vm.create_model("stcnn")
    assert st.in_chans == 1 and st.input_size == (28, 28)
    assert vm.create_model("resnet18", in_chans=1).conv1.in_channels == 1
    # A uniform interface: every model accepts input_size (the ResNets work at any size).
    for name in ("resnet18", "resnet20_cifar", "stcnn"):
        vm.create_model(name, input_size=32)
    with pytest.raises(TypeError, match="input_size"):
        vm.create_model("resnet18", input_size="big")


def test_register_model() -> None:
    entry = vm.register_model(
        "_test_tiny", lambda **kw: torch.nn.Linear(3, kw["num_classes"]), default_num_classes=4
    )
    try:
        assert entry.name in vm.list_models()
        assert vm.create_model("_test_tiny").out_features == 4
        with pytest.raises(ValueError, match="already registered"):
            vm.register_model("_test_tiny", lambda **kw: None)
    finally:
        vm.registry._MODELS.pop("_test_tiny")
