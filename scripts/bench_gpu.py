"""Driver of scripts/bench_gpu.sh: ctune vs Hugging Face transformers (+ peft) on one GPU.

Both sides train the same randomly initialised model (Llama-3.2-1B's exact config, or a
few-M-parameter `small` preset with the same shape ratios for a CPU smoke run) on the same
batch shape, each in its own process, one after the other. Measured per run: tokens/s (every
position of every sequence, over the steps after the warm-up), model FLOPs utilisation (full
fine-tuning), peak memory, and the time from launch to the end of the first optimizer step.
Helpers shared with the CPU benchmark come from bench_cpu.py.
"""
import argparse
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cpu import read_step_metrics, timed_tokens_per_second, wait_measured, write_recipe  # noqa: E402

# Llama-3.2-1B's config.json (meta-llama/Llama-3.2-1B), and a small model with the same ratios:
# head_dim 64, 4 query heads per kv head, intermediate = 4 x hidden, tied embeddings.
PRESETS = {
    "llama-3.2-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, intermediate_size=8192, vocab_size=128256),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=1, intermediate_size=1024, vocab_size=8192),
}
COMMON = dict(rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=131072,
              tie_word_embeddings=True, hidden_act="silu", attention_bias=False, mlp_bias=False,
              rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
# Dense bf16 tensor-core peak of H100 SXM / H200 (the issue's reference).
PEAK_BF16 = 989e12
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

MAKE_MODEL = r"""
import json, sys, torch, transformers, peft
from transformers import LlamaConfig, LlamaForCausalLM
cfg, out, device = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
torch.manual_seed(0)
config = LlamaConfig(**cfg, bos_token_id=cfg["vocab_size"] - 256, eos_token_id=cfg["vocab_size"] - 255)
with torch.device(device):  # initialising 1.2B parameters is much faster on the GPU
    model = LlamaForCausalLM(config).to(torch.bfloat16)  # Llama-3.2-1B ships bf16 weights
model.save_pretrained(out)
print(json.dumps({"params": sum(p.numel() for p in model.parameters()), "torch": torch.__version__,
                  "transformers": transformers.__version__, "peft": peft.__version__}))
"""

# One Hugging Face run. bf16 means what a Trainer(bf16=True) user gets: autocast to bf16, with
# fp32 master weights for full fine-tuning, and the frozen base loaded in bf16 for LoRA (peft
# keeps the adapters in fp32). Loss: labels=input_ids, the model's own shifted loss.
HF_CHILD = r"""
import json, resource, sys, time, contextlib
launched = float(sys.argv[1])
import torch
from transformers import AutoModelForCausalLM
a = json.loads(sys.argv[2])
cuda = a["device"] == "cuda"
if not cuda:
    torch.set_num_threads(a["threads"])
torch.manual_seed(0)
bf16 = a["precision"] == "bf16"
base_dtype = torch.bfloat16 if bf16 and a["method"] == "lora" else torch.float32
model = AutoModelForCausalLM.from_pretrained(a["model"], dtype=base_dtype, attn_implementation="sdpa")
model.to(a["device"])
if a["grad_ckpt"]:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
if a["method"] == "lora":
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=a["lora_dropout"],
                                             target_modules=a["targets"]))
    if a["grad_ckpt"]:
        model.enable_input_require_grads()
model.train()
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=cuda)
gen = torch.Generator().manual_seed(0)
ids = torch.randint(0, a["vocab"], (a["micro"], a["seq"]), generator=gen).to(a["device"])
autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
def sync():
    if cuda:
        torch.cuda.synchronize()
first_step_s, start = None, None
try:
    for step in range(a["warmup"] + a["steps"]):
        if step == a["warmup"]:
            sync()
            start = time.perf_counter()
        for _ in range(a["accum"]):  # gradient accumulation: the loss averaged over the micro-batches
            with autocast:
                loss = model(input_ids=ids, labels=ids).loss
            (loss / a["accum"]).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step == 0:
            sync()
            first_step_s = time.time() - launched
    sync()
except torch.OutOfMemoryError as e:
    print(json.dumps({"error": "out of memory: " + str(e).splitlines()[0]}))
    sys.exit(0)
elapsed = time.perf_counter() - start
print(json.dumps({"tok_s": a["steps"] * a["accum"] * a["micro"] * a["seq"] / elapsed, "first_step_s": first_step_s,
                  "peak_alloc_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                  "loss": loss.item()}))
"""


def python_env(threads):
    """Environment of the Python children: scripts/gpu_session.sh run puts the libraries it
    unpacked for ctune (Open MPI, HDF5 and their closure) on LD_LIBRARY_PATH; PyTorch must
    not pick those up in place of the system's, so their folders are left out here."""
    prefix = os.environ.get("CTUNE_PREFIX", "/tmp/ctune-deps").rstrip("/") + "/"
    kept = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d and not d.startswith(prefix)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if kept:
        env["LD_LIBRARY_PATH"] = ":".join(kept)
    else:
        env.pop("LD_LIBRARY_PATH", None)
    return env


class Tee:
    """Everything printed goes to the terminal and to the raw-output file."""

    def __init__(self, path):
        self.file = open(path, "w")

    def __call__(self, *parts):
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


class GpuMemorySampler:
    """Max of nvidia-smi's memory.used (MiB) over a run, sampled every 100 ms by one
    long-lived nvidia-smi; ctune does not report device memory itself."""

    def __init__(self, gpu):
        self.gpu, self.peak, self.proc, self.thread = gpu, None, None, None

    def query(self):
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used,memory.total",
                              "--format=csv,noheader,nounits", "-i", self.gpu],
                             capture_output=True, text=True, check=True).stdout
        used, total = out.strip().splitlines()[0].split(",")
        return float(used), float(total)

    def start(self):
        self.peak = None
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                      "-i", self.gpu, "-lms", "100"], stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                value = float(line.strip())
            except ValueError:
                continue
            self.peak = value if self.peak is None else max(self.peak, value)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        self.thread.join(timeout=5)
        return self.peak


