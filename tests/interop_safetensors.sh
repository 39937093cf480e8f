#!/usr/bin/env bash
# Integration: safetensors files cross between ctune and the `safetensors` library unchanged,
# both ways. Files the library writes (every dtype it knows, empty tensors, scalars, metadata,
# 400 tensors, 8 dimensions) are dumped by tests/tools/st_roundtrip.c through train/
# safetensors.h and must equal the library's view exactly (bytes, values as text, shapes,
# metadata, header order); files ctune writes (st_write and the streaming writer, every
# dtype) must load in safe_open for torch and numpy with the intended values, metadata and the
# reference layout. Refusals (unknown dtype, 9 dimensions) must name tensor and cause.
# The checks are in scripts/interop_safetensors.py.
set -euo pipefail
src=${CTUNE_SOURCE_DIR:?}
tool=${CTUNE_TOOLS_DIR:?}/st_roundtrip
source "$CTUNE_SOURCE_DIR/tests/tools/python.sh"
require_python safetensors torch numpy
[ -x "$tool" ] || { echo "FAIL: $tool is not built"; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$python" "$src/scripts/interop_safetensors.py" --tool "$tool" --dir "$work"
