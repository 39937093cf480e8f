#!/usr/bin/env bash
# GPU benchmark (issue 4): ctune vs Hugging Face transformers (+ peft) on one GPU, on a
# randomly initialised model with Llama-3.2-1B's exact config, sequence 2048, in one run,
# ctune in precision bf16-mixed against HF in autocast bf16: full fine-tuning tokens/s and
# MFU, LoRA (r 16, all linear layers) tokens/s and peak GPU memory (ctune with activation
# checkpointing off and on), time from launch to the first optimizer step; ratios against
# the peer measured in the same run. Raw output: docs/benchmarks/gpu-<device>-YYYYMMDD.txt.
#   scripts/bench_gpu.sh [--device cuda|cpu] [--preset llama-3.2-1b|small] [--seq N]
#                        [--batch N] [--steps N] [--warmup N] [...]   (--help: all options)
#   CPU smoke run:  scripts/bench_gpu.sh --device cpu --preset small --seq 128 --batch 2 --steps 3 --warmup 1
# Environment: PYTHON (with torch, transformers, peft; default python3), CTUNE (the binary;
# default $CTUNE_BUILD_DIR/ctune as set by scripts/gpu_session.sh run, else build-gpu/ctune
# or build/ctune, whichever exists). Through the GPU session:
#   scripts/gpu_session.sh run --no-tests scripts/bench_gpu.sh   (the command as separate words;
#   after a first `run` that built and tested on the same warm machine)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
ctune=${CTUNE:-}
if [ -z "$ctune" ]; then
    for candidate in ${CTUNE_BUILD_DIR:+"$CTUNE_BUILD_DIR/ctune"} build-gpu/ctune build/ctune; do
        if [ -x "$candidate" ]; then ctune=$candidate; break; fi
    done
fi
[ -n "$ctune" ] || { echo "bench_gpu.sh: no ctune binary (build it, or set CTUNE=path)" >&2; exit 1; }
exec "$python" scripts/bench_gpu.py --ctune "$ctune" --python "$python" "$@"
