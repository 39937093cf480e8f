#!/usr/bin/env bash
# Tokenizer benchmark: tokens/s of ctune's tokenizer (train/tokenizer.h, OpenMP over lines)
# vs Hugging Face `tokenizers` (encode_batch; RAYON_NUM_THREADS=1 and =THREADS) on the same
# ~3 MB generated corpus and the same two 32k tokenizer.json files (byte-level BPE Llama 3
# style, SentencePiece-style Metaspace BPE) trained in the run; ids compared line by line.
# Raw output goes to docs/benchmarks/tokenizer-YYYYMMDD.txt.
#   scripts/bench_tokenizer.sh [THREADS]   (needs a Python with tokenizers and numpy:
#                                           set PYTHON=/path/to/python, default python3;
#                                           BUILD=build directory, default build)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
threads=${1:-$(nproc)}
python=${PYTHON:-python3}
build=${BUILD:-build}
[ -x "$build/tools/tok_bench" ] || { [ "$build" = build ] && scripts/build.sh; }
[ -x "$build/tools/tok_bench" ] || { echo "no $build/tools/tok_bench: build first" >&2; exit 1; }
out="docs/benchmarks/tokenizer-$(date +%Y%m%d).txt"
mkdir -p docs/benchmarks
"$python" scripts/bench_tokenizer.py --tool "$build/tools/tok_bench" --threads "$threads" 2>&1 | tee "$out"
echo "raw output: $out"
