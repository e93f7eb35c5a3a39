"""The column sweep one column at a time, for the Learn page (and for teaching).

`walkthrough` runs the real solver (`quantize_matrix`) with blocksize 1 and
records the matrix after every column: which column was just rounded, the error
it pushed onto the later columns, and the running loss. Nothing here is a second
implementation of the sweep, so what a student steps through is what the
pipeline runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import QuantConfig
from .solver import MatrixResult, quantize_matrix


@dataclass
class Step:
    column: int  # the column just quantized; -1 before the first
    current: torch.Tensor  # rows x cols: final values of columns <= column, updated weights of the later ones
    pushed: torch.Tensor  # rows x cols: what this step added to the later columns (zero elsewhere)
    loss: float  # running loss: sum over columns <= column of (w - q)^2 / U_jj^2


@dataclass
class Walkthrough:
    method: str
    W: torch.Tensor  # the original matrix (float32)
    mask: torch.Tensor  # reserved weights (all False for GPTQ)
    scores: torch.Tensor  # SEPTQ importance (the same for GPTQ, where nothing is reserved)
    steps: list[Step]  # cols + 1 states: the start, then one per column
    result: MatrixResult


def walkthrough(W: torch.Tensor, H: torch.Tensor, cfg: QuantConfig) -> Walkthrough:
    """Every state of the sweep of cfg.method ("gptq" or "septq") on a small matrix."""
    if cfg.method not in ("gptq", "septq"):
        raise ValueError("The sweep exists for GPTQ and SEPTQ; RTN rounds every weight at once.")
    if W.numel() > 256 * 256:
        raise ValueError(f"The walkthrough keeps a copy of W per column: use at most 256 x 256 (got "
                         f"{W.shape[0]} x {W.shape[1]}).")
    cfg = cfg.replace(blocksize=1, act_order=False)  # one column per step, in the natural order
    W = W.detach().float().cpu()
    steps = [Step(-1, W.clone(), torch.zeros_like(W), 0.0)]

    def record(end, Q, Wcur, row_loss):
        current = torch.cat([Q[:, :end], Wcur[:, end:]], 1)
        pushed = torch.zeros_like(current)
        pushed[:, end:] = current[:, end:] - steps[-1].current[:, end:]
        steps.append(Step(end - 1, current, pushed, float(row_loss.sum())))

    res = quantize_matrix(W, H.float().cpu(), cfg, observe=record)
    return Walkthrough(cfg.method, W, res.mask, res.scores, steps, res)


def demo_problem(rows: int = 16, cols: int = 24, seed: int = 0, tokens: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """A small random W and the H of random inputs, with the structure of real layers:
    a few input channels carry much larger activations, and a few weights are outliers."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g) * 0.1
    outliers = torch.randint(0, rows * cols, (max(1, rows * cols // 100),), generator=g)
    W.view(-1)[outliers] *= 8
    X = torch.randn(tokens, cols, generator=g)
    heavy = torch.randperm(cols, generator=g)[: max(1, cols // 8)]
    X[:, heavy] *= 6
    return W, 2 * X.t() @ X / tokens
