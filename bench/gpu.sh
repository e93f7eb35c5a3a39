#!/usr/bin/env bash
# The speed benchmark and the paper preset on the embedded default model, on a CUDA machine, in
# under 8 minutes on one H100/H200-class GPU. Results go to $OUT when it is set, else bench/results/gpu/.
#
#   bash bench/gpu.sh                      # with the project installed (make test or pip install -e .)
#   CALIB=path/to/text.txt bash bench/gpu.sh   # another calibration corpus
#
# The paper preset calibrates on C4's train shard (128 x 2048 tokens). Offline, give CALIB a
# text file instead (the script falls back to $SEPTQ_DATA_DIR/wikitext2/valid.txt when C4 train
# is not found there). Each step has its own time limit, so one slow step cannot eat the others.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT_DIR=${OUT:-bench/results/gpu}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export SEPTQ_DATA_DIR=${SEPTQ_DATA_DIR:-$( [ -d shared/data ] && echo shared/data || echo ../shared/data )}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "bench/gpu.sh: no CUDA device visible to $PY (torch.cuda.is_available() is False): run it on a GPU machine" >&2
  exit 2
fi
if [ -z "${CALIB:-}" ]; then
  if [ -f "$SEPTQ_DATA_DIR/c4/c4-train.00000-of-01024.jsonl" ]; then CALIB=c4
  else CALIB=$SEPTQ_DATA_DIR/wikitext2/valid.txt; fi
fi
mkdir -p "$OUT_DIR"
"$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
echo "calibration: $CALIB; data: $SEPTQ_DATA_DIR; results: $OUT_DIR"
status=0
step() {  # step SECONDS NAME ARGS...: one benchmark under a time limit, its log under $OUT_DIR
  local limit=$1 name=$2; shift 2
  echo "== $name (limit ${limit} s) =="
  timeout "$limit" "$PY" -m bench "$@" 2>"$OUT_DIR/$name.log" || { echo "$name failed or ran out of time (exit $?), see $name.log"; status=1; }
}
# 1. speed and memory: preview preset (16 x 512) and the paper preset (128 x 2048), 3-bit
step 120 engine_preview engine --out "$OUT_DIR/engine_preview.json"
step 150 engine_paper engine --preset paper --calib "$CALIB" --out "$OUT_DIR/engine_paper.json"
# 2. quality, paper preset: RTN / GPTQ / SEPTQ at 2, 3, 4 bits, whole corpora in windows of 2048
step 240 quality_paper quality --sections paper --paper-calib "$CALIB" --windows 0 --eval-seqlen 2048 \
  --home "$OUT_DIR/runs" --out "$OUT_DIR/quality_paper.json"
rm -rf "$OUT_DIR/runs"  # masks of every run: large, and nothing the report needs
exit $status
