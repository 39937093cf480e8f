"""QLoRA's load-time quantization: ctune's NF4 quantizer (nf4_tool time: kernels/nf4.h, the
load path's nf4_quantize) against bitsandbytes' quantize_4bit on the CPU (its reference
"default" backend, torch ops), on the seven Linear weights of one Llama-3.1-8B decoder layer
(218M values, random normal x 0.02, fp32 in memory for both), best of REPEATS, at 1 thread
and at THREADS. The codes and absmaxes of both must be the same bytes.
  bench_nf4.py --tool build/tools/nf4_tool --threads T [--repeats R] [--layers N]"""
import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from safetensors.torch import load_file, save_file

SHAPES = {  # Llama-3.1-8B: hidden 4096, 8 kv heads of 128, intermediate 14336
    "q_proj": (4096, 4096), "k_proj": (1024, 4096), "v_proj": (1024, 4096), "o_proj": (4096, 4096),
    "gate_proj": (14336, 4096), "up_proj": (14336, 4096), "down_proj": (4096, 14336),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tool", required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import bitsandbytes
    import bitsandbytes.functional as bnbf

    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"torch {torch.__version__}, bitsandbytes {bitsandbytes.__version__}")
    g = torch.Generator().manual_seed(0)
    weights = {f"model.layers.0.{k}.weight": torch.randn(*s, generator=g) * 0.02 for k, s in SHAPES.items()}
    total = sum(w.numel() for w in weights.values())
    print(f"# one Llama-3.1-8B layer: {total:,} values in 7 weights; best of {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "layer.safetensors")
        save_file(weights, src)
        for threads in sorted({1, args.threads}):
            out = os.path.join(tmp, f"ours-{threads}.safetensors")
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            lines = subprocess.run([args.tool, "time", src, out, str(args.repeats)], env=env, check=True,
                                   capture_output=True, text=True).stdout.split()
            ours = sum(float(lines[i + 2]) for i in range(0, len(lines), 3))
            torch.set_num_threads(threads)
            peer, same = 0.0, True
            got = load_file(out)
            for name, w in weights.items():
                best = 1e30
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
                    best = min(best, time.perf_counter() - start)
                peer += best
                same = same and np.array_equal(packed.reshape(-1).numpy(), got[name + ".codes"].numpy()) \
                    and np.array_equal(state.absmax.numpy().view(np.uint32), got[name + ".absmax"].numpy().view(np.uint32))
            print(f"threads {threads}: ctune {ours:.3f} s ({total / ours / 1e6:.0f} M values/s), "
                  f"bitsandbytes {peer:.3f} s ({total / peer / 1e6:.0f} M values/s), "
                  f"ratio x{peer / ours:.2f} faster; same codes and absmax: {same}")
            if not same:
                sys.exit(1)
    print("# at Llama-3.1-8B (32 such layers): ctune's quantization of the base at load ~ 32 x the time above")


if __name__ == "__main__":
    main()
