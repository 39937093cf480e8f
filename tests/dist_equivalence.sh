#!/usr/bin/env bash
# Integration: data parallelism over MPI (docs/distributed.md).
#  1. Same numbers at any rank count: LoRA (with dropout) and full fine-tuning on 1, 2 and 4
#     ranks x ZeRO stages 0, 1, 2, with the same global batch (accumulation makes up the
#     difference), give the same loss and gradient norm at every step and byte-identical
#     final weights; DoRA too. Shapes that are not powers of two agree to rounding (1e-6).
#  2. --dry-run reports optimizer-state bytes per rank that fall as 1/N with ZeRO 1 and 2.
#  3. One rank failing stops the job with one message from rank 0; one rank hanging trips the
#     collective timeout; a rank killed with SIGKILL ends the job. Never a hang.
#  4. The fixed-order reduce-scatter / all-gather between real ranks (test_zero --mpi).
#  5. Ranks x threads = cores: 1 rank with 2 threads = 2 ranks with 1 thread, byte for byte,
#     on products whose inner dimension passes OpenBLAS's block depth (fused LoRA in
#     bf16-mixed: down's k = 384 + r), where its threaded driver groups the sums otherwise.
set -euo pipefail
src=${CTUNE_SOURCE_DIR:?}
ctune=${CTUNE:?}
mpirun_sh="$src/scripts/mpirun.sh"
test_zero="$(dirname "$ctune")/test_zero"
work=$(mktemp -d)
mp=""
cleanup() {
  [ -n "$mp" ] && kill -9 "$mp" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
fail() { echo "FAIL: $*"; exit 1; }
t0=$(date +%s)

common=(model.path="$work/models/tiny" data.train="$work/data/train.h5" data.eval=
        data.synthetic_train_examples=512 train.eval_every=0 train.max_steps=5 train.log_every=1
        train.micro_batch_size=2 train.global_batch_size=8 optim.warmup_steps=1 optim.grad_clip=1.0
        checkpoint.every=0)
recipe_lora=("$src/configs/tiny/lora.yaml" lora.r=4 lora.dropout=0.1)
recipe_full=("$src/configs/tiny/full.yaml" optim.weight_decay=0.01)

run() { # run NAME RANKS METHOD [key=value...]
  local name=$1 ranks=$2 method=$3
  shift 3
  local -n recipe="recipe_$method"
  if [ "$ranks" -eq 1 ]; then
    "$ctune" train "${recipe[@]}" "${common[@]}" checkpoint.output_dir="runs/$name" "$@" > "$name.log" 2>&1
  else
    timeout 120 "$mpirun_sh" -np "$ranks" "$ctune" train "${recipe[@]}" "${common[@]}" \
      checkpoint.output_dir="runs/$name" "$@" > "$name.log" 2>&1
  fi || { cat "$name.log"; fail "$name did not finish"; }
}

# ---- 1. the same bits on 1, 2, 4 ranks and ZeRO 0, 1, 2 ----
for method in lora full; do
  for ranks in 1 2 4; do
    for stage in 0 1 2; do
      run "$method-$ranks-z$stage" "$ranks" "$method" distributed.zero_stage=$stage
    done
  done
  grep -q "accumulation 4" "$method-1-z0.log" || fail "$method: 1 rank should accumulate 4 micro-batches"
  grep -q "accumulation 1" "$method-4-z0.log" || fail "$method: 4 ranks should not accumulate"
done
# Fewer trainable values than ranks x 4096: ranks 0-2 own empty shards.
small=(lora.r=1 "lora.target_modules=[q_proj]")
run small-1 1 lora "${small[@]}"
for stage in 1 2; do
  run "small-4-z$stage" 4 lora "${small[@]}" distributed.zero_stage=$stage
  grep -q "rank 0: .*optimizer state 0," "small-4-z$stage.log" || fail "small-4-z$stage: rank 0 should own no values"
  cmp runs/small-1/final/adapter_model.safetensors "runs/small-4-z$stage/final/adapter_model.safetensors" \
    || fail "small-4-z$stage: adapter differs from 1 rank"
done
# DoRA: its magnitudes (1-D, decayed) sit between the adapters in the shards: the same bits
# at 2 ranks (ZeRO 2) and 4 (ZeRO 1) as at 1.
run dora-1 1 lora lora.use_dora=true
for spec in 2:2 4:1; do
  ranks=${spec%:*} stage=${spec#*:}
  run "dora-$ranks-z$stage" "$ranks" lora lora.use_dora=true distributed.zero_stage="$stage"
  cmp runs/dora-1/final/adapter_model.safetensors "runs/dora-$ranks-z$stage/final/adapter_model.safetensors" \
    || fail "dora-$ranks-z$stage: adapter differs from 1 rank"
done
grep -q '"use_dora": true' runs/dora-1/final/adapter_config.json || fail "dora-1: adapter_config.json lacks use_dora"
# Shapes that are not powers of two: 12 sequences = 6 micro-batches.
run full-1-g12 1 full train.global_batch_size=12
run full-3-g12-z0 3 full train.global_batch_size=12 distributed.zero_stage=0  # 2 per rank: exact
run full-3-g12-z2 3 full train.global_batch_size=12 distributed.zero_stage=2  # 3 ranks: rounding
run full-2-g12-z1 2 full train.global_batch_size=12 distributed.zero_stage=1  # 3 per rank: rounding
# 5. 128 tokens per micro-batch: enough for OpenBLAS to use both threads
threads=(precision=bf16-mixed lora.dropout=0 train.micro_batch_size=8 train.global_batch_size=16)
OMP_NUM_THREADS=2 run threads-1x2 1 lora "${threads[@]}"
OMP_NUM_THREADS=1 run threads-2x1 2 lora "${threads[@]}"
cmp runs/threads-1x2/final/adapter_model.safetensors runs/threads-2x1/final/adapter_model.safetensors ||
  fail "1 rank x 2 threads and 2 ranks x 1 thread trained different adapters"
t1=$(date +%s)

python3 - "$work" <<'PY'
import json, struct, sys, os, glob
work = sys.argv[1]
failures = passes = 0
def check(cond, what):
    global failures, passes
    if not cond: print("FAIL " + what)
    failures += 0 if cond else 1
    passes += 1 if cond else 0

def steps(run):
    return [json.loads(l) for l in open(f"{work}/runs/{run}/metrics.jsonl") if '"loss"' in l]

def weights(run):
    out = {}
    for path in sorted(glob.glob(f"{work}/runs/{run}/final/*.safetensors")):
        data = open(path, "rb").read()
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + n])
        for name, t in header.items():
            if name == "__metadata__": continue
            b, e = t["data_offsets"]
            out[name] = struct.unpack(f"<{(e - b) // 4}f", data[8 + n + b:8 + n + e])
    return out

