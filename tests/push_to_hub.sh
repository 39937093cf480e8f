#!/usr/bin/env bash
# Integration: scripts/push_to_hub.sh checks a folder offline, then hands exactly that folder
# to `hf upload` (a stand-in here that records its arguments and what it was given), never
# the training state; incomplete folders and cards the Hub would refuse stop before the
# upload, naming the problem. The card checks use huggingface_hub's ModelCard.
set -euo pipefail
src=${CTUNE_SOURCE_DIR:?}
ctune=${CTUNE:?}
source "$CTUNE_SOURCE_DIR/tests/tools/python.sh"
require_python huggingface_hub yaml
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
fail() { echo "FAIL: $*"; exit 1; }

# The stand-in `hf`: logs its arguments and the files of the folder it is asked to upload.
cat > fake-hf <<'SH'
#!/usr/bin/env bash
printf '%s\n' "$@" > "$HF_LOG.args"
(cd "$3" && find . -type f | sort) > "$HF_LOG.files"
cp "$3/README.md" "$HF_LOG.readme"
SH
chmod +x fake-hf
export HF="$work/fake-hf" HF_LOG="$work/hf"
push="$src/scripts/push_to_hub.sh"

common=(model.path="$work/models/tiny" data.train="$work/data/train.h5" data.eval="$work/data/eval.h5"
        data.synthetic_train_examples=200 data.synthetic_eval_examples=16 train.max_steps=2
        optim.warmup_steps=0 train.eval_every=0 train.log_every=1)
"$ctune" train "$src/configs/tiny/lora.yaml" "${common[@]}" checkpoint.every=1 checkpoint.keep_last=1 \
  checkpoint.output_dir="$work/lora" > lora.log
"$ctune" train "$src/configs/tiny/full.yaml" "${common[@]}" checkpoint.every=0 checkpoint.max_shard_bytes=1000000 \
  checkpoint.output_dir="$work/full" > full.log
[ -f full/final/model.safetensors.index.json ] || fail "the full run was meant to write a sharded model"

# 1. The card names the local base 'tiny': refused before any upload, with the way out.
rm -f hf.args
if "$push" lora/final me/tiny-lora > out.txt 2>&1; then fail "a local base_model was accepted"; fi
grep -q "base_model 'tiny' is not a Hub id" out.txt || { cat out.txt; fail "no base_model message"; }
grep -q -- "--base-model" out.txt || fail "the message does not name --base-model"
[ ! -e hf.args ] || fail "hf ran although the check failed"

# 2. With --base-model: a staged copy is uploaded; the original folder is untouched.
before=$(cd lora/final && sha256sum * | sort)
"$push" lora/final me/tiny-lora --base-model someone/tiny-base --private --revision dev > out.txt
[ "$(cd lora/final && sha256sum * | sort)" = "$before" ] || fail "the original folder changed"
mapfile -t args < hf.args
[ "${args[0]}" = upload ] && [ "${args[1]}" = me/tiny-lora ] && [ "${args[3]}" = . ] || fail "hf args: ${args[*]}"
grep -qx -- --private hf.args && grep -qx dev hf.args || fail "--private/--revision not passed: ${args[*]}"
grep -qx 'state/\*' hf.args || fail "state/ is not excluded: ${args[*]}"
printf './README.md\n./adapter_config.json\n./adapter_model.safetensors\n' | cmp - hf.files ||
  fail "uploaded files: $(cat hf.files)"
grep -q '^base_model: "someone/tiny-base"$' hf.readme || fail "staged card lacks the Hub base_model"
grep -q 'base_model:adapter:someone/tiny-base' hf.readme || fail "staged card lacks the adapter tag"
[ ! -e "${args[2]}" ] || fail "the staged copy ${args[2]} was not removed"
# The staged card passes huggingface_hub's ModelCard, eval results included.
cp hf.readme card.md
"$python" - <<'PY' || fail "ModelCard does not load the staged card"
from huggingface_hub import ModelCard
card = ModelCard.load("card.md")
assert card.data.base_model == "someone/tiny-base", card.data.base_model
assert card.data.library_name == "peft"
metrics = {r.metric_type for r in card.data.eval_results}
assert metrics == {"loss", "accuracy"}, metrics
PY

# 3. A checkpoint folder: its training state stays home.
ckpt=$(ls -d lora/checkpoints/step-* | tail -1)
[ -d "$ckpt/state" ] || fail "expected $ckpt/state"
"$push" "$ckpt" me/tiny-lora --base-model someone/tiny-base > out.txt
! grep -q state hf.files || fail "state/ was uploaded: $(cat hf.files)"

# 4. A full model, sharded: every shard present is checked; a missing one stops the push.
"$push" full/final me/tiny-full --base-model someone/tiny-base --dry-run > out.txt
grep -q "dry run, would run:.*upload me/tiny-full" out.txt || { cat out.txt; fail "dry run output"; }
shard=$(ls full/final/model-*.safetensors | head -1)
mv "$shard" "$work/shard.bak"
if "$push" full/final me/tiny-full --base-model someone/tiny-base > out.txt 2>&1; then fail "missing shard accepted"; fi
grep -q "shard '$(basename "$shard")' is missing" out.txt || { cat out.txt; fail "no missing-shard message"; }
mv "$work/shard.bak" "$shard"

# 5. A card the Hub would refuse: broken YAML (named with the file), a wrong library_name.
cp -r lora/final broken
sed -i 's/^library_name: peft$/library_name: [peft/' broken/README.md
if "$push" broken me/x --base-model a/b > out.txt 2>&1; then fail "broken YAML accepted"; fi
grep -q "README.md: front matter is not valid YAML" out.txt || { cat out.txt; fail "no YAML message"; }
sed -i 's/^library_name: \[peft$/library_name: transformers/' broken/README.md
if "$push" broken me/x --base-model a/b > out.txt 2>&1; then fail "wrong library_name accepted"; fi
grep -q "library_name 'transformers', expected 'peft'" out.txt || { cat out.txt; fail "no library_name message"; }
rm broken/adapter_model.safetensors
if "$push" broken me/x > out.txt 2>&1; then fail "adapter without weights accepted"; fi
grep -q "adapter_config.json without adapter_model.safetensors" out.txt || { cat out.txt; fail "no weights message"; }
if "$push" lora/final not-a-repo-id > out.txt 2>&1; then fail "bad repo id accepted"; fi
grep -q "is not a Hub id" out.txt || fail "no repo id message"
echo "push_to_hub: ok"
