#!/usr/bin/env bash
# mpirun with the settings a container or CI machine needs (root allowed, no oversubscription
# errors on small machines). Usage: scripts/mpirun.sh -np 2 build/ctune train RECIPE
set -euo pipefail
extra=()
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
exec mpirun --oversubscribe --bind-to none "${extra[@]}" "$@"
