"""Sweep files, a fake driver and hand-made result JSONs for the sweep, aggregate and plot tests."""
from __future__ import annotations

import json
from pathlib import Path

# A stand-in for mezo.sh: finds --result_file in its arguments, records how it was called (pid, threads, cores,
# GPUs) in <result without .json>/calls, and ends as OUTCOME says:
#   completed | diverged (status "diverged at step 3", exit 1) | crash (exit 3, no result)
#   interrupt_once (first call: a checkpoint-2 folder, "interrupted at step 2", exit 75; then completed)
#   wait_term (sleeps until SIGTERM, then "interrupted at step 1", exit 75)
FAKE_DRIVER = r"""#!/usr/bin/env bash
set -euo pipefail
result=""
while [ $# -gt 0 ]; do case "$1" in --result_file) result=$2; shift 2 ;; *) shift ;; esac; done
out="${result%.json}"
mkdir -p "$out"
cores=$(grep Cpus_allowed_list /proc/self/status | cut -f2)
echo "$$ ${OMP_NUM_THREADS:-unset} $cores ${CUDA_VISIBLE_DEVICES-unset}" >> "$out/calls"
write() {
    printf '{"status": "%s", "eval": {"accuracy": %s}, "train": {"log_history": []}}\n' "$1" "${ACC:-0.5}" > "$result"
}
case "${OUTCOME:-completed}" in
    completed) write completed ;;
    diverged) write "diverged at step 3"; exit 1 ;;
    crash) echo "crashed" >&2; exit 3 ;;
    interrupt_once)
        if [ -d "$out/checkpoint-2" ]; then write completed
        else mkdir "$out/checkpoint-2"; write "interrupted at step 2"; exit 75; fi ;;
    wait_term)
        trap 'write "interrupted at step 1"; exit 75' TERM
        touch "$out/started"
        for _ in $(seq 600); do sleep 0.1; done
        write completed ;;
esac
"""


def write_fake_driver(folder: Path) -> Path:
    path = Path(folder) / "fake_driver.sh"
    path.write_text(FAKE_DRIVER)
    return path


def write_sweep(folder: Path, body: str, driver: Path | str | None = None, name: str = "t") -> Path:
    """A sweep file in ``folder`` with results in ``folder/results``; ``body`` holds [fixed]/[grid] tables."""
    driver = driver or write_fake_driver(folder)
    path = Path(folder) / f"{name}.toml"
    path.write_text(f'[sweep]\nname = "{name}"\ndriver = "{driver}"\nresult_dir = "{Path(folder) / "results"}"\n'
                    f"{body}")
    return path


def result_json(status: str = "completed", accuracy: float | None = 0.5, dev: float | None = None,
                steps: int = 0, merge_every: int = 0, seed: int = 0) -> dict:
    """A result as run.py writes it: status, eval/dev metrics, a log history (loss every step, dev every 2
    steps) and XGBLoRA merges every ``merge_every`` steps."""
    history = []
    for step in range(1, steps + 1):
        history.append({"loss": 0.7 - 0.01 * step - 0.005 * seed, "step": step})
        if step % 2 == 0:
            history.append({"eval_accuracy": 0.5 + 0.02 * step + 0.01 * seed, "step": step})
    result = {"status": status, "train": {"log_history": history}}
    if merge_every:
        merges = [{"iteration": i + 1, "step": s, "modules": 4, "delta_norm": 0.1 + 0.01 * i + 0.002 * seed}
                  for i, s in enumerate(range(merge_every, steps + 1, merge_every))]
        result["train"]["boosting"] = {"num_merges": len(merges), "merges": merges}
    if accuracy is not None and status == "completed":
        result["eval"] = {"accuracy": accuracy}
    if dev is not None and status == "completed":
        result["dev"] = {"accuracy": dev}
    return result


def write_result(path: Path, result: dict | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(result if isinstance(result, str) else json.dumps(result))
