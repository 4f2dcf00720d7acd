# Driver functions shared by the apps' shell drivers (sourced by large_models/common.sh and
# medium_models/common.sh, not run): errors, MODE -> flags, the launcher, the printed configuration.

die() { echo "$(basename "$0"): error: $*" >&2; exit 2; }

ENGINE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# mode_args DRIVER (mezo, finetune, medium-mezo, medium-finetune): MODE -> its run.py flags in MODE_ARGS, its part of
# the tag in MODE_TAG (the XGBLoRA kappa is in it) and the driver's default learning rate and eps in DEFAULT_LR /
# DEFAULT_EPS (LR and EPS, if set, win). All of it comes from the methods' registry (mezo_engine/registry.py: the
# standard library only, run with python3 rather than the run's python, which tests stand in for), which reads the mode's own variables (LORA_R, LORA_ALPHA, XGBLORA_RANK, XGBLORA_STEPS, XGBLORA_LAYERS,
# NUM_PREFIX) and knows their defaults.
# ZO=name (the MeZO drivers): the ZO method (--zo_optimizer, mezo_engine/zo_methods/) in ZO_ARGS; its default LR and
# EPS, where the registry gives it its own, replace the mode's, and a method other than sgd adds -<name> to MODE_TAG.
mode_args() {
    local resolved
    resolved=$(python3 "$ENGINE_DIR/registry.py" driver "$MODE" "$1" ${ZO:+"$ZO"} 2>&1) || die "$resolved"
    eval "$resolved"
    lp_args
}

# RUN_SEED=k: the run's own seed (--seed: the ZO directions, the adapters' initialisation, the batch order), apart
# from SEED (the data: the train set, or LM-BFF's k-shot split). Unset: no flag, so names and tags are as before
# RUN_SEED existed; set: RUN_SEED_ARGS=(--seed k) and RUN_SEED_TAG=-rs<k>, for the end of the tag.
run_seed_args() {
    RUN_SEED_ARGS=()
    RUN_SEED_TAG=
    [ -n "${RUN_SEED:-}" ] || return 0
    case "$RUN_SEED" in *[!0-9]*) die "RUN_SEED=$RUN_SEED: must be a whole number" ;; esac
    RUN_SEED_ARGS=(--seed "$RUN_SEED")
    RUN_SEED_TAG=-rs$RUN_SEED
}

# MAX_FORWARDS=N, MAX_TIME=SECONDS: the run's budgets (--max_forwards, --max_time; 0 or unset: none) in BUDGET_ARGS.
# They are not in the tag: a larger budget continues the same run from the checkpoint saved at the stop.
budget_args() {
    BUDGET_ARGS=()
    if [ -n "${MAX_FORWARDS:-}" ]; then
        case "$MAX_FORWARDS" in *[!0-9]*) die "MAX_FORWARDS=$MAX_FORWARDS: must be a whole number (0: no limit)" ;; esac
        BUDGET_ARGS+=(--max_forwards "$MAX_FORWARDS")
    fi
    if [ -n "${MAX_TIME:-}" ]; then
        case "$MAX_TIME" in .|*[!0-9.]*|*.*.*) die "MAX_TIME=$MAX_TIME: must be a number of seconds (0: no limit)" ;; esac
        BUDGET_ARGS+=(--max_time "$MAX_TIME")
    fi
}

# LP=1: fit a linear probe of the LM head first (--linear_probing) and train from it (MeZO's "LP then MeZO");
# the tag's mode part becomes lp-<MODE>.
lp_args() {
    case "${LP:-0}" in
        0) LP_ARGS=() ;;
        1) LP_ARGS=(--linear_probing); MODE_TAG=lp-$MODE_TAG ;;
        *) die "LP=$LP: must be 0 or 1" ;;
    esac
}

# NUM_GPU=N (default 1): LAUNCH runs run.py in N data-parallel processes on this machine with torchrun (each rank
# takes BS examples, so the global batch is N x BS); with 1, plain python. Under torchrun the ranks use NCCL on
# GPUs and gloo without CUDA. For several machines, call torchrun yourself (see docs/cluster.md).
launcher() {
    NUM_GPU=${NUM_GPU:-1}
    case "$NUM_GPU" in
        ''|*[!0-9]*|0*) die "NUM_GPU=$NUM_GPU: must be a whole number >= 1" ;;
    esac
    if [ "$NUM_GPU" -gt 1 ]; then
        LAUNCH=(python -m torch.distributed.run --standalone --nproc_per_node "$NUM_GPU")
    else
        LAUNCH=(python)
    fi
}

print_config() {
    echo "== $(basename "$0"): $*" >&2
}
