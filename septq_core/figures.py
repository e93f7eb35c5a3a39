"""Plotly figures built by pure functions from data (no Streamlit here).

Every figure has a title, axis names with units, and stays small: matrices are
max-pooled to at most MAX_CELLS x MAX_CELLS before they are drawn.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch

from .importance import max_pool

MAX_CELLS = 256
RESERVED_COLOR = "#d62728"


def score_heatmap(scores: torch.Tensor, mask: torch.Tensor | None, title: str,
                  zrange: tuple[float, float] | None = None, cells: int = MAX_CELLS) -> go.Figure:
    """log10 importance scores of a matrix (max-pooled), reserved weights overlaid as dots.

    `zrange` fixes the colour scale so that panels compared side by side share it."""
    rows, cols = scores.shape
    pooled = max_pool(scores.clamp_min(1e-30).log10(), cells, cells)
    r_step, c_step = -(-rows // cells), -(-cols // cells)
    fig = go.Figure(go.Heatmap(
        z=pooled.cpu().numpy(), x0=0, dx=c_step, y0=0, dy=r_step, colorscale="Viridis",
        zmin=zrange[0] if zrange else None, zmax=zrange[1] if zrange else None,
        colorbar={"title": "log10 score"},
        hovertemplate="rows %{y}+, cols %{x}+<br>max log10 score %{z:.2f}<extra></extra>",
    ))
    if mask is not None and mask.any():
        pooled_mask = max_pool(mask, cells, cells).cpu().numpy() > 0
        r, c = np.nonzero(pooled_mask)
        fig.add_trace(go.Scattergl(
            x=c * c_step, y=r * r_step, mode="markers", name="reserved",
            marker={"color": RESERVED_COLOR, "size": 3, "symbol": "square"},
            hovertemplate="reserved weight in rows %{y}+, cols %{x}+<extra></extra>",
        ))
    pooled_note = f" (max-pooled {r_step}x{c_step})" if r_step > 1 or c_step > 1 else ""
    fig.update_layout(title=f"{title}{pooled_note}", xaxis_title="input channel (column)",
                      yaxis_title="output channel (row)", yaxis_autorange="reversed",
                      legend={"orientation": "h", "y": -0.15}, margin={"t": 50, "l": 60, "r": 20, "b": 60})
    return fig


def score_histogram(scores: torch.Tensor, mask: torch.Tensor | None, title: str, bins: int = 60) -> go.Figure:
    """Histogram of log10 scores, reserved and kept weights in two colours."""
    logs = scores.clamp_min(1e-30).log10().flatten()
    lo, hi = float(logs.min()), float(logs.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    fig = go.Figure()
    groups = [("quantized", ~mask.flatten(), "#1f77b4"), ("reserved", mask.flatten(), RESERVED_COLOR)] \
        if mask is not None else [("all", torch.ones_like(logs, dtype=torch.bool), "#1f77b4")]
    for name, sel, color in groups:
        counts, _ = np.histogram(logs[sel].cpu().numpy(), bins=edges)
        fig.add_trace(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, name=name, marker_color=color,
                             width=edges[1] - edges[0]))
    fig.update_layout(title=title, barmode="stack", xaxis_title="log10 importance score",
                      yaxis_title="weights (count)", yaxis_type="log", margin={"t": 50, "l": 60, "r": 20, "b": 50})
    return fig


def reserved_per_axis(mask: torch.Tensor, axis: str, title: str) -> go.Figure:
    """Reserved weights per output row (axis="row") or per input channel (axis="column")."""
    counts = mask.sum(dim=1 if axis == "row" else 0).cpu().numpy()
    fig = go.Figure(go.Bar(x=np.arange(len(counts)), y=counts, marker_color=RESERVED_COLOR))
    label = "output channel (row)" if axis == "row" else "input channel (column)"
    fig.update_layout(title=title, xaxis_title=label, yaxis_title="reserved weights (count)",
                      margin={"t": 50, "l": 60, "r": 20, "b": 50})
    return fig


def perplexity_vs_bits(rows: list[dict], corpus: str) -> go.Figure:
    """Perplexity against bits per weight, one point per run (rows: label, method, bits_per_weight, ppl).

    The size-fair comparison: a method that reserves weights in full precision
    pays for them in bits, so compare points at the same x, not the same `bits`."""
    fig = go.Figure()
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = sorted((r for r in rows if r["method"] == method), key=lambda r: r["bits_per_weight"])
        fig.add_trace(go.Scatter(x=[r["bits_per_weight"] for r in pts], y=[r["ppl"] for r in pts],
                                 mode="lines+markers", name=method.upper() if method != "fp" else "FP",
                                 text=[r["label"] for r in pts],
                                 hovertemplate="%{text}<br>%{x:.3f} bits/weight<br>perplexity %{y:.3f}<extra></extra>"))
    fig.update_layout(title=f"Perplexity on {corpus} against bits per weight", xaxis_title="bits per weight",
                      yaxis_title="perplexity (log scale)", yaxis_type="log", margin={"t": 50, "l": 60, "r": 20, "b": 50})
    return fig
