#!/usr/bin/env bash
# ZeRO 2's gradient buckets and ZeRO 3's layer-by-layer weights on the CPU: per-rank
# gradient and parameter bytes (the run's estimate), the peak the backend held and tokens/s
# at ZeRO 2 (the backward writes two layer buckets, each layer's gradients reduce-scattered
# as it ends) against ZeRO 1 (the peer: the backward writes the whole gradient), and at ZeRO 3
# (the layers' 16-bit weight copies gathered from the shards, two layers at a time) against
# ZeRO 2, on the same ranks, same model, same batch; the final weights must be the same bytes.
# The model is a random 16-layer untied Llama (11.7M parameters, hidden 256) saved by
# transformers, bf16-mixed, the tiny addition data, micro 4 x global 16.
# Raw output: docs/benchmarks/zero-memory-YYYYMMDD.txt
#   PYTHON=/path/to/python-with-transformers scripts/bench_zero_memory.sh [RANKS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
ranks=${1:-2}
python=${PYTHON:-$root/.venv/bin/python}
[ -x build/ctune ] || scripts/build.sh
ctune=$root/build/ctune
out="docs/benchmarks/zero-memory-$(date +%Y%m%d).txt"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
"$python" - <<'PY'
import torch, transformers
cfg = transformers.LlamaConfig(vocab_size=259, hidden_size=256, intermediate_size=688, num_hidden_layers=16,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                               max_position_embeddings=256, tie_word_embeddings=False,
                               bos_token_id=256, eos_token_id=257, pad_token_id=258)
torch.manual_seed(0)
transformers.LlamaForCausalLM(cfg).save_pretrained("model")
PY
# the byte-level tokenizer of ctune's presets, which the synthetic data is made with
"$ctune" init --preset tiny -o tok > /dev/null
cp tok/tokenizer.json tok/tokenizer_config.json tok/special_tokens_map.json model/
run() { # stage
  "$root/scripts/mpirun.sh" -np "$ranks" "$ctune" train "$root/configs/tiny/full.yaml" model.path=model \
    precision=bf16-mixed distributed.zero_stage="$1" train.max_steps=6 optim.warmup_steps=1 train.eval_every=0 \
    checkpoint.every=0 train.micro_batch_size=4 train.global_batch_size=16 train.log_every=1 \
    checkpoint.output_dir="runs/z$1" > "z$1.log" 2>&1 || { cat "z$1.log"; exit 1; }
}
run 1
run 2
run 3
{
  echo "# ZeRO memory benchmark $(date '+%Y-%m-%d %H:%M'), $(nproc) cpus, $ranks ranks, load average $(cut -d' ' -f1 /proc/loadavg) at the end"
  echo "# 16-layer untied Llama, 11.7M parameters, bf16-mixed, micro 4 x global 16, 6 steps; tok/s = mean of steps 2-6"
  "$python" - "$ranks" <<'PY'
import json, re, sys
ranks = int(sys.argv[1])
rows = {}
for stage in (1, 2, 3):
    log = open(f"z{stage}.log").read()
    mem = [(int(p), int(g)) for p, g in re.findall(r"rank \d+: parameters (\d+), gradients (\d+),", log)]
    params, grads = max(m[0] for m in mem), max(m[1] for m in mem)
    peak = json.load(open(f"runs/z{stage}/summary.json"))["peak_memory_bytes"]
    steps = [json.loads(l) for l in open(f"runs/z{stage}/metrics.jsonl") if '"loss"' in l]
    tok_s = sum(s["tok_s"] for s in steps[1:]) / len(steps[1:])
    rows[stage] = (grads, params, peak, tok_s, [s["loss"] for s in steps])
    print(f"ZeRO {stage}: gradient bytes {grads:>11,}  parameter bytes {params:>11,} (largest rank, estimate)"
          f"  peak held {peak / 2**20:8.2f} MiB  {tok_s:8.1f} tok/s")
for a, b in ((1, 2), (2, 3)):
    (ga, pa, qa, ta, la), (gb, pb, qb, tb, lb) = rows[a], rows[b]
    print(f"ZeRO {b} / ZeRO {a}: gradient bytes x{gb / ga:.3f}, parameter bytes x{pb / pa:.3f}, peak x{qb / qa:.3f}, "
          f"tok/s x{tb / ta:.3f}; losses {'identical' if la == lb else 'DIFFER'}")
PY
  for stage in 2 3; do
    if cmp -s runs/z1/final/model.safetensors "runs/z$stage/final/model.safetensors"; then
      echo "final/model.safetensors: the same bytes at ZeRO 1 and $stage"
    else
      echo "final/model.safetensors: DIFFERENT at ZeRO 1 and $stage"
    fi
  done
} | tee "$root/$out"
