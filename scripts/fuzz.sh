#!/usr/bin/env bash
# Coverage-guided fuzzing of ctune's input parsers with libFuzzer (docs/fuzzing.md).
#   scripts/fuzz.sh TARGET [SECONDS] [extra libFuzzer args...]
# TARGET: safetensors | st_index | tokenizer | recipe | model_config | adapter | prep_line | sweep
# Builds ctune_core with clang + ASan/UBSan + fuzzer coverage into $CTUNE_FUZZ_BUILD
# (default build-fuzz), links tests/fuzz/fuzz_TARGET.c against it, seeds a corpus from
# tests/fixtures and configs/ (kept in the build folder, never committed), and runs for
# SECONDS (default 300). Crashing inputs land in BUILD/artifacts/TARGET/; minimise one with
#   BUILD/fuzz_TARGET -minimize_crash=1 -runs=10000 CRASH
# and commit it under tests/fixtures/fuzz/TARGET/ (tests/test_fuzz_regressions.c replays them).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${1:?usage: scripts/fuzz.sh TARGET [SECONDS] [libFuzzer args...]}
seconds=${2:-300}
shift $(( $# >= 2 ? 2 : 1 ))
build=${CTUNE_FUZZ_BUILD:-$root/build-fuzz}
harness=$root/tests/fuzz/fuzz_$target.c
[ -f "$harness" ] || { echo "fuzz.sh: no harness $harness" >&2; exit 2; }
command -v clang >/dev/null || { echo "fuzz.sh: clang is required (libFuzzer)" >&2; exit 2; }

# 1. The library, instrumented. test_safetensors is built only for its link line. Two
# fuzzers started together must not build (or re-run CMake's globbing) at the same time.
mkdir -p "$build"
exec 9>"$build/.fuzz-build.lock"
flock 9
if [ ! -f "$build/CMakeCache.txt" ]; then
  CC=clang cmake -S "$root" -B "$build" -DCTUNE_SANITIZE=ON -DCTUNE_CUDA=OFF \
    -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_C_FLAGS=-fsanitize=fuzzer-no-link -O1 -g" >/dev/null
fi
cmake --build "$build" -j2 --target ctune_core test_safetensors >/dev/null

# 2. The harness, with the library's own flags and link libraries (CMake resolved them).
flags_make=$build/CMakeFiles/test_safetensors.dir/flags.make
link_txt=$build/CMakeFiles/test_safetensors.dir/link.txt
defines=$(sed -n 's/^C_DEFINES = //p' "$flags_make")
includes=$(sed -n 's/^C_INCLUDES = //p' "$flags_make")
cflags=$(sed -n 's/^C_FLAGS = //p' "$flags_make" | sed 's/-fsanitize=fuzzer-no-link//')
libs=$(sed 's/.*libctune_core\.a//' "$link_txt")
rpath=$(grep -o -- '-Wl,-rpath,[^ ]*' "$link_txt" || true)
binary=$build/fuzz_$target
if [ ! -x "$binary" ] || [ "$harness" -nt "$binary" ] || [ "$build/libctune_core.a" -nt "$binary" ] ||
   [ "$root/tests/fuzz/fuzz_targets.h" -nt "$binary" ]; then
  eval clang $cflags -fsanitize=fuzzer $defines $includes "$harness" -o "$binary" \
    $rpath "$build/libctune_core.a" $libs
fi

flock -u 9

# The harnesses write each input to a scratch folder under $TMPDIR: one per run, removed at exit.
scratch=$(mktemp -d "${TMPDIR:-/tmp}/ctune-fuzz-run-XXXXXX")
trap 'rm -rf "$scratch"' EXIT
export TMPDIR=$scratch

# 3. Seed corpus from the committed fixtures (small valid inputs) and earlier findings. The
# prep_line and adapter inputs start with the harness's mode byte (see their harnesses).
corpus=$build/corpus/$target
artifacts=$build/artifacts/$target
mkdir -p "$corpus" "$artifacts"
fx=$root/tests/fixtures
seed() { for f in "$@"; do [ -f "$f" ] && cp "$f" "$corpus/seed_$(echo "$f" | sed "s|$root/||; s|/|_|g")"; done; true; }
prefixed() { # byte, file: the harness's mode byte followed by the file
  local byte=$1 f=$2
  { printf "\\x$byte"; cat "$f"; } > "$corpus/seed_${byte}_$(basename "$(dirname "$f")")_$(basename "$f")"
}
case $target in
  safetensors)
    seed "$fx"/safetensors/*.safetensors "$fx"/safetensors/sharded/*.safetensors \
         "$fx"/model/qwen3/model.safetensors; max_len=65536 ;;
  st_index)
    seed "$fx"/safetensors/sharded/model.safetensors.index.json; max_len=4096 ;;
  sweep)
    seed "$root"/configs/sweeps/*.yaml; max_len=8192 ;;
  tokenizer)
    seed "$fx"/tokenizer/{gpt2,llama2,llama3,metaspace,qwen2,split}.json; max_len=32768 ;;
  recipe)
    seed "$root"/configs/tiny/*.yaml
    { cat "$root/configs/tiny/lora.yaml"; printf '\n#overrides\noptim.lr=3e-4\nlora.target_modules=[q_proj,v_proj]\nmethod=full\n'; } \
      > "$corpus/seed_overrides.yaml"
    max_len=8192 ;;
  model_config)
    seed "$fx"/model/*/config.json; max_len=8192 ;;
  adapter)
    CTUNE_SOURCE_DIR=$root FUZZ_WRITE_SEEDS=$corpus "$binary" >/dev/null 2>&1
    prefixed 00 "$fx/model/llama_gqa/lora/adapter_config.json"
    prefixed 01 "$fx/model/llama_gqa/lora/adapter_model.safetensors"
    max_len=32768 ;;
  prep_line)
    i=0
    while IFS= read -r line; do
      { printf "\\x0$(( (i % 2) * 4 ))"; printf '%s' "$line"; } > "$corpus/seed_line_$i"; i=$((i + 1))
    done <<'LINES'
{"text": "Hello, world! 12345 ünïcödé 日本語 🙂"}
{"prompt": "What is 2+2?", "completion": " 4"}
{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
{"text": "tabs\tand\nnewlines \u00e9\ud83d\ude00"}
{"messages": [{"role": "user", "content": "<|eot_id|> inside"}]}
   
{"text": 5}
{"prompt": "a", "completion": "b"}   trailing
LINES
    max_len=4096 ;;
  *) echo "fuzz.sh: unknown target $target" >&2; exit 2 ;;
esac
for f in "$root/tests/fixtures/fuzz/$target"/*; do [ -f "$f" ] && cp "$f" "$corpus/"; done

case $target in
  safetensors) dict=safetensors.dict ;;
  recipe | sweep) dict=yaml.dict ;;
  *) dict=json.dict ;;
esac

# 4. Run. Leaks count (ASan's LeakSanitizer); a 10 s input is a hang.
cd "$build"
export CTUNE_SOURCE_DIR=$root OMP_NUM_THREADS=1
"$binary" "$corpus" -max_total_time="$seconds" \
  -rss_limit_mb=2048 -max_len="$max_len" -timeout=10 -print_final_stats=1 \
  -artifact_prefix="$artifacts/" -dict="$root/tests/fuzz/$dict" "$@"
