#!/usr/bin/env bash
# MeZO on an LM-BFF k-shot task with a masked LM (MeZO's medium-model experiments).
# Usage: TASK=SST-2 K=16 SEED=42 MODE=xgblora bash mezo.sh [extra run.py flags]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/common.sh"

BS=${BS:-64}
STEP=${STEP:-100000}
EVAL_STEP=${EVAL_STEP:-10000}
setup medium-mezo
LR=${LR:-$DEFAULT_LR}
EPS=${EPS:-$DEFAULT_EPS}
TAG=k$K-mezo-$MODE_TAG-$STEP-$BS-$LR-$EPS-$WD-$SEED$RUN_SEED_TAG

print_config "TASK=$TASK K=$K SEED=$SEED RUN_SEED=${RUN_SEED:-<SEED>} MODEL=$MODEL MODE=$MODE ZO=${ZO:-sgd} BS=$BS" \
    "LR=$LR EPS=$EPS WD=$WD STEP=$STEP EVAL_STEP=$EVAL_STEP SAVE_STEPS=$SAVE_STEPS RESUME=$RESUME" \
    "MAX_FORWARDS=${MAX_FORWARDS:-<none>} MAX_TIME=${MAX_TIME:-<none>} DATA_DIR=$DATA_DIR TAG=$TAG extra: $*"

# exec: run.py replaces the shell, so a scheduler's SIGTERM reaches it
exec python "$HERE/run.py" "${RUN_ARGS[@]}" --tag "$TAG" \
    --trainer zo --learning_rate "$LR" --zo_eps "$EPS" --lr_scheduler_type constant "$@"
