#!/usr/bin/env bash
# Integration: the command line's own behaviour — help, version, and clear errors (never a
# crash) for bad recipes, overrides and arguments.
set -uo pipefail
src=${CTUNE_SOURCE_DIR:?}
ctune=${CTUNE:?}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
passed=0
failed=0
# expect STATUS PATTERN -- command...: exit status and a pattern in stdout+stderr
expect() {
  local want=$1 pattern=$2
  shift 3
  local out status
  out=$("$@" 2>&1)
  status=$?
  if [ "$status" -eq "$want" ] && grep -qE -- "$pattern" <<<"$out"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAIL: $* -> status $status (want $want), output:"
    echo "$out" | head -5
    echo "(wanted pattern: $pattern)"
  fi
}

expect 0 "ctune [0-9]+\.[0-9]+" -- "$ctune" --version
expect 0 "usage: ctune" -- "$ctune" --help
expect 2 "unknown command 'trian'" -- "$ctune" trian
for cmd in train init prep eval generate inspect merge sweep report; do
  expect 0 "usage: ctune $cmd" -- "$ctune" "$cmd" --help
done

printf 'model:\n  path: m\ndata:\n  train: d.h5\noptim:\n  lrr: 0.1\n' > typo.yaml
expect 1 "typo.yaml:6.*optim.lrr.*did you mean 'optim.lr'" -- "$ctune" train typo.yaml --dry-run
printf 'model:\n  path: m\ndata:\n  train: d.h5\ntrain:\n  micro_batch_size: many\n' > type.yaml
expect 1 "type.yaml:6.*train.micro_batch_size" -- "$ctune" train type.yaml --dry-run
printf 'model: [unclosed\n' > broken.yaml
expect 1 "broken.yaml:[0-9]+" -- "$ctune" train broken.yaml --dry-run
printf 'model:\n  path: m\ndata:\n  train: d.h5\n' > ok.yaml
expect 1 "override 'optim.lr=abc'" -- "$ctune" train ok.yaml optim.lr=abc --dry-run
expect 1 "m/config.json" -- "$ctune" train ok.yaml --dry-run
expect 1 "nccl is not available yet" -- "$ctune" train "$src/configs/tiny/lora.yaml" model.path="$work/m" \
  data.train="$work/t.h5" data.eval="$work/e.h5" data.synthetic_train_examples=64 \
  data.synthetic_eval_examples=8 distributed.backend=nccl --dry-run
expect 0 "ZeRO stage 1" -- "$ctune" train "$src/configs/tiny/lora.yaml" model.path="$work/m" \
  data.train="$work/t.h5" data.eval="$work/e.h5" data.synthetic_train_examples=64 \
  data.synthetic_eval_examples=8 distributed.zero_stage=1 --dry-run
# device cuda without a usable GPU says so (on a GPU machine the missing model is reported instead)
expect 1 "asks for a GPU \(device: cuda\) but none can be used|m/config.json" -- "$ctune" train ok.yaml device=cuda --dry-run
expect 0 "precision: fp16-mixed: matrix products on fp16 copies" -- "$ctune" train "$src/configs/tiny/lora.yaml" \
  model.path="$work/m" data.train="$work/t.h5" data.eval="$work/e.h5" data.synthetic_train_examples=64 \
  data.synthetic_eval_examples=8 precision=fp16-mixed device=cpu --dry-run

expect 0 "wrote" -- "$ctune" init --preset tiny -o tiny
expect 1 "already holds a model" -- "$ctune" init --preset tiny -o tiny
expect 1 "preset|unknown" -- "$ctune" init --preset nope -o other
expect 2 "seed" -- "$ctune" init --preset tiny -o x --seed -3
expect 1 "missing|No such file|cannot" -- "$ctune" generate --model "$work/absent" --prompt hi
printf 'garbage' > bad.safetensors
expect 1 "bad.safetensors" -- "$ctune" inspect bad.safetensors
expect 0 "model.embed_tokens.weight" -- "$ctune" inspect tiny/model.safetensors
expect 0 "\+" -- "$ctune" generate --model tiny --prompt "1+1=" --max-new-tokens 3
expect 2 "--device 'gpu': expected auto, cpu or cuda" -- "$ctune" eval --model tiny --device gpu --ids 1 --logits-out -
expect 2 "--precision 'bf16': expected fp32, bf16-mixed or fp16-mixed" -- "$ctune" generate --model tiny \
  --precision bf16 --prompt hi
