#!/usr/bin/env bash
# Integration: the CUDA backend end to end without a GPU. ctune_emu is ctune linked with the
# host emulator's CUDA backend (tests/emu: the kernels of kernels/cuda run as C++ on warps of
# fibers, cuBLAS/cuBLASLt emulated from their documentation), so `device: cuda` trains through
# every CUDA code path of the training loop: device-side AdamW and master weights, the loss
# scale and its overflow test, gradient clipping, checkpoints written from and resumed into
# device memory, 2 ranks staging their collectives through the host.
#  1. scripts/gpu_e2e.sh, the GPU session's end-to-end checks, shortened (20 steps, global
#     batch 4): loss curves cuda vs cpu in fp32, bf16-mixed and fp16-mixed; resume byte for
#     byte (full bf16-mixed, LoRA fp16-mixed); 1 rank = 2 ranks byte for byte.
#  2. fp16-mixed on cuda with a first loss scale far too large: the leading steps overflow on
#     the device and are skipped, the scale follows GradScaler's rule (halve on overflow,
#     double after 3 good steps), training proceeds; stopped after the step-10 checkpoint and
#     resumed, the same adapter bytes and scales as straight through.
#  3. Issue 4's "memory allocated once, no per-step host synchronisation beyond logging":
#     cudaMalloc/cudaFree calls do not grow with the steps, and the host waits for the device
#     once a step in bf16-mixed at 2 and at 4 micro-batches, and in fp16-mixed (the emulator
#     counts: CTUNE_EMU_COUNTS). The peak memory the cuda backend reports (summary.json) is
#     the emulator's peak of cudaMalloc's buffers plus that of the pool's scratch, and within
#     0.5% + 64 KiB of the estimate the run printed (its buffers and kernel scratch).
#  4. QLoRA (lora.quantize_base: nf4) on cuda: the bits of plain LoRA on the base's NF4
#     read-back (gpu_e2e.sh's check d, in 1.), and a peak within the estimate's bound; ctune
#     eval --device cuda reproduces its final eval_loss (check e, in 1.).
# What the emulator cannot show (timing, the hardware's rounding inside mma, the real
# libraries beyond their documentation) is left to scripts/gpu_session.sh on a GPU.
set -uo pipefail
src=${CTUNE_SOURCE_DIR:?}
ctune_emu=${CTUNE_BUILD_DIR:?}/ctune_emu
if [ ! -x "$ctune_emu" ]; then
  echo "SKIPPED: no ctune_emu in $CTUNE_BUILD_DIR (it needs a C++17 compiler)"
  exit 0
fi
if ! command -v python3 > /dev/null; then
  echo "SKIPPED: python3 is needed to read metrics.jsonl"
  exit 0
fi
source "$src/tests/tools/checks.sh"
export OMP_NUM_THREADS=1

# ---- 1. the GPU session's checks on the emulator ----
OUT="$work/e2e-out" "$src/scripts/gpu_e2e.sh" --ctune "$ctune_emu" --steps 20 --global-batch 4 --jobs 2 \
  > e2e.log 2>&1
e2e_status=$?
grep -E '^(PASS|FAIL|SKIP)' e2e.log | sed 's/^/  /'
summary=$(grep '^== gpu_e2e:' e2e.log | tail -n 1)
if [ "$e2e_status" -eq 0 ] && echo "$summary" | grep -q ' 0 failed, 0 skipped'; then
  ok "gpu_e2e.sh on the emulated cuda backend: ${summary#== gpu_e2e: }"
else
  tail -n 30 e2e.log
  bad "gpu_e2e.sh on the emulated cuda backend (exit $e2e_status): ${summary:-no summary}"
fi
grep -q 'backend cuda' e2e-out/e2e/gpu-full-bf16-mixed.log 2>/dev/null \
  && ok "the 'GPU' runs ran on the cuda backend" || bad "the 'GPU' runs did not report backend cuda"

# ---- 2. fp16 overflow on the device; stop at 10 and resume ----
common=(model.path="$work/e2e-models/tiny" data.train="$work/train.h5" data.eval= train.eval_every=0
        data.synthetic_train_examples=1000 train.max_steps=20 optim.warmup_steps=2 train.log_every=100
        train.micro_batch_size=4 train.global_batch_size=8 device=cuda precision=fp16-mixed
        optim.loss_scale_init=268435456 optim.loss_scale_growth_interval=3 checkpoint.every=10)
