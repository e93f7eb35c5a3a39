"""Figures: titles, axes, fixed colour ranges, reserved weights visible, size bounded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from septq_core.figures import (
    block_bars,
    criteria_heatmaps,
    log_range,
    module_grid,
    reserved_per_axis,
    score_heatmap,
    score_histogram,
    sweep_heatmap,
)


def scores_and_mask(rows=1536, cols=576):
    g = torch.Generator().manual_seed(0)
    S = torch.rand(rows, cols, generator=g).pow(8)
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    mask[rows // 2 + 9, cols // 2 + 13] = True  # a lone reserved weight must survive pooling
    mask[5, :10] = True
    return S, mask


def test_heatmap_is_pooled_small_and_keeps_reserved():
    S, mask = scores_and_mask()
    fig = score_heatmap(S, mask, "0.mlp.gate_proj", zrange=(-12.0, 0.0))
    z = fig.data[0].z
    assert z.shape[0] <= 256 and z.shape[1] <= 256
    assert fig.data[0].zmin == -12.0 and fig.data[0].zmax == 0.0
    overlay = fig.data[1].z  # 1 where a pooled cell holds a reserved weight, 0 (transparent) elsewhere
    r_step, c_step = fig.data[0].dy, fig.data[0].dx
    assert (fig.data[1].dx, fig.data[1].dy) == (c_step, r_step)
    cells = {(int(r), int(c)) for r, c in zip(*np.nonzero(overlay == 1))}
    assert (777 // r_step, 301 // c_step) in cells  # the lone weight at 1536 // 2 + 9, 576 // 2 + 13
    assert {(5 // r_step, c // c_step) for c in range(10)} <= cells
    assert len(cells) == len({(777 // r_step, 301 // c_step)} | {(5 // r_step, c // c_step) for c in range(10)})
    assert "max-pooled" in fig.layout.title.text
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    assert len(fig.to_json()) < 2_000_000


def test_histogram_counts_every_weight_once():
    S, mask = scores_and_mask(60, 40)
    fig = score_histogram(S, mask, "scores")
    total = sum(sum(trace.y) for trace in fig.data)
    assert total == S.numel()
    assert sum(fig.data[1].y) == int(mask.sum())
    assert fig.layout.xaxis.title.text == "log10 importance score"


def test_reserved_per_axis_counts():
    mask = torch.zeros(20, 12, dtype=torch.bool)
    mask[3, 4] = mask[3, 5] = mask[9, 4] = True
    rows = reserved_per_axis(mask, "row", "per row")
    cols = reserved_per_axis(mask, "column", "per column")
    assert list(rows.data[0].y)[3] == 2 and sum(rows.data[0].y) == 3
    assert list(cols.data[0].y)[4] == 2 and cols.layout.xaxis.title.text == "input channel (column)"


def test_perplexity_vs_bits_one_line_per_method_sorted_by_size():
    from septq_core.figures import perplexity_vs_bits

    rows = [{"label": "GPTQ 3", "method": "gptq", "bits_per_weight": 3.05, "ppl": 40.0},
            {"label": "GPTQ 2", "method": "gptq", "bits_per_weight": 2.05, "ppl": 900.0},
            {"label": "SEPTQ 2", "method": "septq", "bits_per_weight": 2.37, "ppl": 80.0}]
    fig = perplexity_vs_bits(rows, "demo")
    assert [t.name for t in fig.data] == ["GPTQ", "SEPTQ"]
    assert list(fig.data[0].x) == [2.05, 3.05] and list(fig.data[0].y) == [900.0, 40.0]
    assert fig.layout.xaxis.title.text == "bits per weight" and fig.layout.yaxis.type == "log"


def test_criteria_share_one_colour_scale_and_each_peaks_at_zero():
    S, mask = scores_and_mask(300, 200)
    scores = {"a": S, "b": S * 1e6 + 1e-3, "c": S.sqrt()}
    masks = {"a": mask, "b": mask, "c": ~mask}
    fig = criteria_heatmaps(scores, masks, {"a": "A", "b": "B", "c": "C"}, zrange=(-6.0, 0.0), cells=100)
    heat = [t for t in fig.data if t.coloraxis == "coloraxis"]
    assert len(heat) == 3 and all(np.nanmax(t.z) == 0.0 for t in heat)
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (-6.0, 0.0)
    assert [a.text for a in fig.layout.annotations] == ["A", "B", "C"]
    overlays = [t for t in fig.data if t.coloraxis != "coloraxis"]
    assert overlays[2].z.sum() > overlays[0].z.sum()  # the complement mask covers more cells
    assert max(t.z.shape[0] for t in fig.data) <= 100 and len(fig.to_json()) < 2_000_000


def test_small_figures_have_titles_axes_and_fixed_ranges():
    grid = module_grid([[0.01, 0.02], [0.0, 0.05]], ["self_attn.q_proj", "mlp.down_proj"], "t", "reserved fraction",
                       (0.0, 0.05))
    assert (grid.data[0].zmin, grid.data[0].zmax) == (0.0, 0.05) and list(grid.data[0].x) == ["q_proj", "down_proj"]
    bars = block_bars([1.0, 5.0, 2.0], 1, "per block", "sum of scores")
    assert list(bars.data[0].marker.color).count(bars.data[0].marker.color[1]) == 1  # only the selected bar differs
    sweep = sweep_heatmap(torch.ones(3, 4), torch.eye(3, 4, dtype=torch.bool), 2, "step", 2.0, "weight")
    assert (sweep.data[0].zmin, sweep.data[0].zmax) == (-2.0, 2.0)
    assert list(sweep.data[1].x) == [0, 1, 2] and sweep.layout.shapes[0].x0 == 1.5
    for fig in (grid, bars, sweep):
        assert fig.layout.title.text and fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_log_range_ignores_exact_zeros():
    S = torch.zeros(100, 100)
    S[:, 1:] = torch.logspace(-6, 0, 99)  # one column of weights exactly on the grid
    lo, hi = log_range(S, low=0.0)
    assert hi == pytest.approx(0.0, abs=1e-6) and lo == pytest.approx(-6.0, abs=1e-5)
    assert log_range(torch.zeros(3, 3)) == (-1.0, 0.0)
