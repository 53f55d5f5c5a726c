"""Spatial Transformer layer (Jaderberg et al., NeurIPS 2015, arXiv:1506.02025, §3).

    theta = f_loc(U)                     localisation net (§3.1), ends in a regression layer
    (x^s, y^s) = T_theta(G)              grid generator (§3.2, eq. 1), see functional/grids.py
    V = sampler(U, (x^s, y^s))           bilinear sampler (§3.3, eq. 5), functional/sampling.py

Code symbols: ``localisation`` is f_loc, ``grid_generator`` is T_theta applied to the regular
output grid G, ``bilinear_sample`` the sampler; ``theta`` is the parameter vector of the chosen
family (see ``visattn.functional.grids``).

The regression layer (the last ``nn.Linear`` of the localisation net) starts with zero weights
and the identity parameters as bias, so an untrained transformer returns its input. The
parameters and grid of the latest call are kept in ``last_theta`` / ``last_grid`` (detached;
eager mode only) and can also be observed with forward hooks on ``grid_generator`` (its input is
theta, its output the grid), which also works under ``torch.compile``.

Tests: ``tests/layers/test_layers_spatial_transformer.py``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .._checks import check_choice, check_int, check_pair, check_tensor
from ..functional.grids import (
    TRANSFORMS,
    identity_params,
    num_params,
    params_to_grid,
    tps_control_points,
    tps_weights,
)
from ..functional.sampling import PADDING_MODES, bilinear_sample

__all__ = ["GridGenerator", "SpatialTransformer", "default_localisation"]


class GridGenerator(nn.Module):
    """T_theta applied to the regular output grid: params (N, P) -> grid (N, H_out, W_out, 2).

    The grid is computed in float32 or float64, also under autocast.

    For ``"tps"`` the linear map from control points to grid (``tps_weights``) is a buffer.
    """

    def __init__(
        self,
        transform: str,
        output_size: tuple[int, int],
        *,
        align_corners: bool = False,
        tps_grid_size: int | tuple[int, int] = (4, 4),
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.transform = check_choice(transform, "transform", TRANSFORMS)
        self.output_size = check_pair(output_size, "output_size")
        self.align_corners = align_corners
        self.num_params = num_params(transform, tps_grid_size=tps_grid_size)
        if transform == "tps":
            target = tps_control_points(tps_grid_size, dtype=torch.float64)
            weights = tps_weights(target, self.output_size, align_corners)
            weights = weights.to(device=device, dtype=torch.get_default_dtype())
            self.register_buffer("tps_weights", weights, persistent=False)

    def forward(self, params: torch.Tensor) -> torch.Tensor:
        check_tensor(params, "theta", ndim=2, layout="(N, num_params)")
        if params.shape[1] != self.num_params:
            raise ValueError(
                f"theta: expected shape (N, {self.num_params}) for transform "
                f"{self.transform!r}, got {tuple(params.shape)}"
            )
        device_type = params.device.type
        if params.dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled(
            device_type
        ):
            # Grids are computed in float32 (at least): low-precision coordinates move pixels.
            with torch.autocast(device_type, enabled=False):
                return self._grid(params.float() if params.element_size() < 4 else params)
        return self._grid(params)

    def _grid(self, params: torch.Tensor) -> torch.Tensor:
        if self.transform == "tps":
            h, w = self.output_size
            src = params.reshape(params.shape[0], -1, 2)
            grid = torch.einsum("pk,nkc->npc", self.tps_weights.to(params.dtype), src)
            return grid.reshape(params.shape[0], h, w, 2)
        return params_to_grid(self.transform, params, self.output_size, self.align_corners)

    def extra_repr(self) -> str:
        return f"transform={self.transform!r}, output_size={self.output_size}"


def default_localisation(
    in_channels: int, num_outputs: int, *, hidden: int = 32, device=None, dtype=None
) -> nn.Sequential:
    """A small convolutional localisation net for any input size.

    conv7x7(in -> 8) - maxpool2 - ReLU - conv5x5(8 -> 10) - maxpool2 - ReLU - adaptive avg pool to
    4 x 4 - fc(160 -> hidden) - ReLU - fc(hidden -> num_outputs) (the regression layer).
    """
    f = {"device": device, "dtype": dtype}
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 7, padding=3, **f),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 10, 5, padding=2, **f),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(160, hidden, **f),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, num_outputs, **f),
    )


def _last_linear(module: nn.Module) -> nn.Linear | None:
    last = None
    for m in module.modules():
        if isinstance(m, nn.Linear):
            last = m
    return last


class SpatialTransformer(nn.Module):
    """Spatial Transformer: V = sample(U, T_{f_loc(U)}(G)).

    Args:
        transform: family of T_theta: ``"translation"``, ``"scale_translation"``, ``"rts"``,
            ``"affine"`` (default), ``"projective"`` or ``"tps"``.
        in_channels: C of the input U.
        input_size: (H, W) of U (an int means square); used by the default localisation net
            and as the default output size.
        localisation: any module mapping U (N, C, H, W) to theta (N, num_params). ``None``
            builds :func:`default_localisation`. In both cases, if the module's last
            ``nn.Linear`` has ``num_params`` outputs it is initialised to the identity transform
            (``init_identity=False`` leaves a given module untouched).
        output_size: (H_out, W_out) of V; default ``input_size``.
        align_corners, padding_mode: passed to the grid generator and the sampler.
        tps_grid_size: rows x cols of TPS control points (4 x 4: 16 as in the paper).

    Shape:
        input (N, C, H, W), output (N, C, H_out, W_out). ``last_theta``: (N, num_params),
        ``last_grid``: (N, H_out, W_out, 2).
    """

    #: :mod:`visattn.viz.capture` records theta and the grid (``grid_generator``'s input and
    #: output), and U and V.
    map_kind: ClassVar[str] = "stn"

    def __init__(
        self,
        transform: str = "affine",
        *,
        in_channels: int,
        input_size: int | tuple[int, int],
        localisation: nn.Module | None = None,
        output_size: int | tuple[int, int] | None = None,
        align_corners: bool = False,
        padding_mode: str = "zeros",
        tps_grid_size: int | tuple[int, int] = (4, 4),
        init_identity: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.transform = check_choice(transform, "transform", TRANSFORMS)
        self.in_channels = check_int(in_channels, "in_channels", minimum=1)
        self.input_size = check_pair(input_size, "input_size")
        self.output_size = check_pair(
            output_size if output_size is not None else self.input_size, "output_size"
        )
        if not isinstance(align_corners, bool):
            raise TypeError(f"align_corners: expected a bool, got {align_corners!r}")
        self.align_corners = align_corners
        self.padding_mode = check_choice(padding_mode, "padding_mode", PADDING_MODES)
        self.grid_generator = GridGenerator(
            transform,
            self.output_size,
            align_corners=align_corners,
            tps_grid_size=tps_grid_size,
            device=device,
        )
        self.num_params = self.grid_generator.num_params
        if localisation is None:
            localisation = default_localisation(
                in_channels, self.num_params, device=device, dtype=dtype
            )
        elif not isinstance(localisation, nn.Module):
            raise TypeError(
                f"localisation: expected an nn.Module or None, got {type(localisation).__name__}"
            )
        self.localisation = localisation
        identity = identity_params(transform, tps_grid_size=tps_grid_size)
        regression = _last_linear(localisation)
        if init_identity and regression is not None and regression.out_features == self.num_params:
            with torch.no_grad():
                regression.weight.zero_()
                if regression.bias is not None:
                    regression.bias.copy_(identity)
        self.last_theta: torch.Tensor | None = None
        self.last_grid: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", ndim=4, layout="(N, C, H, W)")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected {self.in_channels} channels, got shape {tuple(x.shape)}")
        theta = self.localisation(x)
        if (
            not isinstance(theta, torch.Tensor)
            or theta.shape[:1] != x.shape[:1]
            or (theta[0].numel() != self.num_params)
        ):
            got = tuple(theta.shape) if isinstance(theta, torch.Tensor) else type(theta).__name__
            raise ValueError(
                f"localisation: expected an output of shape ({x.shape[0]}, {self.num_params}) "
                f"for transform {self.transform!r}, got {got}"
            )
        theta = theta.reshape(x.shape[0], self.num_params)  # e.g. (N, 2, 3) -> (N, 6)
        grid = self.grid_generator(theta)
        if not (torch.compiler.is_compiling() or torch.jit.is_tracing()):
            self.last_theta = theta.detach()
            self.last_grid = grid.detach()
        return bilinear_sample(
            x, grid, align_corners=self.align_corners, padding_mode=self.padding_mode
        )

    def extra_repr(self) -> str:
        return (
            f"transform={self.transform!r}, in_channels={self.in_channels}, "
            f"input_size={self.input_size}, output_size={self.output_size}, "
            f"align_corners={self.align_corners}, padding_mode={self.padding_mode!r}"
        )