def settled_baseline(sampler):
    """memory.used once the previous run's memory is released (it lags the process exit)."""
    last = sampler.query()[0]
    for _ in range(20):
        time.sleep(0.5)
        now = sampler.query()[0]
        if abs(now - last) < 2:
            return now
        last = now
    return last


def make_tokenizer(path, vocab):
    """A BPE tokenizer.json whose vocabulary is exactly `vocab` ids, so that ctune prep turns
    space-separated words into uniformly random ids over the whole vocabulary: K single
    characters (U+0100..) and then every two-character word (one merge each, in id order)
    until `vocab` ids. Words are split on spaces, so every word is one token."""
    k = math.ceil((math.sqrt(1 + 4 * vocab) - 1) / 2)
    chars = [chr(0x100 + i) for i in range(k)]
    words, merges = list(chars), []
    for t in range(k, vocab):
        a, b = divmod(t - k, k)
        words.append(chars[a] + chars[b])
        merges.append(f"{chars[a]} {chars[b]}")
    doc = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
           "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "Removed", "invert": False},
           "post_processor": None, "decoder": None,
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                     "ignore_merges": False, "vocab": {w: i for i, w in enumerate(words)}, "merges": merges}}
    with open(path, "w") as f:
        json.dump(doc, f, ensure_ascii=False)
    return words


def make_data(ctune, work, vocab, seq, n_docs):
    """n_docs documents of seq + 1 tokens (bos, seq - 1 random ids, eos): every position of a
    sequence has a target. Returns the dataset path after checking its token count."""
    words = make_tokenizer(f"{work}/tokenizer.json", vocab)
    rng = random.Random(0)
    with open(f"{work}/data.jsonl", "w") as f:
        for _ in range(n_docs):
            text = " ".join(words[rng.randrange(vocab)] for _ in range(seq - 1))
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    subprocess.run([ctune, "prep", "--tokenizer", f"{work}/tokenizer.json", "--format", "text",
                    "--bos-id", str(vocab - 256), "--eos-id", str(vocab - 255),
                    f"{work}/data.jsonl", "-o", f"{work}/data.h5"], check=True, capture_output=True)
    summary = subprocess.run([ctune, "inspect", f"{work}/data.h5"], check=True, capture_output=True,
                             text=True).stdout
    m = re.search(r"^tokens\s+([0-9]+)", summary, re.MULTILINE)
    want = n_docs * (seq + 1)
    if not m or int(m.group(1)) != want:
        sys.exit(f"dataset check: expected {want} tokens, ctune inspect says:\n{summary}")
    return f"{work}/data.h5"


