"""Driver of scripts/bench_generate.sh: greedy generation, ctune vs transformers, same model.

The model is `ctune init --preset bench-20m` (a random ~34M-parameter Llama, 32000-token
vocabulary, byte-level tokenizer). Its random weights emit ids the byte tokenizer cannot
decode, so ctune prints ids (--ids) and neither side stops at EOS (--ignore-eos /
min_new_tokens). Both sides get the same prompt ids and THREADS threads; transformers runs
generate() with its KV cache (use_cache, SDPA attention) after a warm-up call.

Times, best of --repeats:
  prefill  the prompt's forward (ctune: --stats; transformers: generate with 1 new token);
  total    prompt plus every new token (ctune: --stats, load excluded; transformers: the
           generate() call);
  decode   (new tokens - 1) / (total - prefill): tokens/s once the prompt is in the cache;
  process  a whole process: ctune generate from start to exit, against python importing
           torch and transformers, from_pretrained and one generate() (--hf-once).
ctune's prefill is the first forward of its process (cold memory, thread pool starting), as a
user meets it; transformers' is timed after a warm-up call.
The greedy ids are compared token by token (fp32 on both sides: a random model's near-ties
can still part them after a while; the count says where).
"""
import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

STATS = re.compile(r"load ([0-9.]+) s; prompt (\d+) tokens ([0-9.]+) ms .*; (\d+) new tokens ([0-9.]+) ms")


def run_ctune(ctune, model, prompt, new_tokens, threads, device, precision):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    cmd = [ctune, "generate", "--model", model, "--prompt", prompt, "--max-new-tokens", str(new_tokens),
           "--ignore-eos", "--ids", "--stats", "--device", device, "--precision", precision]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"ctune generate failed ({proc.returncode}): {proc.stderr}")
    m = STATS.search(proc.stderr)
    if not m:
        sys.exit(f"no --stats line in ctune's stderr: {proc.stderr}")
    ids = [int(t) for t in proc.stdout.split()]
    prefill = float(m.group(3)) / 1e3
    return {"ids": ids, "prefill": prefill, "load": float(m.group(1)), "total": prefill + float(m.group(5)) / 1e3, "process": wall,
            "prompt_tokens": int(m.group(2))}


def hf_once(model_dir, prompt_ids, new_tokens, threads, device, precision):
    """One user-level generation in a fresh process: imports, load, generate."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa").to(device)
    input_ids = torch.tensor([prompt_ids], device=device)
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=258)
    print(out.shape[1] - len(prompt_ids))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--hf-once":
        model_dir, ids, n, threads, device, precision = sys.argv[2:8]
        hf_once(model_dir, [int(t) for t in ids.split(",")], int(n), int(threads), device, precision)
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctune", required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompt-chars", type=int, default=127, help="prompt length in bytes (+ BOS = tokens)")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16-mixed"])
    args = ap.parse_args()

    import torch
    import transformers
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    work = tempfile.mkdtemp(prefix="bench_generate_")
    model_dir = os.path.join(work, "bench-20m")
    subprocess.run([args.ctune, "init", "--preset", "bench-20m", "-o", model_dir], check=True,
                   stdout=subprocess.DEVNULL)
    words = "the quick brown fox jumps over the lazy dog while a fine-tuning run writes its checkpoint "
    prompt = (words * (args.prompt_chars // len(words) + 1))[: args.prompt_chars]
    prompt_ids = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json")).encode(prompt).ids

    print(f"host: {platform.node()}, {os.cpu_count()} cores; python {platform.python_version()}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    if args.device == "cuda":
        print(f"device: {torch.cuda.get_device_name(0)}")
    print(f"model: preset bench-20m (random, 32000 vocab); {args.precision} on {args.device}; "
          f"threads per side: {args.threads}; prompt {len(prompt_ids)} tokens; {args.new_tokens} new tokens, "
          f"greedy; best of {args.repeats}")

    c_runs = [run_ctune(args.ctune, model_dir, prompt, args.new_tokens, args.threads, args.device, args.precision)
              for _ in range(args.repeats)]
    if c_runs[0]["prompt_tokens"] != len(prompt_ids):
        sys.exit(f"ctune encoded the prompt to {c_runs[0]['prompt_tokens']} tokens, tokenizers to {len(prompt_ids)}")

    dtype = torch.bfloat16 if args.precision == "bf16-mixed" else torch.float32
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa").to(args.device)
    model.eval()
    load = time.perf_counter() - start
    input_ids = torch.tensor([prompt_ids], device=args.device)

    def generate(n):
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=n,
                                 min_new_tokens=n, do_sample=False, use_cache=True, pad_token_id=258)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out[0, len(prompt_ids):].tolist()

    generate(args.new_tokens)  # warm-up
    h_prefill = min(generate(1)[0] for _ in range(args.repeats))
    h_runs = [generate(args.new_tokens) for _ in range(args.repeats)]
    h_total = min(t for t, _ in h_runs)
    h_ids = h_runs[0][1]
    h_process = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, os.path.abspath(__file__), "--hf-once", model_dir,
                        ",".join(map(str, prompt_ids)), str(args.new_tokens), str(args.threads), args.device,
                        args.precision], check=True, capture_output=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        h_process.append(time.perf_counter() - start)

    c_prefill = min(r["prefill"] for r in c_runs)
    c_total = min(r["total"] for r in c_runs)
    c_process = min(r["process"] for r in c_runs)
    n = args.new_tokens
    c_decode = (n - 1) / (c_total - c_prefill)
    h_decode = (n - 1) / (h_total - h_prefill)
    agree = 0
    while agree < min(len(h_ids), len(c_runs[0]["ids"])) and h_ids[agree] == c_runs[0]["ids"][agree]:
        agree += 1
    same_runs = all(r["ids"] == c_runs[0]["ids"] for r in c_runs)

    print(f"{'':22}{'ctune':>12}{'transformers':>14}{'ratio':>9}")
    print(f"{'prefill (ms)':22}{1e3 * c_prefill:12.1f}{1e3 * h_prefill:14.1f}{h_prefill / c_prefill:8.2f}x")
    print(f"{'prompt + new (ms)':22}{1e3 * c_total:12.1f}{1e3 * h_total:14.1f}{h_total / c_total:8.2f}x")
    print(f"{'decode (tokens/s)':22}{c_decode:12.1f}{h_decode:14.1f}{c_decode / h_decode:8.2f}x")
    print(f"{'process (s)':22}{c_process:12.2f}{min(h_process):14.2f}{min(h_process) / c_process:8.2f}x")
    print(f"{'load (s)':22}{min(r['load'] for r in c_runs):12.3f}{load:14.3f}"
          f"{load / min(r['load'] for r in c_runs):8.2f}x   (transformers: from_pretrained, torch already imported)")
    print(f"greedy ids: the first {agree} of {n} agree; ctune's repeats identical: {same_runs}")
    print("ratios: transformers time / ctune time, and ctune tokens/s / transformers tokens/s (> 1: ctune faster)")


if __name__ == "__main__":
    main()
