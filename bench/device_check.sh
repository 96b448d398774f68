#!/usr/bin/env bash
# The trainer's side on a GPU machine (issue 15), under 5 minutes on 16 cores + 1 GPU:
# pinned non-blocking H2D with the example DLRM (GB/s, stall share) and aggregate ingest from
# 1, 2, 4 and 8 local workers. Results: $OUT/device_check.json (or ./device_check.json).
#   bash bench/device_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH=$PWD
out=${OUT:-.}/device_check.json
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
# 1M rows: generated in about a minute on 16 cores; each worker count then streams it once.
timeout 280 "$PY" -m bench.device_check --rows 1000000 --workers 1,2,4,8 --threads 2 \
  --table-dir "${DPP_BENCH_DIR:-/tmp/dpp-bench}" --out "$out"