"$ctune_emu" train "$src/configs/tiny/lora.yaml" "${common[@]}" checkpoint.output_dir=runs/scaler \
  > scaler.log 2>&1 || { tail -n 20 scaler.log; bad "the fp16 scaler run did not finish"; }
CTUNE_TEST_FAIL_RANK=0 CTUNE_TEST_FAIL_STEP=11 "$ctune_emu" train "$src/configs/tiny/lora.yaml" "${common[@]}" \
  checkpoint.output_dir=runs/scaler-resumed > scaler-stopped.log 2>&1 \
  && bad "the test hook did not stop the run at step 11"
"$ctune_emu" train "$src/configs/tiny/lora.yaml" "${common[@]}" checkpoint.output_dir=runs/scaler-resumed \
  checkpoint.resume=auto > scaler-resumed.log 2>&1 || { tail -n 20 scaler-resumed.log; bad "the resumed run failed"; }
grep -q "resumed from .*step-000010 at step 10" scaler-resumed.log && ok "the cuda fp16 run resumed at step 10" \
  || bad "the cuda fp16 run did not resume at step 10"
cmp -s runs/scaler/final/adapter_model.safetensors runs/scaler-resumed/final/adapter_model.safetensors \
  && ok "cuda fp16-mixed with overflows: 20 straight = 10 + 10 resumed (adapter bytes)" \
  || bad "cuda fp16-mixed with overflows: the resumed adapter differs from the straight run's"

python3 - "$work" "$src/tests" <<'EOF'
import json, math, sys
work = sys.argv[1]
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, sys.argv[2])
from loss_scale_rule import scale_rule_violations
def steps(run):
    with open(f"{work}/runs/{run}/metrics.jsonl") as f:
        return [x for x in map(json.loads, f) if "loss" in x and "step" in x and "eval_loss" not in x]
failed = 0
def check(cond, what):
    global failed
    print(("ok   " if cond else "FAIL ") + what)
    failed += not cond
s = steps("scaler")
check(len(s) == 20 and all("loss_scale" in x for x in s), "cuda scaler: 20 steps, each with its loss_scale")
if len(s) == 20:
    check(s[0]["loss_scale"] == 2.0 ** 28 and s[0].get("skipped") is True and s[1].get("skipped") is True,
          "cuda scaler: steps 1-2 overflow at 2^28 and 2^27 on the device and are skipped")
    violations = scale_rule_violations(s, 3)
    check(not violations, f"cuda scaler: every step's scale follows halve-on-skip / double-after-3 ({violations})")
    taken = [x for x in s if not x.get("skipped")]
    check(len(taken) >= 8 and all(math.isfinite(x["grad_norm"]) for x in taken),
          f"cuda scaler: training proceeds ({len(taken)} steps taken, finite grad_norm on each)")
    check(sum(x["loss"] for x in taken[-4:]) / 4 < s[0]["loss"], "cuda scaler: the loss falls once steps are taken")
    r = steps("scaler-resumed")
    keys = ("loss", "loss_scale", "skipped", "grad_norm")
    check([[x.get(k) for k in keys] for x in r] == [[x.get(k) for k in keys] for x in s],
          "cuda scaler resumed: per-step loss, loss_scale, skipped and grad_norm identical to straight")
sys.exit(1 if failed else 0)
EOF
if [ $? -eq 0 ]; then ok "cuda fp16 loss scaling checks"; else bad "cuda fp16 loss scaling checks"; fi

