# Shared by mezo.sh, finetune.sh and icl.sh (sourced, not run): input checks and per-task settings; the engine's
# driver functions (die, mode_args, launcher, print_config) come from mezo_engine/drivers.sh.

source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../mezo_engine/drivers.sh"

# The tasks and MeZO's per-task settings come from large_models/task_table.py (standard library only).
TASK_TABLE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/task_table.py"
known_tasks=$(python3 "$TASK_TABLE" names)

check_task() {
    [ -n "${TASK:-}" ] || die "set TASK (one of: $known_tasks), e.g. TASK=SST2 bash $(basename "$0")"
    case " $known_tasks " in *" $TASK "*) ;; *) die "TASK=$TASK unknown; known: $known_tasks" ;; esac
}

# MeZO's per-task choices (task_table.py): CB and Copa keep 100 dev examples; Copa, ReCoRD, SQuAD and DROP train
# as a language model on the answer, the others as classification over the candidates. TASK=custom reads
# TASK_FILE (a task file of one's own, docs/your-data.md).
# DEFAULT_DEV: the dev-set size when DEV is not given; TASK_ARGS: the flags of the task's training.
task_args() {
    local resolved
    if [ "$TASK" = custom ]; then
        resolved=$(python3 "$(dirname "$TASK_TABLE")/task_file.py" driver "${TASK_FILE:-}" 2>&1) || die "$resolved"
    else
        resolved=$(python3 "$TASK_TABLE" driver "$TASK" 2>&1) || die "$resolved"
    fi
    eval "$resolved"
}

data_args() {
    DATA_ARGS=()
    if [ -n "${DATA_DIR:-}" ]; then
        [ -d "$DATA_DIR" ] || die "DATA_DIR=$DATA_DIR is not a directory"
        DATA_ARGS=(--data_dir "$DATA_DIR")
    fi
}

# FSDP=1 (finetune.sh): shard the model over NUM_GPU >= 2 GPUs with the Trainer's FSDP (upstream MeZO's
# finetune_fsdp.sh: full shard, each decoder block wrapped; a full state dict is gathered to rank 0 when saving).
# Full-parameter training only; the tag starts with fsdp-.
fsdp_args() {
    FSDP_ARGS=()
    case "$FSDP" in
        0) return ;;
        1) ;;
        *) die "FSDP=$FSDP: must be 0 or 1" ;;
    esac
    [ "$MODE" = ft ] || die "FSDP=1 trains full-parameter only (MODE=ft), not MODE=$MODE"
    [ "$NUM_GPU" -gt 1 ] || die "FSDP=1 shards the model over several GPUs: set NUM_GPU >= 2"
    FSDP_ARGS=(--fsdp "full_shard auto_wrap")
    TAG=fsdp-$TAG
}
