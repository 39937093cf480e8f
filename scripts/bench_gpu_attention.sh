#!/usr/bin/env bash
# Attention micro-benchmark (issue 4): ctune's CUDA attention (forward with 16 and 32 query
# rows per warp, backward storing dS and recomputing it) against PyTorch's FlashAttention
# (scaled_dot_product_attention, flash backend, causal) on the same shapes, in the same run,
# with the ratios. Raw output: gpu-<device>-YYYYMMDD-attention.txt in $OUT if set, else
# docs/benchmarks/.
#   scripts/bench_gpu_attention.sh [--fmt bf16|fp16] [--reps N] [--warmup N] [--no-peer] [--no-ncu]
#                                  [BATCH,SEQ,HEADS,KV_HEADS,HEAD_DIM ...]
# Default shapes: 4,2048,32,8,64 (Llama-3.2-1B at the benchmark's batch), 2,2048,32,8,128,
# 1,8192,32,8,64. Environment: PYTHON (with torch, CUDA; default python3), BENCH (the
# bench_attention_cuda program; default $CTUNE_BUILD_DIR/bench_attention_cuda as set by
# scripts/gpu_session.sh run, else build-gpu/ or build/). Through the GPU session:
#   scripts/gpu_session.sh run --no-tests scripts/bench_gpu_attention.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
bench=${BENCH:-}
if [ -z "$bench" ]; then
    for candidate in ${CTUNE_BUILD_DIR:+"$CTUNE_BUILD_DIR/bench_attention_cuda"} build-gpu/bench_attention_cuda \
        build/bench_attention_cuda; do
        if [ -x "$candidate" ]; then bench=$candidate; break; fi
    done
fi
[ -n "$bench" ] || { echo "bench_gpu_attention.sh: no bench_attention_cuda (a CUDA build makes it; or set BENCH=path)" >&2; exit 1; }
exec "$python" scripts/bench_gpu_attention.py --bench "$bench" --python "$python" "$@"
