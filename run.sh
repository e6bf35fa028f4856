#!/usr/bin/env bash
# One command to install everything and run padim:
#   ./run.sh demo    install into .venv, then fit and evaluate the built-in demo (offline)
#   ./run.sh test    install into .venv (with test tools), then run the whole test suite
#   ./run.sh check   install, then the linters and the type checker (ruff, mypy)
#   ./run.sh studio  install, then the studio at http://localhost:8000/studio (a browser is all
#                    you need from there: products, images, training, judging, shipping); the
#                    catalogue is ./padim-catalogue unless --catalogue says otherwise
# Extra arguments go to `padim demo`, `padim serve --studio` or to pytest
# (`./run.sh test -m "not slow"`: the fast loop).
# PYTHON picks the interpreter (>= 3.11); PADIM_VENV the environment folder. The first install
# takes several minutes and about 7 GB: PyPI's torch for Linux x86_64 is the CUDA build (3.2 GB
# of NVIDIA libraries and 0.9 GB of triton that a CPU never uses). On a CPU-only machine, install
# PyTorch's CPU-only build into the environment first (PyTorch's "Get started" page gives the
# pip command), then run this: pip keeps the torch it finds.
# Later runs re-install only when pyproject.toml changed (a stamp in the environment).
set -euo pipefail
cd "$(dirname "$0")"
task=${1:-}
shift || true
case "$task" in
  demo|test|check|studio) ;;
  *) echo "usage: ./run.sh demo|test|check|studio [args...]" >&2; exit 2 ;;
esac
python=${PYTHON:-python3}
venv=${PADIM_VENV:-.venv}
say() { echo "run.sh: $*" >&2; }
stamp="$venv/.padim-installed"
want="$(cksum < pyproject.toml)"
if [ ! -x "$venv/bin/python" ]; then
  say "creating the virtual environment $venv"
  "$python" -m venv "$venv"
  say "installing padim and its dependencies into $venv (first time: several minutes, about 7 GB with torch's CUDA build; see the top of run.sh for a CPU-only torch)"
  quiet=()
elif [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && "$venv/bin/python" -c "import padim" 2>/dev/null; then
  quiet=(skip)
else
  say "pyproject.toml changed: updating the installation in $venv"
  quiet=(--quiet)
fi
if [ "${quiet[*]-}" != "skip" ]; then
  # One line per package as pip goes (grep and sed unbuffered: a first install shows progress).
  "$venv/bin/python" -m pip install "${quiet[@]}" --progress-bar off --disable-pip-version-check \
      -e ".[dev]" 2>&1 \
    | grep --line-buffered -v -e "is ignored: it is neither a file nor a directory" -e "^  " \
        -e "^Requirement already" \
    | sed -u 's/^/  pip: /' >&2 || true
  "$venv/bin/python" -c "import padim, torch" # fail here, loudly, if the install did not work
  echo "$want" > "$stamp"
fi
say "ready"
case "$task" in
  demo) exec "$venv/bin/padim" demo "$@" ;;
  studio) exec "$venv/bin/padim" serve --studio "$@" ;;
  check)
    "$venv/bin/ruff" check .
    "$venv/bin/ruff" format --check .
    exec "$venv/bin/mypy" ;;
  test) exec "$venv/bin/python" -m pytest "$@" ;;
esac