expect 2 "--quantize-base 'int8': expected nf4" -- "$ctune" generate --model tiny --quantize-base int8 --prompt hi
# --device cuda without a usable GPU says so, and runs where there is one
if command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then
  expect 0 '"logits"' -- "$ctune" eval --model tiny --device cuda --precision bf16-mixed --ids 1,2 --logits-out -
else
  expect 1 "--device cuda asks for a GPU but none can be used" -- "$ctune" eval --model tiny --device cuda \
    --ids 1,2 --logits-out -
  expect 1 "--device cuda asks for a GPU but none can be used" -- "$ctune" generate --model tiny --device cuda \
    --prompt "1+1="
fi
expect 0 "\+" -- "$ctune" generate --model tiny --device cpu --precision fp16-mixed --prompt "1+1=" --max-new-tokens 3
# Sampling: top-k 1 at any temperature is greedy; --top-p outside (0, 1] is refused.
if greedy=$("$ctune" generate --model tiny --prompt "1+1=" --max-new-tokens 6) &&
   top1=$("$ctune" generate --model tiny --prompt "1+1=" --max-new-tokens 6 --temperature 3 --top-k 1 --seed 5) &&
   hot=$("$ctune" generate --model tiny --prompt "1+1=" --max-new-tokens 6 --temperature 3 --seed 5) &&
   [ "$top1" = "$greedy" ] && [ "$hot" != "$greedy" ]; then
  passed=$((passed + 1))
else
  failed=$((failed + 1)); echo "FAIL: --top-k 1 at temperature 3 '${top1:-}' is not greedy '${greedy:-}' (or sampling is: '${hot:-}')"
fi
expect 2 "--top-p: '0' is not in \(0, 1\]" -- "$ctune" generate --model tiny --prompt hi --top-p 0
expect 2 "--repetition-penalty: '0' is not a number > 0" -- "$ctune" generate --model tiny --prompt hi \
  --repetition-penalty 0
# --chat: the tiny tokenizer has no chat markers. Renamed into chatml's (<|pad|> 258 becomes
# <|im_start|>, <|end_of_text|> 257 <|im_end|>), the reply is the continuation of the rendered
# prompt (BOS, the turns, then the assistant's header) and stops at <|im_end|>.
expect 1 "a chat needs a template, and tiny/tokenizer_config.json names no built-in one" -- "$ctune" generate --model tiny --chat hi
expect 1 "--template.*<\|im_start\|>" -- "$ctune" generate --model tiny --chat hi --template chatml
expect 2 "one of them" -- "$ctune" generate --model tiny --chat hi --prompt hi
expect 2 "--system goes with --chat" -- "$ctune" generate --model tiny --prompt hi --system terse
cp -r tiny chat
sed -i 's/<|end_of_text|>/<|im_end|>/g; s/<|pad|>/<|im_start|>/g' chat/tokenizer.json
# As ctune prep renders a chatml document, the tokenizer's BOS goes in front.
rendered=$'<|begin_of_text|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+1=<|im_end|>\n<|im_start|>assistant\n'
if reply=$("$ctune" generate --model chat --template chatml --system "Be brief." --chat "1+1=" --max-new-tokens 6) &&
   whole=$("$ctune" generate --model chat --no-special --max-new-tokens 6 --prompt "$rendered") &&
   [ -n "$reply" ] && [ "$whole" = "$rendered$reply" ]; then
  passed=$((passed + 1))
else
  failed=$((failed + 1)); echo "FAIL: generate --chat '${reply:-}' is not the continuation of the rendered prompt: '${whole:-}'"
