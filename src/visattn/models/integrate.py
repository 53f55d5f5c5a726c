"""``add_attention``: put SE / CBAM / any registered attention into a network you already have.

Where: into every residual block of torchvision, timm and visattn ResNets (the SE paper's
"standard" slot, before the residual sum, or another placement of ``visattn.models.PLACEMENTS``),
or after every convolution stage of a plain sequential CNN (VGG style: an ``nn.Sequential`` of
``Conv2d`` / BatchNorm / activation layers, a stage ending at a pooling layer, a
``Flatten`` / ``Linear`` or the end of the Sequential).

How the output is preserved (``preserve_output=True``): the inserted attention A_theta
(SE: A(x) = x * sigma(W_2 ReLU(W_1 pool(x))), Hu et al., arXiv:1709.01507; CBAM: Woo et al.,
arXiv:1807.06521) is wrapped as the *delta* form

    y = x + (A_theta(x) - A_theta0(x))                                        (PreservedAttention)

where theta0 is a frozen copy (buffers, not parameters) of A's freshly initialised parameters.
At insertion theta = theta0, so A_theta(x) - A_theta0(x) is exactly zero (the same computation
twice) and y = x: the network computes exactly what it computed before. The Jacobian of the new
block w.r.t. x is I + J_theta - J_theta0 = I, so even the gradients of the pretrained weights are
unchanged, while dy/dtheta = dA_theta(x)/dtheta is the ordinary, non-zero gradient of the
attention block: every new parameter learns from the first step. (A scalar gate
y = x + alpha (A(x) - x) with alpha = 0 would give dy/dtheta = 0 for all of A's own parameters.)
For gating attention (SE, CBAM) the block stays a gate: y = x * (1 + s_theta(x) - s_theta0(x)).
A parameter-free mechanism (SimAM) gets a scalar gate alpha = 0 instead (see
:class:`PreservedAttention`). A convolution replacement (Selective Kernel, map kind ``"select"``)
is refused: it cannot be inserted next to a convolution, only built into the network.

The model is modified in place and returned; ``model.visattn_report`` holds an
:class:`AttentionReport` (which module went where). Parameter names of the original network do
not change, so its checkpoints still load with ``strict=False`` (only the new ``se`` entries are
missing), and torchvision blocks are converted into visattn blocks that own the same layers.

Tests: ``tests/models/test_models_add_attention.py``.
"""

from __future__ import annotations

import copy
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._checks import check_choice
from ..layers import CBAM, ChannelAttention, SpatialAttention, SqueezeExcite
from ..layers._common import MAP_KINDS, map_kind
from ..layers.registry import create_attention
from .resnet import PLACEMENTS, BasicBlock, Bottleneck, _Block

__all__ = ["AttentionReport", "Insertion", "PreservedAttention", "add_attention"]

_POOLS = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.LPPool2d,
    nn.FractionalMaxPool2d,
)
_HEAD = (nn.Flatten, nn.Linear)


