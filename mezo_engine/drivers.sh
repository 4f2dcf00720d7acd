# Driver functions shared by the apps' shell drivers (sourced by large_models/common.sh and
# medium_models/common.sh, not run): errors, MODE -> flags, the launcher, the printed configuration.

die() { echo "$(basename "$0"): error: $*" >&2; exit 2; }

# MODE -> its flags in MODE_ARGS and its part of the tag in MODE_TAG (the XGBLoRA kappa is in it), and the mode's
# default learning rates and eps: ZO_LR / ZO_EPS for mezo.sh, FT_LR for finetune.sh (LR and EPS, if set, win).
# Prefix tuning takes MeZO's advice: MeZO LR 1e-3 (or 1e-2) with EPS 1e-1; regular training LR 1e-2.
mode_args() {
    ZO_LR=1e-5; ZO_EPS=1e-3; FT_LR=1e-5
    case "$MODE" in
        ft) MODE_ARGS=(); MODE_TAG=ft ;;
        lora) MODE_ARGS=(--lora --lora_r "${LORA_R:-8}" --lora_alpha "${LORA_ALPHA:-16}"); MODE_TAG=lora ;;
        xgblora) MODE_ARGS=(--xgblora --xgblora_rank "${XGBLORA_RANK:-1}" --lora_alpha "${LORA_ALPHA:-16}"
                            --xgblora_steps_per_iteration "$XGBLORA_STEPS" --xgblora_num_layers "$XGBLORA_LAYERS")
                 MODE_TAG=xgblora-k$XGBLORA_STEPS ;;
        prefix) MODE_ARGS=(--prefix_tuning --num_prefix "${NUM_PREFIX:-5}" --no_reparam --prefix_init_by_real_act)
                MODE_TAG=prefix; ZO_LR=1e-3; ZO_EPS=1e-1; FT_LR=1e-2 ;;
        head) MODE_ARGS=(--head_tuning); MODE_TAG=head ;;
        *) die "MODE=$MODE unknown; known: ft lora xgblora prefix head" ;;
    esac
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