fi
# --messages: a whole conversation from a JSON file (an array, or a prep chat line's object),
# rendered the same way; the reply continues the rendered prompt.
cat > talk.json <<'JSON'
[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1="},
 {"role": "assistant", "content": "2"}, {"role": "user", "content": "2+2="}]
JSON
printf '{"messages": %s}\n' "$(cat talk.json)" > talk_line.json
rendered=$'<|begin_of_text|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+1=<|im_end|>\n<|im_start|>assistant\n2<|im_end|>\n<|im_start|>user\n2+2=<|im_end|>\n<|im_start|>assistant\n'
if reply=$("$ctune" generate --model chat --template chatml --messages talk.json --max-new-tokens 6) &&
   same=$("$ctune" generate --model chat --template chatml --messages talk_line.json --max-new-tokens 6) &&
   whole=$("$ctune" generate --model chat --no-special --max-new-tokens 6 --prompt "$rendered") &&
   [ -n "$reply" ] && [ "$whole" = "$rendered$reply" ] && [ "$same" = "$reply" ]; then
  passed=$((passed + 1))
else
  failed=$((failed + 1)); echo "FAIL: generate --messages '${reply:-}' / '${same:-}' is not the continuation of '${whole:-}'"
fi
printf '[{"role": "user", "content": "hi"}, {"role": "assistant"}]' > no_content.json
expect 1 "--messages no_content.json: messages\[1\]: expected \{\"role\": string, \"content\": string\}" -- \
  "$ctune" generate --model chat --template chatml --messages no_content.json
printf '{"messages": [}' > broken.json
expect 1 "--messages: broken.json: byte 14 \(line 1, column 15\): invalid JSON" -- "$ctune" generate --model chat --template chatml --messages broken.json
printf '{"turns": []}' > no_messages.json
expect 1 "missing \"messages\"" -- "$ctune" generate --model chat --template chatml --messages no_messages.json
expect 1 "cannot open|No such file" -- "$ctune" generate --model chat --template chatml --messages absent.json
expect 2 "one of them" -- "$ctune" generate --model chat --messages talk.json --chat hi
expect 2 "with --messages, put it in the file" -- "$ctune" generate --model chat --messages talk.json --system terse
expect 2 "--template goes with --chat, --messages or --interactive" -- "$ctune" generate --model tiny --prompt hi --template chatml
# --interactive: a user turn per stdin line (blank lines skipped), a reply per line; the first
# reply is --chat's, the second --messages' for the conversation so far (replies as printed),
# though the cache carried the conversation from one turn to the next.
"$ctune" generate --model chat --template chatml --system "Be brief." --chat "1+1=" --max-new-tokens 6 > chat1.out
python3 - chat1.out > talk2.json <<'PY'
import json, sys
reply = open(sys.argv[1], "rb").read()[:-1].decode()
print(json.dumps([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1="},
                  {"role": "assistant", "content": reply}, {"role": "user", "content": "2+2="}]))
PY
"$ctune" generate --model chat --template chatml --messages talk2.json --max-new-tokens 6 --stats > chat2.out \
  2> chat2.err
if printf '1+1=\n\n2+2=\n' | "$ctune" generate --model chat --template chatml --system "Be brief." --interactive \
     --max-new-tokens 6 --stats > both.out 2> both.err && cat chat1.out chat2.out | cmp -s - both.out; then
  passed=$((passed + 1))
else
  failed=$((failed + 1)); echo "FAIL: generate --interactive:"; od -c both.out | head -5; echo "expected:"
  cat chat1.out chat2.out | od -c | head -5
fi
# ... and its second turn ran fewer tokens than the whole conversation's prompt
whole=$(sed -nE 's/.*prompt ([0-9]+) tokens.*/\1/p' chat2.err)
fed=$(sed -nE 's/.*turn 2: ([0-9]+) tokens fed.*/\1/p' both.err)
if [ -n "$whole" ] && [ -n "$fed" ] && [ "$fed" -lt "$whole" ]; then
  passed=$((passed + 1))
