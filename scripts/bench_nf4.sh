#!/usr/bin/env bash
# QLoRA load-time quantization benchmark: ctune's NF4 quantizer vs bitsandbytes' quantize_4bit
# on the CPU, one Llama-3.1-8B layer (scripts/bench_nf4.py); raw output goes to
# docs/benchmarks/nf4-quantize-YYYYMMDD.txt.
#   scripts/bench_nf4.sh [THREADS]   (PYTHON=a Python with torch, safetensors and bitsandbytes,
#                                     default: scripts/python_env.sh's; BUILD=build directory)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
threads=${1:-$(nproc)}
python=${PYTHON:-$(scripts/python_env.sh)}
build=${BUILD:-build}
[ -x "$build/tools/nf4_tool" ] || { [ "$build" = build ] && scripts/build.sh; }
[ -x "$build/tools/nf4_tool" ] || { echo "no $build/tools/nf4_tool: build first" >&2; exit 1; }
out="docs/benchmarks/nf4-quantize-$(date +%Y%m%d).txt"
mkdir -p docs/benchmarks
# (run from /tmp: the repository's kernels/ folder would shadow a Python package of that name)
(cd /tmp && "$python" "$root/scripts/bench_nf4.py" --tool "$root/$build/tools/nf4_tool" --threads "$threads") 2>&1 \
  | grep -v "gemm_4bit_forward from kernels-community" | tee "$out"
echo "raw output: $out"
