#!/usr/bin/env bash
# Integration: dist's float collectives on a backend's (GPU) memory go through the backend's
# download/upload/copy only -- a stand-in backend whose pointers no process maps would crash
# on any direct access -- and give the same bits as on host memory, on 1, 2 and 3 ranks.
set -euo pipefail
src=${CTUNE_SOURCE_DIR:?}
tool=${CTUNE_TOOLS_DIR:?}/dist_staging
"$tool"
for np in 2 3; do
  "$src/scripts/mpirun.sh" -np "$np" "$tool"
done
echo "dist_staging: ok"
