#!/usr/bin/env bash
# Integration: a real one-node Slurm cluster (scripts/slurm/local_cluster.sh: munged,
# slurmctld, slurmd from Debian's packages). sbatch the tiny recipe on 2 tasks under srun and
# under mpirun (scripts/slurm/train.sbatch) and check both runs; then a 4-point sweep as a job
# array (`ctune sweep --slurm`) and its report. Prints "SKIPPED: <reason>" and exits 0 where
# Slurm cannot run here (no packages and no way to install them, not root, daemons not up in
# 30 s). The daemons are stopped on every exit if this test started them.
set -uo pipefail
src=${CTUNE_SOURCE_DIR:?}
ctune=${CTUNE:?}
work=$(mktemp -d)
cluster=$src/scripts/slurm/local_cluster.sh
started_cluster=""
cleanup() {
  if [ -n "$started_cluster" ]; then "$cluster" stop >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work" || exit 1
skip() {
  echo "SKIPPED: $*"
  exit 0
}
failed=0
fail() {
  echo "FAIL: $*"
  failed=$((failed + 1))
}
t0=$(date +%s)

[ "$(id -u)" -eq 0 ] || skip "starting slurmd and munged needs root"
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || skip "slurm-wlm and munge are not installed and apt-get is missing"
  echo "slurm: installing slurm-wlm and munge"
  timeout 300 "$src/scripts/install_deps.sh" --test >install.log 2>&1 ||
    skip "slurm-wlm and munge are not installed and could not be installed: $(tail -n 1 install.log)"
fi

# One cluster on this machine at a time (fixed ports): tests from other build folders wait.
exec 9>/tmp/ctune-slurm-test.lock
flock -w 600 9 || skip "another Slurm test held the lock for 10 minutes"
if "$cluster" status >/dev/null 2>&1; then
  echo "slurm: using the local cluster that is already running"
else
  started_cluster=1
  CTUNE_SLURM_TIMEOUT=30 timeout 90 "$cluster" start >cluster.log 2>&1
  case $? in
    0) ;;
    3) skip "slurmctld/slurmd did not come up: $(grep 'local_cluster:' cluster.log | tail -n 1)" ;;
    *) skip "the local cluster could not start: $(tail -n 1 cluster.log)" ;;
  esac
fi
eval "$("$cluster" env)"
export SLURM_CONF
echo "slurm: cluster up after $(($(date +%s) - t0)) s"

