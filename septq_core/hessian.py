"""Collecting H = (2 / n_seq) * sum_t x_t x_t^T from a layer's calibration inputs."""

from __future__ import annotations

import math

import torch


class Hessian:
    """Running mean over calibration sequences, float32, cols x cols (ALGORITHM.md "Notation")."""

    def __init__(self, cols: int, device: torch.device | str = "cpu"):
        self.H = torch.zeros(cols, cols, device=device, dtype=torch.float32)
        self.nsamples = 0

    def add_batch(self, inp: torch.Tensor, n_seq: int | None = None) -> None:
        """`inp`: (sequences, tokens, cols), or (tokens, cols) for one sequence.

        `n_seq` overrides the count of sequences, for layers that see a batch
        flattened to (sequences * tokens, cols), such as OPT's fc1 and fc2."""
        if n_seq is None:
            n_seq = 1 if inp.dim() == 2 else inp.shape[0]
        x = inp.reshape(-1, inp.shape[-1]).to(self.H.device, torch.float32)
        self.H *= self.nsamples / (self.nsamples + n_seq)
        self.nsamples += n_seq
        x = math.sqrt(2 / self.nsamples) * x
        self.H.addmm_(x.t(), x)
