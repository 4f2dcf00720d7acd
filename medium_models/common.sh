# Shared by medium_models/mezo.sh and finetune.sh (sourced, not run): the LM-BFF tasks, the k-shot folder, the
# mode's flags and learning rates (mode_args), die, print_config from mezo_engine/drivers.sh.

source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../mezo_engine/drivers.sh"

# LM-BFF's task names come from medium_models/task_table.py (standard library only).
known_tasks=$(python3 "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/task_table.py" names)

check_task() {
    case " $known_tasks " in *" $TASK "*) ;; *) die "TASK=$TASK unknown; known (LM-BFF's names): $known_tasks" ;; esac
    case "$K" in ''|*[!0-9]*|0*) die "K=$K: must be a whole number >= 1 (16 or 512 in LM-BFF's files)" ;; esac
    case "$SEED" in ''|*[!0-9]*) die "SEED=$SEED: must be a whole number (13, 21, 42, 87, 100 in LM-BFF's files)" ;; esac
}

# DATA_DIR holds <TASK>/<K>-<SEED>/ (upstream's default: data/k-shot-1k-test inside medium_models).
check_data() {
    [ -d "$DATA_DIR/$TASK/$K-$SEED" ] || die "no folder $DATA_DIR/$TASK/$K-$SEED; set DATA_DIR to the folder holding" \
        "<TASK>/<K>-<SEED>/ (LM-BFF's k-shot layout), e.g. DATA_DIR=../shared/data/LM-BFF/k-shot-1k-test"
}

# setup DRIVER (medium-mezo, medium-finetune): the defaults both drivers share (upstream's env vars; RUN_SEED,
# MAX_FORWARDS, MAX_TIME and, for mezo.sh, ZO as in mezo_engine/drivers.sh), the input checks, the mode's flags and default LR / EPS (mode_args: upstream's medium-model README runs MeZO full-parameter at
# 1e-6, MeZO + LoRA at 1e-4, Adam at 1e-5, Adam + LoRA at 1e-4; XGBLoRA's boosters take LoRA's), and the run.py flags
# both pass (RUN_ARGS). The driver sets BS, STEP and EVAL_STEP first.
setup() {
    TASK=${TASK:-SST-2}
    K=${K:-16}
    SEED=${SEED:-42}
    WD=${WD:-0}
    MODEL=${MODEL:-roberta-large}
    MODE=${MODE:-ft}
    DATA_DIR=${DATA_DIR:-$HERE/data/k-shot-1k-test}
    SAVE_STEPS=${SAVE_STEPS:-$EVAL_STEP}
    RESUME=${RESUME:-auto}
    check_task
    check_data
    mode_args "$1"
    run_seed_args
    budget_args
    # upstream's --seed is both the split's and the run's seed; with RUN_SEED the split keeps SEED (--data_seed)
    SEED_ARGS=(--seed "$SEED")
    [ -z "${RUN_SEED:-}" ] || SEED_ARGS=("${RUN_SEED_ARGS[@]}" --data_seed "$SEED")
    RUN_ARGS=(--model_name "$MODEL" --task_name "$TASK" --num_k "$K" "${SEED_ARGS[@]}" --data_dir "$DATA_DIR"
              --weight_decay "$WD" --per_device_train_batch_size "$BS" --max_steps "$STEP" --logging_steps 10
              --eval_strategy steps --eval_steps "$EVAL_STEP" --load_best_model_at_end
              --save_strategy steps --save_steps "$SAVE_STEPS" --save_total_limit 1 --resume_from_checkpoint "$RESUME"
              "${BUDGET_ARGS[@]}" "${MODE_ARGS[@]}" "${ZO_ARGS[@]}" "${LP_ARGS[@]}")
}
