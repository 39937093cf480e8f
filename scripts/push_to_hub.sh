#!/usr/bin/env bash
# Uploads a ctune output folder (a run's final/ or a checkpoint) to the Hugging Face Hub
# with the `hf` command of huggingface_hub, after checking it offline.
#
#   scripts/push_to_hub.sh FOLDER REPO_ID [options]
#     --base-model OWNER/NAME  the base model's Hub id, when the card names a local folder
#                              (the folder is then staged with the id written in; FOLDER is untouched)
#     --private                create the repository private (ignored if it exists)
#     --revision BRANCH        upload to this branch
#     --message TEXT           commit message (default: "Upload <kind> trained with ctune")
#     --dry-run                check, then print the upload command instead of running it
#
# The check (scripts/hub_card.py): the adapter or full model is complete (every shard of an
# index present) and README.md's front matter is one the Hub accepts and huggingface_hub's
# ModelCard parses. Training state (state/) and temporary files are never uploaded.
# Python: $CTUNE_PYTHON, else the project's .venv (scripts/python_env.sh), else python3;
# the hf command: $HF, else hf next to that Python, else hf on PATH. Log in first
# (`hf auth login`) or set HF_TOKEN.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "push_to_hub: $*" >&2; exit 1; }

folder="" repo="" base_model="" private=0 revision="" message="" dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --base-model) [ $# -ge 2 ] || die "--base-model needs a value"; base_model=$2; shift 2 ;;
    --private) private=1; shift ;;
    --revision) [ $# -ge 2 ] || die "--revision needs a value"; revision=$2; shift 2 ;;
    --message) [ $# -ge 2 ] || die "--message needs a value"; message=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *)
      if [ -z "$folder" ]; then folder=$1
      elif [ -z "$repo" ]; then repo=$1
      else die "unexpected argument '$1' (see --help)"; fi
      shift ;;
  esac
done
[ -n "$folder" ] && [ -n "$repo" ] || { usage >&2; exit 2; }
[ -d "$folder" ] || die "$folder: not a folder"
[[ "$repo" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$ ]] ||
  die "repository '$repo' is not a Hub id (owner/name)"

python=${CTUNE_PYTHON:-}
if [ -z "$python" ]; then
  if [ -x "$root/.venv/bin/python" ]; then python=$root/.venv/bin/python; else python=python3; fi
fi
"$python" -c 'import huggingface_hub, yaml' 2>/dev/null ||
  die "$python lacks huggingface_hub or yaml (run scripts/python_env.sh, or set CTUNE_PYTHON)"
hf=${HF:-}
if [ -z "$hf" ]; then
  py_dir=$(dirname "$python")
  if [ -x "$py_dir/hf" ]; then hf=$py_dir/hf; else hf=$(command -v hf || true); fi
fi

staging=""
cleanup() { [ -z "$staging" ] || rm -rf "$staging"; }
trap cleanup EXIT
upload_dir=$folder
if [ -n "$base_model" ]; then
  staging=$(mktemp -d "${TMPDIR:-/tmp}/ctune-push.XXXXXX")
  rmdir "$staging"  # hub_card.py stage makes it
  card=$("$python" "$root/scripts/hub_card.py" stage "$folder" "$staging" --base-model "$base_model") ||
    die "$folder is not ready for the Hub (see above)"
  upload_dir=$staging
else
  card=$("$python" "$root/scripts/hub_card.py" check "$folder") ||
    die "$folder is not ready for the Hub (see above)"
fi
kind=$("$python" -c 'import json,sys; print(json.loads(sys.argv[1])["kind"])' "$card")
echo "push_to_hub: $folder checked: $card"
[ -n "$message" ] || message="Upload $kind trained with ctune"

cmd=("$hf" upload "$repo" "$upload_dir" . --repo-type model --commit-message "$message"
     --exclude "state/*" --exclude "*.tmp")
[ "$private" -eq 0 ] || cmd+=(--private)
[ -z "$revision" ] || cmd+=(--revision "$revision")
if [ "$dry_run" -eq 1 ]; then
  printf 'push_to_hub: dry run, would run:'; printf ' %q' "${cmd[@]}"; printf '\n'
  [ -z "$staging" ] || echo "push_to_hub: (on a staged copy of $folder with base_model $base_model; removed now)"
  exit 0
fi
[ -n "$hf" ] || die "the hf command was not found (pip install huggingface_hub, or set HF)"
"${cmd[@]}"
