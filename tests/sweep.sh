#!/usr/bin/env bash
# Integration: a 2x2 sweep (optim.lr x lora.r) of the tiny LoRA recipe, shortened, run locally;
# a rerun skips finished points; a sweep with a failing point goes on and names it; then
# `ctune report` ranks the runs (checked against their summary.json files) and draws a PNG
# that Python's zlib decodes.
set -uo pipefail
src=${CTUNE_SOURCE_DIR:?}
ctune=${CTUNE:?}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1
failed=0
fail() {
  echo "FAIL: $*"
  failed=$((failed + 1))
}

cat >sweep.yaml <<EOF
base: $src/configs/tiny/lora.yaml
name: lr-r
output_dir: $work/out
overrides:
  model.path: $work/models/tiny
  data:
    train: $work/data/train.h5
    eval: $work/data/eval.h5
    synthetic_train_examples: 2000
    synthetic_eval_examples: 32
  train: {max_steps: 12, eval_every: 6, log_every: 4}
  optim.warmup_steps: 2
  checkpoint.every: 0
grid:
  optim.lr: [1e-3, 3.0e-3]
  lora.r: [4, 8]
EOF
points=("lr-0.001,r-4" "lr-0.001,r-8" "lr-0.003,r-4" "lr-0.003,r-8")

for cmd in sweep report; do
  "$ctune" $cmd --help | grep -q "usage: ctune $cmd" || fail "ctune $cmd --help"
done
"$ctune" sweep >/dev/null 2>&1
[ $? -eq 2 ] || fail "ctune sweep without a file should exit 2"
printf 'base: x.yaml\ngrid:\n  optim.lr: 0.1\n' >bad-grid.yaml
out=$("$ctune" sweep bad-grid.yaml 2>&1)
[ $? -eq 1 ] && grep -q "bad-grid.yaml:3: grid.optim.lr: expected a list of values" <<<"$out" || fail "bad sweep file: $out"

# A dry run lists the points and writes nothing.
sed "s|output_dir: $work/out|output_dir: $work/dry|" sweep.yaml >dry.yaml
out=$("$ctune" sweep dry.yaml --dry-run 2>&1) || fail "dry run failed: $out"
for p in "${points[@]}"; do grep -qF "$p" <<<"$out" || fail "dry run does not list $p"; done
[ ! -e "$work/dry" ] || fail "the dry run wrote $work/dry"
out=$("$ctune" sweep dry.yaml --dry-run --slurm 2>&1) || fail "slurm dry run failed"
grep -q "^#SBATCH --array=0-3$" <<<"$out" || fail "slurm dry run: no '#SBATCH --array=0-3' in: $out"

start=$(date +%s%N)
"$ctune" sweep sweep.yaml >sweep.log 2>&1 || { fail "sweep failed"; cat sweep.log; }
echo "sweep of 4 points: $((($(date +%s%N) - start) / 1000000)) ms"
cat sweep.log
grep -q "4 of 4 points ran, 0 failed" sweep.log || fail "sweep summary line"
for p in "${points[@]}"; do
  for f in recipe.yaml recipe.resolved.yaml summary.json metrics.jsonl train.log final/adapter_model.safetensors; do
    [ -s "out/$p/$f" ] || fail "out/$p/$f missing"
  done
done

# Running it again skips the finished points.
"$ctune" sweep sweep.yaml >again.log 2>&1 || fail "second sweep run failed"
grep -q "0 of 4 points ran, 0 failed, 4 skipped" again.log || { fail "rerun did not skip"; cat again.log; }

# A point that fails (no model there) does not stop the others; the sweep names it, exits 1.
cat >bad.yaml <<EOF
base: $src/configs/tiny/lora.yaml
output_dir: $work/bad
overrides:
  model.init_preset: ""
  data: {train: $work/data/train.h5, eval: "", synthetic_task: ""}
  train: {max_steps: 3, eval_every: 0}
  optim.warmup_steps: 0
  checkpoint.every: 0
grid:
  model.path: [$work/absent, $work/models/tiny]