for method in ("lora", "full"):
    ref = f"{method}-1-z0"
    ref_steps = steps(ref)
    ref_bytes = {os.path.basename(p): open(p, "rb").read()
                 for p in glob.glob(f"{work}/runs/{ref}/final/*.safetensors")}
    check(len(ref_steps) == 5 and len(ref_bytes) == 1, f"{ref}: 5 steps and one weights file")
    ref_summary = json.load(open(f"{work}/runs/{ref}/summary.json"))
    for ranks in (1, 2, 4):
        for stage in (0, 1, 2):
            run = f"{method}-{ranks}-z{stage}"
            got = steps(run)
            same_steps = [(s["loss"], s["grad_norm"], s["tokens"]) for s in got] == \
                         [(s["loss"], s["grad_norm"], s["tokens"]) for s in ref_steps]
            check(same_steps, f"{run}: per-step loss, grad_norm, tokens equal to {ref}")
            summary = json.load(open(f"{work}/runs/{run}/summary.json"))
            check(summary["train_loss"] == ref_summary["train_loss"] and summary["world_size"] == ranks,
                  f"{run}: final train loss {summary['train_loss']!r} == {ref_summary['train_loss']!r} (all 17 digits)")
            for name, data in ref_bytes.items():
                path = f"{work}/runs/{run}/final/{name}"
                check(os.path.exists(path) and open(path, "rb").read() == data,
                      f"{run}: final/{name} byte-identical to {ref}")
    # The runs trained: weights moved and clipping was active.
    check(any(s["grad_norm"] > 1.0 for s in ref_steps), f"{method}: gradient clipping was exercised")

