#!/usr/bin/env bash
# Plants one bug at a time in a copy of the tree (kernels/cuda mostly) and checks that the test
# named for it (tests/emu: the GPU tests on the emulated backend, test_*_emu; or a CPU test)
# fails on every one:
# the tests' power, measured. Run by hand (a build of the copy, then ~10-40 s per mutation on
# 2 cores):
#   tests/emu/mutations.sh            every mutation
#   tests/emu/mutations.sh 3 20       mutations 3 and 20 only
# Prints one line per mutation (caught: how; or MISSED) and exits 1 if any was missed or
# could not be applied or built.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
# The tree is copied from root: run the script where it lives, never a copy elsewhere.
if [ ! -f "$root/CMakeLists.txt" ] || [ ! -f "$root/tests/emu/mutations.sh" ]; then
  echo "run tests/emu/mutations.sh from its repository ($root is none)"; exit 2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# "test@file@description@old text@new text" (first occurrence replaced; the old text must
# exist; \n is a newline).
mutations=(
  "test_attention_mma_emu@kernels/cuda/attention_mma.cu@forward waits for one copy group too few@am_cp_wait<1>();  // tile t (and Q) landed@am_cp_wait<2>();"
  "test_attention_mma_emu@kernels/cuda/attention_mma.cu@forward's end-of-tile barrier removed@__syncthreads();  // buffers cur are free for tile t+2@"
  "test_attention_mma_emu@kernels/cuda/attention_mma.cu@a diagonal tile taken as fully visible from the warp's last row@j0 + AM_ROWS - 1 <= warp_first;@j0 + AM_ROWS - 1 <= warp_first + 15;"
  "test_attention_mma_emu@kernels/cuda/attention_mma.cu@dk/dv's fully-visible test from the warp's first key@warp_first + 15 <= i0;@warp_first <= i0;"
  "test_attention_mma_emu@kernels/cuda/attention_mma.cu@B fragment blocks swapped@(n0 + (lane & 7) + (lane >> 4) * 8) * ld + k0 + ((lane >> 3) & 1) * 8@(n0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + k0 + (lane >> 4) * 8"
  "test_attention_mma_emu@kernels/cuda/attention_mma.cu@rescale skipped when only the second row's maximum grew@corr[0] != 1.0f || corr[1] != 1.0f@corr[0] != 1.0f"
  "test_attention_mma_emu@kernels/cuda/attention_mma.cu@stored dS columns misplaced@16 * kc + 8 * (i >> 1) +@16 * kc + 8 * (i & 1) +"
  "test_attention_mma_emu@kernels/cuda/attention_mma.cu@dq from dS: no wait for its tiles@        am_cp_wait<1>();\n        __syncthreads();\n        const T *Kt = Ks + cur * TILE;@        __syncthreads();\n        const T *Kt = Ks + cur * TILE;"
  "test_attention_mma_emu@kernels/cuda/attention_mma.cu@dq from dS: wrong query tile's blocks@am_ds_pair(i0 / AM_ROWS, 0)) * (AM_ROWS * AM_ROWS)@am_ds_pair(i0 / AM_ROWS, 0) + 1) * (AM_ROWS * AM_ROWS)"
  "test_attention_mma_emu@kernels/cuda/attention_mma.cu@a thread's copy rows one off@row(r0 + cp.row)@row(r0 + cp.row + 1)"
  "test_attention_mma_emu@kernels/cuda/attention_mma.cu@32-row forward: the second group multiplies the first group's queries@am_frag_a(fa[g], a, DP + 8, r0 + g * AM_ROWS, kk, lane);@am_frag_a(fa[g], a, DP + 8, r0, kk, lane);"
  "test_attention_mma_emu@kernels/cuda/attention_mma.cu@32-row forward: the second group masked with the first group's documents@rg * AM_ROWS + row0 + gid + 8 * r, kd, c)@row0 + gid + 8 * r, kd, c)"
  "test_attention_mma_emu@kernels/cuda/attention_mma.cu@32-row forward: key tiles counted for a 64-row query tile@qb.n_kv = (min(qb.i0 + rows, sh.seq) - 1) / AM_ROWS + 1;@qb.n_kv = (min(qb.i0 + AM_ROWS, sh.seq) - 1) / AM_ROWS + 1;"
  "test_attention_mma_emu@kernels/cuda/attention_mma.cu@32-row forward: both query tiles copied into the first buffer@q_tiles.load(sh.seq, Qs + rg * TILE, q);@q_tiles.load(sh.seq, Qs, q);"
  "test_attention_mma_emu@kernels/cuda/attention_mma.cu@documents of sequence 0 for every sequence@am_cp4(dst + r, sh.doc_ids + (size_t)b * sh.seq + s, true);@am_cp4(dst + r, sh.doc_ids + s, true);"
  "test_attention_mma_emu@kernels/cuda/attention_mma.cu@dk/dv: lse and D of the wrong tile@s < sh.seq ? (is_lse ? lse : D) + stat : lse@s < sh.seq ? (is_lse ? lse : D) + stat - (stat > 0) : lse"
  "test_attention_mma_emu@kernels/cuda/attention_mma.cu@forward's log-sum-exp without the maximum@m[rg][r] * AM_LN2 + logf(l[rg][r])@logf(l[rg][r])"
  "test_attention_mma_emu@kernels/cuda/attention_mma.cu@chunks of kv heads one short@const int chunk_kv = (sh.n_kv + n_chunks - 1) / n_chunks;@const int chunk_kv = sh.n_kv > 1 ? (sh.n_kv + n_chunks - 1) / n_chunks - (n_chunks > 1) : 1;"
  "test_attention_mma_emu@kernels/cuda/attention_mma.cu@dk/dv mask with query and key exchanged@am_visible(sh, i0 + c, keys[r], qd, c, kdoc, row0 + gid + 8 * r)@am_visible(sh, keys[r], i0 + c, kdoc, row0 + gid + 8 * r, qd, c)"
  "test_attention_mma_emu@kernels/cuda/attention_mma.cu@forward's masked probabilities without the -inf guard@!full && s[rg][nt][e] == -INFINITY@false"
  "test_attention_mma_emu@kernels/cuda/attention_mma.cu@dq (recomputed) from the wrong lse row@row_lse[r] = rows[r] < sh.seq ? lse[stat] * AM_LOG2E@row_lse[r] = rows[r] < sh.seq ? lse[stat ^ 1] * AM_LOG2E"
  "test_kernels_cuda_emu@kernels/cuda/elementwise.cu@sum_squares_blocks: one step of the register tree dropped@        v[1] += v[3];\n        v[0] += v[1];@        v[1] += v[3];"
  "test_kernels_cuda_emu@kernels/cuda/elementwise.cu@sum_squares_blocks: the warp tree starts at 8 lanes@for (int offset = 16; offset > 0; offset /= 2)@for (int offset = 8; offset > 0; offset /= 2)"
  "test_kernels_cuda_emu@kernels/cuda/elementwise.cu@sum_squares: the partials' tree without its barrier@scratch[threadIdx.x + stride];\n        __syncthreads();\n    }\n    if (threadIdx.x == 0) *result@scratch[threadIdx.x + stride];\n    }\n    if (threadIdx.x == 0) *result"
  "test_kernels_cuda_emu@kernels/cuda/rmsnorm.cu@rmsnorm dweight: a chunk's last row dropped@r0 + RMS_ROW_CHUNK : n_rows;@r0 + RMS_ROW_CHUNK - 1 : n_rows;"
  "test_kernels_cuda_emu@kernels/cuda/rmsnorm.cu@rmsnorm dx: the correction term on dout instead of x@__fmul_rn(coef, xr[j]);@__fmul_rn(coef, dyr[j]);"
  "test_kernels_cuda_emu@kernels/cuda/rope.cu@rope backward rotates forward@direction * sinf(angle);@sinf(angle);"
  "test_kernels_cuda_emu@kernels/cuda/adamw.cu@adamw first moment moves away from the gradient@__fadd_rn(g, -m[i])@__fadd_rn(g, m[i])"
  "test_kernels_cuda_emu@kernels/cuda/embedding.cu@embedding backward (sorted): every token of a run starts its own sum@        if (p > 0 && ids[order[p - 1]] == id) continue;\n@"
  "test_kernels_cuda_emu@kernels/cuda/cross_entropy.cu@cross-entropy gradient: the one-hot on the next class@i == target ? scaled - grad_scale@i == target + 1 ? scaled - grad_scale"
  "test_kernels_cuda_emu@kernels/cuda/gemm.cu@gemm: the operands' transposes exchanged@trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N@trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N"
  "test_kernels_cuda_emu@kernels/cuda/memory.cu@copy: a backward overlap taken as none@bool overlap = d < s + bytes && s < d + bytes;@bool overlap = d < s + bytes && s < d;"
  "test_kernels_cuda_emu@kernels/cuda/attention.cu@fp32 attention: each query sees the next key@key <= query && (!sh.doc_ids@key <= query + 1 && (!sh.doc_ids"
  "test_kernels_cuda_emu@kernels/cuda/cuda_common.cuh@vectorised ops: the aligned groups start one element late@(size_t)((4 - phase) % 4);@(size_t)((5 - phase) % 4);"
  "test_kernels_cuda_half_emu@kernels/cuda/half.cu@gemm_half: cuBLASLt's first operand takes A's transpose@const cublasOperation_t op_first = key->trans_b ? CUBLAS_OP_T@const cublasOperation_t op_first = key->trans_a ? CUBLAS_OP_T"
  "test_kernels_cuda_fused_emu@kernels/cuda/half_bits.cuh@16-bit row stores with the fp32 stride@out_half[row * ld_half + j] = half_bits<F>(y);@out_half[row * ld + j] = half_bits<F>(y);"
  "test_kernels_cuda_fused_emu@kernels/cuda/swiglu.cu@swiglu rows: four-column groups on rows not 4-aligned@bool ok = cols % 4 == 0 && ld_half % 4 == 0;@bool ok = cols % 4 == 0;"
  "test_kernels_cuda_attention_emu@kernels/cuda/attention_half.cu@WMMA attention: K read row-major in Q K^T@wmma::col_major> fb;@wmma::row_major> fb;"
  "test_kernels_cuda_attention_emu@kernels/cuda/attention_half.cu@the backward's rounded dout one head off@? dout_half + token * sh.q_stride + (size_t)h * sh.d : NULL;@? dout_half + token * sh.q_stride + (size_t)(h ^ 1) * sh.d : NULL;"
  "test_kernels_cuda_fused_emu@kernels/cuda/rmsnorm.cu@rmsnorm_bwd_half: the rounding without the residual gradient it adds to@store(row, j, add_to_dx ? dxr[j] + value : value);@store(row, j, value);"
  "test_kernels_cuda_fused_emu@kernels/cuda/half.cu@to_half_2d_many: output rows at the input's stride@b.out[r * b.ld_out + c]@b.out[r * b.ld_x + c]"
  "test_kernels_cuda_emu@kernels/cuda/cross_entropy.cu@cross-entropy online sum: the running max raised by half of a group@raise(fmaxf(fmaxf(v.x, v.y), fmaxf(v.z, v.w)));@raise(fmaxf(v.x, v.y));"
  "test_kernels_cuda_emu@kernels/cuda/cross_entropy.cu@cross-entropy online sum: -inf terms taken against a running max of -inf@base = m == -INFINITY ? 0.0f : m;@base = m;"
  "test_kernels_cuda_half_emu@kernels/cuda/half.cu@gemm_half_to_half: the 16-bit output left out of the plan's key@    key.out_half = out_half;\n@"
  "test_kernels_cuda_fused_emu@kernels/cuda/swiglu.cu@swiglu_fwd_half from 16-bit gate and up: four of up read from gate@if (!x) return *reinterpret_cast<const uint2 *>(x_half + i);@if (!x) return *reinterpret_cast<const uint2 *>(gate_half + i);"
  "test_kernels_cuda_fused_emu@kernels/cuda/swiglu.cu@swiglu_fwd_half from 16-bit gate and up: one of up read from gate@hg = gate_half[i], hu = up_half[i];@hg = gate_half[i], hu = gate_half[i];"
  "test_kernels_cuda_half_emu@kernels/cuda/embedding.cu@embedding_fwd_half: the 16-bit table's rows taken hidden apart, not ld@out[i] = half_widen<F>(table[(size_t)ids[t] * ld + c]);@out[i] = half_widen<F>(table[(size_t)ids[t] * hidden + c]);"
  "test_model_mixed@train/model.c@LoRA's frozen untied embedding table keeps fp32 (no copy of its own)@(!p->trainable && !strcmp(p->name, \"model.embed_tokens.weight\"))@(p->trainable && !strcmp(p->name, \"model.embed_tokens.weight\"))"
  "test_model_mixed@train/model_graph.c@the 16-bit embedding table widened as fp16 whatever the precision@m->k->embedding_fwd_half(model_half_format(m->precision), s->resid@m->k->embedding_fwd_half(KERNELS_FP16, s->resid"
  "test_kernels_cuda_attention_emu@kernels/cuda/attention_dims.cuh@the backward's row dots: every row in sequence 0@*token = b * sh.seq + s;@*token = s;"
  "test_tfevents@train/metrics.c@a resumed run's TensorBoard file without its restart marker@if (first_step > 1 && tfevents_restart(@if (first_step > 1 << 30 && tfevents_restart("
  "test_tfevents@train/tfevents.c@the TFRecord CRC mask's constant off by one@+ 0xA282EAD8u;@+ 0xA282EAD9u;"
  "test_tfevents@train/tfevents.c@a scalar's simple_value under the wrong field number@VALUE_SIMPLE_VALUE = 2@VALUE_SIMPLE_VALUE = 3"
  "test_tfevents@train/tfevents.c@a step's varint cut to one byte@bytes[n++] = (char)((v & 0x7Fu) | (v >= 0x80u ? 0x80u : 0u));@bytes[n++] = (char)(v & 0x7Fu); v = 0;"
  "test_tfevents@train/tfevents.c@the recipe text filed under another plugin than TensorBoard's text@put_bytes(&plugin, PLUGIN_NAME, \"text\", 4);@put_bytes(&plugin, PLUGIN_NAME, \"txt\", 3);"
  "test_kernels_cuda_emu@kernels/cuda/adamw.cu@a NaN clipping factor (an overflow) not skipped@    if (isnan(scale)) return;\n@"
  "test_kernels_cuda_emu@kernels/cuda/elementwise.cu@clip_factor adds every block sum in order, not the groups' totals@for (size_t g = 0; g < n_blocks; g += KERNELS_NORM_GROUP) total += sums[g];@for (size_t g = 0; g < n_blocks; g++) total += sums[g];"
  "test_kernels_cpu@kernels/clip_rule.h@clipping's epsilon off by a factor of ten@double coef = max_norm / (norm + 1e-6);@double coef = max_norm / (norm + 1e-7);"
  "test_zero@optim/zero.c@a queued step whose norm overflowed keeps its step count@    if (z->adam.step > 0) z->adam.step--;@"
  "test_model@train/model_graph.c@the norm beside the loss slots not fetched with them@    if (scalar) memcpy(scalar, s->slots.host_block, sizeof *scalar);@"
  "test_zero@optim/zero.c@a queued step ignoring fp16's loss scale@max_norm, loss_scale, norm_at, z->factor_at);@max_norm, 1.0, norm_at, z->factor_at);"
  "test_kernels_cuda_dora_emu@kernels/cuda/dora.cu@scale_cols: the addition fused with the product (an FMA)@yr[j] = add ? __fadd_rn(yr[j], product) : product;@yr[j] = add ? fmaf(__fadd_rn(scale[j], offset), xr[j], yr[j]) : product;"
  "test_kernels_cuda_dora_emu@kernels/cuda/dora.cu@dora_magnitude_grad: a chunk's last row dropped@rows - r0 < chunk_rows ? rows : r0 + chunk_rows;@rows - r0 < chunk_rows ? rows : r0 + chunk_rows - 1;"
  "test_kernels_cuda_dora_emu@kernels/cuda/dora.cu@dora_magnitude_grad: the last chunk left out of a column's sum@for (int chunk = 0; chunk < n_chunks; chunk++) acc@for (int chunk = 0; chunk < n_chunks - 1; chunk++) acc"
  "test_kernels_cuda_dora_emu@kernels/cuda/dora.cu@dora_magnitude_grad: accumulate ignored@const float base = accumulate ? dmag[c] : 0.0f;@const float base = 0.0f;"
  "test_kernels_cuda_dora_emu@kernels/cuda/dora.cu@dora_norm_scale: thread 0's own sum taken for the row's@const double sum = block_sum(acc, scratch);@const double sum = acc;"
  "test_kernels_cpu@kernels/cpu/dora.c@scale_cols (CPU): the addition fused with the product (an FMA)@yr[j] = yr[j] + product;@yr[j] = fmaf(scale[j] + offset, xr[j], yr[j]);"
  "test_kernels_cpu@kernels/cpu/dora.c@dora_magnitude_grad (CPU): the last row of every column left out@for (int j = 0; j < width; j++) acc[j] +=@if (t + 1 < rows) for (int j = 0; j < width; j++) acc[j] +="
)

