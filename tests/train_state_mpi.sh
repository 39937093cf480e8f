#!/usr/bin/env bash
# Training state across world sizes with real MPI ranks: 3 ranks write their parts in parallel
# (train_state_save; a save where one rank fails stops all of them and commits nothing), then
# 1, 2 and 4 ranks each read back every parameter and another split of the optimizer moments
# and compare them bitwise with the values the writers were given.
set -euo pipefail
src=${CTUNE_SOURCE_DIR:?}
bin=${CTUNE_BUILD_DIR:?}/test_train_state
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ckpt="$work/run/checkpoints/step-000001"

"$bin" --save-fail "$ckpt"
"$src/scripts/mpirun.sh" -np 3 "$bin" --save-fail "$ckpt"
[ ! -e "$ckpt/state/meta.json" ] || { echo "FAIL: a failed save left a completion marker"; exit 1; }
"$src/scripts/mpirun.sh" -np 3 "$bin" --save "$ckpt"
[ -f "$ckpt/state/meta.json" ] || { echo "FAIL: no state/meta.json after the save"; exit 1; }
parts=$(ls "$ckpt/state" | grep -c '^rank-0000[0-2]-of-00003\.safetensors$' || true)
[ "$parts" -eq 3 ] || { echo "FAIL: expected 3 part files, found $parts"; ls "$ckpt/state"; exit 1; }
grep -q '"world_size": 3' "$ckpt/state/meta.json" || { echo "FAIL: meta.json world_size"; exit 1; }

"$bin" --load "$ckpt"
for np in 2 4; do
  "$src/scripts/mpirun.sh" -np "$np" "$bin" --load "$ckpt"
done
echo "train_state_mpi: ok"
