"""Driver of scripts/bench_cpu.sh: measures ctune and PyTorch on the same model and batch.

Each side runs in its own process so peak resident memory (ru_maxrss of the child) is
comparable. Tokens/s counts every position of every sequence (batch x seq) per optimizer
step, timed after warm-up steps.
"""
import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time

SEQ = 256
MICRO = 4
WARMUP = 3
STEPS = 10


def write_recipe(path, *, model, method, data, seq, micro, max_steps, output_dir, extra=""):
    """A ctune recipe for a benchmark run; `extra` is appended YAML (top-level keys)."""
    with open(path, "w") as f:
        f.write(f"""model:
  path: {model}
method: {method}
lora:
  r: 16
  alpha: 32
  target_modules: all-linear
data:
  train: {data}
  seq_len: {seq}
train:
  micro_batch_size: {micro}
  global_batch_size: {micro}
  max_steps: {max_steps}
  log_every: 1000
optim:
  lr: 1.0e-4
  schedule: constant
checkpoint:
  output_dir: {output_dir}
{extra}""")
    return path


def wait_measured(proc, poll=None, interval=0.05):
    """Waits for a Popen child; returns (exit status, its own peak resident MiB). wait4 gives
    the rusage of that child alone (RUSAGE_CHILDREN would be the max over all children so
    far). `poll()`, when given, runs every `interval` seconds while the child lives."""
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG if poll else 0)
        if pid == proc.pid:
            break
        poll()
        time.sleep(interval)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024.0


def read_step_metrics(path):
    """The step lines of a ctune metrics.jsonl (eval lines have no "loss")."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(l) for l in f if '"loss"' in l]


def timed_tokens_per_second(steps, warmup, micro, seq):
    """Tokens/s over the steps after `warmup` (>= 1), from ctune's per-step elapsed_s."""
    timed = len(steps) - warmup
    if warmup < 1 or timed < 1:
        return None
    return timed * micro * seq / (steps[-1]["elapsed_s"] - steps[warmup - 1]["elapsed_s"])


def run_ctune(ctune, work, method, threads):
    recipe = write_recipe(os.path.join(work, f"{method}.yaml"), model=os.path.join(work, "model"),
                          method=method, data=f"{work}/data.h5", seq=SEQ, micro=MICRO,
                          max_steps=WARMUP + STEPS, output_dir=f"{work}/run-{method}")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    with open(f"{work}/{method}.log", "w") as log:
        proc = subprocess.Popen([ctune, "train", recipe], env=env, stdout=log, stderr=subprocess.STDOUT)
        rc, peak = wait_measured(proc)
    if rc != 0:
        sys.exit(f"ctune failed:\n{open(f'{work}/{method}.log').read()}")
    steps = read_step_metrics(f"{work}/run-{method}/metrics.jsonl")
    return timed_tokens_per_second(steps, WARMUP, MICRO, SEQ), peak, steps[-1]["loss"]


TORCH_CHILD = r"""
import json, resource, sys, time
import torch
from transformers import AutoModelForCausalLM
model_dir, method, threads, seq, micro, warmup, steps = sys.argv[1:8]
threads, seq, micro, warmup, steps = int(threads), int(seq), int(micro), int(warmup), int(steps)
torch.set_num_threads(threads)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
if method == "lora":
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
model.train()
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
ids = torch.randint(0, 259, (micro, seq + 1))
x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
start = None
for step in range(warmup + steps):
    if step == warmup:
        start = time.perf_counter()
    logits = model(input_ids=x).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
elapsed = time.perf_counter() - start
print(json.dumps({"tok_s": steps * micro * seq / elapsed,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                  "loss": loss.item(), "torch": torch.__version__}))
"""


def run_torch(work, method, threads):
    proc = subprocess.run([sys.executable, "-c", TORCH_CHILD, os.path.join(work, "model"), method,
                           str(threads), str(SEQ), str(MICRO), str(WARMUP), str(STEPS)],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if proc.returncode != 0:
        sys.exit(f"torch failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctune", required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    ctune = os.path.abspath(args.ctune)
    with tempfile.TemporaryDirectory() as work:
        subprocess.run([ctune, "init", "--preset", "bench-20m", "-o", f"{work}/model"], check=True,
                       capture_output=True)
        rng = random.Random(0)
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 .,;:!?"
        with open(f"{work}/data.jsonl", "w") as f:
            for _ in range(64):
                f.write(json.dumps({"text": "".join(rng.choice(alphabet) for _ in range(SEQ + 64))}) + "\n")
        subprocess.run([ctune, "prep", "--tokenizer", f"{work}/model", "--format", "text",
                        f"{work}/data.jsonl", "-o", f"{work}/data.h5"], check=True, capture_output=True)
        print(f"# ctune CPU benchmark {time.strftime('%Y-%m-%d %H:%M')}")
        print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
              f"threads per side: {args.threads}")
        print(f"# model: preset bench-20m (see docs/model.md), fp32, seq {SEQ}, micro-batch {MICRO}, "
              f"{STEPS} timed steps after {WARMUP} warm-up")
        print(f"{'method':<6} {'side':<22} {'tok/s':>9} {'peak MiB':>9}")
        for method in ("lora", "full"):
            c_tok, c_mem, _ = run_ctune(ctune, work, method, args.threads)
            t = run_torch(work, method, args.threads)
            label = f"torch {t['torch']}" + (" + peft" if method == "lora" else "")
            print(f"{method:<6} {'ctune':<22} {c_tok:>9.0f} {c_mem:>9.0f}")
            print(f"{method:<6} {label:<22} {t['tok_s']:>9.0f} {t['peak_mib']:>9.0f}")
            print(f"{method:<6} ratio ctune/torch: tokens/s x{c_tok / t['tok_s']:.2f}, "
                  f"peak memory x{c_mem / t['peak_mib']:.2f}")


if __name__ == "__main__":
    main()
