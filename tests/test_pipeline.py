"""Whole-model quantization on tiny random Llama and OPT models."""

from __future__ import annotations

import math
import threading

import pytest
import torch

import septq_core as sq
from septq_core.models import block_linears

CALIB = dict(calib="demo", nsamples=4, seqlen=64)


@pytest.fixture(params=["llama", "opt"])
def tiny(request, tiny_model_dir):
    return sq.load_model(str(tiny_model_dir(request.param)))


def linear_inputs(model, input_ids) -> dict[str, torch.Tensor]:
    """The input of every linear module ("block.module") in one plain forward pass."""
    inputs, hooks = {}, []
    for b, block in enumerate(sq.find_blocks(model)):
        for name, lin in block_linears(block).items():
            hooks.append(lin.register_forward_pre_hook(
                lambda m, a, key=f"{b}.{name}": inputs.setdefault(key, a[0].detach().clone())))
    with torch.no_grad():
        model(input_ids=input_ids, use_cache=False)
    for h in hooks:
        h.remove()
    return inputs


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_hessian_running_mean_equals_formula():
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randn(3, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g), torch.randn(5, 8, generator=g)]
    acc = sq.Hessian(8)
    for batch in seqs:
        acc.add_batch(batch)
    X = torch.cat([s.reshape(-1, 8) for s in seqs]).double()
    n_seq = 3 + 2 + 1
    torch.testing.assert_close(acc.H.double(), 2 / n_seq * X.t() @ X, rtol=1e-5, atol=1e-5)


def test_true_sequential_H_equals_inputs_of_the_quantized_model(tiny):
    """In true-sequential mode each module's H comes from inputs made by the already
    quantized modules before it, which are exactly its inputs in the final model."""
    cfg = sq.QuantConfig(method="septq", bits=3, reserve_ratio=0.02, **CALIB)
    calib = sq.calibration_windows(tiny.tokenizer, "demo", 4, 64, 0)
    run = sq.quantize_model(tiny, cfg, calib=calib)
    fp_blocks, q_blocks = sq.find_blocks(tiny.model), sq.find_blocks(run.model)
    inputs = linear_inputs(run.model, calib.input_ids)
    for b, block in enumerate(fp_blocks):
        for name, lin in block_linears(block).items():
            x = inputs[f"{b}.{name}"].reshape(-1, lin.in_features).double()
            H = (2 / calib.nsamples * x.t() @ x).float()
            expected = sq.quantize_matrix(lin.weight, H, cfg)
            got = block_linears(q_blocks[b])[name].weight
            mismatch = (got - expected.weight).abs() > 1e-4
            assert mismatch.float().mean() < 0.01, f"{b}.{name}"
            assert torch.equal(run.masks[f"{b}.{name}"], expected.mask) or mismatch.any()


