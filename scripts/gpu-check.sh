#!/usr/bin/env bash
# GPU check: on a machine with an NVIDIA GPU (driver + NVRTC; no CUDA toolkit needed), build
# with `cuda`, run the kernel parity tests on CUDA, a short quickstart on CUDA and on the CPU
# (codes compared bit by bit), and the kernel benchmarks; print one summary table.
# Target: under 8 minutes on a 16-core machine (cold build included).
#
#   scripts/gpu-check.sh            # logs and bench.json under target/gpu-check/
#   QUICK_STEPS=100 scripts/gpu-check.sh
#
# Exit status: 0 when every step passed, 1 when one failed, 2 without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${GPU_CHECK_OUT:-target/gpu-check}
STEPS=${QUICK_STEPS:-60}
# Codes of the CUDA quickstart may differ from the CPU's where a projection lands within
# rounding of 0 (different reduction order); at most this fraction of bits (ARCHITECTURE.md).
MAX_BIT_FRACTION=${MAX_BIT_FRACTION:-0.01}
mkdir -p "$OUT"
export CARGO_TERM_COLOR=never

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu-check: no NVIDIA GPU visible (nvidia-smi -L failed); nothing to check here." >&2
    exit 2
fi
GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)

names=() statuses=() secs=() notes=()
step() { # step NAME NOTE-COMMAND -- COMMAND...
    local name=$1 note_cmd=$2
    shift 3
    local t0 st note
    t0=$(date +%s)
    echo "== $name: $*"
    if "$@" >"$OUT/$name.log" 2>&1; then st=ok; else st=FAIL; fi
    note=$(eval "$note_cmd" 2>/dev/null | tr '\n' ' ' | cut -c1-110)
    names+=("$name") statuses+=("$st") secs+=("$(($(date +%s) - t0))") notes+=("$note")
    [ "$st" = ok ] || tail -n 30 "$OUT/$name.log"
}

BLLM=target/release/bllm
step build "tail -n1 $OUT/build.log" -- \
    cargo build --release -p bllm-cli --no-default-features --features cuda
step kernel-parity "grep -E '^test result' $OUT/kernel-parity.log | tail -n1" -- \
    env BLLM_KERNEL_DEVICE=cuda BLLM_REQUIRE_KERNEL_DEVICE=1 \
    cargo test --release -p bllm-kernels --no-default-features --features cuda --test parity
rm -rf "$OUT/qs-cpu" "$OUT/qs-cuda"
step quickstart-cpu "grep -E 'Recall@10' $OUT/quickstart-cpu.log | tail -n1" -- \
    "$BLLM" run recipes/quickstart.toml "train.steps=$STEPS" --run-dir "$OUT/qs-cpu"
step quickstart-cuda "grep -E 'Recall@10' $OUT/quickstart-cuda.log | tail -n1" -- \
    "$BLLM" run recipes/quickstart.toml "train.steps=$STEPS" --device cuda --run-dir "$OUT/qs-cuda"
step codes-cpu-vs-cuda "tail -n2 $OUT/codes-cpu-vs-cuda.log" -- \
    "$BLLM" codes diff "$OUT/qs-cpu/export/codes" "$OUT/qs-cuda/export/codes" \
    --max-bit-fraction "$MAX_BIT_FRACTION"
step bench "grep -E 'XNOR-popcount \(CubeCL\)|CubeCL top-k' $OUT/bench.log | awk '{print \$NF, \$(NF-1)}' | head -n 4" -- \
    "$BLLM" bench kernels --device cuda --min-secs 0.5 --json "$OUT/bench.json"

echo
echo "GPU: $GPU"
printf '%-18s %-5s %6s  %s\n' step status secs note
fail=0
for i in "${!names[@]}"; do
    printf '%-18s %-5s %6s  %s\n' "${names[$i]}" "${statuses[$i]}" "${secs[$i]}" "${notes[$i]}"
    [ "${statuses[$i]}" = ok ] || fail=1
done
echo
echo "benchmark table: $OUT/bench.log (rows also in $OUT/bench.json); logs: $OUT/*.log"
[ -f "$OUT/bench.log" ] && sed -n '/^section/,$p' "$OUT/bench.log"
exit $fail
