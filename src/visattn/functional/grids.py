"""Grid generators of the Spatial Transformer (Jaderberg et al., 2015, arXiv:1506.02025, §3.2).

For every output pixel i with normalised target coordinates G_i = (x_i^t, y_i^t) the grid
generator returns the source coordinates (x_i^s, y_i^s) = T_theta(G_i) (eq. 1), in the
normalised [-1, 1] system of :func:`torch.nn.functional.affine_grid`: theta maps *output*
coordinates to *input* coordinates, x indexes the width, and ``align_corners`` (default False)
says whether -1 / 1 are the centres (True) or the outer edges (False) of the corner pixels.

Families of T_theta (the parameter vectors ``params`` that a localisation net regresses):

===================  ========  ==============================================  ================
transform            #params   matrix / mapping                                identity params
===================  ========  ==============================================  ================
translation          2         [[1, 0, tx], [0, 1, ty]]                        (0, 0)
scale_translation    3         [[s, 0, tx], [0, s, ty]]  (the paper's          (1, 0, 0)
                               "attention" transform)
rts                  4         [[s cos a, -s sin a, tx], [s sin a, s cos a,     (0, 1, 0, 0)
                               ty]]  (rotation a, isotropic scale s)
affine               6         A_theta, 2 x 3, row-major                       (1,0,0, 0,1,0)
projective           8         H = [[h0,h1,h2],[h3,h4,h5],[h6,h7,1]],          (1,0,0,0,1,0,0,0)
                               (x^s, y^s) = (H_0 g / H_2 g, H_1 g / H_2 g)
tps                  2K        thin-plate spline through K source control      the target
                               points (x_k^s, y_k^s), flattened                control points
===================  ========  ==============================================  ================

Thin-plate spline (Bookstein, 1989): with target control points P_k (a fixed uniform grid,
4 x 4 by default), radial basis U(r) = r^2 log r^2 and the (K + 3) x (K + 3) system
L = [[K, P], [P^T, 0]] (K_ij = U(|P_i - P_j|), P rows (1, x_k, y_k)), the coefficients are
[w; a] = L^{-1} [P^s; 0] and T(g) = a_0 + a_x x + a_y y + sum_k w_k U(|g - P_k|).
At P^s = P (identity params) the spline is exactly the identity.

Tests: ``tests/functional/test_functional_grids.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .._checks import check_choice, check_pair, check_tensor, describe

__all__ = ["TRANSFORMS", "affine_grid", "identity_params", "num_params", "params_to_grid",
           "params_to_matrix", "projective_grid", "rts_matrix", "scale_translation_matrix",
           "tps_control_points", "tps_grid", "tps_weights", "translation_matrix"]  # fmt: skip

TRANSFORMS = ("translation", "scale_translation", "rts", "affine", "projective", "tps")
_MATRIX_PARAMS = {"translation": 2, "scale_translation": 3, "rts": 4, "affine": 6, "projective": 8}


def _output_size(size: Sequence[int] | torch.Size | int, name: str = "size") -> tuple[int, int]:
    """Accept (N, C, H, W) like ``affine_grid``, or (H, W), or an int."""
    if isinstance(size, (tuple, list, torch.Size)) and len(size) == 4:
        return check_pair(tuple(size)[2:], name)
    return check_pair(size, name)


def _base_coordinates(
    size: tuple[int, int], align_corners: bool, device, dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised target coordinates (x^t, y^t) of an H x W output, each of shape (H, W)."""
    h, w = size

    def lin(n: int) -> torch.Tensor:
        steps = torch.arange(n, device=device, dtype=dtype)
        if align_corners:
            return (
                steps * (2 / (n - 1)) - 1 if n > 1 else torch.zeros(1, device=device, dtype=dtype)
            )
        return (2 * steps + 1) / n - 1

    ys, xs = torch.meshgrid(lin(h), lin(w), indexing="ij")
    return xs, ys


