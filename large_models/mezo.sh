#!/usr/bin/env bash
# MeZO (zeroth-order) fine-tuning. Usage: MODE=xgblora TASK=SST2 bash mezo.sh [extra run.py flags]
# SEED draws the train set; RUN_SEED (optional) seeds the run itself; ZO picks the ZO method; MAX_FORWARDS and
# MAX_TIME are budgets (docs/flags.md, Driver variables).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/common.sh"

MODEL=${MODEL:-facebook/opt-350m}
MODE=${MODE:-ft}
BS=${BS:-16}
SEED=${SEED:-0}
TRAIN=${TRAIN:-1000}
EVAL=${EVAL:-1000}
STEPS=${STEPS:-20000}
EVAL_STEPS=${EVAL_STEPS:-4000}
SAVE_STEPS=${SAVE_STEPS:-1000}
RESUME=${RESUME:-auto}

check_task
mode_args mezo
LR=${LR:-$DEFAULT_LR}
EPS=${EPS:-$DEFAULT_EPS}
task_args
data_args
launcher
run_seed_args
budget_args
DEV=${DEV:-$DEFAULT_DEV}
TAG=mezo-$MODE_TAG-$STEPS-$BS-$LR-$EPS-$SEED$RUN_SEED_TAG

print_config "TASK=$TASK MODEL=$MODEL MODE=$MODE ZO=${ZO:-sgd} NUM_GPU=$NUM_GPU BS=$BS LR=$LR EPS=$EPS SEED=$SEED" \
    "RUN_SEED=${RUN_SEED:-<default>} TRAIN=$TRAIN DEV=$DEV EVAL=$EVAL STEPS=$STEPS EVAL_STEPS=$EVAL_STEPS" \
    "SAVE_STEPS=$SAVE_STEPS RESUME=$RESUME MAX_FORWARDS=${MAX_FORWARDS:-<none>} MAX_TIME=${MAX_TIME:-<none>}" \
    "DATA_DIR=${DATA_DIR:-<hub>} TAG=$TAG extra: $*"

# exec: run.py replaces the shell, so a scheduler's SIGTERM reaches it (see docs/troubleshooting.md, Preemption)
exec "${LAUNCH[@]}" "$HERE/run.py" \
    --model_name "$MODEL" --task_name "$TASK" --tag "$TAG" \
    --train_set_seed "$SEED" --num_train "$TRAIN" --num_dev "$DEV" --num_eval "$EVAL" --logging_steps 10 \
    --max_steps "$STEPS" --trainer zo --load_float16 --learning_rate "$LR" --zo_eps "$EPS" \
    --per_device_train_batch_size "$BS" --lr_scheduler_type constant --load_best_model_at_end \
    --eval_strategy steps --eval_steps "$EVAL_STEPS" \
    --save_strategy steps --save_steps "$SAVE_STEPS" --save_total_limit 1 --resume_from_checkpoint "$RESUME" \
    "${RUN_SEED_ARGS[@]}" "${BUDGET_ARGS[@]}" "${DATA_ARGS[@]}" "${MODE_ARGS[@]}" "${ZO_ARGS[@]}" "${LP_ARGS[@]}" \
    "${TASK_ARGS[@]}" "$@"