def _frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters are buffers (saved, moved, never trained)."""
    ref = copy.deepcopy(module)
    for m in ref.modules():
        for name in list(m._parameters):
            p = m._parameters.pop(name)
            m.register_buffer(name, None if p is None else p.detach().clone())
    return ref


class PreservedAttention(nn.Module):
    """y = x + (A_theta(x) - A_theta0(x)), theta0 a frozen copy of theta at construction.

    At construction y == x exactly, and every parameter of ``attention`` gets its ordinary
    gradient dA_theta(x)/dtheta. ``attention`` must map (N, C, H, W) to the same shape.

    A parameter-free mechanism (SimAM, gather-excite theta-minus) has no theta to learn, so the
    delta form would stay zero for ever; it gets a scalar gate instead,
    y = x + alpha (A(x) - x) with alpha = 0 at construction (``alpha``, trainable): the output
    is preserved, and dy/dalpha = A(x) - x lets the network take the mechanism in.

    Attributes:
        attention: A_theta (trainable).
        reference: A_theta0 (its parameters stored as buffers); None for a parameter-free A.
        alpha: the scalar gate of a parameter-free A (None otherwise).
    """

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        if not isinstance(attention, nn.Module):
            raise TypeError(f"attention: expected an nn.Module, got {type(attention).__name__}")
        self.attention = attention
        like = next(iter(attention.buffers()), None)
        if any(True for _ in attention.parameters()):
            self.reference, self.alpha = _frozen_copy(attention), None
        else:
            self.reference = None
            f = {} if like is None else {"device": like.device, "dtype": like.dtype}
            self.alpha = nn.Parameter(torch.zeros((), **f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.alpha is not None:
            return x + self.alpha * (self.attention(x) - x)
        return x + (self.attention(x) - self.reference(x))


_ATTENTION_TYPES = (SqueezeExcite, CBAM, ChannelAttention, SpatialAttention, PreservedAttention)


@dataclass(frozen=True)
class Insertion:
    """One inserted attention module.

    Attributes:
        path: qualified name of the new module in the model (e.g. ``"layer1.0.se"``).
        host: qualified name of the block / Sequential that received it.
        host_type: class name of the host as found (e.g. ``"torchvision...Bottleneck"``).
        channels: C of the tensors it sees.
        stage: 1-based stage number (ResNet ``layerK``, or the k-th stage of a Sequential).
    """

    path: str
    host: str
    host_type: str
    channels: int
    stage: int | None


@dataclass(frozen=True)
class AttentionReport:
    """What :func:`add_attention` inserted where."""

    kind: str
    preserve_output: bool
    placement: str
    insertions: tuple[Insertion, ...]
    num_params: int

    def __len__(self) -> int:
        return len(self.insertions)

    def __str__(self) -> str:
        lines = [
            f"add_attention({self.kind!r}, preserve_output={self.preserve_output}, "
            f"placement={self.placement!r}): {len(self.insertions)} modules, "
            f"{self.num_params:,} new parameters"
        ]
        for ins in self.insertions:
            lines.append(
                f"  {ins.path:<32} C={ins.channels:<5} stage={ins.stage}  in {ins.host_type}"
            )
        return "\n".join(lines)


def _block_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(torchvision blocks, timm blocks) among the modules already imported."""
    tv, tm = (), ()
    mod = sys.modules.get("torchvision.models.resnet")
    if mod is not None:
        tv = (mod.BasicBlock, mod.Bottleneck)
    mod = sys.modules.get("timm.models.resnet")
    if mod is not None:
        tm = (mod.BasicBlock, mod.Bottleneck)
    return tv, tm


