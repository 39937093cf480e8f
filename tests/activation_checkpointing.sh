#!/usr/bin/env bash
# Integration: train.activation_checkpointing=true trains to the same bytes as false (LoRA
# with dropout, and full fine-tuning), and the plan reports the smaller activation memory.
set -euo pipefail
src=${CTUNE_SOURCE_DIR:?}
ctune=${CTUNE:?}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

common=(model.path="$work/models/tiny" data.train="$work/data/train.h5" data.eval="$work/data/eval.h5"
        data.synthetic_train_examples=2000 data.synthetic_eval_examples=32 train.max_steps=12
        optim.warmup_steps=2 train.eval_every=0 checkpoint.every=0 train.log_every=4)
for method in lora full; do
  extra=()
  [ "$method" = lora ] && extra=(lora.dropout=0.1)
  for ckpt in false true; do
    "$ctune" train "$src/configs/tiny/$method.yaml" "${common[@]}" "${extra[@]}" \
      train.activation_checkpointing=$ckpt checkpoint.output_dir="$work/$method-$ckpt" > "$method-$ckpt.log"
  done
  weights=adapter_model.safetensors
  [ "$method" = full ] && weights=model.safetensors
  cmp "$method-false/final/$weights" "$method-true/final/$weights" ||
    { echo "FAIL: $method: activation checkpointing changed the trained weights"; exit 1; }
  cmp <(grep -o '"loss":[^,]*' "$method-false/metrics.jsonl") <(grep -o '"loss":[^,]*' "$method-true/metrics.jsonl") ||
    { echo "FAIL: $method: losses differ"; exit 1; }
  act() { grep -o 'activations [0-9]*' "$1" | head -1 | awk '{print $2}'; }
  kept=$(act "$method-false.log"); recomputed=$(act "$method-true.log")
  [ -n "$kept" ] && [ -n "$recomputed" ] || { echo "FAIL: no activation bytes in the plan"; cat "$method-true.log"; exit 1; }
  echo "$method: activations $kept bytes kept, $recomputed with checkpointing; same weights and losses"
  [ "$recomputed" -lt "$kept" ] || { echo "FAIL: checkpointing did not reduce activation memory"; exit 1; }
done
echo "activation_checkpointing: ok"
