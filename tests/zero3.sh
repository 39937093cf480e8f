#!/usr/bin/env bash
# Integration: ZeRO stage 3 (docs/distributed.md, "Stage 3"): the decoder layers' 16-bit
# weights exist on a rank only for the layer a pass is at, all-gathered from the ranks' fp32
# shards into two layer buffers.
#  1. Full fine-tuning in bf16-mixed: stage 3 on 1 and 2 ranks gives 1 rank's stage-0 run,
#     and on 3 ranks stage 2's on 3 ranks (the same sum tree), byte for byte: every step's
#     loss and gradient norm, the evaluations during training and at the end (eval loss and
#     the answer accuracy of greedy decoding), the final weights. With activation
#     checkpointing too, and in fp16-mixed with overflowing (skipped) steps.
#  2. The evaluations run in rounds of one forward pass on every rank: 37 eval documents in
#     micro-batches of 2 leave ranks without a batch in the last round, and greedy decoding
#     stops at a different token on each rank; those ranks join the others' gathers.
#  3. Resume between stage 3 and stage 0 and between world sizes, byte for byte.
#  4. The plan's parameter bytes per rank: stage 3 holds the 16-bit copies of two layers
#     instead of all of them (exactly the difference in the copies it counts).
#  5. Recipes that cannot use stage 3 (fp32, LoRA) are refused before anything runs; one rank
#     failing stops every rank with its message, never a hang.
set -uo pipefail
src=${CTUNE_SOURCE_DIR:?}
ctune=${CTUNE:?}
if ! command -v python3 > /dev/null; then
  echo "SKIPPED: python3 is needed to read metrics.jsonl"
  exit 0
fi
source "$src/tests/tools/checks.sh"
mpi="$src/scripts/mpirun.sh"
export OMP_NUM_THREADS=1 # tiny products; bytes do not depend on it

common=(model.path="$work/models/tiny" data.train="$work/data/train.h5" data.eval="$work/data/eval.h5"
        data.synthetic_train_examples=3000 data.synthetic_eval_examples=37 train.max_steps=120
        optim.warmup_steps=10 optim.lr=3e-3 train.log_every=1 train.micro_batch_size=2
        train.global_batch_size=12 train.eval_every=40 checkpoint.every=0 device=cpu precision=bf16-mixed)
# run NAME RANKS [key=value...]: full fine-tuning into runs/NAME, log in NAME.log.
run() {
  local name=$1 ranks=$2
  shift 2
  local launch=("$ctune")
  [ "$ranks" -gt 1 ] && launch=(timeout 300 "$mpi" -np "$ranks" -x OMP_NUM_THREADS "$ctune")
  "${launch[@]}" train "$src/configs/tiny/full.yaml" "${common[@]}" checkpoint.output_dir="runs/$name" "$@" \
    > "$name.log" 2>&1 || { tail -n 20 "$name.log"; bad "$name did not finish"; return 1; }
}
# same NAME REF: NAME's steps, evaluations and final weights are REF's, byte for byte
same() {
  python3 "$src/tests/tools/same_runs.py" "$1" "$2" model.safetensors \
    && ok "$1 = $2 (losses, grad norms, evals, accuracy, weight bytes)" || bad "$1 differs from $2"
}
accuracy() { grep -o "answer accuracy [0-9.]*%" "$1.log" | head -n 1; }

# ---- 1, 2. the same bits ----
run z0-1r 1 distributed.zero_stage=0
run z3-1r 1 distributed.zero_stage=3
run z3-2r 2 distributed.zero_stage=3
run z3-2r-ckpt 2 distributed.zero_stage=3 train.activation_checkpointing=true
run z2-3r 3 distributed.zero_stage=2
run z3-3r 3 distributed.zero_stage=3
same z3-1r z0-1r
same z3-2r z0-1r
same z3-2r-ckpt z0-1r
same z3-3r z2-3r
# answers: longer training (a few right, most wrong at some token), 1 rank against 2 at stage 3
answers=(data.train="$work/data/answers-train.h5" data.eval="$work/data/answers-eval.h5" data.synthetic_train_examples=5000
         train.max_steps=300 optim.warmup_steps=20 train.micro_batch_size=8 train.global_batch_size=16 optim.lr=2e-3
         train.eval_every=0)
run answers-z0-1r 1 "${answers[@]}" distributed.zero_stage=0
run answers-z3-2r 2 "${answers[@]}" distributed.zero_stage=3
same answers-z3-2r answers-z0-1r
acc=$(accuracy answers-z0-1r)
[ -n "$acc" ] && [ "$acc" != "answer accuracy 0.0%" ] && [ "$acc" != "answer accuracy 100.0%" ] \
  && [ "$(accuracy answers-z3-2r)" = "$acc" ] \
  && ok "greedy answers stop at different tokens per rank: $acc on 1 rank = stage 3 on 2 ranks" \
  || bad "answer accuracy: 1 rank '$acc', stage 3 on 2 ranks '$(accuracy answers-z3-2r)' (want the same, strictly between 0 and 100%)"
grep -q "layers' 16-bit copies gathered layer by layer" z3-2r.log && ok "the plan names stage 3" \
  || bad "z3-2r's plan does not describe stage 3"