def _qualname(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def _stage_of(name: str) -> int | None:
    for part in name.split("."):
        if part.startswith("layer") and part[5:].isdigit():
            return int(part[5:])
    return None


def _get_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def _reference_tensor(module: nn.Module) -> torch.Tensor | None:
    for p in module.parameters():
        return p
    for b in module.buffers():
        return b
    return None


class _Builder:
    def __init__(self, kind, preserve_output: bool, kw: dict[str, Any]) -> None:
        self.kind, self.preserve_output, self.kw = kind, preserve_output, kw

    def __call__(self, channels: int, like: nn.Module) -> nn.Module:
        if isinstance(self.kind, str):
            att = create_attention(self.kind, channels, **self.kw)
        else:
            att = self.kind(channels, **self.kw)
            if not isinstance(att, nn.Module):
                raise TypeError(
                    f"kind: expected the factory to return an nn.Module, got {type(att).__name__}"
                )
        if map_kind(att) == "select":
            raise ValueError(
                f"kind: {self.kind!r} is a convolution replacement (its layer selects between "
                "convolution branches, map kind 'select'); add_attention inserts modules next to "
                "the network's convolutions and cannot replace them: build the network with it "
                "instead (e.g. visattn.create_model('skresnet50'))"
            )
        if self.preserve_output:
            att = PreservedAttention(att)
        ref = _reference_tensor(like)
        if ref is not None:
            att = att.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
        att.train(like.training)
        return att


def _residual_blocks(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name, block, family) of every supported residual block, outermost first."""
    tv, tm = _block_types()
    found = []
    for name, m in model.named_modules():
        if isinstance(m, _Block):
            found.append((name, m, "visattn"))
        elif tv and isinstance(m, tv):
            found.append((name, m, "torchvision"))
        elif tm and isinstance(m, tm):
            found.append((name, m, "timm"))
    return found


def _out_channels(block: nn.Module) -> int:
    last = block.conv3 if hasattr(block, "conv3") else block.conv2
    return last.out_channels


def _plan_residual(model, blocks, build, placement, stages) -> list[tuple[Insertion, Any]]:
    """Check every block and build its module; return (insertion, apply) pairs, touching nothing."""
    plan = []
    for name, block, family in blocks:
        stage = _stage_of(name)
        if stages is not None and stage not in stages:
            continue
        existing = getattr(block, "se", None)
        if existing is not None:
            raise ValueError(
                f"model: block {name!r} ({_qualname(type(block))}) already has an attention "
                f"module ({type(existing).__name__} at '{name}.se'); add_attention only fills "
                "blocks without one (choose other stages=)"
            )
        if family == "timm" and placement != "standard":
            raise ValueError(
                f"placement: timm's blocks only have the 'standard' slot, got {placement!r}"
            )
        channels = block.conv1.in_channels if placement == "pre" else _out_channels(block)
        se = build(channels, block)

        def apply(name=name, block=block, family=family, se=se) -> None:
            if family == "torchvision":
                cls = Bottleneck if hasattr(block, "conv3") else BasicBlock
                parent, attr = _get_parent(model, name)
                setattr(parent, attr, cls.adopt(block, se=se, placement=placement))
            else:
                if family == "visattn":
                    block.placement = placement
                block.se = se

        path = f"{name}.se" if name else "se"
        plan.append((Insertion(path, name, _qualname(type(block)), channels, stage), apply))
    return plan


def _wrap(first: nn.Module, first_name: str, second: nn.Module, second_name: str) -> nn.Sequential:
    return nn.Sequential(OrderedDict([(first_name, first), (second_name, second)]))


def _holds_attention(module: nn.Module) -> bool:
    """An attention layer (a known type, or any layer that applies a map by the attention
    layers' protocol), or the wrapper that add_attention put into a Sequential."""
    return (
        isinstance(module, _ATTENTION_TYPES)
        or map_kind(module) in MAP_KINDS
        or (isinstance(module, nn.Sequential) and "se" in module._modules)
    )


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def _no_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is None and next(module.buffers(), None) is None


def _plan_sequential(
    seq_name: str, seq: nn.Sequential, build, stages
) -> list[tuple[Insertion, Any]]:
    """Plan an insertion after each convolution stage of ``seq`` that renames no parameter."""
    children = list(seq.named_children())
    channels: int | None = None
    pending = False
    stage = 0
    last_conv: nn.Module | None = None
    occupied = False  # an attention module already sits in the current stage
    plan: list[tuple[bool, int, int, int]] = []  # (occupied, end index, stage, channels)

    def end_stage(idx: int) -> None:
        nonlocal stage, pending, occupied
        if pending:
            stage += 1
            plan.append((occupied, idx, stage, channels))
        pending = occupied = False

    for idx, (child_name, child) in enumerate(children):
        if isinstance(child, nn.Conv2d):
            channels, pending, last_conv = child.out_channels, True, child
            continue
        if _holds_attention(child):
            occupied = True
            inner = child._modules.get("layer") if isinstance(child, nn.Sequential) else None
            if isinstance(inner, (*_POOLS, *_HEAD)):
                end_stage(idx)
            continue
        if isinstance(child, (*_POOLS, *_HEAD)):
            end_stage(idx)
            if isinstance(child, _HEAD):
                break
            continue
        if isinstance(child, nn.Sequential) and _has_conv(child):
            # A nested stage container: it gets its own insertions (it is planned separately).
            convs = [m for m in child.modules() if isinstance(m, nn.Conv2d)]
            channels, pending, last_conv = convs[-1].out_channels, False, convs[-1]
            continue
        if _has_conv(child):
            raise ValueError(
                f"model: add_attention does not understand the module {seq_name}.{child_name} "
                f"of type {_qualname(type(child))} (it contains convolutions but is not a "
                "supported residual block, nn.Sequential of layers or Conv2d)"
            )
        # BatchNorm, activations, dropout, ...: part of the current stage.
    else:
        end_stage(len(children))
    # Apply from the back so indices stay valid; existing names never change.
    prefix = f"{seq_name}." if seq_name else ""
    out = []
    for occupied, idx, st, ch in reversed(plan):
        if stages is not None and st not in stages:
            continue
        if occupied:
            raise ValueError(
                f"model: stage {st} of {seq_name or 'the model'} ({_qualname(type(seq))}) already "
                "has an attention module; add_attention only fills stages without one (choose "
                "other stages=)"
            )
        att = build(ch, last_conv if last_conv is not None else seq)
        if idx < len(children) and _no_params(children[idx][1]):
            name, nxt = children[idx]

            def apply(name=name, nxt=nxt, att=att) -> None:
                setattr(seq, name, _wrap(att, "se", nxt, "layer"))

            path = f"{prefix}{name}.se"
        elif idx > 0 and _no_params(children[idx - 1][1]):
            name, prev = children[idx - 1]

            def apply(name=name, prev=prev, att=att) -> None:
                setattr(seq, name, _wrap(prev, "layer", att, "se"))

            path = f"{prefix}{name}.se"
        elif idx == len(children):
            name = str(len(seq)) if all(n.isdigit() for n, _ in children) else f"se{st}"

            def apply(name=name, att=att) -> None:
                seq.add_module(name, att)

            path = f"{prefix}{name}"
        else:
            raise ValueError(
                f"model: cannot insert attention after stage {st} of {seq_name or 'model'} "
                f"without renaming parameters: {children[idx - 1][0]} and "
                f"{children[idx][0]} both hold parameters"
            )
        out.append((Insertion(path, seq_name, _qualname(type(seq)), ch, st), apply))
    return out[::-1]


def add_attention(
    model: nn.Module,
    kind: str | Callable[..., nn.Module],
    *,
    preserve_output: bool = True,
    placement: str = "standard",
    stages: Sequence[int] | None = None,
    **kw: Any,
) -> nn.Module:
    """Insert attention ``kind`` into every residual block / after every conv stage of ``model``.

    Args:
        model: a torchvision or timm ResNet (any model built from their ``BasicBlock`` /
            ``Bottleneck``, e.g. ResNeXt / Wide ResNet), a visattn ResNet, or a plain sequential
            CNN (any model whose convolutions sit directly in ``nn.Sequential`` containers,
            e.g. ``torchvision.models.vgg11().features`` or the whole VGG).
        kind: attention registry name (``"se"``, ``"cbam"``, ...; ``visattn.list_attention()``)
            or a factory ``channels -> nn.Module``.
        preserve_output: wrap each module as :class:`PreservedAttention` so the network's
            output (and its gradients w.r.t. the old weights) are unchanged at insertion while
            the new parameters receive gradients. ``False`` inserts the plain modules.
        placement: slot in residual blocks: ``"standard"`` (default), ``"pre"``, ``"post"``,
            ``"identity"`` (timm blocks: only ``"standard"``).
        stages: 1-based stages to modify (ResNet ``layerK``; the k-th conv stage of each
            Sequential); default all.
        **kw: options of the attention module (e.g. ``reduction=8``).

    Returns:
        ``model`` itself, modified in place; ``model.visattn_report`` is the
        :class:`AttentionReport`.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: nothing supported found (the message names the module types that hold the
            convolutions), a block already has attention, or bad options.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(preserve_output, bool):
        raise TypeError(f"preserve_output: expected a bool, got {preserve_output!r}")
    check_choice(placement, "placement", PLACEMENTS)
    if not (isinstance(kind, str) or callable(kind)):
        raise TypeError(
            f"kind: expected an attention registry name or a factory, got {type(kind).__name__}"
        )
    if stages is not None:
        stages = tuple(stages)
        if not stages or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in stages
        ):
            raise ValueError(f"stages: expected 1-based stage numbers, got {stages!r}")
    build = _Builder(kind, preserve_output, kw)
    # Plan (check everything, build every module) first, so that an error leaves model untouched.

    blocks = _residual_blocks(model)
    if blocks:
        plan = _plan_residual(model, blocks, build, placement, stages)
    else:
        if placement != "standard":
            raise ValueError(
                f"placement: only residual blocks have placements, got {placement!r} for "
                f"{_qualname(type(model))}"
            )
        seqs = [
            (name, m)
            for name, m in model.named_modules()
            if isinstance(m, nn.Sequential) and any(isinstance(c, nn.Conv2d) for c in m.children())
        ]
        if not seqs:
            owners = sorted(
                {
                    _qualname(type(m))
                    for m in model.modules()
                    if any(isinstance(c, nn.Conv2d) for c in m.children())
                    or (m is model and isinstance(m, nn.Conv2d))
                }
            )
            if not owners:
                raise ValueError(
                    f"model: add_attention found no Conv2d layers in {_qualname(type(model))}"
                )
            raise ValueError(
                f"model: add_attention does not understand {', '.join(owners)}: it supports "
                "torchvision / timm / visattn residual blocks (BasicBlock, Bottleneck) and "
                "convolutions inside nn.Sequential containers (VGG style)"
            )
        for name, _ in seqs:
            # Convolutions inside an unknown block (an inverted residual, a dense block, ...)
            # are not a plain sequential CNN: refuse rather than guess.
            parts = name.split(".")
            for k in range(1, len(parts)):
                ancestor = model.get_submodule(".".join(parts[:k]))
                if not isinstance(ancestor, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
                    raise ValueError(
                        f"model: add_attention does not understand the module "
                        f"{'.'.join(parts[:k])} of type {_qualname(type(ancestor))} (it "
                        "contains convolutions but is not a supported residual block, "
                        "nn.Sequential of layers or Conv2d)"
                    )
        plan = []
        for name, seq in seqs:
            plan += _plan_sequential(name, seq, build, stages)
    if not plan:
        raise ValueError(f"stages: no stage of the model matches {stages!r}")
    for _, apply in plan:
        apply()
    insertions = [ins for ins, _ in plan]
    num_params = 0
    for ins in insertions:
        num_params += sum(p.numel() for p in model.get_submodule(ins.path).parameters())
    report = AttentionReport(
        kind=kind if isinstance(kind, str) else getattr(kind, "__name__", repr(kind)),
        preserve_output=preserve_output,
        placement=placement,
        insertions=tuple(insertions),
        num_params=num_params,
    )
    model.visattn_report = report
    return model
