#!/usr/bin/env bash
# ctune prep under mpirun: the ranks share the lines of the input, rank 0 writes, and the
# dataset and its validation split are the same bytes as a single process makes (1 rank x 1
# thread, 2 ranks, 3 ranks x 2 threads). Malformed lines in a non-zero rank's share stop
# every rank with one message naming the global line number and leave no file; --skip-bad
# gives the same files and counts on any rank count. Standard input and the synthetic tasks
# (rank 0 alone) still work under mpirun.
set -euo pipefail
src=${CTUNE_SOURCE_DIR:?}
ctune=${CTUNE:?}
mpirun="$src/scripts/mpirun.sh"
command -v mpirun >/dev/null || { echo "SKIPPED: no mpirun"; exit 0; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
fail() { echo "FAIL: $*"; exit 1; }
run_mpi() { local np=$1; shift; timeout 120 "$mpirun" -np "$np" "$ctune" "$@"; }

"$ctune" init --preset tiny -o model >/dev/null
# The byte-level tiny tokenizer has no chat markers: add chatml's as added tokens 259, 260.
marker() { printf '{"id": %d, "content": "%s", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}, ' "$1" "$2"; }
added="$(marker 259 '<|im_start|>')$(marker 260 '<|im_end|>')"
sed -i "s/\"added_tokens\":[[:space:]]*\[{/\"added_tokens\": [${added//|/\\|}{/" model/tokenizer.json
grep -q '<|im_end|>' model/tokenizer.json || fail "could not add the chatml markers to model/tokenizer.json"

# 6000 lines (chunks of 2048 lines: line 3000 is in rank 1's share on 2 and 3 ranks, line
# 5000 in rank 0's on 2 ranks and rank 2's on 3): text, prompt/completion and chats, UTF-8
# both raw and as \u escapes (a surrogate pair too), and some blank lines.
awk 'BEGIN {
  for (i = 1; i <= 6000; i++) {
    k = i % 4
    if (i % 101 == 0) print ""
    else if (k == 0) printf "{\"text\": \"doc %d: héllo wörld ☃ 日本語 🙂 %s\"}\n", i, substr("abcdefghijklmnopqrstuvwxyz", 1, i % 27)
    else if (k == 1) printf "{\"prompt\": \"q%d: 2+%d=\", \"completion\": \"%d\"}\n", i, i, i + 2
    else if (k == 2) printf "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"hi %d \\u00e9 \\ud83d\\ude42\"}, {\"role\": \"assistant\", \"content\": \"ok %d ✓\"}]}\n", i, i
    else printf "{\"text\": \"\\u65e5\\u672c %d ünïcödé\"}  \n", i
  }
}' > in.jsonl
docs=$(grep -c '^{' in.jsonl)
common=(--tokenizer model --template chatml --val-ratio 0.2 --val-seed 3)

"$ctune" prep "${common[@]}" --threads 1 in.jsonl -o ref.h5 --val-output ref_val.h5 > ref.log
grep -q "($docs documents," ref.log || fail "1 rank: expected $docs documents: $(cat ref.log)"
train_docs=$("$ctune" inspect ref.h5 | awk '/^documents/ {print $2}')
val_docs=$("$ctune" inspect ref_val.h5 | awk '/^documents/ {print $2}')
[ $((train_docs + val_docs)) -eq "$docs" ] && [ "$val_docs" -gt 0 ] ||
  fail "split $train_docs + $val_docs documents, expected $docs in all"

for setup in "2 1" "3 2"; do
  read -r np threads <<< "$setup"
  run_mpi "$np" prep "${common[@]}" --threads "$threads" in.jsonl -o "np$np.h5" --val-output "np${np}_val.h5" > "np$np.log" ||
    fail "$np ranks x $threads threads: status $?: $(cat "np$np.log")"
  cmp ref.h5 "np$np.h5" || fail "$np ranks x $threads threads: dataset differs from 1 rank"
  cmp ref_val.h5 "np${np}_val.h5" || fail "$np ranks x $threads threads: validation split differs from 1 rank"
  [ "$(grep -c '^wrote ' "np$np.log")" -eq 1 ] || fail "$np ranks: statistics not printed exactly once"
  grep -q "($docs documents," "np$np.log" || fail "$np ranks: statistics are not global: $(cat "np$np.log")"
done

# Malformed lines at 3000 and 5000.
awk 'NR == 3000 {print "{\"text\": 12}"; next} NR == 5000 {print "{\"text\": \"unterminated"; next} {print}' in.jsonl > bad.jsonl
bad_docs=$(grep -c '^{' bad.jsonl)
for np in 1 2 3; do
  status=0
  run_mpi "$np" prep "${common[@]}" bad.jsonl -o bad.h5 --val-output bad_val.h5 > bad.log 2> bad.err || status=$?
  [ "$status" -ne 0 ] || fail "$np ranks: a malformed line gave status 0"
  grep -q '^ctune prep: bad.jsonl:3000: "text" must be a string$' bad.err ||
    fail "$np ranks: the error does not name line 3000: $(cat bad.err)"
  [ "$(grep -c '^ctune prep: ' bad.err)" -eq 2 ] || fail "$np ranks: expected one error (and one 'no output written'): $(cat bad.err)"
  ls bad.h5* bad_val.h5* 2>/dev/null && fail "$np ranks: a failed run left files"

  run_mpi "$np" prep "${common[@]}" --skip-bad bad.jsonl -o "skip$np.h5" --val-output "skip${np}_val.h5" > skip.log 2> skip.err ||
    fail "$np ranks: --skip-bad failed: $(cat skip.err)"
  grep -q "($((bad_docs - 2)) documents, .*; 2 malformed lines skipped)" skip.log ||
    fail "$np ranks: --skip-bad counts: $(cat skip.log)"
  [ "$(grep -c '^ctune prep: skipping bad.jsonl:3000: ' skip.err)" -eq 1 ] &&
    [ "$(grep -c '^ctune prep: skipping bad.jsonl:5000: column ' skip.err)" -eq 1 ] ||
    fail "$np ranks: skipped lines not reported once each: $(cat skip.err)"
  if [ "$np" -gt 1 ]; then
    cmp skip1.h5 "skip$np.h5" && cmp skip1_val.h5 "skip${np}_val.h5" || fail "$np ranks: --skip-bad output differs from 1 rank"
  fi
done

# Standard input reaches rank 0 only (it works alone); a synthetic task is rank 0's too.
run_mpi 2 prep "${common[@]}" - -o stdin.h5 --val-output stdin_val.h5 < in.jsonl > stdin.log || fail "stdin under mpirun"
cmp ref.h5 stdin.h5 && cmp ref_val.h5 stdin_val.h5 || fail "stdin under mpirun: output differs"
"$ctune" prep --tokenizer model --synthetic addition --examples 200 -o synth1.h5 > /dev/null
run_mpi 2 prep --tokenizer model --synthetic addition --examples 200 -o synth2.h5 > synth.log || fail "synthetic under mpirun"
cmp synth1.h5 synth2.h5 || fail "synthetic task under mpirun: output differs"
echo "prep_mpi: ok"