# fp16-mixed: a first loss scale far too large, so the leading steps overflow and are skipped
fp16=(precision=fp16-mixed optim.loss_scale_init=1e30 train.max_steps=30 train.eval_every=0)
run fp16-z2-2r 2 "${fp16[@]}" distributed.zero_stage=2
run fp16-z3-2r 2 "${fp16[@]}" distributed.zero_stage=3
grep -q '"skipped": *true' runs/fp16-z3-2r/metrics.jsonl && ok "fp16-mixed at stage 3 skipped overflowing steps" \
  || bad "fp16-z3-2r: no skipped step (the loss scale should overflow)"
cmp -s runs/fp16-z2-2r/final/model.safetensors runs/fp16-z3-2r/final/model.safetensors \
  && ok "fp16-mixed with skipped steps: stage 3 = stage 2 (weight bytes)" || bad "fp16-mixed: stage 3 differs from stage 2"

# ---- 3. resume ----
run z3-2r-save 2 distributed.zero_stage=3 checkpoint.every=60
resume_from() { # resume_from NAME SOURCE RANKS STAGE: continue SOURCE's step-60 checkpoint
  mkdir -p "runs/$1/checkpoints" && cp -r "runs/$2/checkpoints/step-000060" "runs/$1/checkpoints/"
  run "$1" "$3" distributed.zero_stage="$4" checkpoint.every=60 checkpoint.resume=auto || return
  grep -q "resumed from .*step-000060 at step 60" "$1.log" || bad "$1 did not resume at step 60"
  cmp -s runs/z0-1r/final/model.safetensors "runs/$1/final/model.safetensors" \
    && ok "$1: $2's step 60 resumed on $3 rank(s), ZeRO $4 = 120 straight steps on 1 rank (model bytes)" \
    || bad "$1: resumed weights differ from the straight 1-rank run's"
}
resume_from resume-z3-to-1r-z0 z3-2r-save 1 0
run z0-1r-save 1 distributed.zero_stage=0 checkpoint.every=60
resume_from resume-z0-to-2r-z3 z0-1r-save 2 3

# ---- 4. parameter bytes in the plan ----
plan() { # plan STAGE: the 2-rank dry run's log
  "$mpi" -np 2 "$ctune" train "$src/configs/tiny/full.yaml" "${common[@]}" distributed.zero_stage="$1" \
    checkpoint.output_dir="runs/dry" --dry-run > "dry-$1.log" 2>&1 || { cat "dry-$1.log"; bad "dry run at stage $1"; }
}
plan 2
plan 3
python3 - << 'PY' && ok "plan: stage 3's parameter bytes per rank = stage 2's less the 16-bit copies of all but two layers" \
  || bad "plan: parameter bytes at stage 3"
import re, sys
def read(stage):
    text = open(f"dry-{stage}.log").read()
    copies = int(re.search(r"on bf16 copies \((\d+) weights\)", text).group(1))
    params = [int(x) for x in re.findall(r"rank \d+: parameters (\d+),", text)]
    return copies, params
c2, p2 = read(2)
c3, p3 = read(3)
print(f"  16-bit copies {c2} -> {c3}; parameters per rank {p2} -> {p3}")
sys.exit(0 if c3 < c2 and len(p2) == len(p3) == 2 and all(a - b == 2 * (c2 - c3) for a, b in zip(p2, p3)) else 1)
PY

# ---- 5. refusals and failures ----
refused() { # refused WHAT PATTERN RECIPE [key=value...]
  local what=$1 pattern=$2 recipe=$3
  shift 3
  "$ctune" train "$src/configs/tiny/$recipe.yaml" "${common[@]}" checkpoint.output_dir="runs/refused" "$@" \
    > refused.log 2>&1
  local rc=$?
  [ "$rc" -ne 0 ] && grep -q "$pattern" refused.log && [ ! -e runs/refused ] && ok "refused: $what" \
    || { cat refused.log; bad "$what: exit $rc, expected a refusal matching '$pattern' and no run folder"; }
}
refused "stage 3 in fp32" "zero_stage 3 .*needs precision bf16-mixed or fp16-mixed" full \
  distributed.zero_stage=3 precision=fp32
refused "stage 3 with LoRA" "zero_stage 3 shards trained weights, and LoRA" lora distributed.zero_stage=3
CTUNE_TEST_FAIL_RANK=1 CTUNE_TEST_FAIL_STEP=3 timeout 120 "$mpi" -np 2 -x CTUNE_TEST_FAIL_RANK -x CTUNE_TEST_FAIL_STEP \
  "$ctune" train "$src/configs/tiny/full.yaml" "${common[@]}" distributed.zero_stage=3 \
  checkpoint.output_dir=runs/fail > fail.out 2> fail.err
rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$(grep -c 'error: rank 1: test hook' fail.err)" -eq 1 ] \
  && grep -qE "step +2/" fail.out && ! grep -qE "step +3/" fail.out; then
  ok "one rank failing at step 3 stops both at stage 3 with its message"
else
  cat fail.err
  bad "failing rank at stage 3: exit $rc (124 = hung)"
fi

checks_summary zero3
