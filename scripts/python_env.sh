#!/usr/bin/env bash
# Prints the path of a Python that has the Hugging Face stack the interop tests and
# benchmarks compare against, creating it on first use:
#   scripts/python_env.sh     -> .venv/bin/python (made with pip from PyPI, ~6 GB, ~5 min once)
# $CTUNE_PYTHON, when set to a Python that already imports the peers, is used as it is (without
# tensorboard or bitsandbytes, tests/interop_tensorboard.sh or interop_nf4.sh then skips).
# Versions are pinned so that CI compares against the same peers every run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
packages=(torch==2.15.0 transformers==5.23.0 peft==0.21.2 safetensors==0.8.0
          tokenizers==0.23.3 huggingface_hub==2.4.0 tensorboard==2.21.0 bitsandbytes==0.50.2 numpy pyyaml)
probe='import torch, transformers, peft, safetensors, tokenizers, huggingface_hub, numpy, yaml'
# the reader tests/interop_tensorboard.sh checks ctune's event files with, and the NF4 quantizer
# tests/interop_nf4.sh checks ctune's against
venv_probe="$probe, tensorboard, bitsandbytes"
if [ -n "${CTUNE_PYTHON:-}" ] && "$CTUNE_PYTHON" -c "$probe" 2>/dev/null; then
  echo "$CTUNE_PYTHON"
  exit 0
fi
venv="$root/.venv"
if ! "$venv/bin/python" -c "$venv_probe" 2>/dev/null; then
  echo "python_env: creating $venv (pip: ${packages[*]})" >&2
  command -v python3 >/dev/null || { echo "python_env: python3 not found" >&2; exit 1; }
  if ! python3 -m venv "$venv" 2>/dev/null; then
    # Debian's python3 lacks ensurepip until python3-venv is installed.
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >&2
    python3 -m venv "$venv"
  fi
  # The CUDA build of torch that PyPI serves brings ~3 GB of NVIDIA libraries; pip's cache
  # would hold the wheels a second time, so it is off, and a full disk is named up front
  # rather than as an OSError halfway through the install.
  need_kb=$((7 * 1024 * 1024))
  for dir in "$root" "${TMPDIR:-/tmp}"; do
    free_kb=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')
    if [ -n "$free_kb" ] && [ "$free_kb" -lt "$need_kb" ]; then
      echo "python_env: $dir has $((free_kb / 1024)) MiB free; the Python stack needs ~7 GiB" \
           "(set CTUNE_PYTHON to an existing Python with: ${packages[*]})" >&2
      exit 1
    fi
  done
  "$venv/bin/pip" install -q --no-cache-dir --disable-pip-version-check "${packages[@]}" >&2
  "$venv/bin/python" -c "$venv_probe"
fi
echo "$venv/bin/python"