# Waits until none of the given jobs is queued or running (bounded).
wait_jobs() {
  local deadline=$(($(date +%s) + $1))
  shift
  local ids
  ids=$(
    IFS=,
    echo "$*"
  )
  while [ -n "$(timeout 10 squeue -h -j "$ids" -o %i 2>/dev/null)" ]; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "jobs $* still queued or running:"
      squeue
      return 1
    fi
    sleep 0.5
  done
}
job_state() { timeout 10 scontrol show job "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | head -1; }

common=(model.path="$work/models/tiny" data.train="$work/data/train.h5" data.eval="$work/data/eval.h5"
        data.synthetic_train_examples=2000 data.synthetic_eval_examples=32 train.max_steps=12
        optim.warmup_steps=2 train.eval_every=0 checkpoint.every=0 train.log_every=4)
# The model and data are made once here, not by two jobs at the same time.
"$ctune" train "$src/configs/tiny/lora.yaml" "${common[@]}" --dry-run >prep.log 2>&1 || fail "dry run"

# ---- one recipe on 2 tasks, under srun and under mpirun ----
jobs=()
for launcher in srun mpirun; do
  id=$(CTUNE="$ctune" CTUNE_LAUNCHER=$launcher sbatch --parsable --ntasks=2 --job-name="ctune-$launcher" \
    --output="$work/$launcher.out" "$src/scripts/slurm/train.sbatch" "$src/configs/tiny/lora.yaml" \
    "${common[@]}" checkpoint.output_dir="$work/runs/$launcher") || fail "sbatch ($launcher)"
  jobs+=("$id")
done
wait_jobs 180 "${jobs[@]}" || fail "the training jobs did not finish within 180 s"
i=0
for launcher in srun mpirun; do
  state=$(job_state "${jobs[$i]}")
  [ "$state" = "JobState=COMPLETED" ] || { fail "$launcher job ${jobs[$i]}: $state"; cat "$work/$launcher.out"; }
  grep -q "train.sbatch: job ${jobs[$i]}.*$launcher" "$launcher.out" || fail "$launcher.out does not show the $launcher launch"
  for f in summary.json metrics.jsonl final/adapter_model.safetensors; do
    [ -s "runs/$launcher/$f" ] || fail "runs/$launcher/$f missing"
  done
  i=$((i + 1))
done
python3 - "$work" <<'PY' || fail "the two launchers' runs"
import json, sys
work = sys.argv[1]
s = {l: json.load(open(f"{work}/runs/{l}/summary.json")) for l in ("srun", "mpirun")}
for l in s:
    assert s[l]["world_size"] == 2 and s[l]["steps"] == 12, (l, s[l])
# Same recipe, same 2 ranks: the launcher must not change a single number.
assert s["srun"]["train_loss"] == s["mpirun"]["train_loss"], s
print("slurm: srun and mpirun runs both on 2 ranks, same final loss", s["srun"]["train_loss"])
PY
echo "slurm: training jobs done after $(($(date +%s) - t0)) s"

# ---- a 4-point sweep as a job array ----
cat >sweep.yaml <<EOF
base: $src/configs/tiny/lora.yaml
name: array
output_dir: $work/sweep
overrides:
  model.path: $work/models/tiny
  data: {train: $work/data/train.h5, eval: $work/data/eval.h5}
  train: {max_steps: 8, eval_every: 0}
  optim.warmup_steps: 2
  checkpoint.every: 0
grid:
  optim.lr: [1e-3, 3e-3]
  lora.r: [4, 8]
slurm: {ntasks: 1, cpus_per_task: 1, time: "00:10:00"}
EOF
"$ctune" sweep sweep.yaml --slurm >sweep.log 2>&1 || { fail "ctune sweep --slurm"; cat sweep.log; }
cat sweep.log
array=$(grep -o 'submitted job array [0-9]*' sweep.log | grep -o '[0-9]*$')
grep -q "^#SBATCH --array=0-3$" sweep/sweep.sbatch || fail "sweep.sbatch has no '--array=0-3'"
if [ -n "$array" ]; then
  wait_jobs 240 "$array" || fail "the job array did not finish within 240 s"
  for i in 0 1 2 3; do
    state=$(job_state "${array}_$i")
    [ "$state" = "JobState=COMPLETED" ] || fail "array task ${array}_$i: $state"
    [ -s "sweep/slurm-${array}_$i.out" ] || fail "sweep/slurm-${array}_$i.out missing"
  done
fi
for p in "lr-0.001,r-4" "lr-0.001,r-8" "lr-0.003,r-4" "lr-0.003,r-8"; do
  [ -s "sweep/$p/summary.json" ] || { fail "sweep point $p did not finish"; tail -n 5 "sweep/$p/train.log"; }
done
"$ctune" report sweep >report.log 2>&1 || { fail "report of the array sweep"; cat report.log; }
[ "$(grep -c '^| [1-4] | lr-' report.log)" -eq 4 ] || { fail "report rows"; cat report.log; }
echo "slurm: job array done after $(($(date +%s) - t0)) s"

# ---- pre-emption ----
# `ctune train` writes a checkpoint and exits 75 on SIGUSR1/SIGTERM; checkpoint.resume: auto
# continues from it (CTUNE_TEST_REQUEUE=0 leaves this part out, ~50 s).
# A job signalled mid-run (as --signal=B:USR1@120 would) is requeued by train.sbatch, resumes
# from its checkpoint and must end with the same adapter bytes as an uninterrupted run.
test_requeue() {
  local steps=160 args=("${common[@]}" train.max_steps=160 checkpoint.every=20 checkpoint.keep_last=1
                        checkpoint.resume=auto)
  "$ctune" train "$src/configs/tiny/lora.yaml" "${args[@]}" checkpoint.output_dir="$work/runs/straight" \
    >straight.log 2>&1 || { fail "uninterrupted run"; return; }
  local id
  id=$(CTUNE="$ctune" sbatch --parsable --ntasks=1 --output="$work/requeue.out" \
    "$src/scripts/slurm/train.sbatch" "$src/configs/tiny/lora.yaml" "${args[@]}" \
    checkpoint.output_dir="$work/runs/requeued") || { fail "sbatch (requeue)"; return; }
  # Signal once the run is well past its first checkpoint.
  local deadline=$(($(date +%s) + 120))
  until [ "$(cat runs/requeued/metrics.jsonl 2>/dev/null | grep -c '"loss"')" -ge 50 ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { fail "requeue job never reached step 50"; return; }
    sleep 0.2
  done
  scancel --batch --signal=USR1 "$id"
  wait_jobs 240 "$id" || { fail "requeued job did not finish"; return; }
  scontrol show job "$id" | grep -q "Restarts=[1-9]" || fail "job $id was not requeued"
  [ "$(job_state "$id")" = "JobState=COMPLETED" ] || fail "requeued job: $(job_state "$id")"
  grep -q "requeueing job $id" requeue.out || fail "train.sbatch did not requeue"
  cmp "runs/straight/final/adapter_model.safetensors" "runs/requeued/final/adapter_model.safetensors" ||
    fail "the requeued run ended with other weights than the uninterrupted one ($steps steps)"
}
if [ "${CTUNE_TEST_REQUEUE:-1}" = 1 ]; then
  test_requeue
  echo "slurm: requeue test done after $(($(date +%s) - t0)) s"
fi

echo "slurm: $failed failed ($(($(date +%s) - t0)) s)"
[ "$failed" -eq 0 ]
