"""The uniform quantization grid of ALGORITHM.md step 4.

One grid per output row (or per row and group of columns): `maxq = 2^bits - 1`,
range always containing 0, `scale = (xmax - xmin) / maxq`,
`zero = round(-xmin / scale)`, `q = clamp(round(x / scale) + zero, 0, maxq)`,
value `scale * (q - zero)`.
"""

from __future__ import annotations

import torch

MSE_NORM = 2.4  # exponent of the error the shrink search minimises
MSE_STEPS = 100  # shrink factors 1 - i/100 ...
MSE_MAX_SHRINK = 0.8  # ... for i < 80


def fit_grid(x: torch.Tensor, bits: int, sym: bool = False, mse: bool = False):
    """Fit one grid per row of `x` (rows x n). Returns (scale, zero), each rows x 1."""
    maxq = 2**bits - 1
    x = x.float()
    zeros = torch.zeros(x.shape[0], device=x.device)
    xmin = torch.minimum(x.min(dim=1).values, zeros)
    xmax = torch.maximum(x.max(dim=1).values, zeros)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    empty = (xmin == 0) & (xmax == 0)  # an all-zero row: any grid is exact
    xmin = torch.where(empty, -1.0, xmin)
    xmax = torch.where(empty, 1.0, xmax)

    scale, zero = _scale_zero(xmin, xmax, maxq, sym)
    if mse:
        best = torch.full_like(scale, float("inf"))
        buf = torch.empty_like(x)
        for i in range(int(MSE_MAX_SHRINK * MSE_STEPS)):
            p = 1 - i / MSE_STEPS
            scale1, zero1 = _scale_zero(p * xmin, p * xmax, maxq, sym)
            # in place: one buffer instead of ten fresh full-size tensors per candidate
            buf = torch.div(x, scale1[:, None], out=buf).round_().add_(zero1[:, None]).clamp_(0, maxq)
            err = buf.sub_(zero1[:, None]).mul_(scale1[:, None]).sub_(x).abs_().pow_(MSE_NORM).sum(1)
            better = err < best
            best = torch.where(better, err, best)
            scale = torch.where(better, scale1, scale)
            zero = torch.where(better, zero1, zero)
    return scale[:, None], zero[:, None]


def _scale_zero(xmin, xmax, maxq, sym):
    scale = (xmax - xmin) / maxq
    if sym:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale)
    return scale, zero


def codes(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Integer grid index of each element (float tensor holding integers)."""
    return torch.clamp(torch.round(x / scale) + zero, 0, maxq)


def dequantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Round `x` to the nearest grid value."""
    return scale * (codes(x, scale, zero, maxq) - zero)


def fit_group_grids(W: torch.Tensor, bits: int, group_size: int | None, sym: bool, mse: bool):
    """Grids for every row and group of W, fitted on W as given.

    Returns (scale, zero) of shape rows x n_groups (n_groups = 1 without groups)."""
    if group_size is None:
        return fit_grid(W, bits, sym, mse)
    scales, zeros = [], []
    for start in range(0, W.shape[1], group_size):
        s, z = fit_grid(W[:, start : start + group_size], bits, sym, mse)
        scales.append(s)
        zeros.append(z)
    return torch.cat(scales, 1), torch.cat(zeros, 1)


def expand_groups(t: torch.Tensor, cols: int, group_size: int | None) -> torch.Tensor:
    """Per-group values (rows x n_groups) repeated to one per column (rows x cols)."""
    if group_size is None:
        return t.expand(-1, cols)
    return t.repeat_interleave(group_size, dim=1)[:, :cols]


def rtn(W: torch.Tensor, bits: int, group_size: int | None = None, sym: bool = False, mse: bool = False):
    """Plain round-to-nearest of W on grids fitted to W. Returns (Q, scale, zero)."""
    maxq = 2**bits - 1
    W = W.float()
    scale, zero = fit_group_grids(W, bits, group_size, sym, mse)
    Q = dequantize(W, expand_groups(scale, W.shape[1], group_size), expand_groups(zero, W.shape[1], group_size), maxq)
    return Q, scale, zero
