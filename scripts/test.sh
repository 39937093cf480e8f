#!/usr/bin/env bash
# The one test command: builds ctune and runs the whole test suite with ctest.
#   scripts/test.sh             installs what is missing (apt; the PyPI peers in .venv, see
#                               scripts/python_env.sh), release build in build/, every test
#   scripts/test.sh --sanitize  ASan + UBSan build in build-asan/, unit tests
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# Dependencies first (no-ops when present): the build's, and Slurm + munge for tests/slurm.sh.
scripts/install_deps.sh --test
if [ "${1:-}" = "--sanitize" ]; then
  shift
  CTUNE_BUILD_DIR="$root/build-asan" CTUNE_BUILD_TYPE=Debug scripts/build.sh -DCTUNE_SANITIZE=ON -DCTUNE_CUDA=OFF
  cd build-asan
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -L unit "$@"
else
  # The interop tests load ctune's output with transformers/peft/safetensors/tokenizers.
  CTUNE_PYTHON=$(scripts/python_env.sh)
  export CTUNE_PYTHON
  scripts/build.sh
  cd build
  ctest --output-on-failure "$@"
fi
