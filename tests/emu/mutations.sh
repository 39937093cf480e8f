#!/usr/bin/env bash
# Plants one bug at a time in a copy of kernels/cuda/attention_mma.cu and checks that the
# emulated attention test (tests/emu/test_attention_mma_emu.cpp) fails on every one: the
# test's power, measured. Run by hand (~15 s per mutation on 2 cores):
#   tests/emu/mutations.sh            every mutation
#   tests/emu/mutations.sh 3          mutation 3 only
# Prints one line per mutation (caught: how; or MISSED) and exits 1 if any was missed.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src=kernels/cuda/attention_mma.cu

# "description@old text@new text" (first occurrence replaced; the old text must exist; \n
# is a newline).
mutations=(
  "forward waits for one copy group too few@am_cp_wait<1>();  // tile t (and Q) landed@am_cp_wait<2>();"
  "forward's end-of-tile barrier removed@__syncthreads();  // buffers cur are free for tile t+2@"
  "a diagonal tile taken as fully visible from the warp's last row@j0 + AM_ROWS - 1 <= warp_first;@j0 + AM_ROWS - 1 <= warp_first + 15;"
  "dk/dv's fully-visible test from the warp's first key@warp_first + 15 <= i0;@warp_first <= i0;"
  "B fragment blocks swapped@(n0 + (lane & 7) + (lane >> 4) * 8) * ld + k0 + ((lane >> 3) & 1) * 8@(n0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + k0 + (lane >> 4) * 8"
  "rescale skipped when only the second row's maximum grew@corr[0] != 1.0f || corr[1] != 1.0f@corr[0] != 1.0f"
  "stored dS columns misplaced@16 * kc + 8 * (i >> 1) +@16 * kc + 8 * (i & 1) +"
  "dq from dS: no wait for its tiles@        am_cp_wait<1>();\n        __syncthreads();\n        const T *Kt = Ks + cur * TILE;@        __syncthreads();\n        const T *Kt = Ks + cur * TILE;"
  "dq from dS: wrong query tile's blocks@am_ds_pair(i0 / AM_ROWS, 0)) * (AM_ROWS * AM_ROWS)@am_ds_pair(i0 / AM_ROWS, 0) + 1) * (AM_ROWS * AM_ROWS)"
  "a thread's copy rows one off@row(r0 + cp.row)@row(r0 + cp.row + 1)"
  "documents of sequence 0 for every sequence@am_cp4(dst + r, sh.doc_ids + (size_t)b * sh.seq + s, true);@am_cp4(dst + r, sh.doc_ids + s, true);"
  "dk/dv: lse and D of the wrong tile@s < sh.seq ? (is_lse ? lse : D) + stat : lse@s < sh.seq ? (is_lse ? lse : D) + stat - (stat > 0) : lse"
  "forward's log-sum-exp without the maximum@m[r] * AM_LN2 + logf(l[r])@logf(l[r])"
  "chunks of kv heads one short@const int chunk_kv = (sh.n_kv + n_chunks - 1) / n_chunks;@const int chunk_kv = sh.n_kv > 1 ? (sh.n_kv + n_chunks - 1) / n_chunks - (n_chunks > 1) : 1;"
  "dk/dv mask with query and key exchanged@am_visible(sh, i0 + c, keys[r], qd, c, kdoc, row0 + gid + 8 * r)@am_visible(sh, keys[r], i0 + c, kdoc, row0 + gid + 8 * r, qd, c)"
  "forward's masked probabilities without the -inf guard@!full && s[nt][e] == -INFINITY ? 0.0f@false ? 0.0f"
  "dq (recomputed) from the wrong lse row@row_lse[r] = rows[r] < sh.seq ? lse[stat] * AM_LOG2E@row_lse[r] = rows[r] < sh.seq ? lse[stat ^ 1] * AM_LOG2E"
)

missed=0
for i in "${!mutations[@]}"; do
  n=$((i + 1))
  [ $# -gt 0 ] && [ "$1" != "$n" ] && continue
  IFS='@' read -r what old new <<<"${mutations[$i]}"
  mkdir -p "$work/m$n/kernels/cuda"
  if ! python3 - "$root/$src" "$work/m$n/$src" "$old" "$new" <<'PY'
import sys
src, dst, old, new = sys.argv[1], sys.argv[2], sys.argv[3].replace('\\n', '\n'), sys.argv[4].replace('\\n', '\n')
text = open(src).read()
if old not in text:
    sys.exit(f"old text not found: {old!r}")
open(dst, 'w').write(text.replace(old, new, 1))
PY
  then
    echo "mutation $n ($what): cannot apply"; missed=1; continue
  fi
  if ! g++ -std=c++17 -O2 -fno-strict-aliasing -w -I"$root/tests/emu" -I"$work/m$n" -I"$root" \
      "$root/tests/emu/attention_mma_emu.cpp" "$root/tests/emu/cuda_emu.cpp" \
      "$root/tests/emu/test_attention_mma_emu.cpp" -o "$work/m$n/t" 2>"$work/m$n/build.log"; then
    echo "mutation $n ($what): caught (does not compile)"; continue
  fi
  if timeout 300 "$work/m$n/t" >"$work/m$n/out.log" 2>&1; then
    echo "mutation $n ($what): MISSED"; missed=1
  else
    how=$(grep -m1 -E "CHECK failed|cuda_emu:|Segmentation|timed out" "$work/m$n/out.log" | cut -c1-160)
    echo "mutation $n ($what): caught: ${how:-exit $?}"
  fi
done
exit $missed
