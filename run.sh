#!/usr/bin/env bash
# One command to install everything and run padim:
#   ./run.sh demo   install into .venv, then fit and evaluate the built-in demo (offline)
#   ./run.sh test   install into .venv (with test tools), then run the whole test suite
# Extra arguments go to `padim demo` or to pytest. PYTHON picks the interpreter (>= 3.11).
set -euo pipefail
cd "$(dirname "$0")"
task=${1:-}
shift || true
case "$task" in
  demo|test) ;;
  *) echo "usage: ./run.sh demo|test [args...]" >&2; exit 2 ;;
esac
python=${PYTHON:-python3}
venv=${PADIM_VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[dev]" 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
"$venv/bin/python" -c "import padim, torch" # fail here, loudly, if the install did not work
if [ "$task" = demo ]; then
  exec "$venv/bin/padim" demo "$@"
fi
exec "$venv/bin/python" -m pytest "$@"
