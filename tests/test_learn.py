"""The Learn page's walkthrough: every recorded state against an explicit-inverse loop written here."""

from __future__ import annotations

import pytest
import torch
from test_solver import damped, ref_grid, ref_q

import septq_core as sq
from septq_core.learn import demo_problem, walkthrough


def ref_states(W, H, bits, mask):
    """Column by column with an explicit inverse of the damped H; the matrix after each column."""
    W = W.double().clone()
    rows, cols = W.shape
    Hinv = torch.linalg.inv(damped(H))
    grids = [ref_grid(W[r].tolist(), bits, False, False) for r in range(rows)]
    states, losses, loss = [W.clone()], [0.0], 0.0
    for j in range(cols):
        d = Hinv[j, j]
        q = torch.tensor([W[r, j].item() if mask[r, j] else ref_q(W[r, j].item(), *grids[r], 2**bits - 1)
                          for r in range(rows)], dtype=W.dtype)
        err = (W[:, j] - q) / d
        loss += float((err**2).sum() * d)
        W[:, j:] -= err[:, None] * Hinv[j, j:][None, :]
        Hinv = Hinv - Hinv[:, j : j + 1] @ Hinv[j : j + 1, :] / d
        states.append(W.clone())
        losses.append(loss)
    return states, losses


@pytest.mark.parametrize("method", ["gptq", "septq"])
def test_every_state_equals_the_explicit_loop(method):
    W, H = demo_problem(12, 20, seed=3)
    cfg = sq.QuantConfig(method=method, bits=2, mse=False, reserve_ratio=0.05)
    wt = walkthrough(W, H, cfg)
    assert len(wt.steps) == 21 and [s.column for s in wt.steps] == list(range(-1, 20))
    states, losses = ref_states(W, H, 2, wt.mask)
    for step, ref, ref_loss in zip(wt.steps, states, losses):
        assert torch.allclose(step.current.double(), ref, atol=1e-4), step.column
        assert step.loss == pytest.approx(ref_loss, rel=1e-4, abs=1e-8)
    expected_reserved = 0 if method == "gptq" else int(0.05 * W.numel())
    assert int(wt.mask.sum()) == expected_reserved


def test_pushed_error_is_the_change_of_later_columns_only():
    W, H = demo_problem(8, 16, seed=1)
    wt = walkthrough(W, H, sq.QuantConfig(method="septq", bits=3, mse=False, reserve_ratio=0.05))
    for prev, step in zip(wt.steps, wt.steps[1:]):
        j = step.column
        assert step.pushed[:, : j + 1].abs().max() == 0
        assert torch.allclose(step.pushed[:, j + 1 :], step.current[:, j + 1 :] - prev.current[:, j + 1 :])
        assert torch.equal(step.current[:, :j], prev.current[:, :j])  # finished columns never move again


def test_last_state_is_what_the_blocked_solver_returns():
    W, H = demo_problem(16, 40, seed=2)
    cfg = sq.QuantConfig(method="septq", bits=3, group_size=8, reserve_ratio=0.02)  # mse grid, refitted groups
    wt = walkthrough(W, H, cfg)
    blocked = sq.quantize_matrix(W, H, cfg.replace(blocksize=16))
    assert torch.allclose(wt.steps[-1].current, blocked.weight, atol=1e-5)
    assert wt.steps[-1].loss == pytest.approx(blocked.loss, rel=1e-4)
    assert torch.equal(wt.mask, blocked.mask)


def test_bad_requests_say_what_to_do():
    W, H = demo_problem(4, 8)
    with pytest.raises(ValueError, match="RTN"):
        walkthrough(W, H, sq.QuantConfig(method="rtn"))
    with pytest.raises(ValueError, match="256 x 256"):
        walkthrough(torch.zeros(300, 300), torch.eye(300), sq.QuantConfig(method="gptq"))