EOF
"$ctune" sweep bad.yaml >bad.log 2>&1
status=$?
[ "$status" -eq 1 ] || fail "a sweep with a failed point exited $status, not 1"
grep -q "1 failed" bad.log && grep -q "failed points: path-_" bad.log || { fail "failed point not reported"; cat bad.log; }
grep -q "config.json" bad.log || fail "the failed point's log tail is not shown"
python3 - "$work/bad/sweep.json" <<'PY' || fail "bad/sweep.json statuses"
import json, sys
points = json.load(open(sys.argv[1]))["points"]
assert [p["status"] for p in points] == ["failed", "ok"], points
assert points[0]["exit_status"] != 0
PY

# The report: ranked by eval loss, the differing keys as columns, CSV and PNG.
"$ctune" report out -o "$work/rep" >report.log 2>&1 || { fail "report failed"; cat report.log; }
cat report.log
python3 - "$work" <<'PY' || fail "report contents"
import csv, json, os, struct, sys, zlib
work = sys.argv[1]
points = ["lr-0.001,r-4", "lr-0.001,r-8", "lr-0.003,r-4", "lr-0.003,r-8"]
summary = {p: json.load(open(f"{work}/out/{p}/summary.json")) for p in points}
best_first = sorted(points, key=lambda p: summary[p]["eval_loss"])

rows = [l for l in open(f"{work}/rep.md") if l.startswith("| ") and not l.startswith("| #")]
assert len(rows) == 4, rows
for rank, (row, name) in enumerate(zip(rows, best_first), 1):
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    assert cells[0] == str(rank) and cells[1] == name, (cells, name)
    lr, r = name.split(",")
    assert cells[2] == r.split("-")[1] and float(cells[3]) == float(lr.split("-", 1)[1]), cells
    assert cells[6] == f"{summary[name]['eval_loss']:.4f}", cells
header = open(f"{work}/rep.md").read()
assert "| # | run | lora.r | optim.lr | steps | train loss | eval loss |" in header, header
assert "![loss curves](rep.png)" in header

table = list(csv.DictReader(open(f"{work}/rep.csv")))
assert [t["run"] for t in table] == best_first, table
for t in table:
    s = summary[t["run"]]
    assert abs(float(t["eval_loss"]) - s["eval_loss"]) < 1e-9 and int(t["steps"]) == 12 == s["steps"]
    assert t["status"] == "finished" and t["dir"] == f"{work}/out/{t['run']}"
# Different learning rates really give different losses: the runs were not copies.
assert len({round(s["eval_loss"], 6) for s in summary.values()}) == 4

data = open(f"{work}/rep.png", "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
pos, idat, width = 8, b"", None
while pos < len(data):
    n, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    assert zlib.crc32(kind + body) == struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0], kind
    if kind == b"IHDR":
        width, height, depth, colour = struct.unpack(">IIBB", body[:10])
        assert (depth, colour) == (8, 2)
    idat += body if kind == b"IDAT" else b""
    pos += 12 + n
raw = zlib.decompress(idat)
stride = 1 + 3 * width
assert len(raw) == height * stride and width >= 640 and height >= 400
pixels = set()
for y in range(height):
    row = raw[y * stride + 1:(y + 1) * stride]
    pixels.update(row[i:i + 3] for i in range(0, len(row), 3))
tab10 = [bytes(c) for c in ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40))]
assert all(c in pixels for c in tab10), "a run's colour is missing from the chart"
print(f"report: ranking, tables and a {width}x{height} PNG ({len(data)} bytes) check out")
PY

# Run directories can be given one by one too.
"$ctune" report "out/${points[0]}" "out/${points[3]}" -o "$work/two" >two.log 2>&1 || fail "report of two runs"
[ "$(grep -c '^| [12] |' two.log)" -eq 2 ] || { fail "report of two runs: rows"; cat two.log; }
"$ctune" report "$work/nothing" >none.log 2>&1 && fail "report of a missing directory succeeded"
grep -q "nothing" none.log || fail "report error does not name the directory"

echo "sweep: $failed failed"
[ "$failed" -eq 0 ]
