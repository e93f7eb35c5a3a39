"""Quantization engine benchmark on the embedded default model.

Prints, from one run:
- perplexity of FP and RTN / GPTQ / SEPTQ at 2, 3 and 4 bits (preview preset),
  on WikiText-2 test (needs SEPTQ_DATA_DIR, e.g. ../shared/data);
- solver seconds of SEPTQ / GPTQ over all modules (target <= 1.15);
- whole-model quantization seconds / one full-precision forward pass over the
  calibration set, true-sequential (target <= 4) and shared pass (target <= 3).

    SEPTQ_DATA_DIR=../shared/data .venv/bin/python -m bench.engine [--windows 40]

Run it with nothing else running: timings on 2 shared cores are noisy.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import septq_core as sq
from septq_core.pipeline import _batch_size

RESULTS = Path(__file__).resolve().parent / "results"


def fp_forward_seconds(lm, calib) -> float:
    """One full-precision forward pass of the whole model over the calibration set."""
    bs = _batch_size(calib.seqlen, lm.device)
    t = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, calib.nsamples, bs):
            lm.model(input_ids=calib.input_ids[start : start + bs].to(lm.device), use_cache=False)
    return time.perf_counter() - t


def quality(lm, base, calib, args) -> tuple[dict, list[dict]]:
    """FP and RTN / GPTQ / SEPTQ perplexity at each bit-width."""
    windows = args.windows or None

    def ppl(model):
        return sq.perplexity(model, lm.tokenizer, args.corpus, seqlen=args.seqlen, max_windows=windows)

    fp = ppl(lm.model)
    print(f"FP: perplexity {fp.value:.3f} on {fp.source}, {fp.windows} windows of {fp.seqlen} ({fp.tokens} tokens)",
          flush=True)
    rows = []
    for bits in args.bits:
        for method in ("rtn", "gptq", "septq"):
            cfg = base.replace(method=method, bits=bits)
            run = sq.quantize_model(lm, cfg, calib=calib)
            p = ppl(run.model)
            rows.append({"method": method, "bits": bits, "ppl": p.value, "bits_per_weight": run.bits_per_weight,
                         "seconds": run.seconds})
            print(f"{cfg.label:22s} ppl {p.value:12.3f}  bpw {run.bits_per_weight:.3f}  quantize "
                  f"{run.seconds['total']:.1f} s (forward {run.seconds['calibration_forward']:.1f}, solver "
                  f"{run.seconds['solver']:.1f})", flush=True)
            del run
    print("\n| method | " + " | ".join(f"{b}-bit ppl (bits/weight)" for b in args.bits) + " |")
    print("|---|" + "---|" * len(args.bits))
    print(f"| FP ({lm.card['weights']}) | " + " | ".join(f"{fp.value:.2f}" for _ in args.bits) + " |")
    for method in ("rtn", "gptq", "septq"):
        cells = [f"{r['ppl']:.2f} ({r['bits_per_weight']:.2f})" for r in rows if r["method"] == method]
        print(f"| {method.upper()} | " + " | ".join(cells) + " |")
    return fp.to_dict(), rows


def speed(lm, base, calib) -> dict:
    """Solver and whole-model seconds against one FP forward pass, all measured here, now."""
    fp_fwd = fp_forward_seconds(lm, calib)
    runs = {
        "gptq": sq.quantize_model(lm, base.replace(method="gptq", bits=3), calib=calib).seconds,
        "septq": sq.quantize_model(lm, base.replace(method="septq", bits=3), calib=calib).seconds,
        "septq_shared_pass": sq.quantize_model(lm, base.replace(method="septq", bits=3, true_sequential=False),
                                               calib=calib).seconds,
    }
    ratios = {
        "septq_over_gptq_solver": runs["septq"]["solver"] / runs["gptq"]["solver"],
        "true_sequential_over_fp_forward": runs["septq"]["total"] / fp_fwd,
        "shared_pass_over_fp_forward": runs["septq_shared_pass"]["total"] / fp_fwd,
    }
    print(f"\nspeed, 3-bit, calibration {calib.nsamples} x {calib.seqlen} tokens; one FP forward pass over it: "
          f"{fp_fwd:.1f} s")
    print(f"SEPTQ / GPTQ solver seconds over all modules: {runs['septq']['solver']:.1f} / "
          f"{runs['gptq']['solver']:.1f} = {ratios['septq_over_gptq_solver']:.3f} (target <= 1.15)")
    print(f"whole-model SEPTQ / FP forward, true sequential: {runs['septq']['total']:.1f} / {fp_fwd:.1f} = "
          f"{ratios['true_sequential_over_fp_forward']:.2f} (target <= 4)")
    print(f"whole-model SEPTQ / FP forward, shared pass:     {runs['septq_shared_pass']['total']:.1f} / {fp_fwd:.1f} = "
          f"{ratios['shared_pass_over_fp_forward']:.2f} (target <= 3)")
    for name, sec in runs.items():
        print(f"  {name:18s} {json.dumps({k: round(v, 1) for k, v in sec.items()})}")
    return {"fp_forward_s": fp_fwd, "calibration": [calib.nsamples, calib.seqlen], "runs": runs, "ratios": ratios}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model source (default: the embedded default)")
    ap.add_argument("--corpus", default="wikitext2", help="evaluation corpus")
    ap.add_argument("--seqlen", type=int, default=512, help="evaluation window")
    ap.add_argument("--windows", type=int, default=40, help="evaluation windows (0 = all)")
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--nsamples", type=int, nargs="+", default=[16],
                    help="calibration sizes (x 512 tokens) for the speed section")
    ap.add_argument("--no-quality", action="store_true", help="only the speed section")
    ap.add_argument("--out", default=str(RESULTS / "engine.json"))
    args = ap.parse_args(argv)

    t = time.perf_counter()
    lm = sq.load_model(args.model)
    load_s = time.perf_counter() - t
    base = sq.QuantConfig.preset("preview")
    calib = sq.calibration_windows(lm.tokenizer, base.calib, base.nsamples, base.seqlen, base.seed)
    print(f"model {lm.name} ({lm.card['weights']}), loaded in {load_s:.1f} s; preview preset: calibration "
          f"{calib.nsamples} x {calib.seqlen} tokens of {calib.corpus}", flush=True)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "model": lm.name,
        "command": "python -m bench.engine " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
    }
    if not args.no_quality:
        result["fp"], result["quality"] = quality(lm, base, calib, args)
    result["speed"] = []
    for n in args.nsamples:
        c = calib if n == calib.nsamples else sq.calibration_windows(lm.tokenizer, base.calib, n, base.seqlen, base.seed)
        result["speed"].append(speed(lm, base.replace(nsamples=n), c))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwritten to {args.out}")
    return result


if __name__ == "__main__":
    main()
