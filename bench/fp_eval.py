"""Full-precision perplexity of a model over whole evaluation corpora, with timings.

    SEPTQ_DATA_DIR=../shared/data .venv/bin/python -m bench.fp_eval --seqlen 2048 512

Prints load seconds, perplexity per corpus and window size, and seconds per window.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import septq_core as sq

from .machine import RESULTS, header


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--corpora", nargs="+", default=["wikitext2"])
    ap.add_argument("--seqlen", type=int, nargs="+", default=[2048, 512])
    ap.add_argument("--windows", type=int, default=0, help="0 = all windows")
    ap.add_argument("--out", default=str(RESULTS / "fp_eval.json"))
    args = ap.parse_args(argv)
    t = time.perf_counter()
    lm = sq.load_model(args.model)
    out = {**header("fp_eval", argv), "model": lm.name, "weights": lm.card["weights"], "load_s": time.perf_counter() - t, "results": []}
    print(f"{lm.name}: loaded in {out['load_s']:.1f} s on {lm.card['device']} ({lm.card['dtype']})", flush=True)
    for corpus in args.corpora:
        for seqlen in args.seqlen:
            p = sq.perplexity(lm.model, lm.tokenizer, corpus, seqlen=seqlen, max_windows=args.windows or None)
            row = p.to_dict() | {"seconds_per_window": p.seconds / p.windows}
            out["results"].append(row)
            print(f"{corpus} seqlen {seqlen}: perplexity {p.value:.4f} over {p.windows} windows ({p.tokens} tokens), "
                  f"{p.seconds:.0f} s, {row['seconds_per_window']:.2f} s per window  [{p.source}]", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