# ---- 3. memory allocated once; the host waits only where it reads a result ----
# The emulator counts cudaMalloc/cudaFree and the host's waits for the device (synchronous
# copies to the host, cudaDeviceSynchronize); runs of 4 and 8 steps differ only in steps.
# On one rank the host waits once a step, however many micro-batches, for the step's losses
# and the gradient norm, fetched together after the optimizer is queued (the device decides
# the clipping, and fp16's skip on overflow: zero_step_queued); the error check then relies on
# that download, and fp16's scale for the next step is updated from that norm. Runs with 2 and
# 4 micro-batches per step show that the count does not grow with them.
for run in bf16-2 bf16-4 fp16-2; do
  precision=${run%-*}-mixed accum=${run#*-}
  for n in 4 8; do
    CTUNE_EMU_COUNTS="$work/counts-$run-$n" "$ctune_emu" train "$src/configs/tiny/full.yaml" device=cuda \
      precision=$precision model.path="$work/e2e-models/tiny" data.train="$work/train.h5" data.eval= \
      train.eval_every=0 train.max_steps=$n optim.warmup_steps=1 train.log_every=100 checkpoint.every=0 \
      train.micro_batch_size=2 train.global_batch_size=$((2 * accum)) checkpoint.output_dir=runs/counts-$run-$n \
      > counts-$run-$n.log 2>&1 || { tail -n 20 counts-$run-$n.log; bad "the $n-step counting run ($run) failed"; }
  done
done
count() { sed -n "s/^$2 //p" "$work/counts-$1" 2>/dev/null; }
for run in bf16-2 bf16-4 fp16-2; do
  if [ -n "$(count $run-4 cudaMalloc)" ] && [ "$(count $run-4 cudaMalloc)" = "$(count $run-8 cudaMalloc)" ] \
     && [ "$(count $run-4 cudaFree)" = "$(count $run-8 cudaFree)" ]; then
    ok "device memory allocated once ($run: precision, micro-batches a step): $(count $run-8 cudaMalloc) cudaMalloc calls for 4 steps and for 8"
  else
    bad "cudaMalloc/cudaFree calls grow with the steps ($run): 4 steps $(count $run-4 cudaMalloc)/$(count $run-4 cudaFree), 8 steps $(count $run-8 cudaMalloc)/$(count $run-8 cudaFree)"
  fi
  want=1
  w4=$(count $run-4 waits) w8=$(count $run-8 waits)
  if [ -n "$w4" ] && [ -n "$w8" ] && [ $(( w8 - w4 )) -eq $(( 4 * want )) ]; then
    ok "host waits per step ($run): $want"
  else
    bad "host waits ($run): ${w4:-?} for 4 steps, ${w8:-?} for 8: not $want a step"
  fi
done

# The peak the backend reports: its buffers' and its pool's, as the emulator saw them, and
# what the run's estimate said (on a GPU the kernels' scratch comes from the backend's memory).
for run in bf16-2 bf16-4 fp16-2; do
  reported=$(sed -n 's/^ *"peak_memory_bytes": \([0-9]*\),$/\1/p' runs/counts-$run-8/summary.json 2>/dev/null)
  seen=$(( $(count $run-8 malloc_peak) + $(count $run-8 scratch_peak) ))
  estimate=$(sed -n 's/^ *rank 0: parameters \([0-9]*\), gradients \([0-9]*\), optimizer state \([0-9]*\), activations \([0-9]*\), kernel scratch \([0-9]*\),.*/\1+\2+\3+\4+\5/p' \
             counts-$run-8.log | head -n 1)
  if [ -z "$reported" ] || [ -z "$estimate" ]; then
    bad "peak memory ($run): summary.json says '${reported}', the plan '${estimate}'"
    continue
  fi
  estimate=$(( estimate ))
  off=$(( reported > estimate ? reported - estimate : estimate - reported ))
  if [ "$reported" -eq "$seen" ] && [ "$off" -le $(( estimate / 200 + 65536 )) ]; then
    ok "peak memory ($run): $reported bytes, the emulator's cudaMalloc + pool peaks; estimate $estimate"
  else
    bad "peak memory ($run): reported $reported, emulator $seen (cudaMalloc + pool peaks), estimate $estimate"
  fi
done

# ---- 4. QLoRA's peak on the device ----
# gpu_e2e.sh's check d ran QLoRA on the emulated cuda backend (the same bytes as LoRA on the
# base's NF4 read-back); its peak is within the estimate's bound too.
reported=$(sed -n 's/^ *"peak_memory_bytes": \([0-9]*\),$/\1/p' e2e-out/e2e/qlora-gpu/summary.json 2>/dev/null)
estimate=$(sed -n 's/^ *rank 0: parameters \([0-9]*\), gradients \([0-9]*\), optimizer state \([0-9]*\), activations \([0-9]*\), kernel scratch \([0-9]*\),.*/\1+\2+\3+\4+\5/p' \
           e2e-out/e2e/qlora-gpu.log 2>/dev/null | head -n 1)
if [ -n "$reported" ] && [ -n "$estimate" ] && off=$(( reported - (estimate) )) && [ "${off#-}" -le $(( (estimate) / 200 + 65536 )) ]; then
  ok "cuda QLoRA peak memory $reported bytes, estimate $(( estimate ))"
else
  bad "cuda QLoRA peak memory: reported '${reported}', estimate '${estimate}'"
fi

checks_summary cuda_emu_e2e