tests=$(printf '%s\n' "${mutations[@]}" | cut -d@ -f1 | sort -u)
# A copy of the working tree (build directories and .git left out) and one CPU build of the
# emulated tests in it; each mutation rebuilds what its file touches.
mkdir -p "$work/src"
tar -C "$root" --exclude='./build*' --exclude=./.git --exclude=./.venv -cf - . | tar -C "$work/src" -xf -
if ! { cmake -S "$work/src" -B "$work/build" -DCTUNE_CUDA=OFF -DCMAKE_BUILD_TYPE=Release &&
       cmake --build "$work/build" -j"$(nproc)" --target $tests; } >"$work/base.log" 2>&1; then
  tail -20 "$work/base.log"; echo "the unmutated copy does not build"; exit 1
fi

missed=0
for i in "${!mutations[@]}"; do
  n=$((i + 1))
  if [ $# -gt 0 ] && ! printf '%s\n' "$@" | grep -qx "$n"; then continue; fi
  IFS='@' read -r test file what old new <<<"${mutations[$i]}"
  if ! python3 - "$root/$file" "$work/src/$file" "$old" "$new" <<'PY'
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
  if ! cmake --build "$work/build" --target "$test" >"$work/build$n.log" 2>&1; then
    echo "mutation $n ($what): does not build (not a test of anything)"; missed=1
  elif (cd "$work/build" && timeout 600 "./$test" >"$work/out$n.log" 2>&1); then
    echo "mutation $n ($what): MISSED by $test"; missed=1
  else
    how=$(grep -m1 -E "CHECK failed|cuda_emu:|Segmentation|timed out" "$work/out$n.log" | cut -c1-150)
    echo "mutation $n ($what): caught by $test: ${how:-exit code}"
  fi
  cp -p "$root/$file" "$work/src/$file"  # the original back (newer than the mutant's build)
  touch "$work/src/$file"
done
exit $missed
