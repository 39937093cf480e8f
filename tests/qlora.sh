#!/usr/bin/env bash
# Integration: QLoRA, lora.quantize_base: nf4 (docs/model.md, "4-bit base"): the decoder
# layers' frozen Linear weights held as NF4 codes and read back into 16 bits a layer at a time.
#  1. A QLoRA run on base B is, byte for byte, plain LoRA on B' = B with those weights replaced
#     by their NF4 read-back (tests/tools/nf4_tool base): every step's loss and gradient norm,
#     the evaluations, the final adapter. In bf16-mixed with all-linear adapters (fused into
#     the base GEMMs); in fp16-mixed with adapter dropout (unfused), activation checkpointing
#     and 2 ranks at ZeRO 2; with DoRA.
#  2. Resume: stopped at step 13 and resumed from its step-10 checkpoint = the straight run.
#  3. ctune merge --quantize-base nf4 of the adapter into B = the plain merge into B' (bytes);
#     the plain merge into B differs; the adapter's and the merge's cards name the 4-bit base.
#     ctune eval / generate --quantize-base nf4 on B = on B' (loss, logits, completion), and
#     with --precision of the run it reproduces the run's final eval_loss bit for bit; so does
#     ctune eval --run RUN_DIR from the run's folder alone.
#  4. The plan: a "base:" line with the codes' bytes (9/16 of a byte per value here: 4 bits
#     and a 4-byte absmax per 64); parameter bytes fall by the 16-bit copies no longer held
#     less those bytes.
#  5. Refused before anything runs: nf4 in fp32, nf4 with full fine-tuning, a base holding a
#     NaN (naming the tensor and index; also by eval --quantize-base nf4).
set -uo pipefail
src=${CTUNE_SOURCE_DIR:?}
ctune=${CTUNE:?}
tools=${CTUNE_TOOLS_DIR:?}
if ! command -v python3 > /dev/null; then
  echo "SKIPPED: python3 is needed to read metrics.jsonl"
  exit 0
fi
source "$src/tests/tools/checks.sh"
mpi="$src/scripts/mpirun.sh"
export OMP_NUM_THREADS=1

common=(data.train="$work/data/train.h5" data.eval="$work/data/eval.h5" data.synthetic_train_examples=2000
        data.synthetic_eval_examples=40 train.max_steps=30 optim.warmup_steps=3 optim.lr=3e-3 train.log_every=1
        train.micro_batch_size=8 train.global_batch_size=16 train.eval_every=15 checkpoint.every=0 device=cpu
        precision=bf16-mixed)
# run NAME BASE RANKS [key=value...]: a LoRA run on models/BASE into runs/NAME, log in NAME.log
run() {
  local name=$1 base=$2 ranks=$3
  shift 3
  local launch=("$ctune")
  [ "$ranks" -gt 1 ] && launch=(timeout 300 "$mpi" -np "$ranks" -x OMP_NUM_THREADS "$ctune")
  "${launch[@]}" train "$src/configs/tiny/lora.yaml" "${common[@]}" model.path="$work/models/$base" \
    checkpoint.output_dir="runs/$name" "$@" > "$name.log" 2>&1 || { tail -n 20 "$name.log"; bad "$name did not finish"; return 1; }
}
# same NAME REF: NAME's steps, evaluations and final adapter are REF's, byte for byte
same() {
  python3 "$src/tests/tools/same_runs.py" "$1" "$2" adapter_model.safetensors \
    && ok "$1 = $2 (losses, grad norms, evals, adapter bytes)" || bad "$1 differs from $2"
}

