#!/usr/bin/env bash
# Installs ctune's build and run dependencies from Debian's packages (needs root or sudo).
#   scripts/install_deps.sh          what building and running ctune needs
#   scripts/install_deps.sh --test   also what the test suite needs: Slurm and munge for
#                                    tests/slurm.sh (a one-node cluster; skipped where it cannot start)
# The CUDA toolkit is optional: where nvcc exists the CUDA sources are compiled too.
set -euo pipefail
packages=(build-essential cmake pkg-config libopenmpi-dev openmpi-bin libyaml-dev
          libhdf5-dev libcjson-dev libopenblas-openmp-dev libpcre2-dev)
if [ "${1:-}" = "--test" ]; then
  packages+=(slurm-wlm munge)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all packages present"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install_deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
