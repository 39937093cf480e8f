# Sourced by the integration scripts that count their checks, after they have read their
# environment (CTUNE_SOURCE_DIR, ...):
#   source "$src/tests/tools/checks.sh"
# makes a fresh temporary folder $work (removed on exit) the current directory, and gives
#   ok WHAT, bad WHAT          print "ok   WHAT" / "FAIL WHAT" and count it;
#   checks_summary NAME        prints "NAME: P passed, F failed in S s" and fails when any
#                              check did (the script's last command, so its exit status).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1
passed=0
failed=0
checks_start=$(date +%s)
ok() { passed=$((passed + 1)); echo "ok   $*"; }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }
checks_summary() {
  echo "$1: $passed passed, $failed failed in $(( $(date +%s) - checks_start )) s"
  [ "$failed" -eq 0 ]
}
