#!/usr/bin/env bash
# The root drivers' dispatch: `bash apps.sh mezo.sh ARGS` runs large_models/mezo.sh, or with MEDIUM=1
# medium_models/mezo.sh (LM-BFF k-shot tasks, masked LMs), passing ARGS through.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DRIVER=$1
shift
case "${MEDIUM:-0}" in
    0) exec bash "$HERE/large_models/$DRIVER" "$@" ;;
    1) exec bash "$HERE/medium_models/$DRIVER" "$@" ;;
    *) echo "$DRIVER: error: MEDIUM=$MEDIUM: must be 0 (large_models) or 1 (medium_models)" >&2; exit 2 ;;
esac