# ---- 1. QLoRA on B = LoRA on B's NF4 read-back ----
run q-bf16 tiny 1 lora.quantize_base=nf4 || exit 1 # (creates models/tiny)
cp -r models/tiny models/tiny-nf4
"$tools/nf4_tool" base models/tiny models/tiny-nf4/model.safetensors || bad "nf4_tool base"
run l-bf16 tiny-nf4 1
same q-bf16 l-bf16
cmp -s models/tiny/model.safetensors models/tiny-nf4/model.safetensors && bad "the read-back base equals the base"
variant=(precision=fp16-mixed lora.dropout=0.1 train.activation_checkpointing=true distributed.zero_stage=2)
run q-fp16-2r tiny 2 "${variant[@]}" lora.quantize_base=nf4
run l-fp16-2r tiny-nf4 2 "${variant[@]}"
same q-fp16-2r l-fp16-2r
run q-dora tiny 1 lora.use_dora=true 'lora.target_modules=[q_proj,v_proj,down_proj]' lora.quantize_base=nf4
run l-dora tiny-nf4 1 lora.use_dora=true 'lora.target_modules=[q_proj,v_proj,down_proj]'
same q-dora l-dora
grep -q "base: the layers' [0-9]* Linear weights in 4 bits" q-bf16.log && ok "the plan describes the 4-bit base" \
  || bad "q-bf16's plan has no 'base:' line"

# ---- 2. resume ----
CTUNE_TEST_FAIL_RANK=0 CTUNE_TEST_FAIL_STEP=13 "$ctune" train "$src/configs/tiny/lora.yaml" "${common[@]}" \
  model.path="$work/models/tiny" lora.quantize_base=nf4 checkpoint.every=5 checkpoint.output_dir=runs/q-resumed \
  > stopped.log 2>&1 && bad "the test hook did not stop the run"
"$ctune" eval --run runs/q-resumed > unfinished.log 2>&1
[ $? -eq 1 ] && grep -q "no final/ folder (the run has not finished); name a checkpoint with --adapter" unfinished.log \
  && ok "eval --run of an unfinished run names the way to a checkpoint" || { cat unfinished.log; bad "eval --run unfinished"; }
run q-resumed tiny 1 lora.quantize_base=nf4 checkpoint.every=5 checkpoint.resume=auto
grep -q "resumed from .*step-000010 at step 10" q-resumed.log || bad "q-resumed did not resume at step 10"
python3 - << 'PY' && ok "resumed at step 10 = the straight run (steps 11-30, adapter bytes)" || bad "the resumed run differs"
import json, sys
def rows(name):
    return {r["step"]: {k: v for k, v in r.items() if k not in ("tok_s", "elapsed_s", "peak_memory_bytes")}
            for r in map(json.loads, open(f"runs/{name}/metrics.jsonl")) if "step" in r}
a, b = rows("q-resumed"), rows("q-bf16")
late = [s for s in b if s > 10]
if not late or any(a.get(s) != b[s] for s in late): sys.exit(1)
f = "final/adapter_model.safetensors"
sys.exit(open(f"runs/q-resumed/{f}", "rb").read() != open(f"runs/q-bf16/{f}", "rb").read())
PY

# ---- 3. merge ----
"$ctune" merge runs/q-bf16/final --base models/tiny --quantize-base nf4 -o merged-q --dtype float32 > merge.log 2>&1 \
  || { cat merge.log; bad "merge --quantize-base nf4"; }
"$ctune" merge runs/q-bf16/final --base models/tiny-nf4 -o merged-l --dtype float32 >> merge.log 2>&1 \
  || { cat merge.log; bad "merge into the read-back base"; }
"$ctune" merge runs/q-bf16/final --base models/tiny -o merged-full --dtype float32 >> merge.log 2>&1 \
  || { cat merge.log; bad "merge into the base"; }
cmp -s merged-q/model.safetensors merged-l/model.safetensors \
  && ! cmp -s merged-q/model.safetensors merged-full/model.safetensors \
  && grep -q "quantize-base nf4" merged-q/README.md \
  && grep -q "QLoRA: the base" runs/q-bf16/final/README.md \
  && ok "merge --quantize-base nf4 = the merge into the read-back base (bytes), unlike the plain merge; the cards say so" \
  || bad "merge --quantize-base nf4"
"$ctune" merge runs/q-bf16/final --base models/tiny --quantize-base nf8 -o merged-x > merge-bad.log 2>&1
[ $? -eq 2 ] && grep -q "expected nf4" merge-bad.log && ok "merge refuses --quantize-base nf8" \
  || bad "merge --quantize-base nf8 was not refused"

