#!/usr/bin/env bash
# Regular (backprop) fine-tuning, the baseline. Usage: MODE=lora TASK=SST2 bash finetune.sh [extra run.py flags]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/common.sh"

MODEL=${MODEL:-facebook/opt-350m}
MODE=${MODE:-ft}
BS=${BS:-8}
SEED=${SEED:-0}
TRAIN=${TRAIN:-1000}
EVAL=${EVAL:-1000}
EPOCH=${EPOCH:-5}
SAVE_STEPS=${SAVE_STEPS:-500}
RESUME=${RESUME:-auto}
FSDP=${FSDP:-0}

check_task
mode_args finetune
LR=${LR:-$DEFAULT_LR}
task_args
data_args
launcher
run_seed_args
budget_args
DEV=${DEV:-$DEFAULT_DEV}
TAG=$MODE_TAG-$EPOCH-$BS-$LR-$SEED$RUN_SEED_TAG
fsdp_args

print_config "TASK=$TASK MODEL=$MODEL MODE=$MODE NUM_GPU=$NUM_GPU BS=$BS LR=$LR SEED=$SEED" \
    "RUN_SEED=${RUN_SEED:-<default>} TRAIN=$TRAIN DEV=$DEV EVAL=$EVAL EPOCH=$EPOCH FSDP=$FSDP SAVE_STEPS=$SAVE_STEPS" \
    "RESUME=$RESUME MAX_FORWARDS=${MAX_FORWARDS:-<none>} MAX_TIME=${MAX_TIME:-<none>} DATA_DIR=${DATA_DIR:-<hub>}" \
    "TAG=$TAG extra: $*"

EVAL_ARGS=(--eval_strategy epoch --load_best_model_at_end)
[ "$FSDP" = 0 ] || EVAL_ARGS=(--eval_strategy epoch)  # the in-memory best-model snapshot is not for shards
[ "$DEV" -gt 0 ] || EVAL_ARGS=()

# exec: run.py replaces the shell, so a scheduler's SIGTERM reaches it (see docs/troubleshooting.md, Preemption)
exec "${LAUNCH[@]}" "$HERE/run.py" \
    --model_name "$MODEL" --task_name "$TASK" --tag "$TAG" \
    --train_set_seed "$SEED" --num_train "$TRAIN" --num_dev "$DEV" --num_eval "$EVAL" --logging_steps 10 \
    --trainer regular --learning_rate "$LR" --num_train_epochs "$EPOCH" --per_device_train_batch_size "$BS" \
    --save_strategy steps --save_steps "$SAVE_STEPS" --save_total_limit 1 \
    --resume_from_checkpoint "$RESUME" "${EVAL_ARGS[@]}" \
    "${RUN_SEED_ARGS[@]}" "${BUDGET_ARGS[@]}" "${DATA_ARGS[@]}" "${MODE_ARGS[@]}" "${LP_ARGS[@]}" "${TASK_ARGS[@]}" \
    "${FSDP_ARGS[@]}" "$@"
