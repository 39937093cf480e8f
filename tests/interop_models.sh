#!/usr/bin/env bash
# Integration: ctune's outputs load unchanged in the Hugging Face stack and compute the same.
# Random Llama (GQA; untied and tied), Qwen2 (q/k/v biases) and Qwen3 (q/k norms) models made
# by transformers are LoRA-, DoRA- and fully fine-tuned by ctune for a few steps, and both
# adapters are merged; peft / transformers must load every result with no missing or unexpected
# keys, give ctune's logits (`ctune eval --ids --logits-out`) to 1e-4, and peft's
# merge_and_unload must equal ctune merge tensor by tensor. On Qwen2, ctune's DoRA gradients
# (from its checkpoints' AdamW moments) must equal peft's to 1e-4. The checks are in
# scripts/interop_models.py.
set -euo pipefail
src=${CTUNE_SOURCE_DIR:?}
ctune=${CTUNE:?}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Without Python: `ctune eval --ids` refuses bad ids with a message naming the item, and
# writes one row of vocabulary-sized logits per id.
"$ctune" init --preset tiny -o "$work/tiny" > /dev/null
bad_ids() { # IDS EXPECTED_MESSAGE
  if "$ctune" eval --model "$work/tiny" --ids "$1" --logits-out "$work/x.json" 2> "$work/err"; then
    echo "FAIL: --ids '$1' was accepted"; exit 1
  fi
  grep -qF -- "$2" "$work/err" || { echo "FAIL: --ids '$1': expected '$2', got: $(cat "$work/err")"; exit 1; }
  [ ! -e "$work/x.json" ] || { echo "FAIL: --ids '$1' wrote a logits file"; exit 1; }
}
bad_ids "" "--ids: empty"
bad_ids "1,x" "item 2 at character 2 ('x') is not an integer"
bad_ids "1,,2" "item 2 at character 2 is empty"
bad_ids "3,-1" "('-1') is not a token id (negative)"
bad_ids "259" "item 1 is 259, outside the model's vocabulary [0, 259)"
"$ctune" eval --model "$work/tiny" --ids 256,7,258 --logits-out "$work/x.json"
python3 - "$work/x.json" <<'PY'
import json, math, sys
data = json.load(open(sys.argv[1]))
shape = [len(row) for row in data["logits"]]
if data["ids"] != [256, 7, 258] or shape != [259] * 3 or not all(math.isfinite(v) for r in data["logits"] for v in r):
    sys.exit(f"FAIL: --logits-out wrote ids {data['ids']} and rows of {shape} values")
PY
echo "ok   ctune eval --ids: errors and output shape"

source "$CTUNE_SOURCE_DIR/tests/tools/python.sh"
require_python torch transformers peft safetensors huggingface_hub yaml
"$python" "$src/scripts/interop_models.py" --ctune "$ctune" --source "$src" --work "$work/interop"
