#!/usr/bin/env bash
# Integration (issue 3): exact resume. 20 steps straight vs 10 + resume for 10 gives the same
# bytes; resume on another world size and ZeRO stage (2 -> 4 -> 1 ranks) gives the same
# result, for DoRA too; a rank killed during a checkpoint write leaves the previous checkpoint in use; SIGTERM
# writes a checkpoint and exits 75, and the resumed run ends where an uninterrupted one does.
set -uo pipefail
src=${CTUNE_SOURCE_DIR:?}
ctune=${CTUNE:?}
source "$src/tests/tools/checks.sh"
mpi="$src/scripts/mpirun.sh"
same() { if cmp -s "$1" "$2"; then ok "$3"; else bad "$3 ($1 vs $2 differ)"; fi; }
# Per-step losses of steps > $3 in two metrics files are identical.
same_losses() {
  if python3 - "$1" "$2" "$3" <<'PY'
import json, sys
a, b, after = sys.argv[1], sys.argv[2], int(sys.argv[3])
def losses(p):
    return [(j["step"], j["loss"]) for j in map(json.loads, open(p)) if "loss" in j and j["step"] > after]
la, lb = losses(a), losses(b)
sys.exit(0 if la == lb and len(la) > 0 else 1)
PY
  then ok "$4"; else bad "$4"; fi
}

common=(model.path="$work/models/tiny" data.train="$work/data/train.h5" data.eval="" train.eval_every=0
        data.synthetic_train_examples=2000 train.max_steps=20 optim.warmup_steps=2 train.log_every=100
        train.micro_batch_size=8 train.global_batch_size=32 checkpoint.keep_last=2)
lora=("$src/configs/tiny/lora.yaml" "${common[@]}" lora.dropout=0.1)
full=("$src/configs/tiny/full.yaml" "${common[@]}")

# --- 1 rank, full fine-tuning: straight vs interrupted at step 11 and resumed -----------------
"$ctune" train "${full[@]}" checkpoint.output_dir="$work/full-straight" > /dev/null || bad "straight full run"
CTUNE_TEST_FAIL_RANK=0 CTUNE_TEST_FAIL_STEP=11 "$ctune" train "${full[@]}" checkpoint.every=5 \
  checkpoint.output_dir="$work/full-resumed" > /dev/null 2>&1 && bad "the test hook did not stop the run"
[ -f full-resumed/checkpoints/step-000010/state/meta.json ] && ok "checkpoint of step 10 complete" \
  || bad "no complete checkpoint at step 10"
"$ctune" train "${full[@]}" checkpoint.every=5 checkpoint.resume=auto \
  checkpoint.output_dir="$work/full-resumed" > resumed.log || bad "resumed full run"
grep -q "resumed from .*step-000010 at step 10" resumed.log && ok "resume picked step 10" \
  || bad "resume did not start at step 10"
same full-straight/final/model.safetensors full-resumed/final/model.safetensors \
  "full: 20 straight = 10 + 10 resumed (weights)"
same_losses full-straight/metrics.jsonl full-resumed/metrics.jsonl 0 "full: identical per-step losses"
[ ! -d full-resumed/checkpoints/step-000005 ] && ok "keep_last=2 pruned step 5" || bad "step 5 not pruned"

# --- LoRA across world sizes and ZeRO stages: 2 ranks (zero 1) -> 4 ranks (zero 2) -> 1 rank ---
"$ctune" train "${lora[@]}" checkpoint.output_dir="$work/lora-straight" > /dev/null || bad "straight LoRA run"
CTUNE_TEST_FAIL_RANK=1 CTUNE_TEST_FAIL_STEP=8 "$mpi" -np 2 "$ctune" train "${lora[@]}" \
  distributed.zero_stage=1 checkpoint.every=7 checkpoint.output_dir="$work/lora-moved" > /dev/null 2>&1
CTUNE_TEST_FAIL_RANK=3 CTUNE_TEST_FAIL_STEP=15 "$mpi" -np 4 "$ctune" train "${lora[@]}" \
  distributed.zero_stage=2 checkpoint.every=7 checkpoint.resume=auto \
  checkpoint.output_dir="$work/lora-moved" > /dev/null 2>&1
grep -q '"world_size": 4' lora-moved/checkpoints/step-000014/state/meta.json 2>/dev/null \
  && ok "step 14 written by 4 ranks" || bad "no 4-rank checkpoint at step 14"
"$ctune" train "${lora[@]}" checkpoint.every=7 checkpoint.resume=auto \
  checkpoint.output_dir="$work/lora-moved" > /dev/null || bad "1-rank resume"