# ---- 3b. eval and generate on the base as QLoRA held it ----
# ev OUT RUN MODEL [flags...]: RUN's adapter's eval loss, one sequence's logits, a greedy completion
ev() {
  local out=$1 run=$2 base=$3
  shift 3
  local with=(--model "models/$base" --adapter "runs/$run/final" "$@")
  "$ctune" eval "${with[@]}" --data "$work/data/eval.h5" --seq-len 16 > "$out.eval" 2>> ev.log \
    && "$ctune" eval "${with[@]}" --ids 1,5,9,12,7,3 --logits-out "$out.logits" 2>> ev.log \
    && "$ctune" generate "${with[@]}" --prompt "12+34=" --max-new-tokens 4 > "$out.gen" 2>> ev.log \
    || { cat ev.log; bad "eval/generate $out"; }
}
for run in q-bf16 q-dora; do
  ev q $run tiny --quantize-base nf4
  ev l $run tiny-nf4
  ev full $run tiny
  cmp -s q.eval l.eval && cmp -s q.logits l.logits && cmp -s q.gen l.gen && ! cmp -s q.eval full.eval \
    && ! cmp -s q.logits full.logits \
    && ok "$run: eval/generate --quantize-base nf4 = on the read-back base (loss, logits, completion), unlike the base" \
    || bad "$run: eval/generate --quantize-base nf4: $(cat q.eval l.eval full.eval)"