def flops_per_token(params, cfg, seq):
    return 6 * params + 12 * cfg["num_hidden_layers"] * cfg["hidden_size"] * seq


def run_ctune(args, ctune, work, method, precision, ckpt, sampler):
    """One ctune training run. Killed (SIGKILL: SIGTERM would make it checkpoint) once its
    last step is logged, so that the final save is not waited for."""
    tag = f"{method}-{precision}" + ("-ckpt" if ckpt else "")  # each run its own folder and metrics
    out_dir = f"{work}/run-{tag}"
    recipe = write_recipe(f"{work}/{tag}.yaml", model=f"{work}/model", method=method,
                          data=f"{work}/data.h5", seq=args.seq, micro=args.batch,
                          max_steps=args.warmup + args.steps, output_dir=out_dir,
                          extra=f"precision: {precision}\ndevice: {args.device}\n")
    overrides = ((["train.activation_checkpointing=true"] if ckpt else []) + [f"lora.dropout={args.lora_dropout}"]
                 + [f"train.global_batch_size={args.batch * args.accum}"])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if args.profile:
        env["CTUNE_PROFILE"] = "1"
    baseline = settled_baseline(sampler) if sampler else None
    result = {"precision": precision, "ckpt": ckpt}
    log_path = f"{work}/{tag}.log"
    metrics = f"{out_dir}/metrics.jsonl"
    total = args.warmup + args.steps
    with open(log_path, "w") as log:
        if sampler:
            sampler.start()
        launched = time.time()
        proc = subprocess.Popen([ctune, "train", recipe, *overrides], env=env, stdout=log, stderr=subprocess.STDOUT)
        state = {"first": None, "done": False}

        def poll():
            if state["done"]:
                return
            n = len(read_step_metrics(metrics)) if os.path.exists(metrics) else 0
            if n >= 1 and state["first"] is None:
                state["first"] = time.time() - launched
            # A profiled run prints its table after the last step: it is let finish.
            if (n >= total and not args.profile) or time.time() - launched > args.run_timeout:
                state["done"] = True
                os.kill(proc.pid, signal.SIGKILL)

        rc, rss = wait_measured(proc, poll)
        peak = sampler.stop() if sampler else None
    steps = read_step_metrics(metrics)
    if len(steps) < total:
        text = open(log_path).read()
        result["error"] = (f"timed out after {args.run_timeout} s at step {len(steps)}"
                           if time.time() - launched > args.run_timeout else f"exit status {rc}")
        result["log"] = text
        if len(steps) > args.warmup:  # enough for a rate over fewer timed steps
            result["tok_s"] = timed_tokens_per_second(steps, args.warmup, args.batch * args.accum, args.seq)
            result["error"] += f" (tok/s over {len(steps) - args.warmup} timed steps)"
    else:
        result["tok_s"] = timed_tokens_per_second(steps, args.warmup, args.batch * args.accum, args.seq)
    if args.profile:
        text = open(log_path).read()
        m = re.search(r"^profile \(CTUNE_PROFILE.*?outside the ops.*?$", text, re.S | re.M)
        result["profile"] = m.group(0) if m else "(no profile in the log: the run ended early)"
    result["first_step_s"] = state["first"]
    result["loss"] = steps[-1]["loss"] if steps else None
    result["mem_mib"] = (peak - baseline) if sampler and peak is not None else (None if sampler else rss)
    # ctune's own count of its backend memory (metrics.jsonl), beside HF's max_memory_allocated
    counted = steps[-1].get("peak_memory_bytes") if steps else None
    result["peak_alloc_mib"] = counted / 2**20 if counted else None
    return result


