#!/usr/bin/env bash
# Zero-shot (NUM_TRAIN=0) or in-context evaluation. Usage: TASK=SST2 NUM_TRAIN=0 bash icl.sh [extra run.py flags]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/common.sh"

MODEL=${MODEL:-facebook/opt-350m}
NUM_TRAIN=${NUM_TRAIN:-32}
EVAL=${EVAL:-1000}
SEED=${SEED:-0}

check_task
data_args
TAG=icl-$NUM_TRAIN-$SEED

print_config "TASK=$TASK MODEL=$MODEL NUM_TRAIN=$NUM_TRAIN EVAL=$EVAL SEED=$SEED DATA_DIR=${DATA_DIR:-<hub>} extra: $*"

python "$HERE/run.py" \
    --model_name "$MODEL" --task_name "$TASK" --tag "$TAG" \
    --trainer none --num_train "$NUM_TRAIN" --train_set_seed "$SEED" --num_eval "$EVAL" --load_float16 \
    "${DATA_ARGS[@]}" "$@"
