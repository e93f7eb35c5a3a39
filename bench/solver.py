"""Solver speed on one matrix: per module shape of the default model, and how cost grows with size.

Prints, from one run (synthetic W and H; the solver's cost does not depend on the values):
- per module shape of SmolLM2-135M, seconds of RTN / GPTQ / SEPTQ (`quantize_matrix`, median of
  --repeats runs, preview settings: 3-bit, per-row MSE grid, blocksize 128) and SEPTQ / GPTQ;
- GPTQ and SEPTQ seconds for square matrices of 512 .. 4096 columns, and the growth exponent
  between sizes (3 = cubic, the Cholesky factorisations; 2 = the sweep and the grid search).

    .venv/bin/python -m bench.solver [--repeats 5] [--sizes 512 1024 2048 4096]

Run it with nothing else running: timings on 2 shared cores are noisy.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

import septq_core as sq

from .machine import RESULTS, header

SHAPES = {  # rows x cols of the default model's linear modules (30 blocks of each)
    "self_attn.q_proj / o_proj": (576, 576),
    "self_attn.k_proj / v_proj": (192, 576),
    "mlp.gate_proj / up_proj": (1536, 576),
    "mlp.down_proj": (576, 1536),
}


def problem(rows: int, cols: int, tokens: int = 2048, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random W and the H of correlated random inputs (a few heavy channels, as in real layers)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, cols, generator=g) @ (torch.eye(cols) + 0.1 * torch.randn(cols, cols, generator=g))
    X[:, : max(1, cols // 64)] *= 8
    return torch.randn(rows, cols, generator=g) * 0.05, 2 * X.t() @ X / tokens


def median_seconds(W, H, cfg, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sq.quantize_matrix(W, H, cfg)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--out", default=str(RESULTS / "solver.json"))
    args = parser.parse_args(argv)
    base = sq.QuantConfig.preset("preview", bits=3)
    results: dict = {**header("solver", argv), "config": base.to_dict(), "repeats": args.repeats, "shapes": {},
                     "scaling": {}}

    print(f"{'module':28s} {'shape':>11s} {'RTN s':>8s} {'GPTQ s':>8s} {'SEPTQ s':>8s} {'SEPTQ/GPTQ':>11s}")
    for name, (rows, cols) in SHAPES.items():
        W, H = problem(rows, cols)
        row = {m: median_seconds(W, H, base.replace(method=m), args.repeats) for m in ("rtn", "gptq", "septq")}
        row["ratio"] = row["septq"] / row["gptq"]
        results["shapes"][name] = {"rows": rows, "cols": cols, **row}
        print(f"{name:28s} {rows:5d}x{cols:<5d} {row['rtn']:8.3f} {row['gptq']:8.3f} {row['septq']:8.3f} "
              f"{row['ratio']:11.2f}", flush=True)

    print(f"\n{'columns (square W)':>18s} {'GPTQ s':>8s} {'SEPTQ s':>8s} {'SEPTQ/GPTQ':>11s} {'growth':>7s}")
    previous = None
    for n in args.sizes:
        W, H = problem(n, n, tokens=max(2048, n))
        repeats = max(1, args.repeats if n <= 1024 else args.repeats // 2)
        row = {m: median_seconds(W, H, base.replace(method=m), repeats) for m in ("gptq", "septq")}
        growth = math.log(row["septq"] / previous[1]) / math.log(n / previous[0]) if previous else None
        results["scaling"][n] = {**row, "ratio": row["septq"] / row["gptq"], "growth_exponent": growth}
        print(f"{n:18d} {row['gptq']:8.3f} {row['septq']:8.3f} {row['septq'] / row['gptq']:11.2f} "
              f"{'' if growth is None else f'{growth:7.2f}'}", flush=True)
        previous = (n, row["septq"])

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