ref_steps, ref_w = steps("full-1-g12"), weights("full-1-g12")
exact = open(glob.glob(f"{work}/runs/full-1-g12/final/model.safetensors")[0], "rb").read()
check(open(f"{work}/runs/full-3-g12-z0/final/model.safetensors", "rb").read() == exact,
      "3 ranks x 2 micro-batches (ZeRO 0) byte-identical to 1 rank x 6")
for run in ("full-3-g12-z2", "full-2-g12-z1"):
    got = steps(run)
    worst = max(abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(got, ref_steps))
    check(len(got) == len(ref_steps) and worst <= 1e-6, f"{run}: losses within 1e-6 relative (worst {worst:.2e})")
    w = weights(run)
    worst_w = max(abs(x - y) / max(1e-3, abs(y)) for k in ref_w for x, y in zip(w[k], ref_w[k]))
    check(worst_w <= 1e-4, f"{run}: weights within rounding (worst {worst_w:.2e})")
print(f"dist_equivalence (numbers): {passes} passed, {failures} failed")
sys.exit(1 if failures else 0)
PY
t2=$(date +%s)

# ---- 2. optimizer-state bytes per rank fall as 1/N ----
for stage in 0 1 2; do
  for ranks in 1 2 4; do
    "$mpirun_sh" -np "$ranks" "$ctune" train "${recipe_full[@]}" "${common[@]}" --dry-run \
      distributed.zero_stage=$stage > "dry-$stage-$ranks.log" 2>&1 || { cat "dry-$stage-$ranks.log"; fail "dry run"; }
  done
done
python3 - <<'PY'
import re, sys
failures = 0
def memory(stage, ranks):
    text = open(f"dry-{stage}-{ranks}.log").read()
    rows = re.findall(r"rank (\d+): parameters (\d+), gradients (\d+), optimizer state (\d+), activations (\d+)", text)
    trainable = int(re.search(r"parameters: \d+ total, (\d+) trainable", text).group(1))
    return [tuple(map(int, r[1:])) for r in rows], trainable
for stage in (0, 1, 2):
    base, trainable = memory(stage, 1)
    full_state = base[0][2]
    if full_state != 2 * 4 * trainable:
        print(f"FAIL stage {stage}: 1 rank should hold 2 x 4 x {trainable} bytes of AdamW state, got {full_state}"); failures += 1
    for ranks in (2, 4):
        rows, _ = memory(stage, ranks)
        state = [r[2] for r in rows]
        if len(rows) != ranks:
            print(f"FAIL stage {stage}, {ranks} ranks: {len(rows)} memory lines"); failures += 1; continue
        if stage == 0:
            ok = all(s == full_state for s in state)
        else:
            # whole blocks of 4096 values: at most one block (x 2 moments x 4 bytes) above 1/N
            ok = sum(state) == full_state and max(state) <= full_state / ranks + 2 * 4 * 4096
        print(("ok   " if ok else "FAIL ") + f"stage {stage}, {ranks} ranks: optimizer state per rank {state} (1 rank: {full_state})")
        failures += 0 if ok else 1
        grads = [r[1] for r in rows]
        if stage == 2 and not max(grads) < base[0][1]:
            print(f"FAIL stage 2: gradient bytes per rank {grads} should fall below 1 rank's {base[0][1]}"); failures += 1
# Stage 2's backward writes into two layer buckets plus the gradients outside the layers, not a
# whole gradient: on 1 rank, stage 2's gradient bytes less stage 1's (the same sums otherwise)
# are those of two of the tiny model's four layers and the embedding, about half the whole.
backward = memory(2, 1)[0][0][1] - memory(1, 1)[0][0][1]
whole = 4 * memory(1, 1)[1]
ok = 0 < backward <= 0.6 * whole
print(("ok   " if ok else "FAIL ") + f"stage 2: the backward holds {backward} gradient bytes, the whole gradient is {whole}")
failures += 0 if ok else 1
sys.exit(1 if failures else 0)
PY
t3=$(date +%s)