def ctune_plan(args, ctune, work, method, precision, ckpt):
    """ctune train --dry-run: (error text or None, estimated bytes)."""
    tag = f"plan-{method}"
    extra = f"precision: {precision}\ndevice: {args.device}\n"
    recipe = write_recipe(f"{work}/{tag}.yaml", model=f"{work}/model", method=method,
                          data=f"{work}/data.h5", seq=args.seq, micro=args.batch, max_steps=1,
                          output_dir=f"{work}/{tag}", extra=extra)
    overrides = ((["train.activation_checkpointing=true"] if ckpt else []) + [f"lora.dropout={args.lora_dropout}"]
                 + [f"train.global_batch_size={args.batch * args.accum}"])
    p = subprocess.run([ctune, "train", recipe, *overrides, "--dry-run"], capture_output=True, text=True)
    if p.returncode != 0:
        return (p.stderr + p.stdout).strip(), None
    m = re.search(r"rank 0: .* total (\d+)", p.stdout)
    return None, int(m.group(1)) if m else None


def run_hf(args, work, method, precision, sampler, grad_ckpt=False):
    child = dict(model=f"{work}/model", method=method, precision=precision, device=args.device,
                 threads=args.threads, seq=args.seq, micro=args.batch, accum=args.accum, warmup=args.warmup,
                 steps=args.steps, vocab=PRESETS[args.preset]["vocab_size"], targets=LORA_TARGETS,
                 grad_ckpt=grad_ckpt, lora_dropout=args.lora_dropout)
    baseline = settled_baseline(sampler) if sampler else None
    if sampler:
        sampler.start()
    launched = time.time()
    proc = subprocess.Popen([args.python, "-c", HF_CHILD, repr(launched), json.dumps(child)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=python_env(args.threads))
    try:
        out, err = proc.communicate(timeout=args.run_timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        out = json.dumps({"error": f"timed out after {args.run_timeout} s"})
    peak = sampler.stop() if sampler else None
    lines = out.strip().splitlines()
    if proc.returncode not in (0, -9) or not lines:
        last = next((l for l in reversed(err.strip().splitlines()) if l.strip()), "")
        return {"precision": precision, "ckpt": grad_ckpt, "error": f"exit status {proc.returncode}: {last}",
                "log": err}
    r = json.loads(lines[-1])
    r.update(precision=precision, ckpt=grad_ckpt)
    if sampler:
        r["mem_mib"] = None if peak is None else peak - baseline
    else:
        r["mem_mib"] = r.get("peak_rss_mib")
    if "error" in r and "out of memory" in r["error"] and not grad_ckpt:
        retry = run_hf(args, work, method, precision, sampler, grad_ckpt=True)
        retry["note"] = f"without gradient checkpointing: {r['error'][:100]}"
        return retry
    return r


def gpu_for_smi():
    """nvidia-smi -i argument of the GPU the runs use: the first CUDA_VISIBLE_DEVICES entry."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return visible or "0"


def device_name(args):
    if args.device == "cpu":
        return "cpu"
    p = subprocess.run([args.python, "-c", "import torch; print(torch.cuda.get_device_name())"],
                       capture_output=True, text=True, env=python_env(args.threads))
    if p.returncode != 0:
        sys.exit(f"{args.python} cannot name a CUDA device (--device cuda needs torch with CUDA):\n{p.stderr}")
    return p.stdout.strip().splitlines()[-1]


def fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def verdict(ok):
    return "met" if ok else "NOT met"


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="llama-3.2-1b")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=4, help="sequences per micro-batch")
    ap.add_argument("--accum", type=int, default=1,
                    help="micro-batches per optimizer step, both sides (gradient accumulation; the issue's "
                         "targets are judged at 1, where the optimizer's pass weighs most)")
    ap.add_argument("--steps", type=int, default=8, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1)")
    ap.add_argument("--methods", default="full,lora")
    ap.add_argument("--ctune", required=True)
    ap.add_argument("--python", default=sys.executable, help="Python with torch, transformers, peft")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--activation-checkpointing", choices=["auto", "on", "off"], default="auto",
                    help="ctune's; auto: on when its --dry-run estimate exceeds 90%% of the GPU")
    ap.add_argument("--run-timeout", type=float, default=200, help="seconds per training run")
    ap.add_argument("--peak-tflops", type=float, help="bf16 dense peak for MFU (default: H100/H200 989)")
    ap.add_argument("--out", help="raw output file (default gpu-<device>-YYYYMMDD.txt in $OUT if set, "
                                  "else in docs/benchmarks/)")
    ap.add_argument("--work-dir", help="where the model and data go (default: a temporary folder)")
    ap.add_argument("--profile", action="store_true",
                    help="ctune runs under CTUNE_PROFILE=1 (a device wait after every op: slower) and "
                         "their op tables go into the raw output")
    ap.add_argument("--precision", choices=["fp32", "bf16-mixed", "fp16-mixed"],
                    help="ctune's precision (default: bf16-mixed on cuda, fp32 on cpu; a CPU run "
                         "in bf16-mixed with --profile counts the GPU's ops per step)")
    ap.add_argument("--no-peer", action="store_true", help="skip the Hugging Face runs")
    ap.add_argument("--lora-dropout", type=float, default=0.0,
                    help="LoRA dropout on both sides (the shipped llama3.2-1b recipe trains with 0.05)")
    args = ap.parse_args()
    if args.warmup < 1 or args.steps < 1 or args.accum < 1 or args.batch < 1:
        sys.exit("--warmup, --steps, --accum and --batch must be at least 1")
    ctune = os.path.abspath(args.ctune)
    cfg = dict(PRESETS[args.preset], **COMMON)
    cuda = args.device == "cuda"
    name = device_name(args)
    # On the device machine only $OUT comes back: the raw file goes there when it is set.
    out = args.out or os.path.join(os.environ.get("OUT") or os.path.join(root, "docs", "benchmarks"),
                                   f"gpu-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}-{time.strftime('%Y%m%d')}"
                                   + (f"-accum{args.accum}" if args.accum > 1 else "")
                                   + ("-profile" if args.profile else "") + ".txt")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    say = Tee(out)
    sampler = GpuMemorySampler(gpu_for_smi()) if cuda else None
    gpu_total = sampler.query()[1] if cuda else None
    peak = args.peak_tflops * 1e12 if args.peak_tflops else PEAK_BF16
    peak_known = args.peak_tflops or any(g in name for g in ("H100", "H200"))
    began = time.time()
    if args.work_dir:
        os.makedirs(args.work_dir, exist_ok=True)
    holder = tempfile.TemporaryDirectory(dir=args.work_dir)
    work = holder.name
    try:
        made = subprocess.run([args.python, "-c", MAKE_MODEL, json.dumps(cfg), f"{work}/model", args.device],
                              capture_output=True, text=True, env=python_env(args.threads))
        if made.returncode != 0:
            sys.exit(f"making the model failed:\n{made.stderr}")
        info = json.loads(made.stdout.strip().splitlines()[-1])
        n_docs = max(64, args.batch * args.accum * (args.warmup + args.steps))
        make_data(ctune, work, cfg["vocab_size"], args.seq, n_docs)
        rev = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        # The device machine's copy carries the session's starting .git with the current files:
        # say when the sources differ from that commit (the notes then name the real one).
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        rev_label = (rev.stdout.strip() or "?") + (" + uncommitted changes" if dirty else "")
        params, fpt = info["params"], flops_per_token(info["params"], cfg, args.seq)
        say(f"# ctune GPU benchmark {time.strftime('%Y-%m-%d %H:%M')} (scripts/bench_gpu.sh "
            f"--device {args.device} --preset {args.preset} --seq {args.seq} --batch {args.batch} "
            f"--accum {args.accum} "
            f"--steps {args.steps} --warmup {args.warmup})")
        say(f"# device: {name}" + (f", {gpu_total:.0f} MiB" if cuda else f", {args.threads} threads per side"))
        say(f"# ctune {rev_label} ({ctune}); torch {info['torch']}, transformers "
            f"{info['transformers']}, peft {info['peft']}")
        say(f"# model: random init, preset {args.preset}: hidden {cfg['hidden_size']}, layers "
            f"{cfg['num_hidden_layers']}, heads {cfg['num_attention_heads']}/{cfg['num_key_value_heads']} kv, "
            f"intermediate {cfg['intermediate_size']}, vocab {cfg['vocab_size']}, tied, rope llama3; "
            f"N = {params:,} parameters")
        say(f"# data: uniformly random token ids (ctune prep of a generated {cfg['vocab_size']}-id tokenizer); "
            f"batch {args.batch} x seq {args.seq} x {args.accum} micro-batch(es) = "
            f"{args.batch * args.seq * args.accum} tokens per optimizer step; "
            f"{args.steps} timed steps after {args.warmup} warm-up; AdamW, grad clip 1.0; LoRA r 16 alpha 32 "
            f"on all 7 linear projections, dropout {args.lora_dropout:g}")
        say(f"# FLOPs per token = 6N + 12 * layers * hidden * seq = {6 * params:.4g} + "
            f"{fpt - 6 * params:.4g} = {fpt:.4g} (attention term counts the full seq x seq, not causal half)")
        if cuda:
            say(f"# MFU = tokens/s x FLOPs per token / {peak / 1e12:.0f} TFLOP/s (dense bf16"
                + (", H100/H200 SXM)" if not args.peak_tflops else ", --peak-tflops)")
                + ("" if peak_known else " -- device not recognised, MFU against H100's peak"))
            say("# memory: max of nvidia-smi memory.used (sampled every 100 ms) minus the idle value "
                "before launch, both sides (CUDA context and allocator cache included); alloc MiB: "
                "HF's torch.cuda.max_memory_allocated, ctune's own peak count of its buffers and pool "
                "scratch (metrics.jsonl peak_memory_bytes)")
            say("# HF bf16 = autocast bf16, SDPA, fused AdamW; full: fp32 master weights; LoRA: base loaded "
                "in bf16, adapters fp32 (peft default)")
            say("# ctune bf16-mixed: bf16 GEMM operands (cuBLASLt, fp32 accumulation), fp32 master weights "
                "and AdamW state; LoRA also runs with the other activation checkpointing setting")
        else:
            say("# MFU: n/a on CPU; memory: peak resident set (ru_maxrss) of each process")
        say("# first step: seconds from launching the process to the end of the first optimizer step")

        # results[method]: the ctune row the targets count, its HF peers, and for LoRA the
        # other activation checkpointing setting (the memory it saves, the speed it costs).
        results, extra_ctune = {}, {}
        notes = []
        # On the GPU both sides train in bf16 (ctune bf16-mixed: bf16 GEMM operands on tensor
        # cores, fp32 master weights); the CPU smoke run compares fp32 with fp32 (ctune's
        # bf16-mixed on the CPU only emulates the GPU's rounding, slowly).
        precision = args.precision or ("bf16-mixed" if cuda else "fp32")
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            error, estimate = ctune_plan(args, ctune, work, method, precision, False)
            ckpt = args.activation_checkpointing == "on"
            if cuda and args.activation_checkpointing == "auto" and estimate and estimate / 2**20 > 0.9 * gpu_total:
                ckpt = True
                notes.append(f"{method}: ctune's estimate {estimate / 2**30:.1f} GiB exceeds 90% of the GPU: "
                             f"activation checkpointing on")
            rows = []
            if error:
                rows.append(("ctune", {"precision": precision, "error": error.splitlines()[-1]}))
            else:
                r = run_ctune(args, ctune, work, method, precision, ckpt, sampler)
                if not ckpt and "out of memory" in r.get("log", "") and args.activation_checkpointing == "auto":
                    r = dict(run_ctune(args, ctune, work, method, precision, True, sampler),
                             note=f"without activation checkpointing: {r['error']}, out of memory")
                rows.append(("ctune", r))
                if method == "lora":
                    other = not r.get("ckpt")
                    extra_ctune[method] = run_ctune(args, ctune, work, method, precision, other, sampler)
            for p in ([] if args.no_peer else ["bf16"] if cuda else ["fp32"]):
                rows.append((f"transformers {info['transformers']}" + (" + peft" if method == "lora" else ""),
                             run_hf(args, work, method, p, sampler)))
            results[method] = rows

        say(f"{'method':<6} {'side':<27} {'precision':<15} {'tok/s':>9} {'MFU':>14} {'peak MiB':>9} "
            f"{'alloc MiB':>9} {'1st step s':>10}")
        for method, rows in results.items():
            if method in extra_ctune:
                rows = rows[:1] + [("ctune", extra_ctune[method])] + rows[1:]
            for side, r in rows:
                mfu = "n/a"
                if cuda and method == "full" and r.get("tok_s"):
                    mfu = f"{100 * r['tok_s'] * fpt / peak:.1f}%"
                elif method == "lora":
                    mfu = "-"
                prec = r["precision"] + ("+ckpt" if r.get("ckpt") else "")
                say(f"{method:<6} {side:<27} {prec:<15} {fmt(r.get('tok_s'), '9.0f'):>9} {mfu:>14} "
                    f"{fmt(r.get('mem_mib'), '9.0f'):>9} {fmt(r.get('peak_alloc_mib'), '9.0f'):>9} "
                    f"{fmt(r.get('first_step_s'), '10.1f'):>10}")
                for key in ("note", "error"):
                    if r.get(key):
                        say(f"#   {side} {method} {r['precision']}: {key}: {r[key]}")
                        if key == "error" and r.get("log"):
                            print("\n".join(r["log"].strip().splitlines()[-15:]), file=sys.stderr)
        for n in notes:
            say(f"# note: {n}")
        for method, rows in results.items():
            runs = [r for side, r in rows if side == "ctune"] + ([extra_ctune[method]] if method in extra_ctune else [])
            for r in runs:
                if r.get("profile"):
                    say(f"# {method} ctune {r['precision']}{'+ckpt' if r.get('ckpt') else ''}, op by op:")
                    say(r["profile"])

        say("# ratios ctune / transformers, same run, same device, same batch and sequence")
        for method, rows in results.items():
            c = rows[0][1]
            for side, h in rows[1:]:
                hp = h["precision"]
                label = f"{method} ctune {c['precision']} vs HF {hp}"
                if not (c.get("tok_s") and h.get("tok_s")):
                    say(f"{label}: n/a (a side has no measurement)")
                    continue
                line = f"{label}: tokens/s x{c['tok_s'] / h['tok_s']:.2f}"
                if c.get("mem_mib") and h.get("mem_mib"):
                    line += f", peak memory x{c['mem_mib'] / h['mem_mib']:.2f}"
                    if h.get("peak_alloc_mib"):
                        line += f" (x{c['mem_mib'] / h['peak_alloc_mib']:.2f} of HF's max_memory_allocated)"
                if c.get("first_step_s") and h.get("first_step_s"):
                    line += f", time to first step x{c['first_step_s'] / h['first_step_s']:.2f}"
                say(line)
        for method, other in extra_ctune.items():
            c = results[method][0][1]
            on, off = (c, other) if c.get("ckpt") else (other, c)
            line = f"{method} ctune activation checkpointing on vs off:"
            if on.get("mem_mib") and off.get("mem_mib"):
                line += f" peak memory {on['mem_mib']:.0f} vs {off['mem_mib']:.0f} MiB (x{on['mem_mib'] / off['mem_mib']:.2f})"
            else:
                line += " peak memory n/a (a run has no measurement)"
            if on.get("tok_s") and off.get("tok_s"):
                line += f", tokens/s x{on['tok_s'] / off['tok_s']:.2f}"
            say(line)
        if cuda:
            say("# targets (issue 4), counted only ctune bf16-mixed vs HF bf16"
                + (":" if args.accum == 1 else f", here at {args.accum} micro-batches per optimizer step "
                   "(the issue's are judged at 1):"))
            c = results["full"][0][1] if "full" in results else None
            if c and c.get("tok_s"):
                mfu = c["tok_s"] * fpt / peak
                say(f"  full fine-tuning MFU >= 50%: {100 * mfu:.1f}% -> {verdict(mfu >= 0.5)}")
            else:
                say("  full fine-tuning MFU >= 50%: ctune has no measurement" + ("" if c else " (not run)"))
            lora = results.get("lora")
            if lora:
                c = lora[0][1]
                h = next((r for _, r in lora[1:] if r["precision"] == "bf16"), {})
                if c.get("tok_s") and h.get("tok_s") and c.get("mem_mib") and h.get("mem_mib"):
                    t, m = c["tok_s"] / h["tok_s"], c["mem_mib"] / h["mem_mib"]
                    say(f"  LoRA tokens/s >= 2x HF: x{t:.2f} -> {verdict(t >= 2)}")
                    say(f"  LoRA peak memory <= 0.6x HF: x{m:.2f} -> {verdict(m <= 0.6)}")
                else:
                    say("  LoRA targets: a side has no measurement")
            else:
                say("  LoRA >= 2x tokens/s, <= 0.6x peak memory: LoRA not run")
        say(f"# total benchmark time {time.time() - began:.0f} s")
    finally:
        holder.cleanup()
    print(f"raw output: {out}")


if __name__ == "__main__":
    main()