else
  failed=$((failed + 1)); echo "FAIL: --interactive's second turn fed ${fed:-?} tokens of a ${whole:-?}-token prompt"
fi
expect 1 "the conversation \([0-9]+ tokens\) and a reply do not fit the 24-token context" -- bash -c \
  "printf '1+1=\n2+2=\n' | '$ctune' generate --model chat --template chatml --interactive --context 24"
expect 2 "one of them" -- "$ctune" generate --model chat --interactive --prompt hi
expect 2 "do not go with --interactive" -- "$ctune" generate --model chat --interactive --ids
expect 2 "--context goes with --interactive" -- "$ctune" generate --model tiny --prompt hi --context 64
# --prompts: a JSONL file answered line by line (blank lines skipped), each completion the
# one-shot command's; -o writes the same lines, whole; a bad line stops it, named, writing nothing.
cat > batch.jsonl <<'JSON'
{"prompt": "1+1=", "completion": "2"}

{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]}
{"prompt": "3+4="}
JSON
"$ctune" generate --model chat --prompt "1+1=" --max-new-tokens 6 > one1.out
"$ctune" generate --model chat --prompt "3+4=" --max-new-tokens 6 > one4.out
if "$ctune" generate --model chat --template chatml --prompts batch.jsonl --max-new-tokens 6 > batch.out &&
   "$ctune" generate --model chat --template chatml --prompts batch.jsonl --max-new-tokens 6 -o batch.jsonl.out \
     2> batch.err && cmp -s batch.out batch.jsonl.out && grep -q "3 completions written to batch.jsonl.out" batch.err &&
   python3 - batch.out one1.out chat1.out one4.out <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
one = [open(p, "rb").read()[:-1].decode() for p in sys.argv[2:]]
want = [(1, one[0][len("1+1="):], "2"), (3, one[1], "2"), (4, one[2][len("3+4="):], None)]
got = [(r["line"], r["completion"], r.get("label")) for r in rows]
sys.exit(0 if got == want and rows[0]["prompt_tokens"] == 5 else f"{got} != {want}")
PY
then
  passed=$((passed + 1))
else
  failed=$((failed + 1)); echo "FAIL: generate --prompts"; cat batch.out batch.err 2>/dev/null | head -5
fi
printf '{"prompt": "ok"}\n{"prompt": 3}\n' > bad_batch.jsonl
expect 1 "--prompts bad_batch.jsonl:2: \"prompt\" must be a string" -- "$ctune" generate --model chat \
  --prompts bad_batch.jsonl -o never.jsonl
[ ! -e never.jsonl ] && passed=$((passed + 1)) || { failed=$((failed + 1)); echo "FAIL: a bad --prompts line left never.jsonl"; }
printf '{"prompt": "a", "messages": []}\n' > both_batch.jsonl
expect 1 "--prompts both_batch.jsonl:1: expected \"prompt\" or \"messages\" \(one of them\)" -- "$ctune" generate \
  --model chat --prompts both_batch.jsonl
printf '{"prompt": "a"} x\n' > trailing_batch.jsonl
expect 1 "--prompts trailing_batch.jsonl:1: column 17: unexpected text after the JSON value" -- "$ctune" generate \
  --model chat --prompts trailing_batch.jsonl
expect 1 "--prompts absent.jsonl: cannot open" -- "$ctune" generate --model chat --prompts absent.jsonl
printf '{"prompt": "ok"}\n{"prompt": \n' > broken_batch.jsonl
expect 1 "--prompts broken_batch.jsonl:2: column 11: invalid JSON" -- "$ctune" generate --model chat \
  --prompts broken_batch.jsonl
