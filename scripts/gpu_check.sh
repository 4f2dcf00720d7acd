#!/usr/bin/env bash
# What this project can check on one CUDA GPU, in one command (~5-8 minutes on one H200): ZO exactness on CUDA,
# the benchmark ratios for opt-1.3b-config and smollm2-135m-config on MultiRC-shaped batches, --load_int8 through
# bitsandbytes (if importable), tiny run.py zo runs on cuda, a few test files. Writes a Markdown report.
#
#   bash scripts/gpu_check.sh [REPORT.md] [gpu_check.py flags...]     # REPORT default: $GPU_REPORT, else docs/gpu.md
#   bash scripts/gpu_check.sh "$OUT/gpu.md" --skip pytest
#
# On a machine without CUDA it refuses in one line (exit 2). Exit 1 when a check failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the project is not installed on the GPU machine
PYTHON=${PYTHON:-$(command -v python || command -v python3 || echo python3)}
REPORT=${GPU_REPORT:-docs/gpu.md}
if [[ $# -gt 0 && $1 != --* ]]; then
  REPORT=$1
  shift
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check.sh: no CUDA device here (torch.cuda.is_available() is False in $PYTHON); run it on a GPU machine" >&2
  exit 2
fi
echo "gpu_check.sh: python $PYTHON, report $REPORT, repository $PWD"
exec "$PYTHON" scripts/gpu_check.py --out "$REPORT" "$@"
