#!/usr/bin/env bash
# CPU benchmark: tokens/s and peak memory of training steps, ctune vs PyTorch + transformers
# (+ peft for LoRA) on the same ~34M-parameter Llama (preset bench-20m), same data shape,
# same thread count, fp32, in one run. Prints ratios; raw output goes to docs/benchmarks/.
#   scripts/bench_cpu.sh [THREADS]       (needs a Python with torch, transformers, peft:
#                                         set PYTHON=/path/to/python, default python3)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
threads=${1:-$(nproc)}
python=${PYTHON:-python3}
[ -x build/ctune ] || scripts/build.sh
out="docs/benchmarks/cpu-$(date +%Y%m%d).txt"
mkdir -p docs/benchmarks
"$python" scripts/bench_cpu.py --ctune build/ctune --threads "$threads" 2>&1 | tee "$out"
echo "raw output: $out"
