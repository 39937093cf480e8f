#!/usr/bin/env bash
# Integration: ctune's NF4 quantizer (kernels/nf4.h, QLoRA's 4-bit base) against
# bitsandbytes' (scripts/interop_nf4.py): on tensors covering the format's corners (partial
# last blocks, odd counts, zero and subnormal blocks, values on the decision points, a bf16
# input), the packed codes, the absmaxes and the fp32 read-back must be bitsandbytes' bit for
# bit, and the read-back's bf16 / fp16 roundings torch's.
set -uo pipefail
src=${CTUNE_SOURCE_DIR:?}
tools=${CTUNE_TOOLS_DIR:?}
source "$src/tests/tools/python.sh"
require_python torch safetensors bitsandbytes
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work" # (not the source folder: its kernels/ would shadow a Python package of that name)
"$python" "$src/scripts/interop_nf4.py" write in.safetensors || { echo "FAIL writing the tensors"; exit 1; }
"$tools/nf4_tool" codes in.safetensors out.safetensors || { echo "FAIL nf4_tool codes"; exit 1; }
"$python" "$src/scripts/interop_nf4.py" check in.safetensors out.safetensors 2> check.err
status=$?
[ $status -eq 0 ] || cat check.err
exit $status