same lora-straight/final/adapter_model.safetensors lora-moved/final/adapter_model.safetensors \
  "LoRA: 1 rank straight = 2 ranks ZeRO-1 -> 4 ranks ZeRO-2 -> 1 rank (adapter bytes)"
same_losses lora-straight/metrics.jsonl lora-moved/metrics.jsonl 0 "LoRA: identical per-step losses"

# --- DoRA: its magnitudes and their AdamW state resume too, on another world size --------------
"$ctune" train "${lora[@]}" lora.use_dora=true checkpoint.output_dir="$work/dora-straight" > /dev/null \
  || bad "straight DoRA run"
CTUNE_TEST_FAIL_RANK=0 CTUNE_TEST_FAIL_STEP=11 "$ctune" train "${lora[@]}" lora.use_dora=true checkpoint.every=5 \
  checkpoint.output_dir="$work/dora-resumed" > /dev/null 2>&1 && bad "the test hook did not stop the DoRA run"
if "$ctune" train "${lora[@]}" checkpoint.every=5 checkpoint.resume=auto \
  checkpoint.output_dir="$work/dora-resumed" > dora-plain.log 2>&1; then
  bad "a DoRA checkpoint resumed as plain LoRA"
else
  grep -q "lora.use_dora: checkpoint 'true', recipe (absent)" dora-plain.log && ok "DoRA checkpoint refused without use_dora" \
    || bad "DoRA checkpoint without use_dora: $(tail -1 dora-plain.log)"
fi
"$mpi" -np 2 "$ctune" train "${lora[@]}" lora.use_dora=true distributed.zero_stage=2 checkpoint.every=5 \
  checkpoint.resume=auto checkpoint.output_dir="$work/dora-resumed" > /dev/null || bad "resumed DoRA run"
same dora-straight/final/adapter_model.safetensors dora-resumed/final/adapter_model.safetensors \
  "DoRA: 20 straight = 10 + 10 resumed on 2 ranks (adapter)"

# --- SIGKILL while the checkpoint of step 10 is written: resume uses step 5 --------------------
CTUNE_TEST_KILL_AT_CHECKPOINT=10 "$ctune" train "${full[@]}" checkpoint.every=5 \
  checkpoint.output_dir="$work/killed" > /dev/null 2>&1
status=$?
[ "$status" -eq 137 ] && ok "killed with SIGKILL (status 137)" || bad "expected status 137, got $status"
[ -d killed/checkpoints/step-000010 ] && [ ! -f killed/checkpoints/step-000010/state/meta.json ] \
  && ok "step 10 left incomplete" || bad "step 10 should exist without state/meta.json"
"$ctune" train "${full[@]}" checkpoint.every=5 checkpoint.resume=auto checkpoint.output_dir="$work/killed" \
  > killed.log || bad "resume after the kill"
grep -q "resumed from .*step-000005 at step 5" killed.log && ok "resume used step 5" || bad "resume did not use step 5"
same full-straight/final/model.safetensors killed/final/model.safetensors "killed + resumed = straight"

# --- SIGTERM (pre-emption): checkpoint, exit 75, resume -----------------------------------------
"$ctune" train "${full[@]}" train.max_steps=400 checkpoint.output_dir="$work/pre-straight" > /dev/null
"$ctune" train "${full[@]}" train.max_steps=400 checkpoint.output_dir="$work/pre" > pre.log 2>&1 &
pid=$!
for _ in $(seq 1 200); do
  [ -s pre/metrics.jsonl ] && [ "$(wc -l < pre/metrics.jsonl)" -ge 5 ] && break
  sleep 0.1
done
kill -TERM "$pid"
wait "$pid"
status=$?
[ "$status" -eq 75 ] && ok "SIGTERM: exit status 75" || bad "SIGTERM: expected 75, got $status"
ls -d pre/checkpoints/step-*/state/meta.json > /dev/null 2>&1 && ok "SIGTERM wrote a complete checkpoint" \
  || bad "SIGTERM wrote no complete checkpoint"
"$ctune" train "${full[@]}" train.max_steps=400 checkpoint.resume=auto checkpoint.output_dir="$work/pre" \
  > /dev/null || bad "resume after SIGTERM"
same pre-straight/final/model.safetensors pre/final/model.safetensors "pre-empted + resumed = straight"

# A changed recipe key that fixes the trajectory is refused on resume.
"$ctune" train "${full[@]}" train.seed=7 checkpoint.resume=auto checkpoint.output_dir="$work/full-resumed" \
  > seed.log 2>&1 && bad "resume with another seed was accepted" \
  || { grep -q "train.seed" seed.log && ok "resume with another seed refused naming train.seed" \
       || bad "refusal does not name train.seed"; }

checks_summary resume