def _homogeneous_base(size, align_corners, device, dtype) -> torch.Tensor:
    xs, ys = _base_coordinates(size, align_corners, device, dtype)
    return torch.stack((xs, ys, torch.ones_like(xs)), dim=-1)  # (H, W, 3)


def affine_grid(
    theta: torch.Tensor, size: Sequence[int] | torch.Size | int, align_corners: bool = False
) -> torch.Tensor:
    """Sampling grid of an affine transform: (x^s, y^s)^T = A_theta (x^t, y^t, 1)^T (eq. 1).

    Args:
        theta: A_theta, shape (N, 2, 3).
        size: output size as (N, C, H, W) (like ``torch.nn.functional.affine_grid``), (H, W)
            or an int.
        align_corners: pixel-centre convention, see the module docstring.

    Returns:
        grid of shape (N, H, W, 2) holding (x^s, y^s), ready for ``bilinear_sample``.
    """
    check_tensor(theta, "theta", ndim=3, layout="(N, 2, 3)")
    if theta.shape[1:] != (2, 3):
        raise ValueError(f"theta: expected shape (N, 2, 3), got {tuple(theta.shape)}")
    hw = _output_size(size)
    base = _homogeneous_base(hw, align_corners, theta.device, theta.dtype)
    return torch.einsum("hwk,nck->nhwc", base, theta)


