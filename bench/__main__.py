"""`python -m bench` (or `make bench`): every benchmark of bench/, one after the other.

    SEPTQ_DATA_DIR=../shared/data .venv/bin/python -m bench [engine app fp_eval]

With no names it runs `engine` (needs SEPTQ_DATA_DIR) and `app` (needs Debian's
chromium); `fp_eval` (whole corpora, about half an hour on 2 cores) only when named.
Each writes its results under bench/results/. Run with nothing else on the machine.
"""

from __future__ import annotations

import runpy
import sys

SCRIPTS = {"engine": "bench.engine", "app": "bench.app", "fp_eval": "bench.fp_eval"}


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in SCRIPTS]
    if unknown:
        print(f"unknown benchmark {', '.join(unknown)}: choose from {', '.join(SCRIPTS)}", file=sys.stderr)
        return 2
    for name in names or ["engine", "app"]:
        print(f"== bench.{name} ==", flush=True)
        sys.argv = [f"bench.{name}"]
        runpy.run_module(SCRIPTS[name], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
