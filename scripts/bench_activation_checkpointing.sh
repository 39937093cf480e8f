#!/usr/bin/env bash
# Activation checkpointing on the CPU: peak resident memory and tokens/s of the same training
# run with train.activation_checkpointing false and true (the peer is the run without it),
# LoRA and full fine-tuning of the bench-20m preset (21.7M parameters, 6 layers), one
# sequence batch of 4 x 1024, 6 steps; the losses must be the same bits.
# Raw output: docs/benchmarks/activation-checkpointing-YYYYMMDD.txt
#   scripts/bench_activation_checkpointing.sh [THREADS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
threads=${1:-2}
[ -x build/ctune ] || scripts/build.sh
ctune=$root/build/ctune
out="docs/benchmarks/activation-checkpointing-$(date +%Y%m%d).txt"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
"$ctune" init --preset bench-20m -o model > /dev/null
python3 - <<'PY'
import json, random
random.seed(1)
words = "alpha beta gamma delta model train data token layer the of and to in is for on with as by".split()
with open("t.jsonl", "w") as f:
    for _ in range(400):
        f.write(json.dumps({"text": " ".join(random.choice(words) for _ in range(900))}) + "\n")
PY
"$ctune" prep --tokenizer model --format text t.jsonl -o t.h5 > /dev/null
cat > r.yaml <<'YAML'
name: ac
model: {path: model}
method: lora
lora: {r: 16, alpha: 32, target_modules: all-linear}
data: {train: t.h5, seq_len: 1024}
train: {micro_batch_size: 4, global_batch_size: 4, max_steps: 6, log_every: 1, eval_every: 0}
optim: {lr: 1.0e-4, warmup_steps: 0}
checkpoint: {output_dir: runs/ac, every: 0}
YAML
{
  echo "# activation checkpointing benchmark $(date '+%Y-%m-%d %H:%M'), $(nproc) cpus, $threads threads, load average $(cut -d' ' -f1 /proc/loadavg) at start"
  echo "# bench-20m (6 layers), batch 4 x 1024, 6 steps; tok/s = mean of steps 2-6; rss = peak resident set"
  printf '%-6s %-6s %14s %10s %10s  %s\n' method ckpt act_bytes rss_MiB tok_s final_loss
  for method in lora full; do
    declare -A rss tok loss
    for ckpt in false true; do
      rm -rf runs
      OMP_NUM_THREADS=$threads /usr/bin/time -f "maxrss_kb %M" -o time.txt \
        "$ctune" train r.yaml method=$method train.activation_checkpointing=$ckpt > log.txt
      act=$(grep -o 'activations [0-9]*' log.txt | head -1 | cut -d' ' -f2)
      rss[$ckpt]=$(awk '/maxrss_kb/ {printf "%.0f", $2 / 1024}' time.txt)
      tok[$ckpt]=$(grep -o '| [0-9]* tok/s' log.txt | tail -n 5 | awk '{s += $2} END {printf "%.0f", s / NR}')
      loss[$ckpt]=$(grep -o '"loss":[^,]*' runs/ac/metrics.jsonl | tail -1 | cut -d: -f2)
      printf '%-6s %-6s %14s %10s %10s  %s\n' "$method" "$ckpt" "$act" "${rss[$ckpt]}" "${tok[$ckpt]}" "${loss[$ckpt]}"
    done
    same=$([ "${loss[false]}" = "${loss[true]}" ] && echo "same loss bits" || echo "LOSSES DIFFER")
    awk -v m="$method" -v r0="${rss[false]}" -v r1="${rss[true]}" -v t0="${tok[false]}" -v t1="${tok[true]}" -v s="$same" \
      'BEGIN {printf "%s: with checkpointing / without: peak memory x%.2f, tokens/s x%.2f; %s\n", m, r1 / r0, t1 / t0, s}'
    unset rss tok loss
  done
} | tee "$root/$out"
echo "raw output: $out"
