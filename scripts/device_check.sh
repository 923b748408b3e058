#!/usr/bin/env bash
# aster's first contact with a GPU: one prepared, time-boxed check that prints one table and
# writes one JSON file ($OUT/device_check.json when OUT is set, else a path it prints).
#
#   bash scripts/device_check.sh [--dry-run] [--budget-s 450] [--only STEP,STEP]
#
# Needs only torch, triton and transformers in the machine's Python (PYTHON, default python3):
# aster is installed editable (--no-deps, no network) into a throwaway venv that sees that
# Python's packages, together with any wheels carried in .whl/ (e.g. math-verify and its
# dependencies for the training step). Without a GPU (or with --dry-run) nothing is installed
# and every step reports "skipped: no GPU"; the exit status is then 0. With a GPU the exit
# status is 1 when any step failed or timed out. Steps: python scripts/device_check.py --list.
#
#   bash scripts/device_check.sh --fetch-wheels
#                     (on a machine with network) download the pure-Python wheels aster needs
#                     beyond torch/triton/transformers (math-verify and its dependencies) into
#                     .whl/ (git-ignored), for a GPU machine without network: carry .whl along
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHEELS=(math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2)
if [ "${1:-}" = --fetch-wheels ]; then
  exec "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation py -d .whl "${WHEELS[@]}"
fi
args=("$@")
dry=0
for a in "$@"; do [ "$a" = --dry-run ] && dry=1; done
if [ "$dry" = 0 ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "device_check: no usable GPU here (torch.cuda.is_available() is False): dry run"
  dry=1; args+=(--dry-run)
fi
if [ "$dry" = 0 ]; then
  venv="${ASTER_DEVICE_CHECK_VENV:-/tmp/aster-device-check-venv}"
  start=$(date +%s)
  rm -rf "$venv"
  # A venv made from inside another venv would not see that venv's packages (it is based on
  # the base interpreter): a .pth file adds every site directory on the machine Python's
  # path (torch, triton, transformers, ...), after the venv's own.
  if ! "$PY" -m venv "$venv" 2>/dev/null; then "$PY" -m venv --without-pip "$venv" || exit 1; fi
  vsite=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  "$PY" -c 'import sys
print("\n".join(p for p in sys.path if "-packages" in p))' > "$vsite/zz_machine_site.pth"
  if "$venv/bin/python" -m pip --version >/dev/null 2>&1; then vpip=("$venv/bin/python" -m pip)
  else vpip=("$PY" -m pip --python "$venv/bin/python"); fi
  # Python <= 3.11 seeds venvs with an old setuptools that shadows the machine's (aster's
  # pyproject needs setuptools >= 68); without it the machine's is used.
  "${vpip[@]}" uninstall --quiet --yes setuptools >/dev/null 2>&1
  "${vpip[@]}" install --quiet --no-index --no-deps --no-build-isolation -e . || exit 1
  shopt -s nullglob; wheels=(.whl/*.whl); shopt -u nullglob
  if [ ${#wheels[@]} -gt 0 ]; then
    "${vpip[@]}" install --quiet --no-index --no-deps "${wheels[@]}" || exit 1
  fi
  echo "device_check: aster installed into $venv with ${#wheels[@]} carried wheels in $(( $(date +%s) - start )) s"
  PY="$venv/bin/python"
fi
exec "$PY" scripts/device_check.py "${args[@]}"