expect 2 "-o goes with --prompts" -- "$ctune" generate --model tiny --prompt hi -o x.jsonl
# --stop: the reply ends where its text first holds the stop string, left out: the greedy
# text up to there (the stop: an ASCII character of the 20-token reply first seen after its
# start).
"$ctune" generate --model tiny --prompt "1+1=" --max-new-tokens 20 > full.out
if stop=$(python3 -c '
import sys
reply = open("full.out", "rb").read()[len(b"1+1="):-1]
picks = [chr(b) for i, b in enumerate(reply) if i > 0 and 33 <= b < 127 and reply.index(b) == i and chr(b) not in "\\\"'\''$`"]
print(picks[0]) if picks else sys.exit("no ASCII character in the reply")') &&
   cut=$("$ctune" generate --model tiny --prompt "1+1=" --max-new-tokens 20 --stop "$stop") &&
   want=$(python3 -c '
import sys
reply = open("full.out", "rb").read()[len(b"1+1="):-1].decode()
print("1+1=" + reply[: reply.index(sys.argv[1])])' "$stop") &&
   [ "$cut" = "$want" ] && [ "$cut" != "1+1=" ]; then
  passed=$((passed + 1))
else
  failed=$((failed + 1)); echo "FAIL: generate --stop '${stop:-}': '${cut:-}' vs '${want:-}'"
fi
expect 2 "--stop: an empty stop string would stop at once" -- "$ctune" generate --model tiny --prompt hi --stop ""
expect 2 "--stop cuts the text; it does not go with --ids" -- "$ctune" generate --model tiny --prompt hi --stop x --ids
# --ids prints the completion's ids; --ignore-eos makes it exactly --max-new-tokens long with
# the same greedy tokens first; --stats adds timings on stderr and leaves stdout alone.
if ids=$("$ctune" generate --model tiny --prompt "1+1=" --max-new-tokens 5 --ids) &&
   long=$("$ctune" generate --model tiny --prompt "1+1=" --max-new-tokens 40 --ids --ignore-eos) &&
   quiet=$("$ctune" generate --model tiny --prompt "1+1=" --max-new-tokens 40 --ids --ignore-eos --stats 2>/dev/null) &&
   [[ "$ids" =~ ^[0-9]+( [0-9]+)*$ ]] && [ "$(wc -w <<<"$long")" -eq 40 ] && [[ "$long" == "$ids"* ]] &&
   [ "$quiet" = "$long" ]; then
  passed=$((passed + 1))
else
  failed=$((failed + 1)); echo "FAIL: generate --ids '${ids:-}' / --ignore-eos '${long:-}' / --stats '${quiet:-}'"
fi
expect 0 "prompt 5 tokens [0-9.]+ ms .*; 7 new tokens [0-9.]+ ms after it \([0-9.]+ tokens/s\)" -- \
  "$ctune" generate --model tiny --prompt "1+1=" --max-new-tokens 7 --ignore-eos --stats

# The default dry run resolves the recipe and prints the plan.
expect 0 "parameters: [0-9]+ total" -- "$ctune" train "$src/configs/tiny/lora.yaml" model.path="$work/tiny" \
  data.train="$work/t.h5" data.eval="$work/e.h5" data.synthetic_train_examples=64 \
  data.synthetic_eval_examples=8 --dry-run

# The memory check: the dry run says whether the run fits; a run that cannot fit stops
# before allocating its step buffers, naming the numbers and what would shrink them.
expect 0 "memory check \(rank 0\): [0-9.]+ GiB more needed, [0-9.]+ GiB free of [0-9.]+ on the cpu backend: fits" -- \
  "$ctune" train "$src/configs/tiny/lora.yaml" model.path="$work/tiny" data.train="$work/t.h5" data.eval="$work/e.h5" \
  data.synthetic_train_examples=64 data.synthetic_eval_examples=8 --dry-run
# The estimate counts what the attention kernels allocate for themselves (kernel scratch): none
# in fp32; in mixed precision the CPU backward's five fp32 copies, tokens x (3 heads + 2 kv
# heads) x head_dim x 4 bytes (the tiny model: 4 heads, 2 kv heads, head_dim 32; micro batch 32
# x seq 16 below).
plan_of() {
  "$ctune" train "$src/configs/tiny/lora.yaml" model.path="$work/tiny" data.train="$work/t.h5" data.eval="$work/e.h5" \
    data.synthetic_train_examples=64 data.synthetic_eval_examples=8 "$@" --dry-run 2>&1
}
scratch_of() { grep -oE 'kernel scratch [0-9]+' <<<"$1" | head -1 | awk '{print $3}'; }
fp32_scratch=$(scratch_of "$(plan_of precision=fp32)")
mixed_scratch=$(scratch_of "$(plan_of precision=bf16-mixed)")
if [ "$fp32_scratch" = 0 ] && [ "$mixed_scratch" = $((32 * 16 * (3 * 4 + 2 * 2) * 32 * 4)) ]; then
  passed=$((passed + 1))
else
  failed=$((failed + 1))
  echo "FAIL: kernel scratch in the estimate: fp32 '$fp32_scratch' (want 0), bf16-mixed '$mixed_scratch' (want $((32 * 16 * (3 * 4 + 2 * 2) * 32 * 4)))"
fi
huge=(train.micro_batch_size=1024 train.global_batch_size=1024 data.seq_len=1048576) # ~46,000 GiB of activations
expect 0 "memory check \(rank 0\).*does NOT fit" -- "$ctune" train "$src/configs/tiny/lora.yaml" model.path="$work/tiny" \
  data.train="$work/t.h5" data.eval="$work/e.h5" data.synthetic_train_examples=64 data.synthetic_eval_examples=8 \
  "${huge[@]}" --dry-run
expect 1 "lora.yaml: not enough memory on rank 0's cpu backend: the run needs [0-9.]+ GiB more .*activations [0-9.]+\).*Try train.activation_checkpointing: true \(activations [0-9.]+ -> [0-9.]+ GiB\)" -- \
  "$ctune" train "$src/configs/tiny/lora.yaml" model.path="$work/tiny" data.train="$work/t.h5" data.eval="$work/e.h5" \
  data.synthetic_train_examples=64 data.synthetic_eval_examples=8 "${huge[@]}" checkpoint.output_dir="$work/huge"
expect 1 "not enough memory .*activations [0-9.]+, kernel scratch [0-9.]+\)" -- \
  "$ctune" train "$src/configs/tiny/lora.yaml" model.path="$work/tiny" data.train="$work/t.h5" data.eval="$work/e.h5" \
  data.synthetic_train_examples=64 data.synthetic_eval_examples=8 "${huge[@]}" precision=bf16-mixed \
  checkpoint.output_dir="$work/huge"
if [ -e "$work/huge" ]; then
  failed=$((failed + 1))
  echo "FAIL: the refused run created its output directory"
else
  passed=$((passed + 1))
fi

# CTUNE_PROFILE=1: a table of the ops of the steps after the first (docs/kernels.md).
out=$(CTUNE_PROFILE=1 "$ctune" train "$src/configs/tiny/lora.yaml" model.path="$work/tiny" data.train="$work/t.h5" \
  data.eval="$work/e.h5" data.synthetic_train_examples=64 data.synthetic_eval_examples=8 train.max_steps=3 optim.warmup_steps=1 \
  train.global_batch_size=8 train.micro_batch_size=8 train.eval_every=0 checkpoint.output_dir="$work/profiled" 2>&1)
if grep -qE "^profile \(CTUNE_PROFILE=1, backend cpu\): 2 step\(s\)" <<<"$out" &&
   grep -qE "^ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +attention_fwd fp32 b 8 s [0-9]+ h" <<<"$out" &&
   grep -qE "^ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +adamw$" <<<"$out"; then
  passed=$((passed + 1))
else
  failed=$((failed + 1))
  echo "FAIL: CTUNE_PROFILE=1 ctune train printed no op table (or not the expected rows):"
  echo "$out" | tail -30
fi

expect 0 "documents" -- "$ctune" inspect "$work/t.h5"
printf '\x89HDF\r\n\x1a\nnot really' > fake.h5
expect 1 "fake.h5" -- "$ctune" inspect fake.h5

echo "cli: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
