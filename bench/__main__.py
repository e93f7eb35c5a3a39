"""`python -m bench` (or `make bench`): the benchmarks of bench/.

    SEPTQ_DATA_DIR=../shared/data .venv/bin/python -m bench        # quality, engine, solver, app, then report
    .venv/bin/python -m bench engine --nsamples 16 64              # one benchmark, with its own options
    .venv/bin/python -m bench report                               # redraw bench/README.md's results and charts

`quality` needs SEPTQ_DATA_DIR (WikiText-2, PTB, C4) and resumes from its run store,
`app` needs Debian's chromium, `fp_eval` (whole corpora, about half an hour on 2 cores)
runs only when named. Each writes its results under bench/results/. Run with nothing
else on the machine.
"""

from __future__ import annotations

import runpy
import sys

SCRIPTS = {"quality": "bench.quality", "engine": "bench.engine", "solver": "bench.solver", "app": "bench.app",
           "fp_eval": "bench.fp_eval", "report": "bench.report"}
DEFAULT = ["quality", "engine", "solver", "app", "report"]


def run(name: str, args: list[str]) -> None:
    print(f"== bench.{name} {' '.join(args)} ==", flush=True)
    sys.argv = [f"bench.{name}", *args]
    runpy.run_module(SCRIPTS[name], run_name="__main__")


def main(argv: list[str]) -> int:
    if argv and argv[0] not in SCRIPTS:
        print(f"unknown benchmark {argv[0]!r}: choose from {', '.join(SCRIPTS)}", file=sys.stderr)
        return 2
    if argv:
        run(argv[0], argv[1:])
    else:
        for name in DEFAULT:
            run(name, [])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
