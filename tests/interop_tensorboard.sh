#!/usr/bin/env bash
# Integration: train.tensorboard writes event files that TensorBoard itself reads as
# metrics.jsonl says (scripts/interop_tensorboard.py, with tensorboard's EventAccumulator):
#  - a LoRA run on 2 ranks: one event file (rank 0's), every scalar equal to metrics.jsonl's;
#  - the same run stopped at step 13 and resumed from its step-10 checkpoint on 1 rank: two
#    files, TensorBoard drops the redone steps 11-12 of the first, and the scalars equal the
#    straight run's;
#  - fp16-mixed with overflowing steps: train/loss_scale and train/skipped as metrics.jsonl;
#  - no tensorboard folder without the key; an unwritable folder is refused before training.
set -uo pipefail
src=${CTUNE_SOURCE_DIR:?}
ctune=${CTUNE:?}
source "$src/tests/tools/python.sh"
require_python tensorboard numpy
source "$src/tests/tools/checks.sh"

common=(model.path="$work/models/tiny" data.train="$work/data/train.h5" data.eval="$work/data/eval.h5"
        data.synthetic_train_examples=2000 data.synthetic_eval_examples=64 train.max_steps=20
        optim.warmup_steps=2 train.eval_every=10 train.log_every=100 train.micro_batch_size=8
        train.global_batch_size=32 checkpoint.every=5)
lora=("$src/configs/tiny/lora.yaml" "${common[@]}" lora.dropout=0.1 train.tensorboard=true)

"$src/scripts/mpirun.sh" -np 2 "$ctune" train "${lora[@]}" checkpoint.output_dir=runs/straight > straight.log 2>&1 \
  || bad "the straight run failed: $(tail -3 straight.log)"
CTUNE_TEST_FAIL_RANK=0 CTUNE_TEST_FAIL_STEP=13 "$ctune" train "${lora[@]}" checkpoint.output_dir=runs/resumed \
  > stopped.log 2>&1 && bad "the test hook did not stop the run"
sleep 1 # the resumed run's file is named by the second it starts in
"$ctune" train "${lora[@]}" checkpoint.output_dir=runs/resumed checkpoint.resume=auto > resumed.log 2>&1 \
  || bad "the resumed run failed: $(tail -3 resumed.log)"
"$ctune" train "$src/configs/tiny/lora.yaml" "${common[@]}" train.max_steps=12 precision=fp16-mixed \
  optim.loss_scale_init=268435456 optim.loss_scale_growth_interval=3 train.tensorboard=true \
  checkpoint.output_dir=runs/fp16 > fp16.log 2>&1 || bad "the fp16-mixed run failed: $(tail -3 fp16.log)"
grep -q '"skipped":true' runs/fp16/metrics.jsonl && ok "the fp16-mixed run skipped overflowing steps" \
  || bad "the fp16-mixed run skipped no step: the test does not cover train/skipped"

if "$python" "$src/scripts/interop_tensorboard.py" runs/straight runs/resumed runs/fp16 --files 1 2 1 \
     --same runs/straight runs/resumed; then
  ok "TensorBoard reads every run as metrics.jsonl"
else
  bad "TensorBoard's view differs from metrics.jsonl"
fi

"$ctune" train "$src/configs/tiny/full.yaml" "${common[@]}" train.max_steps=2 train.eval_every=0 checkpoint.every=0 \
  checkpoint.output_dir=runs/plain > plain.log 2>&1 || bad "a run without train.tensorboard failed"
[ ! -e runs/plain/tensorboard ] && ok "no tensorboard folder without train.tensorboard" \
  || bad "runs/plain/tensorboard exists without train.tensorboard"

mkdir -p runs/blocked && : > runs/blocked/tensorboard
if "$ctune" train "${lora[@]}" checkpoint.output_dir=runs/blocked > blocked.log 2>&1; then
  bad "a run whose tensorboard folder is a file succeeded"
elif grep -q "runs/blocked/tensorboard" blocked.log && ! grep -q "^step " blocked.log; then
  ok "an unwritable tensorboard folder is refused before training: $(grep -m1 error blocked.log)"
else
  bad "the refusal does not name the folder, or came after training started: $(cat blocked.log)"
fi

checks_summary interop_tensorboard
