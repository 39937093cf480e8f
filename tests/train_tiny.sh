#!/usr/bin/env bash
# Integration: the default job's recipes, shortened. LoRA on 2 MPI ranks and full fine-tuning
# on 1 rank must lower the loss, write hub folders with the expected files, and a saved
# model must reproduce the run's final eval loss exactly when evaluated on its own.
set -euo pipefail
src=${CTUNE_SOURCE_DIR:?}
ctune=${CTUNE:?}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

common=(model.path="$work/models/tiny" data.train="$work/data/train.h5" data.eval="$work/data/eval.h5"
        data.synthetic_train_examples=4000 data.synthetic_eval_examples=64 train.max_steps=80
        train.eval_every=40 checkpoint.every=40 checkpoint.keep_last=1 train.log_every=20)

"$src/scripts/mpirun.sh" -np 2 "$ctune" train "$src/configs/tiny/lora.yaml" "${common[@]}" \
  checkpoint.output_dir="$work/runs/lora" | tee lora.log
"$ctune" train "$src/configs/tiny/full.yaml" "${common[@]}" checkpoint.output_dir="$work/runs/full" | tee full.log

# Deterministic from the seed: the same short run twice gives the same bytes (LoRA dropout on).
for i in 1 2; do
  "$ctune" train "$src/configs/tiny/lora.yaml" "${common[@]}" train.max_steps=8 optim.warmup_steps=2 lora.dropout=0.1 \
    checkpoint.every=0 checkpoint.output_dir="$work/runs/repeat$i" > /dev/null
done
cmp runs/repeat1/final/adapter_model.safetensors runs/repeat2/final/adapter_model.safetensors \
  || { echo "FAIL: two runs with the same seed wrote different adapters"; exit 1; }

for run in lora full; do
  for f in recipe.resolved.yaml metrics.jsonl summary.json final/README.md; do
    [ -s "runs/$run/$f" ] || { echo "FAIL: runs/$run/$f missing"; exit 1; }
  done
  # checkpoint.every=40 with keep_last=1: only step 40 is periodic (80 is the final).
  [ -d "runs/$run/checkpoints/step-000040" ] || { echo "FAIL: runs/$run periodic checkpoint missing"; exit 1; }
done
for f in adapter_model.safetensors adapter_config.json; do
  [ -s "runs/lora/final/$f" ] || { echo "FAIL: lora final/$f missing"; exit 1; }
done
for f in model.safetensors config.json tokenizer.json; do
  [ -s "runs/full/final/$f" ] || { echo "FAIL: full final/$f missing"; exit 1; }
done
grep -q "world_size.*2" runs/lora/summary.json || { echo "FAIL: LoRA run did not use 2 ranks"; exit 1; }

"$ctune" eval --model models/tiny --adapter runs/lora/final --data data/eval.h5 --seq-len 16 \
  --micro-batch 32 > lora_eval.json
"$ctune" eval --model runs/full/final --data data/eval.h5 --seq-len 16 --micro-batch 32 > full_eval.json
# --run: the run's folder alone gives the model, the adapter and the final evaluation's settings.
"$ctune" eval --run runs/lora > lora_run_eval.json
"$ctune" eval --run runs/full > full_run_eval.json
# The same eval on 2 ranks must give the same bits.
"$src/scripts/mpirun.sh" -np 2 "$ctune" eval --model runs/full/final --data data/eval.h5 --seq-len 16 \
  --micro-batch 32 > full_eval_2ranks.json

python3 - <<'PY'
import json, sys
failures = passes = 0
def check(cond, what):
    global failures, passes
    print(("ok   " if cond else "FAIL ") + what)
    failures += 0 if cond else 1
    passes += 1 if cond else 0

for run in ("lora", "full"):
    steps = [json.loads(l) for l in open(f"runs/{run}/metrics.jsonl") if '"loss"' in l]
    check(len(steps) == 80, f"{run}: 80 step lines in metrics.jsonl (got {len(steps)})")
    first = sum(s["loss"] for s in steps[:5]) / 5
    last = sum(s["loss"] for s in steps[-5:]) / 5
    check(last < 0.7 * first, f"{run}: loss falls (first 5 steps {first:.4f}, last 5 {last:.4f})")
    for key in ("step", "loss", "lr", "grad_norm", "tokens", "tok_s"):
        check(key in steps[-1], f"{run}: metrics line has '{key}'")
    summary = json.load(open(f"runs/{run}/summary.json"))
    evaluated = json.load(open(f"{run}_eval.json"))
    check(summary["eval_loss"] == evaluated["eval_loss"],
          f"{run}: saved model reproduces the final eval loss exactly ({summary['eval_loss']!r} vs {evaluated['eval_loss']!r})")
    from_run = json.load(open(f"{run}_run_eval.json"))
    check(from_run["eval_loss"] == summary["eval_loss"] and from_run["eval_accuracy"] == summary["eval_accuracy"],
          f"{run}: ctune eval --run reproduces the final eval loss and accuracy "
          f"({from_run['eval_loss']!r}, {from_run['eval_accuracy']!r} vs {summary['eval_accuracy']!r})")
two = json.load(open("full_eval_2ranks.json"))
one = json.load(open("full_eval.json"))
check(one["eval_loss"] == two["eval_loss"], "eval loss is the same bits on 1 and 2 ranks")
print(f"train_tiny: {passes} passed, {failures} failed")
sys.exit(1 if failures else 0)
PY
