#!/usr/bin/env bash
# One command to install everything and run padim:
#   ./run.sh demo    install into .venv, then fit and evaluate the built-in demo (offline)
#   ./run.sh test    install into .venv (with test tools), then run the whole test suite
#   ./run.sh check   install, then the linters and the type checker (ruff, mypy)
# Extra arguments go to `padim demo` or to pytest (`./run.sh test -m "not slow"`: the fast loop).
# PYTHON picks the interpreter (>= 3.11); PADIM_VENV the environment folder.
set -euo pipefail
cd "$(dirname "$0")"
task=${1:-}
shift || true
case "$task" in
  demo|test|check) ;;
  *) echo "usage: ./run.sh demo|test|check [args...]" >&2; exit 2 ;;
esac
python=${PYTHON:-python3}
venv=${PADIM_VENV:-.venv}
say() { echo "run.sh: $*" >&2; }
if [ ! -x "$venv/bin/python" ]; then
  say "creating the virtual environment $venv"
  "$python" -m venv "$venv"
  say "installing padim and its dependencies into $venv (first time: several minutes, a few GB for torch)"
  quiet=()
else
  say "checking the installation in $venv"
  quiet=(--quiet)
fi
# Show what pip is doing on a first install (one line per package), nothing on later runs.
"$venv/bin/python" -m pip install "${quiet[@]}" --progress-bar off --disable-pip-version-check \
    -e ".[dev]" 2>&1 \
  | grep -v -e "is ignored: it is neither a file nor a directory" -e "^  " -e "^Requirement already" \
  | sed -u 's/^/  pip: /' >&2 || true
"$venv/bin/python" -c "import padim, torch" # fail here, loudly, if the install did not work
say "ready"
case "$task" in
  demo) exec "$venv/bin/padim" demo "$@" ;;
  check)
    "$venv/bin/ruff" check .
    "$venv/bin/ruff" format --check .
    exec "$venv/bin/mypy" ;;
  test) exec "$venv/bin/python" -m pytest "$@" ;;
esac
