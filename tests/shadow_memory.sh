#!/usr/bin/env bash
# Integration: everything above the kernel table reaches backend memory only through the
# table, as a GPU run needs. CTUNE_TEST_SHADOW_MEMORY=1 trains on kernels/shadow.c, the CPU
# kernels behind pointers no process maps (any direct access crashes), through every path a
# run takes: LoRA with dropout and full fine-tuning, 1 and 2 ranks, ZeRO 0/1/2, packing,
# activation checkpointing, periodic checkpoints, resume, evaluation with answer accuracy, and
# bf16-mixed at ZeRO 2 (sharded fp32 weights: their 16-bit all-gather and the checkpoint gather)
# and ZeRO 3 (the layers' 16-bit weights gathered layer by layer, evaluation in rounds), and
# QLoRA (the 4-bit base quantized on the host at load, read back a layer at a time); then ctune
# eval and generate. Each must write the same bytes as on the plain CPU backend.
set -euo pipefail
src=${CTUNE_SOURCE_DIR:?}
ctune=${CTUNE:?}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
mpirun=("$src/scripts/mpirun.sh")

common=(model.path="$work/models/tiny" data.train="$work/data/train.h5" data.eval="$work/data/eval.h5"
        data.synthetic_train_examples=600 data.synthetic_eval_examples=16 train.max_steps=6
        optim.warmup_steps=1 train.eval_every=3 train.log_every=3 checkpoint.every=3)
# name | ranks | recipe | overrides
cases=(
  "lora-z0|1|lora|lora.dropout=0.1"
  "lora-z2-pack|2|lora|distributed.zero_stage=2 data.pack=true data.seq_len=48"
  "full-z1-ckpt|2|full|distributed.zero_stage=1 train.activation_checkpointing=true"
  "full-z2-bf16-sharded|2|full|distributed.zero_stage=2 precision=bf16-mixed"
  "full-z3-bf16-gathered|2|full|distributed.zero_stage=3 precision=bf16-mixed"
  "qlora-bf16-dropout|1|lora|lora.quantize_base=nf4 precision=bf16-mixed lora.dropout=0.1"
)
for case in "${cases[@]}"; do
  IFS='|' read -r name ranks recipe extra <<< "$case"
  read -r -a extra <<< "$extra"
  for backend in cpu shadow; do
    shadow=0
    [ "$backend" = shadow ] && shadow=1
    launch=("$ctune")
    [ "$ranks" -gt 1 ] && launch=("${mpirun[@]}" -np "$ranks" -x CTUNE_TEST_SHADOW_MEMORY "$ctune")
    CTUNE_TEST_SHADOW_MEMORY=$shadow "${launch[@]}" train "$src/configs/tiny/$recipe.yaml" "${common[@]}" "${extra[@]}" \
      checkpoint.output_dir="$work/$name-$backend" > "$name-$backend.log" 2>&1 ||
      { tail -n 20 "$name-$backend.log"; echo "FAIL: $name on the $backend backend"; exit 1; }
  done
  grep -q "backend cpu-shadow" "$name-shadow.log" || { echo "FAIL: $name: the shadow backend was not used"; exit 1; }
  for f in "$name-cpu"/final/*.safetensors; do
    cmp "$f" "$name-shadow/final/$(basename "$f")" || { echo "FAIL: $name: $(basename "$f") differs"; exit 1; }
  done
  # Resume from the step-3 checkpoint on the shadow backend: the same final weights again.
  env CTUNE_TEST_SHADOW_MEMORY=1 "$ctune" train "$src/configs/tiny/$recipe.yaml" "${common[@]}" "${extra[@]}" \
    checkpoint.output_dir="$work/$name-shadow" checkpoint.resume="$work/$name-shadow/checkpoints/step-000003" \
    > "$name-resume.log" 2>&1 || { tail -n 20 "$name-resume.log"; echo "FAIL: $name: resume on the shadow backend"; exit 1; }
  for f in "$name-cpu"/final/*.safetensors; do
    cmp "$f" "$name-shadow/final/$(basename "$f")" || { echo "FAIL: $name: resumed $(basename "$f") differs"; exit 1; }
  done
  echo "$name: $ranks rank(s), shadow backend = cpu backend, bit for bit (also resumed)"
done
# ctune eval (a dataset on 2 ranks, one sequence's logits) and ctune generate, in bf16-mixed
# with the QLoRA adapter on the base's NF4 read-back: the shadow backend's output = the CPU's.
infer=(--model "$work/models/tiny" --adapter "$work/qlora-bf16-dropout-cpu/final" --precision bf16-mixed
       --quantize-base nf4)
for backend in cpu shadow; do
  shadow=0
  [ "$backend" = shadow ] && shadow=1
  {
    CTUNE_TEST_SHADOW_MEMORY=$shadow "${mpirun[@]}" -np 2 -x CTUNE_TEST_SHADOW_MEMORY "$ctune" eval "${infer[@]}" \
      --data "$work/data/eval.h5" --seq-len 16 --micro-batch 4 --accuracy
    CTUNE_TEST_SHADOW_MEMORY=$shadow "$ctune" eval "${infer[@]}" --ids 1,5,9,12,7 --logits-out -
    CTUNE_TEST_SHADOW_MEMORY=$shadow "$ctune" generate "${infer[@]}" --prompt "12+34=" --max-new-tokens 4
  } > "infer-$backend.txt" 2> "infer-$backend.err" || { cat "infer-$backend.err"; echo "FAIL: eval/generate on $backend"; exit 1; }
done
cmp infer-cpu.txt infer-shadow.txt || { echo "FAIL: eval/generate differ on the shadow backend"; exit 1; }
grep -q '"eval_accuracy"' infer-cpu.txt || { echo "FAIL: no eval output"; exit 1; }
echo "eval (2 ranks) and generate in bf16-mixed with --quantize-base nf4: shadow backend = cpu backend, bit for bit"
echo "shadow_memory: ok"
