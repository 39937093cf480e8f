#!/usr/bin/env bash
# Integration: ctune generate --chat against transformers' apply_chat_template. A tiny model
# whose tokenizer has chatml's markers (<|pad|> and <|end_of_text|> renamed) gets the standard
# ChatML template in tokenizer_config.json; transformers renders [system, user] with
# add_generation_prompt=True (and tokenizes that text to the ids it would feed the model).
# ctune generate --chat, the template detected from that file (no --template), must answer
# exactly as ctune continues transformers' rendered text: the prompt it builds is the one
# transformers builds.
set -uo pipefail
src=${CTUNE_SOURCE_DIR:?}
ctune=${CTUNE:?}
source "$src/tests/tools/python.sh"
require_python transformers
source "$src/tests/tools/checks.sh"
export OMP_NUM_THREADS=1

"$ctune" init --preset tiny -o chat > /dev/null || { bad "ctune init"; exit 1; }
sed -i 's/<|end_of_text|>/<|im_end|>/g; s/<|pad|>/<|im_start|>/g' chat/tokenizer.json
(cd / && "$python" - "$work/chat" << 'PY') > rendered.txt || { bad "transformers could not render the chat"; exit 1; }
import json, sys
from transformers import AutoTokenizer
folder = sys.argv[1]
chatml = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
config_path = f"{folder}/tokenizer_config.json"
config = json.load(open(config_path))
config["chat_template"] = chatml
json.dump(config, open(config_path, "w"), indent=2)
tok = AutoTokenizer.from_pretrained(folder)
messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12+34?"}]
text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
if isinstance(ids, dict) or hasattr(ids, "input_ids"):
    ids = ids["input_ids"]
assert tok(text, add_special_tokens=False)["input_ids"] == list(ids), "transformers tokenizes its rendering otherwise"
sys.stdout.write(text)
PY
grep -q "<|im_start|>assistant" rendered.txt && ok "transformers renders the generation prompt" \
  || bad "no assistant header in transformers' rendering: $(cat rendered.txt)"

# --no-special: transformers' chatml rendering has no BOS (apply_chat_template tokenizes
# without special tokens); ctune adds the tokenizer's for chatml unless told not to.
reply=$("$ctune" generate --model chat --system "Be brief." --chat "What is 12+34?" --no-special --max-new-tokens 8 2> chat.err)
status=$?
# $(...) drops trailing newlines: give the prompt back its last newline by hand
rendered=$(cat rendered.txt; printf x)
rendered=${rendered%x}
continued=$("$ctune" generate --model chat --no-special --max-new-tokens 8 --prompt "$rendered" 2> whole.err)
if [ "$status" -eq 0 ] && [ -n "$reply" ] && [ "$continued" = "$rendered$reply" ]; then
  ok "generate --chat (template from tokenizer_config.json) = ctune's continuation of transformers' rendering"
else
  cat chat.err whole.err
  bad "generate --chat '$reply' vs the continuation of transformers' rendering '$continued'"
fi
checks_summary interop_chat