def test_input_model_unchanged_and_progress_reaches_total(tiny):
    before = state(tiny.model)
    calls = []
    run = sq.quantize_model(tiny, sq.QuantConfig(method="gptq", bits=2, **CALIB),
                            progress=lambda done, total, msg: calls.append((done, total, msg)))
    after = state(tiny.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    n_modules = 2 * sum(len(g) for g in tiny.groups)
    assert len(calls) >= n_modules and calls[-1][0] == calls[-1][1] == n_modules
    assert len(run.reports) == n_modules
    changed = [not torch.equal(a, b) for a, b in zip(tiny.model.parameters(), run.model.parameters())]
    assert any(changed)


@pytest.mark.parametrize("group_size", [None, 16])
def test_at_most_2_to_bits_values_outside_reserved(tiny, group_size):
    bits = 2
    cfg = sq.QuantConfig(method="septq", bits=bits, group_size=group_size, reserve_ratio=0.02, **CALIB)
    run = sq.quantize_model(tiny, cfg)
    for b, block in enumerate(sq.find_blocks(run.model)):
        for name, lin in block_linears(block).items():
            W, M = lin.weight, run.masks[f"{b}.{name}"]
            assert int(M.sum()) == math.floor(0.02 * W.numel())
            step = group_size or W.shape[1]
            for r in range(W.shape[0]):
                for start in range(0, W.shape[1], step):
                    values = W[r, start : start + step][~M[r, start : start + step]]
                    assert len(set(values.tolist())) <= 2**bits


def test_cancel_stops_and_leaves_model_unchanged(tiny):
    before = state(tiny.model)
    cancel = threading.Event()
    seen = []

    def progress(done, total, msg):
        seen.append(done)
        if done == 2:
            cancel.set()

    with pytest.raises(sq.Cancelled):
        sq.quantize_model(tiny, sq.QuantConfig(method="septq", bits=3, **CALIB), progress=progress, cancel=cancel)
    assert max(seen) == 2  # stopped within one module
    after = state(tiny.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("scope", ["layer", "model"])
def test_shared_budgets(tiny, scope):
    r = 0.02
    run = sq.quantize_model(tiny, sq.QuantConfig(method="septq", bits=3, reserve_ratio=r, mask_scope=scope, **CALIB))
    sizes = {rep.name: rep.shape[0] * rep.shape[1] for rep in run.reports}
    if scope == "layer":
        for b in range(2):
            names = [n for n in sizes if n.startswith(f"{b}.")]
            assert sum(int(run.masks[n].sum()) for n in names) == math.floor(r * sum(sizes[n] for n in names))
    else:
        assert sum(int(m.sum()) for m in run.masks.values()) == math.floor(r * sum(sizes.values()))
    fractions = [rep.reserved_fraction for rep in run.reports]
    assert max(fractions) > min(fractions)  # a shared budget is not spread evenly


def test_rtn_needs_no_calibration_and_reports_bits(tiny):
    run = sq.quantize_model(tiny, sq.QuantConfig(method="rtn", bits=4, group_size=32, calib="no-such-corpus.txt"))
    assert run.calibration == {}
    assert run.bits_per_weight == pytest.approx(4 + 32 / 32, rel=0.2)
    assert run.seconds["calibration_forward"] == 0


def test_methods_order_on_tiny_model(tiny_model_dir):
    """More bits -> lower output error; SEPTQ's per-module loss below GPTQ's."""
    lm = sq.load_model(str(tiny_model_dir("llama")))
    calib = sq.calibration_windows(lm.tokenizer, "demo", 4, 64, 0)
    g = sq.quantize_model(lm, sq.QuantConfig(method="gptq", bits=2, **CALIB), calib=calib)
    s = sq.quantize_model(lm, sq.QuantConfig(method="septq", bits=2, reserve_ratio=0.05, **CALIB), calib=calib)
    assert s.reports[0].loss < g.reports[0].loss  # same inputs for the first module
    assert sum(r.loss for r in s.reports) < sum(r.loss for r in g.reports)


def test_replaying_recorded_outputs_changes_nothing(tiny, monkeypatch):
    """Partial passes replay the outputs of quantized modules instead of recomputing them."""
    import septq_core.pipeline as pipeline

    cfg = sq.QuantConfig(method="septq", bits=3, **CALIB)
    calib = sq.calibration_windows(tiny.tokenizer, "demo", 4, 64, 0)
    with_replay = sq.quantize_model(tiny, cfg, calib=calib)
    monkeypatch.setattr(pipeline, "REPLAY_BUDGET_BYTES", 0)
    without = sq.quantize_model(tiny, cfg, calib=calib)
    for a, b in zip(with_replay.model.parameters(), without.model.parameters()):
        assert torch.equal(a, b)
    assert all("forward" not in m.__dict__ for m in with_replay.model.modules())


def test_fp_hessians_equal_inputs_of_the_full_precision_model(tiny):
    calib = sq.calibration_windows(tiny.tokenizer, "demo", 4, 64, 0)
    before = state(tiny.model)
    seen = []
    Hs = sq.fp_hessians(tiny, calib, progress=lambda d, t, m: seen.append((d, t)))
    assert seen[-1] == (2, 2)
    inputs = linear_inputs(tiny.model, calib.input_ids)
    assert set(Hs) == set(inputs)
    for key, x in inputs.items():
        x = x.reshape(-1, x.shape[-1]).double()
        torch.testing.assert_close(Hs[key].double(), 2 / calib.nsamples * x.t() @ x, rtol=1e-4, atol=1e-5)
    after = state(tiny.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_hessian_counts_sequences_of_a_flattened_batch():
    x = torch.randn(3, 5, 8)
    a, b = sq.Hessian(8), sq.Hessian(8)
    a.add_batch(x)
    b.add_batch(x.reshape(15, 8), n_seq=3)  # OPT's fc1/fc2 see (sequences * tokens, cols)
    torch.testing.assert_close(a.H, b.H)
    assert b.nsamples == 3
