"""Driver of scripts/bench_gpu_attention.sh: ctune's CUDA attention against PyTorch's
FlashAttention (scaled_dot_product_attention on the flash backend, causal, bf16) on the same
shapes, in the same run, on one GPU.

ctune's side is the compiled program bench_attention_cuda (scripts/bench_attention_cuda.c):
the forward with 16 and with 32 query rows per warp, the backward storing dS and recomputing
it, after checking that each pair agrees. The peer times its forward and its backward
(torch.autograd.grad of the output) with CUDA events. FLOPs are FlashAttention's count
(causal: half of 4 B H S^2 D forward, 2.5x that backward); ratio = peer ms / ctune ms (above
1: ctune faster).

Then, where Nsight Compute (ncu) is installed and may read the GPU's counters, one launch of
each mma kernel at the first shape (the check pass of bench_attention_cuda --check-only) is
profiled: throughput against peak, occupancy, the warps' stall reasons, issue slots, the
tensor pipe's use. The timings above say how far from FlashAttention the kernels are; these
say why (latency: which stall; issue; memory), which a GPU session cannot otherwise see in
its few minutes. Skipped with --no-ncu, or (saying why) where ncu is missing or refused.
"""
import shutil
import argparse
import glob
import os
import re
import subprocess
import sys
import time

# Llama-3.2-1B's attention at the benchmark's batch (head_dim 64), an 8B-sized head_dim 128
# (Llama-3-8B: 32 heads, 8 kv heads), and a long sequence.
DEFAULT_SHAPES = ["4,2048,32,8,64", "2,2048,32,8,128", "1,8192,32,8,64"]

PEER = r'''
import sys, torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
fmt, reps, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
dtype = torch.bfloat16 if fmt == "bf16" else torch.float16
for spec in sys.argv[4:]:
    b, s, h, kv, d = map(int, spec.split(","))
    g = torch.Generator(device="cuda").manual_seed(0)
    def rand(heads):  # ctune's layout [batch, seq, heads, d], seen as [batch, heads, seq, d]
        return torch.randn(b, s, heads, d, device="cuda", dtype=dtype, generator=g).transpose(1, 2)
    q, k, v = rand(h).requires_grad_(), rand(kv).requires_grad_(), rand(kv).requires_grad_()
    dout = rand(h)
    gqa = "native"
    def forward():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            forward()
    except Exception as e:  # a torch whose flash path takes no GQA: the kv heads repeated
        gqa = "repeated kv heads (" + type(e).__name__ + ")"
        kr = k.detach().repeat_interleave(h // kv, dim=1).requires_grad_()
        vr = v.detach().repeat_interleave(h // kv, dim=1).requires_grad_()
        k, v = kr, vr
        def forward():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    def timed(fn):
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / reps
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        fwd_ms = timed(forward)
        out = forward()
        bwd_ms = timed(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True))
    print(f"peer {spec} fwd {fwd_ms:.4f} bwd {bwd_ms:.4f} gqa {gqa}", flush=True)
'''


NCU_SECTIONS = ["SpeedOfLight", "Occupancy", "LaunchStats", "WarpStateStats", "SchedulerStats",
                "ComputeWorkloadAnalysis", "InstructionStats", "MemoryWorkloadAnalysis"]


def find_ncu():
    """ncu on PATH, else where CUDA toolkits and Nsight Compute installs put it."""
    found = shutil.which("ncu")
    if found:
        return found
    for pattern in ("/usr/local/cuda/bin/ncu", "/usr/local/cuda-*/bin/ncu", "/opt/nvidia/nsight-compute/*/ncu",
                    "/usr/local/cuda*/nsight-compute*/ncu"):
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[-1]
    return None


