#!/usr/bin/env bash
# Generation benchmark: greedy decoding on a KV cache, ctune generate vs transformers'
# generate() on the same random bench-20m Llama, same prompt ids, same thread count, in one
# run (prefill, decode tokens/s, whole process; greedy ids compared). Prints ratios; raw
# output goes to docs/benchmarks/generate-[DEVICE-]YYYYMMDD.txt.
#   scripts/bench_generate.sh [THREADS] [-- driver options, e.g. --device cuda --precision bf16-mixed]
#   (needs a Python with torch, transformers, tokenizers: set PYTHON=/path/to/python,
#    default python3; BUILD=build directory, default build)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
threads=$(nproc)
if [ $# -gt 0 ] && [ "$1" != "--" ]; then threads=$1; shift; fi
[ "${1:-}" = "--" ] && shift
python=${PYTHON:-python3}
build=${BUILD:-build}
[ -x "$build/ctune" ] || { [ "$build" = build ] && scripts/build.sh; }
[ -x "$build/ctune" ] || { echo "no $build/ctune: build first" >&2; exit 1; }
suffix=""
case " $* " in *" --device cuda "*) suffix="gpu-" ;; esac
out="docs/benchmarks/generate-${suffix}$(date +%Y%m%d).txt"
mkdir -p docs/benchmarks
"$python" scripts/bench_generate.py --ctune "$build/ctune" --threads "$threads" "$@" 2>&1 | tee "$out"
echo "raw output: $out"
