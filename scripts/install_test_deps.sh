#!/usr/bin/env bash
# Installs what the test suite needs beyond the build (scripts/install_deps.sh) from Debian's
# packages: Slurm and munge for tests/slurm.sh, which starts a one-node cluster with
# scripts/slurm/local_cluster.sh (and skips where Slurm cannot start). Needs root or sudo.
set -euo pipefail
packages=(slurm-wlm munge)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_test_deps: all packages present"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install_test_deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
