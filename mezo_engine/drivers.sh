# Driver functions shared by the apps' shell drivers (sourced by large_models/common.sh and
# medium_models/common.sh, not run): errors, MODE -> flags, the launcher, the printed configuration.

die() { echo "$(basename "$0"): error: $*" >&2; exit 2; }

ENGINE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# mode_args DRIVER (mezo, finetune, medium-mezo, medium-finetune): MODE -> its run.py flags in MODE_ARGS, its part of
# the tag in MODE_TAG (the XGBLoRA kappa is in it) and the driver's default learning rate and eps in DEFAULT_LR /
# DEFAULT_EPS (LR and EPS, if set, win). All of it comes from the methods' registry (mezo_engine/registry.py: the
# standard library only, run with python3 rather than the run's python, which tests stand in for), which reads the mode's own variables (LORA_R, LORA_ALPHA, XGBLORA_RANK, XGBLORA_STEPS, XGBLORA_LAYERS,
# NUM_PREFIX) and knows their defaults.
mode_args() {
    local resolved
    resolved=$(python3 "$ENGINE_DIR/registry.py" driver "$MODE" "$1" 2>&1) || die "$resolved"
    eval "$resolved"
    lp_args
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
