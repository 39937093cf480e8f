#!/usr/bin/env bash
# Integration: ctune generate's greedy decoding on the KV cache against transformers'
# generate() (fp32, use_cache) on the same tiny model and prompt ids: the same new ids, token
# for token, plain and with repetition_penalty (above 1 it discourages repeats, below 1 it
# encourages them; transformers' RepetitionPenaltyLogitsProcessor, applied before the choice).
# EOS is ignored on both sides so that every run makes all its tokens.
set -uo pipefail
src=${CTUNE_SOURCE_DIR:?}
ctune=${CTUNE:?}
source "$src/tests/tools/python.sh"
require_python torch transformers
source "$src/tests/tools/checks.sh"
export OMP_NUM_THREADS=1

"$ctune" init --preset tiny -o tiny > /dev/null || { bad "ctune init"; exit 1; }
prompt="12+34=57; 8+9="
new=40
penalties="1 1.3 0.8"
(cd / && "$python" - "$work/tiny" "$prompt" "$new" $penalties << 'PY') > peer.txt || { bad "transformers' generate"; exit 1; }
import sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, prompt, new = sys.argv[1], sys.argv[2], int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
ids = torch.tensor([tok(prompt)["input_ids"]])
for penalty in sys.argv[4:]:
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                         do_sample=False, repetition_penalty=float(penalty), pad_token_id=258)
    print(" ".join(map(str, out[0, ids.shape[1]:].tolist())))
PY
line=0
for penalty in $penalties; do
  line=$((line + 1))
  want=$(sed -n "${line}p" peer.txt)
  got=$("$ctune" generate --model tiny --prompt "$prompt" --max-new-tokens "$new" --ignore-eos --ids \
        --repetition-penalty "$penalty" 2> err.txt)
  if [ -n "$want" ] && [ "$got" = "$want" ]; then
    ok "repetition penalty $penalty: the same $new greedy ids as transformers"
  else
    cat err.txt
    bad "repetition penalty $penalty: ctune '$got' vs transformers '$want'"
  fi
done
# the penalty changes the choice here (else the comparison above would not test it)
[ "$(sed -n 1p peer.txt)" != "$(sed -n 2p peer.txt)" ] && [ "$(sed -n 1p peer.txt)" != "$(sed -n 3p peer.txt)" ] \
  && ok "the penalties change the greedy ids" || bad "the penalties do not change the greedy ids"
checks_summary interop_generate
