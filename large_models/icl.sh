#!/usr/bin/env bash
# Zero-shot (NUM_TRAIN=0) or in-context evaluation. Usage: TASK=SST2 NUM_TRAIN=0 bash icl.sh [extra run.py flags]
# As MeZO's icl.sh: without SEED every evaluation example gets its own demonstration set; SEED=k shares the
# demonstration set drawn with seed k (and draws the evaluation subset with k).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/common.sh"

MODEL=${MODEL:-facebook/opt-350m}
NUM_TRAIN=${NUM_TRAIN:-32}
EVAL=${EVAL:-1000}
SEED=${SEED:-}

check_task
TASK_FILE_ARGS=()  # TASK=custom: the task file (task_args checks it)
[ "$TASK" != custom ] || { task_args; TASK_FILE_ARGS=(--task_file "$TASK_FILE"); }
data_args
launcher
TAG=icl-$NUM_TRAIN-${SEED:-onetrainpereval}
SEED_ARGS=()
[ -z "$SEED" ] || SEED_ARGS=(--train_set_seed "$SEED")

print_config "TASK=$TASK MODEL=$MODEL NUM_GPU=$NUM_GPU NUM_TRAIN=$NUM_TRAIN EVAL=$EVAL SEED=${SEED:-<one set per eval example>} DATA_DIR=${DATA_DIR:-<hub>} extra: $*"

# exec: run.py (or torchrun) replaces the shell, so a signal sent to the driver reaches it
exec "${LAUNCH[@]}" "$HERE/run.py" \
    --model_name "$MODEL" --task_name "$TASK" --tag "$TAG" \
    --trainer none --num_train "$NUM_TRAIN" --num_eval "$EVAL" --load_float16 \
    "${SEED_ARGS[@]}" "${DATA_ARGS[@]}" "${TASK_FILE_ARGS[@]}" "$@"