done
# A run's own final evaluation, reproduced from its adapter: ctune eval in the run's precision
# on the base as the run held it gives the same bits; fp32, or the base as stored, do not.
for run in q-bf16:bf16-mixed q-fp16-2r:fp16-mixed q-dora:bf16-mixed; do
  name=${run%%:*} precision=${run#*:}
  for how in "--precision $precision --quantize-base nf4" "--quantize-base nf4" "--precision $precision"; do
    # shellcheck disable=SC2086 # the words of $how are separate flags
    "$ctune" eval --model models/tiny --adapter "runs/$name/final" $how --data "$work/data/eval.h5" --seq-len 16 \
      --micro-batch 8 || echo '{}'
  done > "$name-evals.json" 2>> ev.log
  python3 - "$name" << 'PY' && ok "$name: ctune eval --precision P --quantize-base nf4 = the run's final eval_loss (bits)" \
    || bad "$name: ctune eval does not reproduce the run's eval_loss"
import json, sys
name = sys.argv[1]
want = json.load(open(f"runs/{name}/summary.json"))["eval_loss"]
same, fp32, stored = (json.loads(line).get("eval_loss") for line in open(f"{name}-evals.json"))
print(f"  {name}: run {want!r}; eval {same!r}; in fp32 {fp32!r}; on the stored base {stored!r}")
sys.exit(0 if same == want and fp32 is not None and fp32 != want and stored is not None and stored != want else 1)
PY
done
# --run RUN: the same from the run's folder alone (its recipe gives base, adapter, precision,
# the 4-bit base, and the final evaluation's data and shape, answer accuracy included).
for name in q-bf16 q-fp16-2r q-dora; do
  "$ctune" eval --run "runs/$name" > "$name-run.json" 2>> ev.log
  python3 - "$name" << 'PY' && ok "$name: ctune eval --run = the run's final eval_loss and accuracy (bits)" \
    || bad "$name: ctune eval --run does not reproduce the run's final evaluation"
import json, sys
name = sys.argv[1]
want = json.load(open(f"runs/{name}/summary.json"))
got = json.load(open(f"{name}-run.json"))
print(f"  {name}: run {want['eval_loss']!r} / {want['eval_accuracy']!r}; --run {got}")
sys.exit(0 if got["eval_loss"] == want["eval_loss"] and got["eval_accuracy"] == want["eval_accuracy"] else 1)
PY
done
"$ctune" generate --run runs/q-bf16 --prompt "12+34=" --max-new-tokens 4 > run.gen 2>> ev.log
"$ctune" generate --model models/tiny --adapter runs/q-bf16/final --quantize-base nf4 --precision bf16-mixed \
  --prompt "12+34=" --max-new-tokens 4 > flags.gen 2>> ev.log
[ -s run.gen ] && cmp -s run.gen flags.gen && ok "generate --run = generate with the run's flags" \
  || bad "generate --run differs from the flags it stands for"
"$ctune" eval --model models/tiny --quantize-base fp4 --ids 1 --logits-out - > ev-bad.log 2>&1
[ $? -eq 2 ] && grep -q "expected nf4" ev-bad.log && ok "eval refuses --quantize-base fp4" \
  || bad "eval --quantize-base fp4 was not refused"

# ---- 4. the plan's bytes ----
for q in none nf4; do
  "$ctune" train "$src/configs/tiny/lora.yaml" "${common[@]}" model.path="$work/models/tiny" lora.quantize_base=$q \
    checkpoint.output_dir=runs/dry --dry-run > "dry-$q.log" 2>&1 || { cat "dry-$q.log"; bad "dry run ($q)"; }
done
python3 - << 'PY' && ok "plan: NF4 bytes = 9/16 per quantized value; parameters = plain LoRA's less the copies not held, plus those bytes" \
  || bad "plan: parameter bytes with nf4"
import re, sys
def read(q):
    text = open(f"dry-{q}.log").read()
    copies = int(re.search(r"on bf16 copies \((\d+) weights\)", text).group(1))
    params = int(re.search(r"rank 0: parameters (\d+),", text).group(1))
    base = re.search(r"base: the layers' (\d+) Linear weights in 4 bits \(NF4, absmax per 64: (\d+) bytes\)", text)
    return copies, params, base
c0, p0, b0 = read("none")
c4, p4, b4 = read("nf4")
values, nf4_bytes = int(b4.group(1)), int(b4.group(2))
print(f"  16-bit copies {c0} -> {c4}; parameters {p0} -> {p4}; {values} values in {nf4_bytes} bytes")
sys.exit(0 if b0 is None and nf4_bytes * 16 == values * 9 and c4 < c0 and p0 - p4 == 2 * (c0 - c4) - nf4_bytes else 1)
PY

# ---- 5. refusals ----
refused() { # refused WHAT PATTERN RECIPE [key=value...]
  local what=$1 pattern=$2 recipe=$3
  shift 3
  "$ctune" train "$src/configs/tiny/$recipe.yaml" "${common[@]}" model.path="$work/models/${base_dir:-tiny}" \
    checkpoint.output_dir="runs/refused" "$@" > refused.log 2>&1
  local rc=$?
  [ "$rc" -ne 0 ] && grep -q "$pattern" refused.log && [ ! -e runs/refused/final ] && ok "refused: $what" \
    || { cat refused.log; bad "$what: exit $rc, expected a refusal matching '$pattern' and no final folder"; }
}
refused "nf4 in fp32" "quantize_base nf4 .*needs precision bf16-mixed or fp16-mixed" lora lora.quantize_base=nf4 \
  precision=fp32
refused "nf4 with full fine-tuning" "quantize_base nf4 .*needs method lora" full lora.quantize_base=nf4
cp -r models/tiny-nf4 models/tiny-nan
python3 - models/tiny-nan/model.safetensors << 'PY' || bad "could not plant a NaN"
import json, struct, sys
path = sys.argv[1]
data = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
begin = header["model.layers.1.mlp.up_proj.weight"]["data_offsets"][0]
data[8 + n + begin + 4 * 77: 8 + n + begin + 4 * 78] = struct.pack("<f", float("nan"))
open(path, "wb").write(data)
PY
base_dir=tiny-nan refused "a NaN in the base" "model.layers.1.mlp.up_proj.weight' holds nan at index 77" lora \
  lora.quantize_base=nf4
"$ctune" eval --model models/tiny-nan --quantize-base nf4 --ids 1,2 --logits-out nan.json > ev-nan.log 2>&1
[ $? -eq 1 ] && grep -q "model.layers.1.mlp.up_proj.weight' holds nan at index 77" ev-nan.log && [ ! -e nan.json ] \
  && ok "refused: eval --quantize-base nf4 on a base holding a NaN" || { cat ev-nan.log; bad "eval on a NaN base"; }

checks_summary qlora
