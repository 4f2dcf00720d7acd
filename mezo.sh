#!/usr/bin/env bash
# Runs large_models/mezo.sh; MEDIUM=1 runs medium_models/mezo.sh (LM-BFF k-shot tasks). See there and the README.
exec bash "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/apps.sh" mezo.sh "$@"
