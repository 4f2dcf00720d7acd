#!/usr/bin/env bash
# Runs large_models/finetune_fsdp.sh; see there and the README.
exec bash "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/large_models/finetune_fsdp.sh" "$@"