def projective_grid(
    h: torch.Tensor,
    size: Sequence[int] | torch.Size | int,
    align_corners: bool = False,
    *,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Sampling grid of a projective transform (homography, 8 free parameters).

    (x', y', w')^T = H (x^t, y^t, 1)^T and (x^s, y^s) = (x' / w', y' / w'). Where |w'| < eps
    (the horizon of the homography) w' is replaced by +-eps, keeping its sign.

    Args:
        h: H, shape (N, 3, 3) (its scale is irrelevant; ``params_to_matrix`` fixes h_33 = 1).
        size: output size as (N, C, H, W), (H, W) or an int.

    Returns:
        grid of shape (N, H, W, 2).
    """
    check_tensor(h, "h", ndim=3, layout="(N, 3, 3)")
    if h.shape[1:] != (3, 3):
        raise ValueError(f"h: expected shape (N, 3, 3), got {tuple(h.shape)}")
    hw = _output_size(size)
    base = _homogeneous_base(hw, align_corners, h.device, h.dtype)
    projected = torch.einsum("hwk,nck->nhwc", base, h)
    denom = projected[..., 2:]
    sign = torch.where(denom < 0, -1.0, 1.0).to(denom.dtype)
    denom = torch.where(denom.abs() < eps, sign * eps, denom)
    return projected[..., :2] / denom


def tps_control_points(
    grid_size: int | tuple[int, int] = (4, 4), *, device=None, dtype=None
) -> torch.Tensor:
    """Uniform target control points in [-1, 1]: shape (K, 2) with K = rows * cols, (x, y) rows."""
    rows, cols = check_pair(grid_size, "grid_size", minimum=2)
    ys, xs = torch.meshgrid(
        torch.linspace(-1, 1, rows, device=device, dtype=dtype or torch.get_default_dtype()),
        torch.linspace(-1, 1, cols, device=device, dtype=dtype or torch.get_default_dtype()),
        indexing="ij",
    )
    return torch.stack((xs.reshape(-1), ys.reshape(-1)), dim=-1)


def _tps_kernel(points_a: torch.Tensor, points_b: torch.Tensor) -> torch.Tensor:
    """U(|a - b|) = r^2 log r^2 for every pair, with U(0) = 0; shape (A, B)."""
    r2 = (points_a[:, None, :] - points_b[None, :, :]).pow(2).sum(-1)
    return r2 * torch.log(r2.clamp_min(1e-12))


def _tps_inverse_system(target: torch.Tensor) -> torch.Tensor:
    """L^{-1} for the target control points, computed in float64 for accuracy; (K + 3, K + 3)."""
    t = target.to(torch.float64)
    k = t.shape[0]
    system = torch.zeros(k + 3, k + 3, dtype=torch.float64, device=t.device)
    p = torch.cat((torch.ones(k, 1, dtype=torch.float64, device=t.device), t), dim=1)
    system[:k, :k] = _tps_kernel(t, t)
    system[:k, k:] = p
    system[k:, :k] = p.T
    return torch.linalg.inv(system)


def tps_weights(
    control_points_target: torch.Tensor,
    size: Sequence[int] | torch.Size | int,
    align_corners: bool = False,
) -> torch.Tensor:
    """Linear map from source control points to the TPS sampling grid, shape (H * W, K).

    The spline is linear in P^s: grid = B @ P^s with B = [U(|g - P_k|), 1, x, y] L^{-1}[:, :K]
    (B depends only on the target control points and the output size, so layers keep it as a
    buffer). Computed in float64 and returned in the dtype of ``control_points_target``.
    """
    check_tensor(control_points_target, "control_points_target", ndim=2, layout="(K, 2)")
    if control_points_target.shape[-1] != 2:
        raise ValueError(
            "control_points_target: expected shape (K, 2), "
            f"got {tuple(control_points_target.shape)}"
        )
    hw = _output_size(size)
    target = control_points_target.to(torch.float64)
    k = target.shape[0]
    inverse = _tps_inverse_system(target)  # (K + 3, K + 3)
    xs, ys = _base_coordinates(hw, align_corners, target.device, torch.float64)
    g = torch.stack((xs.reshape(-1), ys.reshape(-1)), dim=-1)  # (HW, 2)
    ones = torch.ones(g.shape[0], 1, dtype=torch.float64, device=g.device)
    features = torch.cat((_tps_kernel(g, target), ones, g), dim=1)  # (HW, K + 3)
    # [w; a] = L^{-1} [P^s; 0] only involves the first K columns of L^{-1}.
    return (features @ inverse[:, :k]).to(control_points_target.dtype)


def tps_grid(
    control_points_source: torch.Tensor,
    size: Sequence[int] | torch.Size | int,
    align_corners: bool = False,
    *,
    control_points_target: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sampling grid of a thin-plate spline that maps the target control points to the source ones.

    Args:
        control_points_source: P^s, shape (N, K, 2), (x, y) of the source location of each
            target control point.
        size: output size as (N, C, H, W), (H, W) or an int.
        control_points_target: P, shape (K, 2); default: the uniform 4 x 4 grid of
            :func:`tps_control_points` (K = 16, as in the paper).

    Returns:
        grid of shape (N, H, W, 2): T(g) = a_0 + a_x x + a_y y + sum_k w_k U(|g - P_k|).
    """
    check_tensor(control_points_source, "control_points_source", ndim=3, layout="(N, K, 2)")
    src = control_points_source
    if control_points_target is None:
        control_points_target = tps_control_points(device=src.device, dtype=src.dtype)
    target = control_points_target
    if src.shape[-1] != 2 or target.dim() != 2 or src.shape[1] != target.shape[0]:
        raise ValueError(
            "control_points_source: expected shape (N, K, 2) with K = "
            f"{target.shape[0]} (the number of target control points), got {tuple(src.shape)}"
        )
    hw = _output_size(size)
    weights = tps_weights(target, hw, align_corners).to(device=src.device, dtype=src.dtype)
    return torch.einsum("pk,nkc->npc", weights, src).reshape(src.shape[0], hw[0], hw[1], 2)


def translation_matrix(params: torch.Tensor) -> torch.Tensor:
    """(tx, ty), shape (N, 2) -> [[1, 0, tx], [0, 1, ty]], shape (N, 2, 3)."""
    tx, ty = params.unbind(-1)
    one, zero = torch.ones_like(tx), torch.zeros_like(tx)
    return torch.stack((one, zero, tx, zero, one, ty), dim=-1).reshape(-1, 2, 3)


def scale_translation_matrix(params: torch.Tensor) -> torch.Tensor:
    """(s, tx, ty), shape (N, 3) -> [[s, 0, tx], [0, s, ty]] (the paper's attention transform)."""
    s, tx, ty = params.unbind(-1)
    zero = torch.zeros_like(s)
    return torch.stack((s, zero, tx, zero, s, ty), dim=-1).reshape(-1, 2, 3)


def rts_matrix(params: torch.Tensor) -> torch.Tensor:
    """(angle in radians, scale, tx, ty), shape (N, 4) -> s * R(angle) with translation, (N, 2, 3)."""
    a, s, tx, ty = params.unbind(-1)
    c, sn = s * torch.cos(a), s * torch.sin(a)
    return torch.stack((c, -sn, tx, sn, c, ty), dim=-1).reshape(-1, 2, 3)


def num_params(transform: str, *, tps_grid_size: int | tuple[int, int] = (4, 4)) -> int:
    """Number of parameters the localisation net regresses for ``transform``."""
    check_choice(transform, "transform", TRANSFORMS)
    if transform == "tps":
        rows, cols = check_pair(tps_grid_size, "tps_grid_size", minimum=2)
        return 2 * rows * cols
    return _MATRIX_PARAMS[transform]


def identity_params(
    transform: str, *, tps_grid_size: int | tuple[int, int] = (4, 4), device=None, dtype=None
) -> torch.Tensor:
    """The parameter vector of the identity transform, shape (num_params,)."""
    check_choice(transform, "transform", TRANSFORMS)
    values = {
        "translation": [0.0, 0.0],
        "scale_translation": [1.0, 0.0, 0.0],
        "rts": [0.0, 1.0, 0.0, 0.0],
        "affine": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        "projective": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
    }
    if transform == "tps":
        return tps_control_points(tps_grid_size, device=device, dtype=dtype).reshape(-1)
    return torch.tensor(values[transform], device=device, dtype=dtype)


def params_to_matrix(transform: str, params: torch.Tensor) -> torch.Tensor:
    """Matrix of a matrix family: (N, 2, 3) for the affine families, (N, 3, 3) for projective."""
    check_choice(transform, "transform", tuple(_MATRIX_PARAMS))
    check_tensor(params, "params", ndim=2, layout="(N, num_params)")
    expected = _MATRIX_PARAMS[transform]
    if params.shape[1] != expected:
        raise ValueError(
            f"params: expected shape (N, {expected}) for transform {transform!r}, "
            f"got {tuple(params.shape)}"
        )
    if transform == "translation":
        return translation_matrix(params)
    if transform == "scale_translation":
        return scale_translation_matrix(params)
    if transform == "rts":
        return rts_matrix(params)
    if transform == "affine":
        return params.reshape(-1, 2, 3)
    ones = torch.ones_like(params[:, :1])
    return torch.cat((params, ones), dim=1).reshape(-1, 3, 3)


def params_to_grid(
    transform: str,
    params: torch.Tensor,
    size: Sequence[int] | torch.Size | int,
    align_corners: bool = False,
    *,
    control_points_target: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sampling grid (N, H, W, 2) for a parameter vector of any family in ``TRANSFORMS``."""
    check_choice(transform, "transform", TRANSFORMS)
    if transform == "tps":
        check_tensor(params, "params", ndim=2, layout="(N, 2K)")
        if params.shape[1] % 2:
            raise ValueError(
                f"params: expected an even number of TPS values, got {describe(params)}"
            )
        src = params.reshape(params.shape[0], -1, 2)
        if control_points_target is None:
            k = src.shape[1]
            side = math.isqrt(k)
            if side * side != k:
                raise ValueError(
                    f"params: {k} TPS control points do not form a square grid; pass "
                    "control_points_target"
                )
            control_points_target = tps_control_points(
                side, device=params.device, dtype=params.dtype
            )
        return tps_grid(src, size, align_corners, control_points_target=control_points_target)
    matrix = params_to_matrix(transform, params)
    if transform == "projective":
        return projective_grid(matrix, size, align_corners)
    return affine_grid(matrix, size, align_corners)