# ---- 3. failures never hang ----
# One rank fails at step 3: every rank stops, rank 0 prints the failing rank's message once.
set +e
CTUNE_TEST_FAIL_RANK=1 CTUNE_TEST_FAIL_STEP=3 timeout 60 "$mpirun_sh" -np 2 "$ctune" train "${recipe_full[@]}" \
  "${common[@]}" distributed.zero_stage=2 checkpoint.output_dir=runs/fail > fail.out 2> fail.err
rc=$?
set -e
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || fail "one failing rank: exit $rc (124 = hung)"
[ "$(grep -c 'ctune train: error: rank 1: test hook' fail.err)" -eq 1 ] || { cat fail.err; fail "one failing rank: expected one message naming rank 1"; }
grep -q "step 2/" fail.out && ! grep -q "step 3/" fail.out || fail "one failing rank: should stop at step 3"

# One rank hangs (sleeps) at step 3: the others' collective times out after 2 s.
start=$(date +%s)
set +e
CTUNE_TEST_FAIL_RANK=1 CTUNE_TEST_FAIL_STEP=3 CTUNE_TEST_FAIL_SLEEP_S=100 timeout 60 "$mpirun_sh" -np 2 "$ctune" train \
  "${recipe_full[@]}" "${common[@]}" distributed.timeout_s=2 checkpoint.output_dir=runs/hang > hang.out 2> hang.err
rc=$?
set -e
elapsed=$(( $(date +%s) - start ))
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || fail "hanging rank: exit $rc (124 = the timeout did not fire)"
grep -q "rank 0: .* did not complete within 2 s" hang.err || { cat hang.err; fail "hanging rank: no timeout message from rank 0"; }
[ "$elapsed" -lt 30 ] || fail "hanging rank: took $elapsed s"

# A rank killed with SIGKILL mid-run: mpirun ends the job with a non-zero status.
"$mpirun_sh" -np 2 "$ctune" train "${recipe_full[@]}" "${common[@]}" train.max_steps=1000000 \
  checkpoint.output_dir=runs/kill > kill.out 2> kill.err &
mp=$!
for _ in $(seq 300); do
  [ -f runs/kill/metrics.jsonl ] && [ "$(wc -l < runs/kill/metrics.jsonl)" -ge 3 ] && break
  sleep 0.1
done
victim=$(ps -o pid= --ppid "$mp" | tail -n 1 | tr -d ' ')
[ -n "$victim" ] || fail "SIGKILL: no rank process found under mpirun $mp"
kill -9 "$victim"
for _ in $(seq 300); do kill -0 "$mp" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$mp" 2>/dev/null; then fail "SIGKILL: the job still runs 30 s after rank pid $victim was killed"; fi
set +e
wait "$mp"
rc=$?
set -e
mp=""
[ "$rc" -ne 0 ] || fail "SIGKILL: mpirun exited 0"
t4=$(date +%s)

# NCCL is refused with a clear message until the CUDA back end exists.
set +e
"$ctune" train "${recipe_full[@]}" "${common[@]}" distributed.backend=nccl checkpoint.output_dir=runs/nccl > nccl.out 2>&1
rc=$?
set -e
[ "$rc" -ne 0 ] && grep -q "nccl is not available yet" nccl.out || { cat nccl.out; fail "backend nccl should be refused"; }

# ---- 4. collectives between real ranks ----
"$mpirun_sh" -np 3 "$test_zero" --mpi > mpi3.log 2>&1 || { cat mpi3.log; fail "test_zero --mpi on 3 ranks"; }
"$mpirun_sh" -np 4 "$test_zero" --mpi > mpi4.log 2>&1 || { cat mpi4.log; fail "test_zero --mpi on 4 ranks"; }
t5=$(date +%s)
echo "dist_equivalence: ok (training runs $((t1 - t0)) s, comparison $((t2 - t1)) s, dry runs $((t3 - t2)) s," \
  "failure cases $((t4 - t3)) s, collectives $((t5 - t4)) s)"
