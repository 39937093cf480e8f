# Sourced by the script tests that compare with the PyPI peers:
#   require_python torch transformers ...
# sets $python to $CTUNE_PYTHON, or prints "SKIPPED: ..." and exits 0 where it is unset or
# lacks a module (scripts/test.sh always sets it, so CI never skips these).
require_python() {
  python=${CTUNE_PYTHON:-}
  if [ -z "$python" ]; then
    echo "SKIPPED: CTUNE_PYTHON is not set (scripts/python_env.sh makes a virtual environment with the peers)"
    exit 0
  fi
  local modules
  modules=$(IFS=,; echo "$*")
  if ! "$python" -c "import $modules" 2>/dev/null; then
    echo "SKIPPED: $python cannot import $*"
    exit 0
  fi
}
