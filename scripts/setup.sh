#!/usr/bin/env bash
# The one set-up command: installs the dependencies, builds ctune, and runs the main job on
# the built-in default (a tiny Llama that learns addition with LoRA on 2 MPI ranks).
# The job makes its own model (models/tiny) and data (data/tiny) on first use.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/install_deps.sh
scripts/build.sh
scripts/mpirun.sh -np 2 build/ctune train configs/tiny/lora.yaml "$@"
echo
echo "Try the adapter:  build/ctune generate --model models/tiny --adapter runs/tiny-lora/final --prompt '12+34='"
