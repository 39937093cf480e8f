#!/usr/bin/env bash
# Integration: data.pack=true on the default LoRA job at seq_len 64 (several addition problems
# per row). The loss must fall, and 1 and 2 ranks must write the same adapter bytes (a packed
# row is a pure function of the global row index).
set -euo pipefail
src=${CTUNE_SOURCE_DIR:?}
ctune=${CTUNE:?}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

common=(model.path="$work/models/tiny" data.train="$work/data/train.h5" data.eval="$work/data/eval.h5"
        data.synthetic_train_examples=4000 data.synthetic_eval_examples=64 data.pack=true data.seq_len=64
        train.max_steps=30 optim.warmup_steps=3 train.eval_every=0 checkpoint.every=0 train.log_every=10)

"$ctune" train "$src/configs/tiny/lora.yaml" "${common[@]}" checkpoint.output_dir="$work/runs/one" | tee one.log
grep -q "packed" one.log || { echo "FAIL: the plan does not mention packing"; exit 1; }
"$src/scripts/mpirun.sh" -np 2 "$ctune" train "$src/configs/tiny/lora.yaml" "${common[@]}" \
  checkpoint.output_dir="$work/runs/two" > two.log
cmp runs/one/final/adapter_model.safetensors runs/two/final/adapter_model.safetensors \
  || { echo "FAIL: packed training on 1 and 2 ranks wrote different adapters"; exit 1; }

python3 - <<'PY'
import json, sys
steps = [json.loads(l) for l in open("runs/one/metrics.jsonl") if '"loss"' in l]
if len(steps) != 30:
    print(f"FAIL: expected 30 step lines, got {len(steps)}"); sys.exit(1)
first = sum(s["loss"] for s in steps[:3]) / 3
last = sum(s["loss"] for s in steps[-3:]) / 3
print(f"packed loss: first 3 steps {first:.4f}, last 3 {last:.4f}")
if not last < 0.8 * first:
    print("FAIL: packed loss does not fall"); sys.exit(1)
print("pack: ok")
PY
