#!/usr/bin/env bash
# Regular full-parameter fine-tuning sharded with FSDP over NUM_GPU GPUs (default 2), as upstream MeZO's
# finetune_fsdp.sh: the backprop baseline for models larger than one GPU. Needs CUDA.
# Usage: NUM_GPU=4 TASK=SST2 MODEL=facebook/opt-13b bash finetune_fsdp.sh [extra run.py flags]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export FSDP=1 NUM_GPU=${NUM_GPU:-2}
exec bash "$HERE/finetune.sh" "$@"
