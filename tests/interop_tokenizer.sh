#!/usr/bin/env bash
# Integration: ctune's tokenizer against the installed `tokenizers` library, not only against
# the committed fixtures. scripts/gen_tokenizer_fixtures.py trains the fixture tokenizers and
# records the library's ids and decodes into a temporary folder; test_tokenizer then runs on
# that folder (CTUNE_TOKENIZER_FIXTURES), token for token. Then the committed fixtures are
# compared with the regenerated ones (the script is deterministic): a generated file that
# differs is drift (the library changed behaviour, or the script changed without
# regenerating) and fails.
set -euo pipefail
src=${CTUNE_SOURCE_DIR:?}
test_tokenizer=${CTUNE_BUILD_DIR:?}/test_tokenizer
source "$CTUNE_SOURCE_DIR/tests/tools/python.sh"
require_python tokenizers
[ -x "$test_tokenizer" ] || { echo "FAIL: $test_tokenizer is not built"; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "tokenizers $("$python" -c 'import tokenizers; print(tokenizers.__version__)')"

"$python" "$src/scripts/gen_tokenizer_fixtures.py" --out-dir "$work/fresh"
CTUNE_TOKENIZER_FIXTURES="$work/fresh" "$test_tokenizer" > "$work/test.log" 2>&1 || {
  tail -n 40 "$work/test.log"; echo "FAIL: test_tokenizer disagrees with the installed tokenizers"; exit 1; }
tail -n 1 "$work/test.log"

drift=0
for fresh in "$work"/fresh/*; do
  name=$(basename "$fresh")
  committed="$src/tests/fixtures/tokenizer/$name"
  if [ ! -f "$committed" ]; then
    echo "DRIFT: $name is generated but not committed"; drift=1
  elif cmp -s "$fresh" "$committed"; then
    continue
  else
    echo "DRIFT: tests/fixtures/tokenizer/$name differs from what the script generates now:"
    diff "$committed" "$fresh" | head -n 10 || true
    drift=1
  fi
done
for committed in "$src"/tests/fixtures/tokenizer/*; do
  [ -f "$work/fresh/$(basename "$committed")" ] || { echo "DRIFT: $(basename "$committed") is committed but no longer generated"; drift=1; }
done
if [ "$drift" -ne 0 ]; then
  echo "FAIL: committed tokenizer fixtures drifted; regenerate with scripts/gen_tokenizer_fixtures.py"
  exit 1
fi
echo "ok: ctune matches tokenizers on freshly generated fixtures; committed fixtures up to date"