def ncu_profile(bench, fmt, shape, say, time_limit):
    """One launch of each am_* kernel (fwd 16 and 32 rows, dk/dv, dq both ways) at shape."""
    ncu = find_ncu()
    if not ncu:
        say("# ncu: not found (PATH, /usr/local/cuda*/bin, /opt/nvidia/nsight-compute): no kernel profile")
        return
    cmd = [ncu, "--kernel-name", "regex:am_", "--launch-count", "8"]
    for section in NCU_SECTIONS:
        cmd += ["--section", section]
    cmd += [bench, "--check-only", "--fmt", fmt, *[str(x) for x in shape]]
    say(f"# ncu: {' '.join(cmd)}")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=time_limit)
        text, status = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        status = f"timed out after {time_limit} s"
    for line in text.splitlines():
        say(f"#   {line}")
    if status != 0:
        say(f"# ncu: status {status} (an ERR_NVGPUCTRPERM above means the counters are closed to this user)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", required=True, help="the bench_attention_cuda program")
    ap.add_argument("--python", default="python3", help="a Python with torch (CUDA)")
    ap.add_argument("--fmt", choices=["bf16", "fp16"], default="bf16")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-peer", action="store_true", help="ctune only")
    ap.add_argument("--no-ncu", action="store_true", help="no Nsight Compute profile of the kernels")
    ap.add_argument("--ncu-time-limit", type=int, default=150, help="seconds for the ncu run (default 150)")
    ap.add_argument("--out", help="raw output file (default gpu-<device>-YYYYMMDD-attention.txt in $OUT if "
                                  "set, else docs/benchmarks/)")
    ap.add_argument("shapes", nargs="*", default=DEFAULT_SHAPES, help="BATCH,SEQ,HEADS,KV_HEADS,HEAD_DIM ...")
    args = ap.parse_args()
    shapes = []
    for spec in args.shapes:
        parts = spec.split(",")
        if len(parts) != 5 or not all(p.isdigit() and int(p) > 0 for p in parts):
            sys.exit(f"bench_gpu_attention: shape '{spec}': expected BATCH,SEQ,HEADS,KV_HEADS,HEAD_DIM")
        shapes.append(tuple(int(p) for p in parts))

    name = "gpu"
    if not args.no_peer:
        p = subprocess.run([args.python, "-c", "import torch; print(torch.cuda.get_device_name())"],
                           capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"{args.python} cannot name a CUDA device (the peer needs torch with CUDA):\n{p.stderr}")
        name = p.stdout.strip().splitlines()[-1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = args.out or os.path.join(os.environ.get("OUT") or os.path.join(root, "docs", "benchmarks"),
                                   f"gpu-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}-"
                                   f"{time.strftime('%Y%m%d')}-attention.txt")
    lines = []

    def say(text):
        print(text, flush=True)
        lines.append(text)

    say(f"# ctune attention benchmark {time.strftime('%Y-%m-%d %H:%M')} (scripts/bench_gpu_attention.sh "
        f"{' '.join(sys.argv[1:])})")
    say(f"# device: {name}; format {args.fmt}; {args.reps} timed calls after {args.warmup} warm-up calls")
    say("# FLOPs: causal half of 4 B H S^2 D forward, 2.5x that backward (FlashAttention's count); "
        "ratio = peer ms / ctune ms")
    ctune = subprocess.run([args.bench, "--fmt", args.fmt, "--reps", str(args.reps), "--warmup", str(args.warmup),
                            *[str(x) for s in shapes for x in s]], capture_output=True, text=True)
    for line in (ctune.stdout + ctune.stderr).splitlines():
        say(f"#   {line}")
    if ctune.returncode != 0:
        say(f"# bench_attention_cuda failed (status {ctune.returncode})")
    ours = {}  # (shape text, way) -> ms
    for m in re.finditer(r"^ctune (\S+) b (\d+) s (\d+) h (\d+)/(\d+) d (\d+) \S+: ([0-9.]+) ms", ctune.stdout, re.M):
        ours[(",".join(m.group(i) for i in range(2, 7)), m.group(1))] = float(m.group(7))
    peer = {}
    if not args.no_peer:
        p = subprocess.run([args.python, "-c", PEER, args.fmt, str(args.reps), str(args.warmup),
                            *[",".join(map(str, s)) for s in shapes]], capture_output=True, text=True)
        for line in (p.stdout + p.stderr).splitlines():
            say(f"#   {line}")
        for m in re.finditer(r"^peer (\S+) fwd ([0-9.]+) bwd ([0-9.]+)", p.stdout, re.M):
            peer[(m.group(1), "fwd")] = float(m.group(2))
            peer[(m.group(1), "bwd")] = float(m.group(3))
    say(f"{'shape b,s,h,kv,d':20} {'way':14} {'ctune ms':>9} {'TFLOP/s':>8} {'peer ms':>9} {'TFLOP/s':>8} {'ratio':>6}")
    for s in shapes:
        key = ",".join(map(str, s))
        fwd_flops = 2.0 * s[0] * s[2] * s[1] * s[1] * s[4]
        for way in ("fwd16", "fwd32", "bwd", "bwd-recompute"):
            flops = fwd_flops * (1.0 if way.startswith("fwd") else 2.5)
            ms = ours.get((key, way))
            pms = peer.get((key, "fwd" if way.startswith("fwd") else "bwd"))
            ms_text = lambda t: f"{t:9.3f}" if t else f"{'-':>9}"
            tf_text = lambda t: f"{flops / (t * 1e-3) / 1e12:8.1f}" if t else f"{'-':>8}"
            ratio = f"{pms / ms:6.2f}" if ms and pms else f"{'-':>6}"
            say(f"{key:20} {way:14} {ms_text(ms)} {tf_text(ms)} {ms_text(pms)} {tf_text(pms)} {ratio}")
    if not args.no_ncu and ctune.returncode == 0:
        ncu_profile(args.bench, args.fmt, shapes[0], say, args.ncu_time_limit)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"raw output: {out}")
    return 0 if ctune.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
