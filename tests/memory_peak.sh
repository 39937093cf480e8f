#!/usr/bin/env bash
# Integration: the memory a run reports against the estimate it printed before starting.
#  - summary.json's peak_memory_bytes (the largest rank's) and every metrics.jsonl step line's
#    (rank 0's so far, never falling) come from the backend's own count of its buffers;
#  - that peak is the estimate's parameters + gradients + optimizer state + activations of the
#    same rank, within 0.5% + 64 KiB (block headers and the few small buffers no estimate names),
#    for full fine-tuning and LoRA, fp32, bf16- and fp16-mixed, activation checkpointing on and
#    off, packing, accumulation, and 2 ranks at ZeRO stages 0, 1, 2 and 3. A buffer added without
#    its share of the estimate (pain point 10: out of memory with no warning) fails here.
#  - a run that creates its model (model.init_preset, here bench-20m, whose fp32 weights are
#    3x this QLoRA run's peak) reports its own peak, not the creation's;
#  - start-up holds no more than the run: with one-sequence micro-batches the weights dominate,
#    so an fp32 copy of a LoRA base beside its 16-bit one (+14% here), or a second fp32 arena
#    while a full fine-tune switches precision (4 ranks, ZeRO 2: +3%), passes the estimate.
set -euo pipefail
src=${CTUNE_SOURCE_DIR:?}
ctune=${CTUNE:?}
mpirun_sh="$src/scripts/mpirun.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! command -v python3 > /dev/null; then
  echo "SKIPPED: python3 is needed to read summary.json"
  exit 0
fi

common=(model.path="$work/models/tiny" data.train="$work/data/train.h5" data.eval="$work/data/eval.h5"
        data.synthetic_train_examples=2000 data.synthetic_eval_examples=32 train.max_steps=4
        optim.warmup_steps=1 train.eval_every=0 checkpoint.every=0 train.log_every=2)
# name, ranks, recipe, overrides
runs=(
  "lora-fp32|1|lora|"
  "lora-bf16-ckpt|1|lora|precision=bf16-mixed train.activation_checkpointing=true"
  "lora-fp16-dropout|1|lora|precision=fp16-mixed lora.dropout=0.1"
  "full-fp32-pack|1|full|data.pack=true"
  "full-bf16|1|full|precision=bf16-mixed"
  "full-fp32-accum|1|full|train.micro_batch_size=8"
  "full-z0|2|full|distributed.zero_stage=0"
  "full-z1-bf16|2|full|distributed.zero_stage=1 precision=bf16-mixed"
  "lora-z2|2|lora|distributed.zero_stage=2"
  "dora-bf16-dropout|1|lora|lora.use_dora=true precision=bf16-mixed lora.dropout=0.1"
  "dora-fp32-ckpt|1|lora|lora.use_dora=true train.activation_checkpointing=true"
  "lora-bf16-micro1|1|lora|precision=bf16-mixed train.micro_batch_size=1 train.global_batch_size=4"
  "full-z2-bf16-micro1|4|full|precision=bf16-mixed distributed.zero_stage=2 train.micro_batch_size=1 train.global_batch_size=4"
  "full-z3-bf16-ckpt|2|full|precision=bf16-mixed distributed.zero_stage=3 train.activation_checkpointing=true"
  "qlora-bf16|1|lora|precision=bf16-mixed lora.quantize_base=nf4"
  "qdora-fp16-z2|2|lora|precision=fp16-mixed lora.quantize_base=nf4 lora.use_dora=true distributed.zero_stage=2"
  "created-qlora|1|lora|model.path=$work/models/bench model.init_preset=bench-20m data.train=$work/data/bench.h5 data.eval= precision=bf16-mixed lora.quantize_base=nf4 train.micro_batch_size=2 train.global_batch_size=2"
)
for spec in "${runs[@]}"; do
  IFS='|' read -r name ranks recipe overrides <<< "$spec"
  launch=("$ctune")
  [ "$ranks" -gt 1 ] && launch=("$mpirun_sh" -np "$ranks" "$ctune")
  # shellcheck disable=SC2086 # overrides are words
  if ! "${launch[@]}" train "$src/configs/tiny/$recipe.yaml" "${common[@]}" $overrides \
       checkpoint.output_dir="$work/runs/$name" > "$name.log" 2>&1; then
    echo "FAIL: $name did not train"; tail -20 "$name.log"; exit 1
  fi
done

python3 - "$work" "${runs[@]}" <<'EOF'
import json, re, sys
work, specs = sys.argv[1], sys.argv[2:]
failed = False
for spec in specs:
    name = spec.split("|")[0]
    log = open(f"{work}/{name}.log").read()
    estimate = {}
    for m in re.finditer(r"rank (\d+): parameters (\d+), gradients (\d+), optimizer state (\d+), activations (\d+),", log):
        estimate[int(m.group(1))] = sum(int(m.group(i)) for i in range(2, 6))
    summary = json.load(open(f"{work}/runs/{name}/summary.json"))
    peak, rank = summary.get("peak_memory_bytes"), summary.get("peak_memory_rank")
    steps = [json.loads(l) for l in open(f"{work}/runs/{name}/metrics.jsonl") if '"loss"' in l]
    per_step = [s.get("peak_memory_bytes") for s in steps]
    problems = []
    if not isinstance(peak, int) or rank not in estimate:
        problems.append(f"summary.json has peak {peak!r} on rank {rank!r}; the plan estimated ranks {sorted(estimate)}")
    else:
        want = estimate[rank]
        if abs(peak - want) > 0.005 * want + 65536:
            problems.append(f"rank {rank} held {peak} bytes at most; its estimate says {want} ({peak - want:+d})")
        if f"peak memory: " not in log or f"held on rank {rank}'s cpu backend" not in log:
            problems.append("the run did not print its peak memory")
    if not steps or any(not isinstance(p, int) or p <= 0 for p in per_step):
        problems.append(f"metrics.jsonl step lines without a peak: {per_step}")
    elif per_step != sorted(per_step) or per_step[-1] > peak:
        problems.append(f"rank 0's peak per step falls or passes the run's: {per_step} vs {peak}")
    if problems:
        failed = True
        for p in problems:
            print(f"FAIL: {name}: {p}")
    else:
        print(f"{name}: peak {peak} bytes on rank {rank}, estimate {estimate[rank]} ({peak - estimate[rank]:+d})")
sys.exit(1 if failed else 0)
EOF
echo "memory_peak: ok"
