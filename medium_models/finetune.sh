#!/usr/bin/env bash
# Regular (backprop, AdamW) prompt-based fine-tuning on an LM-BFF k-shot task, the baseline of MeZO's medium-model
# experiments. Usage: TASK=SST-2 K=16 SEED=42 MODE=lora bash finetune.sh [extra run.py flags]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/common.sh"

BS=${BS:-8}
STEP=${STEP:-1000}
EVAL_STEP=${EVAL_STEP:-100}
setup medium-finetune
LR=${LR:-$DEFAULT_LR}
TAG=k$K-$MODE_TAG-$STEP-$BS-$LR-$WD-$SEED$RUN_SEED_TAG

print_config "TASK=$TASK K=$K SEED=$SEED RUN_SEED=${RUN_SEED:-<SEED>} MODEL=$MODEL MODE=$MODE BS=$BS LR=$LR WD=$WD" \
    "STEP=$STEP EVAL_STEP=$EVAL_STEP SAVE_STEPS=$SAVE_STEPS RESUME=$RESUME MAX_FORWARDS=${MAX_FORWARDS:-<none>}" \
    "MAX_TIME=${MAX_TIME:-<none>} DATA_DIR=$DATA_DIR TAG=$TAG extra: $*"

# exec: run.py replaces the shell, so a scheduler's SIGTERM reaches it
exec python "$HERE/run.py" "${RUN_ARGS[@]}" --tag "$TAG" --trainer regular --learning_rate "$LR" "$@"
